//! Tests of the exchange's parsing and encoding (its behaviour on real
//! connections is tested with the pool's, in `pool/tests.rs`).

use super::body::{chunk_size, line};
use super::*;
use bytes::Bytes;

fn parse(text: &[u8]) -> Result<Option<Head>, String> {
    parse_head(&mut BytesMut::from(text))
}

fn head(text: &str) -> Head {
    let mut buf = BytesMut::from(text);
    match parse_head(&mut buf) {
        Ok(Some(h)) => {
            assert!(buf.is_empty(), "the whole head is taken: {text:?}");
            h
        }
        Ok(None) => panic!("incomplete: {text:?}"),
        Err(e) => panic!("{e}: {text:?}"),
    }
}

#[test]
fn framing_follows_rfc_9112() {
    let f = |t: &str| head(t).framing;
    assert_eq!(
        f("HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n"),
        Framing::Length(12)
    );
    assert_eq!(
        f("HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\n\r\n"),
        Framing::Length(7)
    );
    assert_eq!(
        f("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
        Framing::Empty
    );
    assert_eq!(
        f("HTTP/1.1 204 No Content\r\ncontent-length: 9\r\n\r\n"),
        Framing::Empty
    );
    assert_eq!(f("HTTP/1.1 304 Not Modified\r\n\r\n"), Framing::Empty);
    assert_eq!(
        f("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, Chunked\r\ncontent-length: 5\r\n\r\n"),
        Framing::Chunked,
        "transfer-encoding wins over content-length"
    );
    assert_eq!(
        f("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n"),
        Framing::Close
    );
    assert_eq!(f("HTTP/1.1 200 OK\r\n\r\n"), Framing::Close);
    for bad in [
        "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999999\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: \r\n\r\n",
        "HTTP/1.1 2000 OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\nbad name: x\r\n\r\n",
    ] {
        assert!(parse(bad.as_bytes()).is_err(), "{bad:?}");
    }
    assert!(parse(b"HTTP/1.1 200 OK\r\ncontent-le")
        .expect("partial")
        .is_none());
    assert!(
        parse(b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").is_err(),
        "RFC 9112 6.1"
    );
    let both = head("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n");
    assert_eq!(both.framing, Framing::Chunked);
    assert!(!both.keep_alive, "not trusted with another request");
    assert!(
        !both.headers.contains_key(header::CONTENT_LENGTH),
        "not passed on"
    );
}

#[test]
fn heads_are_split_off_in_turn_with_their_values_as_sent() {
    // An interim answer, the final one and the start of its body, read at
    // once: each head is taken off the front, its values intact.
    let mut buf = BytesMut::from(
        &b"HTTP/1.1 100 Continue\r\nx-early: 1\r\n\r\n\
           HTTP/1.1 200 OK\r\ncontent-length: 5\r\nX-Model:  kept as is \r\nx-empty:\r\n\r\nhello"
            [..],
    );
    let interim = parse_head(&mut buf).expect("valid").expect("complete");
    assert_eq!(interim.status, StatusCode::CONTINUE);
    assert_eq!(interim.headers["x-early"], "1");
    let last = parse_head(&mut buf).expect("valid").expect("complete");
    assert_eq!(last.status, StatusCode::OK);
    assert_eq!(last.framing, Framing::Length(5));
    assert_eq!(last.headers["x-model"], "kept as is");
    assert_eq!(last.headers["x-empty"], "");
    assert_eq!(&buf[..], b"hello", "the body stays in the buffer");
    // The values outlive the buffer they were read into.
    drop(buf);
    assert_eq!(last.headers["x-model"].as_bytes(), b"kept as is");
}

#[test]
fn only_http_1_1_without_connection_close_is_kept_alive() {
    let k = |t: &str| head(t).keep_alive;
    assert!(k("HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n"));
    assert!(k(
        "HTTP/1.1 200 OK\r\nconnection: keep-alive\r\ncontent-length: 1\r\n\r\n"
    ));
    assert!(!k(
        "HTTP/1.1 200 OK\r\nconnection: keep-alive, Close\r\ncontent-length: 1\r\n\r\n"
    ));
    assert!(!k("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n"));
    assert!(!k("HTTP/1.1 200 OK\r\n\r\n"), "read to the close");
}

#[test]
fn chunk_sizes_are_hex_with_optional_extensions() {
    assert_eq!(chunk_size(b"1a"), Some(26));
    assert_eq!(chunk_size(b"0"), Some(0));
    assert_eq!(chunk_size(b"A ; name=value"), Some(10));
    assert_eq!(chunk_size(b"ff;x"), Some(255));
    assert_eq!(chunk_size(b"00000000000000000001\t;x"), Some(1));
    for bad in [
        &b""[..],
        b"x",
        b"-1",
        b"1 2",
        b"0x10",
        b"1\r",
        b"1234567890abcdef0",
    ] {
        assert_eq!(chunk_size(bad), None, "{bad:?}");
    }
    assert_eq!(line(b"12\r\nab", 10), Ok(Some(2)));
    assert_eq!(line(b"12\r", 10), Ok(None));
    assert!(line(b"12\nab", 10).is_err());
    assert!(line(b"123456789012345", 10).is_err());
}

#[test]
fn requests_go_out_in_origin_form_with_their_framing() {
    let url = "http://m:9000/v1/x?y=1".parse().expect("uri");
    let trace = HeaderName::from_static("traceparent");
    let post = JsonPost {
        url: &url,
        headers: &[
            (&trace, "00-ab-cd-01"),
            (&header::CONTENT_LENGTH, "999"),
            (&header::HOST, "elsewhere"),
            (&header::ACCEPT, "a\r\nx-injected: 1"),
        ],
    };
    let host = HeaderValue::from_static("m:9000");
    let wire = encode(&post, Some(&host), b"{}");
    assert_eq!(
        String::from_utf8(wire).expect("text"),
        "POST /v1/x?y=1 HTTP/1.1\r\nhost: m:9000\r\ncontent-type: application/json\r\n\
         traceparent: 00-ab-cd-01\r\ncontent-length: 2\r\n\r\n{}"
    );
    // hyper's request carries the same headers (hyper adds `Host` and
    // `Content-Length` itself).
    let request = post.request(Bytes::from_static(b"{}"));
    assert_eq!(request.headers().len(), 2, "{:?}", request.headers());
    assert_eq!(request.headers()["traceparent"], "00-ab-cd-01");
    assert_eq!(request.headers()[header::CONTENT_TYPE], "application/json");
}
