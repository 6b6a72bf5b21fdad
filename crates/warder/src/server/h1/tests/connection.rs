//! What ends a hand-served connection or request: a caller that hangs up,
//! a head that does not arrive in time, and the drain.

use super::*;

#[tokio::test]
async fn a_caller_that_hangs_up_cancels_its_request() {
    let server = start(Duration::from_secs(10)).await;
    let mut c = Client::connect(server.addr).await;
    c.send(&post("/never", "", "")).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(server.seen.dropped.load(Ordering::SeqCst), 0);
    drop(c);
    assert!(
        dropped_within_2_s(&server.seen).await,
        "the request's future outlived its caller"
    );
}

/// Whether one more call's future or body is dropped within 2 s.
async fn dropped_within_2_s(seen: &Seen) -> bool {
    for _ in 0..100 {
        if seen.dropped.load(Ordering::SeqCst) == 1 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn a_caller_that_hangs_up_during_a_stalled_answer_ends_it() {
    let server = start(Duration::from_secs(10)).await;
    let mut c = Client::connect(server.addr).await;
    c.send(&post("/stall", "", "")).await;
    while !c.buf.windows(5).any(|w| w == b"first") {
        assert!(c.fill().await, "the first chunk");
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(server.seen.dropped.load(Ordering::SeqCst), 0);
    drop(c);
    assert!(
        dropped_within_2_s(&server.seen).await,
        "the answer's body outlived its caller"
    );
}

#[tokio::test]
async fn a_request_pipelined_behind_a_running_one_waits_for_it() {
    let server = start(Duration::from_secs(10)).await;
    let mut c = Client::connect(server.addr).await;
    c.send(&post("/slow", "", "")).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.send(&post("/echo", "", "")).await;
    assert_eq!(c.answer().await.expect("slow").text(), "late");
    assert_eq!(
        c.answer().await.expect("echo").text(),
        "POST /echo HTTP/1.1 0 -"
    );
}

#[tokio::test]
async fn heads_that_do_not_arrive_in_time_are_cut_off() {
    let server = start(Duration::from_millis(200)).await;
    let mut partial = Client::connect(server.addr).await;
    partial.send(b"POST /echo HTTP/1.1\r\nhost: t\r\n").await;
    let idle = Client::connect(server.addr).await;
    let mut served = Client::connect(server.addr).await;
    served.send(&post("/echo", "", "")).await;
    assert!(served.answer().await.is_some());

    let a = partial.answer().await.expect("an answer");
    assert_eq!(a.status, 408);
    assert!(partial.closed().await);
    let mut idle = idle;
    assert!(idle.closed().await, "an idle connection is closed too");
    assert!(served.closed().await, "and one idle after an answer");
}

#[tokio::test]
async fn the_drain_closes_idle_connections_and_lets_a_running_request_finish() {
    let mut server = start(Duration::from_secs(10)).await;
    let mut idle = Client::connect(server.addr).await;
    idle.send(&post("/echo", "", "")).await;
    assert!(idle.answer().await.is_some());
    let mut busy = Client::connect(server.addr).await;
    busy.send(&post("/slow", "", "")).await;
    tokio::time::sleep(Duration::from_millis(50)).await;

    server.stop.take().expect("once").send(()).expect("stop");
    assert!(idle.closed().await, "the idle connection closes at once");
    let late = busy.answer().await.expect("the running request's answer");
    assert_eq!(late.text(), "late");
    assert_eq!(late.header("connection"), Some("close"));
    assert!(busy.closed().await);
    tokio::time::timeout(Duration::from_secs(5), server.done)
        .await
        .expect("the drain ends")
        .expect("no panic");
}

/// A drain that begins while a request hyper must answer is still arriving
/// (its head in two pieces) lets that request finish, as one arriving at
/// hyper directly would; a connection that sent only empty lines is idle.
#[tokio::test]
async fn the_drain_answers_a_request_handed_over_mid_head() {
    let mut server = start(Duration::from_secs(10)).await;
    let mut chunked = Client::connect(server.addr).await;
    chunked
        .send(b"POST /echo HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n")
        .await;
    let mut blank = Client::connect(server.addr).await;
    blank.send(b"\r\n\r\n").await;
    tokio::time::sleep(Duration::from_millis(50)).await;

    server.stop.take().expect("once").send(()).expect("stop");
    assert!(blank.closed().await, "empty lines are not a request");
    tokio::time::sleep(Duration::from_millis(50)).await;
    chunked.send(b"\r\n2\r\nab\r\n0\r\n\r\n").await;
    let a = chunked.answer().await.expect("the request is answered");
    assert_eq!(a.text(), "POST /echo HTTP/1.1 2 -");
    assert!(chunked.closed().await);
    tokio::time::timeout(Duration::from_secs(5), server.done)
        .await
        .expect("the drain ends")
        .expect("no panic");
}
