//! Serving threads, nginx-worker style: one single-threaded async runtime per CPU the
//! process may use. Each accepts on every client listener (a duplicate of the same socket,
//! so whichever thread is free takes the next connection) and runs its connections to the
//! end; a connection and the upstream connections it uses never move between threads, so
//! the request path pays for no cross-thread wake-ups or work stealing.
//!
//! Everything else (admin, tunnel listener, ACME, health checks, reloads) stays on the
//! process's main runtime.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::thread::JoinHandle;

use tokio_util::sync::CancellationToken;

thread_local! {
    static INDEX: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Which serving thread this is; `None` on any other thread (the main runtime's).
pub fn index() -> Option<usize> {
    INDEX.with(Cell::get)
}

/// How many serving threads to run: one per CPU this process may use (its affinity mask
/// and cgroup quota count), at least one.
pub fn count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The running serving threads.
pub struct Workers {
    threads: Vec<JoinHandle<()>>,
    stop: CancellationToken,
}

impl Workers {
    /// Starts one thread per item of `work`; thread `i` runs the `i`th future and then keeps
    /// its runtime (and so every connection still open on it) alive until
    /// [`Workers::stop`].
    pub fn start<Fut>(work: Vec<Fut>) -> io::Result<Workers>
    where
        Fut: Future<Output = ()> + Send + 'static,
    {
        let stop = CancellationToken::new();
        let mut threads = Vec::with_capacity(work.len());
        for (i, work) in work.into_iter().enumerate() {
            let started = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .and_then(|runtime| {
                    let stop = stop.clone();
                    std::thread::Builder::new()
                        .name(format!("kakuremichi-serve-{i}"))
                        .spawn(move || {
                            INDEX.set(Some(i));
                            runtime.block_on(async move {
                                work.await;
                                stop.cancelled().await;
                            });
                        })
                });
            match started {
                Ok(thread) => threads.push(thread),
                Err(e) => {
                    // The threads already started end instead of waiting forever.
                    stop.cancel();
                    return Err(e);
                }
            }
        }
        Ok(Workers { threads, stop })
    }

    /// Ends every serving thread, dropping whatever is still running there, and waits for
    /// them to exit.
    pub async fn stop(self) {
        self.stop.cancel();
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_thread_knows_its_index_and_stops_when_told() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let work = (0..3)
            .map(|i| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send((i, index()));
                }
            })
            .collect();
        let workers = Workers::start(work).expect("threads start");
        drop(tx);
        let mut seen = Vec::new();
        while let Some(pair) = rx.recv().await {
            seen.push(pair);
        }
        seen.sort_unstable();
        assert_eq!(seen, vec![(0, Some(0)), (1, Some(1)), (2, Some(2))]);
        workers.stop().await;
        assert_eq!(index(), None);
    }
}
