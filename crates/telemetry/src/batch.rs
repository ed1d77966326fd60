//! The background log writer. Formatted lines are appended to one shared buffer and a
//! thread writes them to stdout in batches: [`LINGER`] after the first waiting line, sooner
//! once [`FLUSH_AT`] bytes wait. Under load that is one `write` per batch instead of one per
//! line, and the request path never wakes the writer thread per line (a wake-up and a
//! context switch per access-log line cost a busy gateway more than formatting the line).
//!
//! Nothing is dropped: when [`MAX_PENDING`] bytes wait (stdout is blocked), loggers wait
//! for room, as a blocking writer would make them.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long the first line of a batch may wait for more lines. Each batch costs the
/// logging thread a wake-up call and the writer two context switches; on a gateway that
/// shares its CPU with the writer, 2 ms (500 batches a second under load) cost ~3 % of
/// its requests per second, 20 ms nothing measurable.
const LINGER: Duration = Duration::from_millis(20);
/// Bytes that make the writer thread start a batch at once.
const FLUSH_AT: usize = 256 * 1024;
/// Bytes that may wait at most; loggers block beyond this.
const MAX_PENDING: usize = 8 * 1024 * 1024;
/// A spare buffer that grew beyond this (stdout was blocked for a while) is not kept.
const KEEP_CAPACITY: usize = 1024 * 1024;

struct State {
    pending: Vec<u8>,
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Where batches go: stdout, or a test's buffer.
    out: Mutex<Box<dyn Write + Send>>,
    /// The writer thread waits here for lines, or for close.
    lines: Condvar,
    /// Loggers wait here for room.
    room: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A logger that panicked mid-append leaves whole lines or a cut one; keep logging.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A closed or failing stdout loses the lines (there is nowhere to say so).
    fn write_out(&self, bytes: &[u8]) {
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = out.write_all(bytes);
        let _ = out.flush();
    }
}

/// The `MakeWriter` handed to `tracing_subscriber`; every event is one `write` call.
#[derive(Clone)]
pub(crate) struct BatchWriter {
    shared: Arc<Shared>,
}

/// Stops the writer thread after writing every waiting line.
pub(crate) struct BatchGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the writer thread for stdout. Without a thread (the system refused one) lines are
/// written directly by the logging thread.
pub(crate) fn start() -> (BatchWriter, BatchGuard) {
    start_with(Box::new(io::stdout()))
}

fn start_with(out: Box<dyn Write + Send>) -> (BatchWriter, BatchGuard) {
    let shared = Arc::new(Shared {
        out: Mutex::new(out),
        state: Mutex::new(State {
            pending: Vec::with_capacity(64 * 1024),
            closed: false,
        }),
        lines: Condvar::new(),
        room: Condvar::new(),
    });
    let worker = shared.clone();
    let thread = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || write_batches(&worker))
        .map_err(|e| eprintln!("cannot start the log writer thread ({e}); writing logs directly"))
        .ok();
    if thread.is_none() {
        shared.lock().closed = true;
    }
    (
        BatchWriter {
            shared: shared.clone(),
        },
        BatchGuard { shared, thread },
    )
}

fn write_batches(shared: &Shared) {
    let mut spare = Vec::with_capacity(64 * 1024);
    loop {
        let mut state = shared.lock();
        while state.pending.is_empty() && !state.closed {
            state = shared
                .lines
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if state.pending.is_empty() {
            return; // closed, and everything written
        }
        if !state.closed && state.pending.len() < FLUSH_AT {
            state = shared
                .lines
                .wait_timeout(state, LINGER)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        std::mem::swap(&mut state.pending, &mut spare);
        drop(state);
        shared.room.notify_all();
        shared.write_out(&spare);
        spare.clear();
        if spare.capacity() > KEEP_CAPACITY {
            spare = Vec::with_capacity(64 * 1024);
        }
    }
}

impl BatchWriter {
    /// Queues `buf` (whole lines) for the writer thread; waits while too much is queued.
    pub(crate) fn append(&self, buf: &[u8]) {
        let mut state = self.shared.lock();
        while state.pending.len() >= MAX_PENDING && !state.closed {
            state = self
                .shared
                .room
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if state.closed {
            drop(state);
            self.shared.write_out(buf);
            return;
        }
        let was_empty = state.pending.is_empty();
        let before = state.pending.len();
        state.pending.extend_from_slice(buf);
        let crossed = before < FLUSH_AT && state.pending.len() >= FLUSH_AT;
        drop(state);
        // The writer thread sleeps untimed only on an empty buffer, and lingers on a small
        // one: only these two changes need to wake it.
        if was_empty || crossed {
            self.shared.lines.notify_one();
        }
    }
}

impl Write for BatchWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchWriter {
    type Writer = BatchWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Drop for BatchGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.lines.notify_one();
        self.shared.room.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink the test can read back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn lines(n: usize) -> String {
        (0..n).map(|i| format!("line {i}\n")).collect()
    }

    #[test]
    fn the_guard_writes_every_waiting_line_in_order() {
        let sink = Captured::default();
        let (writer, guard) = start_with(Box::new(sink.clone()));
        let mut w = writer.make_writer();
        for i in 0..10_000 {
            w.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        drop(guard);
        assert_eq!(sink.text(), lines(10_000));
    }

    #[test]
    fn a_waiting_line_is_written_without_more_lines_or_the_guard() {
        let sink = Captured::default();
        let (writer, _guard) = start_with(Box::new(sink.clone()));
        writer.make_writer().write_all(b"one line\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while sink.text().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the line was not written"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(sink.text(), "one line\n");
    }

    #[test]
    fn after_close_lines_are_written_directly() {
        let sink = Captured::default();
        let (writer, guard) = start_with(Box::new(sink.clone()));
        drop(guard);
        writer.make_writer().write_all(b"late line\n").unwrap();
        assert_eq!(sink.text(), "late line\n");
    }

    #[test]
    fn lines_from_many_threads_stay_whole() {
        let sink = Captured::default();
        let (writer, guard) = start_with(Box::new(sink.clone()));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    let mut w = writer.make_writer();
                    for i in 0..2_000 {
                        w.write_all(format!("thread {t} line {i}\n").as_bytes())
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(guard);
        let text = sink.text();
        assert_eq!(text.lines().count(), 8_000);
        for t in 0..4 {
            let mine: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with(&format!("thread {t} ")))
                .collect();
            let want: Vec<String> = (0..2_000).map(|i| format!("thread {t} line {i}")).collect();
            assert_eq!(mine, want, "thread {t}'s lines, whole and in order");
        }
    }
}
