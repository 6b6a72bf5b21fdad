//! The log sink: request threads append finished lines to one shared buffer,
//! and a background thread writes that buffer out in large chunks.
//!
//! Written by hand because `tracing-appender`'s non-blocking writer hands
//! every line to its worker through a channel and writes it with a syscall of
//! its own: under load that cost one `write(2)` plus several `sched_yield`
//! and `futex` calls per request, and on a single core each of those is a
//! context switch. Here a request only copies its line into a `Vec` under a
//! mutex held for that copy; the writer is woken at most once per batch (when
//! the buffer turns non-empty, or passes the high-water mark) and writes
//! everything gathered in one call.
//!
//! It must never slow a request: when the output cannot keep up and the
//! buffer reaches its cap, new lines are dropped and counted, and the count
//! is reported on stderr.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;
use tracing_subscriber::fmt::MakeWriter;

/// How long lines gather before a write, when traffic is light.
const FLUSH_INTERVAL: Duration = Duration::from_millis(20);
/// A buffer this full is written at once, without waiting for the interval.
const HIGH_WATER: usize = 256 * 1024;
/// A buffer this full drops new lines.
const CAP: usize = 16 * 1024 * 1024;

struct Shared {
    buf: Mutex<Vec<u8>>,
    wake: Condvar,
    stop: AtomicBool,
    dropped: AtomicU64,
    high_water: usize,
    cap: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        // A panic while holding the lock cannot leave a half-written line
        // behind (the copy is one `extend_from_slice`), so a poisoned buffer
        // is still usable.
        self.buf.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The `MakeWriter` given to the log layer; cheap to clone.
#[derive(Clone)]
pub struct BatchWriter {
    shared: Arc<Shared>,
}

/// Stops the background writer when dropped, after writing what is buffered.
pub struct BatchGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl BatchWriter {
    /// A writer to `out` and the guard that flushes it.
    pub fn new(out: impl Write + Send + 'static) -> (BatchWriter, BatchGuard) {
        BatchWriter::with_limits(out, HIGH_WATER, CAP)
    }

    fn with_limits(
        mut out: impl Write + Send + 'static,
        high_water: usize,
        cap: usize,
    ) -> (BatchWriter, BatchGuard) {
        let shared = Arc::new(Shared {
            buf: Mutex::new(Vec::with_capacity(high_water)),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            high_water,
            cap,
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("warder-log".into())
            .spawn(move || write_batches(&worker, &mut out))
            .ok();
        (
            BatchWriter {
                shared: shared.clone(),
            },
            BatchGuard { shared, thread },
        )
    }

    /// Lines dropped so far because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Appends one whole line (or drops it when the buffer is full).
    pub(crate) fn append(&self, line: &[u8]) {
        let s = &*self.shared;
        let mut buf = s.lock();
        let before = buf.len();
        if before + line.len() > s.cap {
            drop(buf);
            s.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        buf.extend_from_slice(line);
        let after = buf.len();
        drop(buf);
        // Only the two transitions the writer waits for wake it.
        if before == 0 || (before < s.high_water && after >= s.high_water) {
            s.wake.notify_one();
        }
    }
}

/// The background loop: wait for a first line, let more gather for the
/// interval (or until the high-water mark), swap the buffer out, write it.
fn write_batches(s: &Shared, out: &mut dyn Write) {
    let mut spare = Vec::with_capacity(s.high_water);
    loop {
        let mut buf = s.lock();
        while buf.is_empty() && !s.stop.load(Ordering::Acquire) {
            buf = s.wake.wait(buf).unwrap_or_else(|e| e.into_inner());
        }
        if buf.is_empty() {
            return; // stopping, nothing left
        }
        if !s.stop.load(Ordering::Acquire) && buf.len() < s.high_water {
            buf = s
                .wake
                .wait_timeout_while(buf, FLUSH_INTERVAL, |b| {
                    b.len() < s.high_water && !s.stop.load(Ordering::Acquire)
                })
                .map(|(b, _)| b)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        std::mem::swap(&mut *buf, &mut spare);
        drop(buf);
        // A failing stdout (closed pipe) cannot be reported anywhere better;
        // the lines are lost either way.
        let _ = out.write_all(&spare).and_then(|()| out.flush());
        // Keep a buffer of reasonable size for the next swap.
        spare.clear();
        spare.shrink_to(s.high_water.max(64 * 1024));
        let dropped = s.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            let _ = writeln!(
                std::io::stderr(),
                "warder: {dropped} log lines dropped (the log output could not keep up)"
            );
        }
    }
}

impl Drop for BatchGuard {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        // Taking the lock orders the store before the writer's next check.
        drop(self.shared.lock());
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One event's writer: `tracing-subscriber` formats a whole line, then
/// writes it with one `write_all`, which lands here as one `append`.
pub struct LineWriter<'a>(&'a BatchWriter);

impl Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchWriter {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter(self)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A sink a test can read while a writer owns it (also used by
    /// `lifecycle`'s tests).
    #[derive(Clone, Default)]
    pub(crate) struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("sink").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Sink {
        pub(crate) fn text(&self) -> String {
            String::from_utf8(self.0.lock().expect("sink").clone()).expect("utf-8")
        }
    }

    #[test]
    fn lines_from_many_threads_arrive_whole_and_the_guard_flushes() {
        let sink = Sink::default();
        let (writer, guard) = BatchWriter::new(sink.clone());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let w = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..500 {
                        let line = format!("thread {t} line {i:04} {}\n", "x".repeat(100));
                        w.make_writer().write_all(line.as_bytes()).expect("write");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        drop(guard);
        let text = sink.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2000);
        for t in 0..4 {
            let mine: Vec<&str> = lines
                .iter()
                .filter(|l| l.starts_with(&format!("thread {t} ")))
                .copied()
                .collect();
            assert_eq!(mine.len(), 500, "every line of thread {t}, none torn");
            for (i, l) in mine.iter().enumerate() {
                assert!(
                    l.starts_with(&format!("thread {t} line {i:04} ")),
                    "in order"
                );
            }
        }
        assert_eq!(writer.dropped(), 0);
    }

    #[test]
    fn a_single_line_is_written_without_waiting_for_shutdown() {
        let sink = Sink::default();
        let (writer, _guard) = BatchWriter::new(sink.clone());
        writer.make_writer().write_all(b"hello\n").expect("write");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while sink.text().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(sink.text(), "hello\n");
    }

    /// A sink that blocks until released: the output cannot keep up.
    struct Stuck(Arc<(Mutex<bool>, Condvar)>, Sink);

    impl Write for Stuck {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (open, cv) = &*self.0;
            let mut o = open.lock().expect("gate");
            while !*o {
                o = cv.wait(o).expect("gate");
            }
            self.1.write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_output_drops_lines_instead_of_blocking() {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let sink = Sink::default();
        let (writer, guard) = BatchWriter::with_limits(Stuck(gate.clone(), sink.clone()), 64, 1024);
        // The first batch is taken by the writer and blocks in the sink;
        // the buffer then fills to its cap and the rest is dropped.
        for _ in 0..200 {
            writer.make_writer().write_all(&[b'a'; 31]).expect("write");
            writer.make_writer().write_all(b"\n").expect("write");
        }
        assert!(writer.dropped() > 0, "lines over the cap are dropped");
        *gate.0.lock().expect("gate") = true;
        gate.1.notify_all();
        drop(guard);
        let written = sink.text();
        assert!(!written.is_empty());
        assert!(written.len() <= 1024 + 64 * 32, "at most cap + one batch");
    }
}
