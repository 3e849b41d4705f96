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
            // A job that panics (a bug, never a verdict) drops its answer channels, so its
            // caller gets `None` ("not checked"); the thread goes on with the next job.
            Ok(job) => {
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                    tracing::error!("a verify job panicked");
                }
            }
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
    staged(items, f, |_| (), |r| r).results().await
}

/// A batch on the pool in two stages ([`staged`]): what the first stage lets the caller see
/// early ([`Self::peeks`]), then the results ([`Self::results`]), each in input order.
pub struct Staged<P, R> {
    early: Vec<(oneshot::Receiver<Vec<P>>, usize)>,
    late: Vec<(oneshot::Receiver<Vec<R>>, usize)>,
}

async fn gather<X>(waiting: Vec<(oneshot::Receiver<Vec<X>>, usize)>) -> Vec<Option<X>> {
    let mut out = Vec::with_capacity(waiting.iter().map(|w| w.1).sum());
    for (rx, len) in waiting {
        match rx.await {
            Ok(results) if results.len() == len => out.extend(results.into_iter().map(Some)),
            _ => {
                tracing::error!("a verify job did not answer");
                out.extend((0..len).map(|_| None));
            }
        }
    }
    out
}

impl<P, R> Staged<P, R> {
    /// What `peek` said of each item after the first stage, in input order (`None`: the job
    /// did not answer). Once only: a second call returns nothing.
    pub async fn peeks(&mut self) -> Vec<Option<P>> {
        gather(std::mem::take(&mut self.early)).await
    }

    /// The second stage's results, in input order (`None`: the job did not answer).
    pub async fn results(self) -> Vec<Option<R>> {
        gather(self.late).await
    }
}

/// Runs `first` then `second` over every item on the pool's threads, one job per thread,
/// each over a contiguous slice: a job runs `first` over its whole slice, hands back
/// `peek` of each result at once, then runs `second` over the slice. So a caller can start
/// what needs the first stage's answers (a read by event ID) while the second stage (the
/// signature checks) still runs. A batch of one runs inline.
pub fn staged<T, M, P, R, F1, FP, F2>(
    items: Vec<T>,
    first: F1,
    peek: FP,
    second: F2,
) -> Staged<P, R>
where
    T: Send + 'static,
    M: Send + 'static,
    P: Send + 'static,
    R: Send + 'static,
    F1: Fn(T) -> M + Send + Sync + 'static,
    FP: Fn(&M) -> P + Send + Sync + 'static,
    F2: Fn(M) -> R + Send + Sync + 'static,
{
    let p = pool();
    let fs = Arc::new((first, peek, second));
    let run = |chunk: Vec<T>,
               fs: Arc<(F1, FP, F2)>,
               early: oneshot::Sender<Vec<P>>,
               late: oneshot::Sender<Vec<R>>| {
        let (first, peek, second) = &*fs;
        let mid: Vec<M> = chunk.into_iter().map(first).collect();
        let _ = early.send(mid.iter().map(peek).collect());
        let _ = late.send(mid.into_iter().map(second).collect());
    };
    let mut staged = Staged {
        early: Vec::with_capacity(p.threads.max(1)),
        late: Vec::with_capacity(p.threads.max(1)),
    };
    if p.threads == 0 || items.len() <= 1 {
        // One PDU (an invite, a join answer): no hand-over is cheaper than the check.
        let len = items.len();
        let (etx, erx) = oneshot::channel();
        let (ltx, lrx) = oneshot::channel();
        run(items, fs, etx, ltx);
        staged.early.push((erx, len));
        staged.late.push((lrx, len));
        return staged;
    }
    let per = items.len().div_ceil(p.threads.min(items.len()));
    let mut rest = items.into_iter();
    loop {
        let chunk: Vec<T> = rest.by_ref().take(per).collect();
        if chunk.is_empty() {
            break;
        }
        let len = chunk.len();
        let (etx, erx) = oneshot::channel();
        let (ltx, lrx) = oneshot::channel();
        let fs = Arc::clone(&fs);
        let job: Job = Box::new(move || run(chunk, fs, etx, ltx));
        if let Err(back) = p.queue.send(job) {
            // The queue is closed (cannot happen while the pool lives): run it here.
            (back.0)();
        }
        staged.early.push((erx, len));
        staged.late.push((lrx, len));
    }
    staged
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

    #[tokio::test(flavor = "current_thread")]
    async fn a_job_that_panics_answers_none_and_its_thread_goes_on() {
        let out = map((0..8u32).collect(), |i| {
            assert!(i != 0, "a bug in a check");
            i
        })
        .await;
        // The slice holding 0 panicked: its items are "not checked", the others answered.
        assert_eq!(out[0], None);
        assert_eq!(out[7], Some(7));
        // More panicking jobs than there are threads: had each killed its thread, the
        // queue would have no reader left and the next batch would run inline, here.
        for _ in 0..threads() * 2 {
            let all: Vec<Option<()>> = map(vec![1u32, 2], |i| assert!(i == 0, "a bug")).await;
            assert_eq!(all, vec![None, None]);
        }
        let names = map((0..4u32).collect(), |_| {
            std::thread::current().name().unwrap_or("").to_owned()
        })
        .await;
        for n in names {
            let n = n.unwrap_or_default();
            assert!(
                n.starts_with("weft-verify-"),
                "ran on {n:?}, not on the pool"
            );
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn staged_peeks_come_before_the_second_stage_ends_and_both_keep_order() {
        use std::sync::Condvar;
        for n in [1usize, 2, 3, 50] {
            // The second stage waits (bounded) for the test to have the peeks: had the peeks
            // come only after it, every result would say so. One item runs inline, where
            // the peeks are ready when `staged` returns, so it does not wait.
            let gate = Arc::new((Mutex::new(false), Condvar::new()));
            let g = Arc::clone(&gate);
            // After one wait ran out, the others do not wait (a failure, not a long hang).
            let gave_up = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let wait = n > 1;
            let items: Vec<usize> = (0..n).collect();
            let mut s = staged(
                items.clone(),
                |i| i * 2,
                |m| *m + 1,
                move |m| {
                    if !wait {
                        return (m * 10, true);
                    }
                    if gave_up.load(std::sync::atomic::Ordering::SeqCst) {
                        return (m * 10, false);
                    }
                    let (open, cv) = &*g;
                    let guard = open.lock().unwrap();
                    let (guard, waited) = cv
                        .wait_timeout_while(guard, std::time::Duration::from_secs(10), |o| !*o)
                        .unwrap();
                    if waited.timed_out() {
                        gave_up.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                    (m * 10, *guard)
                },
            );
            let peeks = s.peeks().await;
            assert_eq!(
                peeks,
                items.iter().map(|i| Some(i * 2 + 1)).collect::<Vec<_>>()
            );
            {
                let (open, cv) = &*gate;
                *open.lock().unwrap() = true;
                cv.notify_all();
            }
            assert!(s.peeks().await.is_empty(), "peeks are handed over once");
            let results = s.results().await;
            assert_eq!(
                results,
                items
                    .iter()
                    .map(|i| Some((i * 20, true)))
                    .collect::<Vec<_>>(),
                "{n} items: every second stage ran after the peeks were back"
            );
        }
    }
}
