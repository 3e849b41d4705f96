//! The verify pool: steps 2–3 (signatures, content hash) on every core, before any room
//! actor.
//!
//! One thread per core, fed from one FIFO queue, started on first use. A batch is split
//! into one job per thread, each a contiguous slice of the batch, so a `/send` of 50 PDUs
//! costs two hand-overs and two wake-ups of its handler, not fifty; the jobs of concurrent
//! transactions (several origins at once) queue behind each other in arrival order, so the
//! first transaction's answer is not held back by the later ones' checks. The checks are
//! order-free (each needs only the PDU and a key snapshot), and [`map`] hands the results
//! back **in the order of its input**: the
//! caller then groups them by room and submits each room's PDUs to its actor in that order,
//! so parallel verification never reorders a room's events.
//!
//! The work is pure CPU (ed25519 `verify_strict`, SHA-256, canonical JSON), so the pool
//! does not borrow tokio's blocking threads, which database reads need meanwhile.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send + 'static>;

struct Pool {
    queue: Sender<Job>,
    threads: usize,
}

static POOL: OnceLock<Pool> = OnceLock::new();

fn worker(rx: Arc<Mutex<Receiver<Job>>>) {
    loop {
        // The lock is held only while taking a job, never while running one.
        let job = match rx.lock() {
            Ok(guard) => guard.recv(),
            Err(_) => return,
        };
        match job {
            Ok(job) => job(),
            Err(_) => return,
        }
    }
}

fn pool() -> &'static Pool {
    POOL.get_or_init(|| {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .max(1);
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut started = 0;
        for i in 0..threads {
            let rx = Arc::clone(&rx);
            match std::thread::Builder::new()
                .name(format!("weft-verify-{i}"))
                .spawn(move || worker(rx))
            {
                Ok(_) => started += 1,
                Err(e) => tracing::error!(error = %e, "could not start a verify thread"),
            }
        }
        Pool {
            queue: tx,
            threads: started,
        }
    })
}

/// Threads verifying (0 only if none could be started: then [`map`] runs inline).
pub fn threads() -> usize {
    pool().threads
}

/// Runs `f` over every item on the pool's threads; the results come back in input order.
/// `None` marks a job that did not answer (it panicked: a bug, never a verdict), which
/// callers treat as "not checked", never as accepted.
pub async fn map<T, R, F>(items: Vec<T>, f: F) -> Vec<Option<R>>
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(T) -> R + Send + Sync + 'static,
{
    let p = pool();
    if p.threads == 0 || items.len() <= 1 {
        // One PDU (an invite, a join answer): no hand-over is cheaper than the check.
        return items.into_iter().map(|i| Some(f(i))).collect();
    }
    let f = Arc::new(f);
    let per = items.len().div_ceil(p.threads.min(items.len()));
    let mut waiting = Vec::with_capacity(p.threads);
    let mut rest = items.into_iter();
    loop {
        let chunk: Vec<T> = rest.by_ref().take(per).collect();
        if chunk.is_empty() {
            break;
        }
        let len = chunk.len();
        let (tx, rx) = oneshot::channel::<Vec<R>>();
        let f = Arc::clone(&f);
        let job: Job = Box::new(move || {
            let _ = tx.send(chunk.into_iter().map(|i| f(i)).collect());
        });
        if let Err(back) = p.queue.send(job) {
            // The queue is closed (cannot happen while the pool lives): run it here.
            (back.0)();
        }
        waiting.push((rx, len));
    }
    let mut out = Vec::with_capacity(waiting.iter().map(|w| w.1).sum());
    for (rx, len) in waiting {
        match rx.await {
            Ok(results) => out.extend(results.into_iter().map(Some)),
            Err(_) => {
                tracing::error!("a verify job did not answer");
                out.extend((0..len).map(|_| None));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn results_come_back_in_input_order_whatever_the_finishing_order() {
        // Early items take longest, so they finish last on a multi-threaded pool.
        let items: Vec<u64> = (0..64).collect();
        let out = map(items.clone(), |i| {
            std::thread::sleep(std::time::Duration::from_micros((64 - i) * 200));
            i * 10
        })
        .await;
        assert_eq!(out, items.iter().map(|i| Some(i * 10)).collect::<Vec<_>>());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn every_batch_size_comes_back_whole_and_in_order() {
        // Sizes that do and do not divide by the thread count, and fewer items than threads.
        for n in [2usize, 3, 5, 7, 49, 50, 51] {
            let items: Vec<usize> = (0..n).collect();
            let out = map(items.clone(), |i| i + 1).await;
            assert_eq!(
                out,
                items.iter().map(|i| Some(i + 1)).collect::<Vec<_>>(),
                "{n}"
            );
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn concurrent_batches_each_keep_their_order() {
        let a = map((0..40u32).collect(), |i| ('a', i));
        let b = map((0..40u32).collect(), |i| ('b', i));
        let (a, b) = tokio::join!(a, b);
        assert_eq!(a, (0..40).map(|i| Some(('a', i))).collect::<Vec<_>>());
        assert_eq!(b, (0..40).map(|i| Some(('b', i))).collect::<Vec<_>>());
        assert!(threads() >= 1);
    }
}
