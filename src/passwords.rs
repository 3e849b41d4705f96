//! Password hashing on a bounded pool.
//!
//! Every argon2id computation in the server (registration, login, the password of a
//! user-interactive-auth step, password changes, the admin commands) runs here, and nowhere
//! else. The design is about a flood of unauthenticated requests, each of which would
//! otherwise cost a memory-hard hash:
//!
//! - **A fixed set of threads** (`passwords.threads`, default one per core), started once.
//!   Each thread owns one argon2 block buffer of `passwords.memory_kib`, allocated by the
//!   first job after the thread was idle and reused by every job queued behind it, so a
//!   burst of logins allocates it once per thread (the allocator keeping freed per-thread
//!   arenas is what turned a burst of logins on tokio's 512-thread blocking pool into
//!   gigabytes of resident memory). When the queue is empty the thread frees it: a server at
//!   rest does not keep 19 MiB per thread that once hashed (the process allocates large
//!   blocks with `mmap`, so the memory goes back to the system: [`crate::alloc`]). The
//!   worst-case extra memory is `threads × memory_kib`: 2 × 19 MiB on a 2-core machine
//!   with the defaults. A stored hash made with more memory than configured (after the
//!   operator lowered the setting) grows that thread's buffer to the stored size, which is
//!   capped at [`MAX_ARGON2_MEMORY_KIB`]; hashes above the cap are refused and logged.
//! - **A bounded queue** (`passwords.queue`). A job that finds it full is refused at once,
//!   without hashing: the request gets 429 `M_LIMIT_EXCEEDED` with a `retry_after_ms`
//!   estimated from the queue length and the measured time of one hash. The caller never
//!   blocks a thread while it waits: it awaits a oneshot reply on its async task.
//! - **Lower CPU priority** (`passwords.nice`, default 10 on Linux): when hashing saturates
//!   every core, the kernel still schedules request handlers, room actors and the database
//!   writer first, so sends and `/sync` are not slowed by a login flood.
//! - **Parameters carried by the hash.** New hashes use the configured argon2id parameters
//!   (defaults: OWASP's minimum, m = 19 MiB, t = 2, p = 1) and are stored as PHC strings
//!   (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`), so each stored hash is checked with the
//!   parameters it was made with. A successful check of a hash whose parameters differ from
//!   the configured ones also returns a fresh hash with the current parameters, which the
//!   caller stores: raising the parameters later upgrades users as they log in.
//! - **Constant work for unknown users.** A login for a user that does not exist, is
//!   deactivated or has no password is checked against a dummy hash made with the
//!   configured parameters, in the same queue, so the answer takes as long as a wrong
//!   password for a real user and cannot be used to enumerate accounts.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use argon2::password_hash::{Ident, Output, ParamsString, PasswordHash, Salt, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

use crate::config::{MAX_ARGON2_MEMORY_KIB, PasswordsConfig};
use crate::error::{Error, Result};

/// Output length of new hashes, in bytes.
const OUTPUT_LEN: usize = 32;

/// What a password check found.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Wrong password, unknown user, or a stored hash that cannot be checked.
    Wrong,
    /// The password matches.
    Correct {
        /// A new hash with the configured parameters, when the stored one used others.
        rehash: Option<String>,
    },
}

enum Task {
    Hash(String),
    /// `hash: None` checks against the dummy hash (unknown user) and is always `Wrong`.
    Verify {
        password: String,
        hash: Option<String>,
    },
}

enum Outcome {
    Hashed(Result<String>),
    Verified(Verdict),
}

struct Job {
    task: Task,
    reply: tokio::sync::oneshot::Sender<Outcome>,
}

/// The pool's shared counters (also what the retry estimate is computed from).
struct Stats {
    /// Jobs accepted and not yet started.
    queued: AtomicUsize,
    /// Exponentially weighted mean duration of one job, in microseconds.
    mean_job_us: AtomicU64,
    threads: usize,
}

/// The bounded password-hashing pool. Cheap to share behind an `Arc`.
pub struct PasswordPool {
    tx: SyncSender<Job>,
    stats: Arc<Stats>,
    capacity: usize,
}

impl PasswordPool {
    /// Starts the pool's threads. Fails only on invalid parameters or if no thread can start.
    pub fn start(config: &PasswordsConfig) -> std::result::Result<Arc<Self>, String> {
        let params = config.params()?;
        let threads = config.thread_count();
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(config.queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let stats = Arc::new(Stats {
            queued: AtomicUsize::new(0),
            // A first guess until something is measured: 50 ms per hash.
            mean_job_us: AtomicU64::new(50_000),
            threads,
        });
        // The dummy hash is made once, on this thread, with the configured parameters.
        let mut blocks = vec![Block::default(); params.block_count()];
        let mut dummy_password = [0u8; 16];
        crate::random::getrandom_fill(&mut dummy_password)?;
        let dummy = Arc::new(hash_with(&params, &dummy_password, &mut blocks)?);
        drop(blocks);
        for i in 0..threads {
            let worker = Worker {
                rx: rx.clone(),
                stats: stats.clone(),
                params: params.clone(),
                dummy: dummy.clone(),
                nice: config.nice,
            };
            std::thread::Builder::new()
                .name(format!("weft-passwords-{i}"))
                .spawn(move || worker.run())
                .map_err(|e| format!("cannot start a password-hashing thread: {e}"))?;
        }
        Ok(Arc::new(Self {
            tx,
            stats,
            capacity: config.queue.max(1),
        }))
    }

    /// Hashes a new password with the configured parameters.
    pub async fn hash(&self, password: String) -> Result<String> {
        match self.submit(Task::Hash(password)).await? {
            Outcome::Hashed(r) => r,
            Outcome::Verified(_) => Err(Error::internal("password pool answered out of turn")),
        }
    }

    /// Checks a password against a stored hash; `None` (no such user, no password, or a
    /// deactivated account) costs the same work and is always [`Verdict::Wrong`].
    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<Verdict> {
        match self.submit(Task::Verify { password, hash }).await? {
            Outcome::Verified(v) => Ok(v),
            Outcome::Hashed(_) => Err(Error::internal("password pool answered out of turn")),
        }
    }

    /// Refuses at once (429) when the queue is full, so a caller can skip the work that
    /// would come before its hash (reading the user) during a flood. The queue still
    /// enforces the bound itself; this is only the cheap early answer.
    pub fn check_capacity(&self) -> Result<()> {
        if self.stats.queued.load(Ordering::Relaxed) >= self.capacity {
            return Err(self.refusal());
        }
        Ok(())
    }

    fn refusal(&self) -> Error {
        let retry = self.retry_after_ms();
        tracing::warn!(retry_after_ms = retry, "password queue full; refusing");
        Error::LimitExceeded(
            "too many password checks in progress; try again later".into(),
            retry,
        )
    }

    /// Jobs waiting for a thread right now.
    pub fn queued(&self) -> usize {
        self.stats.queued.load(Ordering::Relaxed)
    }

    async fn submit(&self, task: Task) -> Result<Outcome> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(Job { task, reply }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.stats.queued.fetch_sub(1, Ordering::Relaxed);
                return Err(self.refusal());
            }
            Err(TrySendError::Disconnected(_)) => {
                self.stats.queued.fetch_sub(1, Ordering::Relaxed);
                return Err(Error::internal("password-hashing threads have stopped"));
            }
        }
        answer
            .await
            .map_err(|_| Error::internal("a password-hashing thread stopped mid-job"))
    }

    /// How long until a queued job would start: the queue ahead of it spread over the
    /// threads, at the measured mean job time; at least 100 ms.
    fn retry_after_ms(&self) -> u64 {
        let queued = self.stats.queued.load(Ordering::Relaxed) as u64 + 1;
        let mean_ms = self.stats.mean_job_us.load(Ordering::Relaxed) / 1000;
        (queued * mean_ms.max(1) / self.stats.threads.max(1) as u64).max(100)
    }
}

struct Worker {
    rx: Arc<Mutex<Receiver<Job>>>,
    stats: Arc<Stats>,
    params: Params,
    dummy: Arc<String>,
    nice: i32,
}

impl Worker {
    fn run(self) {
        lower_priority(self.nice);
        // The one argon2 buffer of this thread, reused by every job queued behind the one
        // that allocated it, and freed once nothing is queued (see the module comment).
        let mut blocks: Vec<Block> = Vec::new();
        loop {
            if self.stats.queued.load(Ordering::Relaxed) == 0 {
                blocks = Vec::new();
            }
            let job = {
                let Ok(rx) = self.rx.lock() else { return };
                match rx.recv() {
                    Ok(job) => job,
                    Err(_) => return, // the pool was dropped
                }
            };
            self.stats.queued.fetch_sub(1, Ordering::Relaxed);
            let started = Instant::now();
            let outcome = match job.task {
                Task::Hash(password) => Outcome::Hashed(
                    hash_with(&self.params, password.as_bytes(), &mut blocks)
                        .map_err(Error::internal),
                ),
                Task::Verify { password, hash } => {
                    let (stored, known) = match &hash {
                        Some(h) => (h.as_str(), true),
                        None => (self.dummy.as_str(), false),
                    };
                    let verdict = match verify_with(stored, password.as_bytes(), &mut blocks) {
                        Ok(true) if known => Verdict::Correct {
                            rehash: self.rehash_if_outdated(stored, &password, &mut blocks),
                        },
                        Ok(_) => Verdict::Wrong,
                        Err(e) => {
                            tracing::error!(error = %e, "stored password hash cannot be checked");
                            Verdict::Wrong
                        }
                    };
                    Outcome::Verified(verdict)
                }
            };
            self.record(started);
            // The requester may have gone away (client disconnected): nothing to do.
            let _ = job.reply.send(outcome);
        }
    }

    fn rehash_if_outdated(
        &self,
        stored: &str,
        password: &str,
        blocks: &mut Vec<Block>,
    ) -> Option<String> {
        let parsed = PasswordHash::new(stored).ok()?;
        let current = Params::try_from(&parsed).ok()?;
        let same = parsed.algorithm.as_str() == "argon2id"
            && parsed.version == Some(Version::V0x13 as u32)
            && current.m_cost() == self.params.m_cost()
            && current.t_cost() == self.params.t_cost()
            && current.p_cost() == self.params.p_cost();
        if same {
            return None;
        }
        hash_with(&self.params, password.as_bytes(), blocks).ok()
    }

    fn record(&self, started: Instant) {
        let took = started.elapsed().as_micros() as u64;
        let old = self.stats.mean_job_us.load(Ordering::Relaxed);
        // Weight 1/8 for the newest sample.
        self.stats
            .mean_job_us
            .store(old - old / 8 + took / 8, Ordering::Relaxed);
    }
}

/// Makes the calling thread yield to the rest of the process when cores are contended.
fn lower_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    if nice != 0 {
        // SAFETY: gettid and setpriority take and return plain integers; on Linux,
        // PRIO_PROCESS with a thread ID sets that thread's nice value only.
        let rc = unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, nice)
        };
        if rc != 0 {
            tracing::warn!(nice, "could not lower the password threads' priority");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

/// Hashes with `params` into a PHC string, using (and if needed growing) `blocks`.
fn hash_with(
    params: &Params,
    password: &[u8],
    blocks: &mut Vec<Block>,
) -> std::result::Result<String, String> {
    let mut salt = [0u8; Salt::RECOMMENDED_LENGTH];
    crate::random::getrandom_fill(&mut salt)?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    let mut out = [0u8; OUTPUT_LEN];
    let params = with_output_len(params, OUTPUT_LEN)?;
    let mut salt_bytes = [0u8; Salt::MAX_LENGTH];
    let salt_raw = salt
        .as_salt()
        .decode_b64(&mut salt_bytes)
        .map_err(|e| e.to_string())?;
    compute(
        Algorithm::Argon2id,
        Version::V0x13,
        &params,
        password,
        salt_raw,
        &mut out,
        blocks,
    )?;
    let phc = PasswordHash {
        algorithm: Ident::new("argon2id").map_err(|e| e.to_string())?,
        version: Some(Version::V0x13 as u32),
        params: ParamsString::try_from(&params).map_err(|e| e.to_string())?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(|e| e.to_string())?),
    };
    Ok(phc.to_string())
}

/// Checks `password` against a PHC string (any argon2 variant and version it names).
fn verify_with(
    stored: &str,
    password: &[u8],
    blocks: &mut Vec<Block>,
) -> std::result::Result<bool, String> {
    let parsed = PasswordHash::new(stored).map_err(|e| format!("not a PHC string: {e}"))?;
    let algorithm = Algorithm::try_from(parsed.algorithm).map_err(|e| e.to_string())?;
    let version = match parsed.version {
        Some(v) => Version::try_from(v).map_err(|e| e.to_string())?,
        None => Version::V0x10,
    };
    let params = Params::try_from(&parsed).map_err(|e| e.to_string())?;
    let expected = parsed.hash.ok_or("the stored hash has no output")?;
    let salt = parsed.salt.ok_or("the stored hash has no salt")?;
    let mut salt_bytes = [0u8; Salt::MAX_LENGTH];
    let salt_raw = salt
        .decode_b64(&mut salt_bytes)
        .map_err(|e| e.to_string())?;
    let mut out = vec![0u8; expected.len()];
    compute(
        algorithm, version, &params, password, salt_raw, &mut out, blocks,
    )?;
    // `Output` compares in constant time.
    Ok(Output::new(&out).map_err(|e| e.to_string())? == expected)
}

fn with_output_len(params: &Params, len: usize) -> std::result::Result<Params, String> {
    Params::new(params.m_cost(), params.t_cost(), params.p_cost(), Some(len))
        .map_err(|e| e.to_string())
}

fn compute(
    algorithm: Algorithm,
    version: Version,
    params: &Params,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
    blocks: &mut Vec<Block>,
) -> std::result::Result<(), String> {
    if params.m_cost() > MAX_ARGON2_MEMORY_KIB {
        return Err(format!(
            "argon2 memory {} KiB is above the limit of {MAX_ARGON2_MEMORY_KIB} KiB",
            params.m_cost()
        ));
    }
    let needed = params.block_count();
    if blocks.len() < needed {
        blocks.resize(needed, Block::default());
    }
    Argon2::new(algorithm, version, params.clone())
        .hash_password_into_with_memory(password, salt, out, &mut blocks[..needed])
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> PasswordsConfig {
        PasswordsConfig {
            threads: 1,
            queue: 4,
            memory_kib: 256,
            iterations: 1,
            parallelism: 1,
            nice: 0,
        }
    }

    fn blocks() -> Vec<Block> {
        Vec::new()
    }

    #[test]
    fn hash_carries_its_parameters_and_verifies() {
        let params = small().params().unwrap();
        let h = hash_with(&params, b"correct horse", &mut blocks()).unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=256,t=1,p=1$"), "{h}");
        assert!(verify_with(&h, b"correct horse", &mut blocks()).unwrap());
        assert!(!verify_with(&h, b"wrong", &mut blocks()).unwrap());
    }

    #[test]
    fn hashes_from_the_argon2_crate_defaults_still_verify() {
        // What weft stored before the pool: the argon2 crate's own PHC output.
        use argon2::password_hash::PasswordHasher;
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let old = Argon2::default()
            .hash_password(b"old password", &salt)
            .unwrap()
            .to_string();
        assert!(verify_with(&old, b"old password", &mut blocks()).unwrap());
        assert!(!verify_with(&old, b"other", &mut blocks()).unwrap());
    }

    #[test]
    fn unusable_stored_hashes_are_errors_not_panics() {
        for bad in [
            "",
            "not a hash",
            "$argon2id$v=19$m=256,t=1,p=1$",
            "$argon2id$v=19$m=256,t=1,p=1$c2FsdHNhbHQ",
            "$bcrypt$v=19$m=256,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
            "$argon2id$v=99$m=256,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
            // Asks for 4 TiB of memory: refused before any allocation.
            "$argon2id$v=19$m=4294967295,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
        ] {
            assert!(verify_with(bad, b"x", &mut blocks()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn buffer_is_reused_and_grown_only_when_needed() {
        let params = small().params().unwrap();
        let mut b = blocks();
        hash_with(&params, b"a", &mut b).unwrap();
        let ptr = b.as_ptr();
        assert_eq!(b.len(), params.block_count());
        hash_with(&params, b"b", &mut b).unwrap();
        assert_eq!(b.as_ptr(), ptr, "the same buffer serves the next job");
        let bigger = Params::new(512, 1, 1, None).unwrap();
        hash_with(&bigger, b"c", &mut b).unwrap();
        assert_eq!(b.len(), bigger.block_count());
    }

    #[tokio::test]
    async fn pool_verdicts_unknown_users_and_rehash() {
        let pool = PasswordPool::start(&small()).unwrap();
        let h = pool.hash("pw".into()).await.unwrap();
        assert_eq!(
            pool.verify("pw".into(), Some(h.clone())).await.unwrap(),
            Verdict::Correct { rehash: None }
        );
        assert_eq!(
            pool.verify("nope".into(), Some(h)).await.unwrap(),
            Verdict::Wrong
        );
        // An unknown user is checked against the dummy hash: never correct, whatever the
        // password (including the empty one).
        for p in ["", "pw", "anything"] {
            assert_eq!(pool.verify(p.into(), None).await.unwrap(), Verdict::Wrong);
        }
        // A hash made with other parameters verifies and comes back upgraded.
        let old = hash_with(&Params::new(128, 2, 1, None).unwrap(), b"pw", &mut blocks()).unwrap();
        let Verdict::Correct { rehash: Some(new) } =
            pool.verify("pw".into(), Some(old)).await.unwrap()
        else {
            panic!("outdated hash was not upgraded");
        };
        assert!(new.starts_with("$argon2id$v=19$m=256,t=1,p=1$"), "{new}");
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once_with_retry_after() {
        let mut config = small();
        config.queue = 1;
        // Slow enough that the queue is still full when the refusals are made.
        config.memory_kib = 8 * 1024;
        config.iterations = 8;
        let pool = PasswordPool::start(&config).unwrap();
        let jobs: Vec<_> = (0..16)
            .map(|i| {
                let pool = pool.clone();
                tokio::spawn(async move { pool.hash(format!("pw{i}")).await })
            })
            .collect();
        let mut hashed = 0;
        let mut refused = 0;
        for j in jobs {
            match j.await.unwrap() {
                Ok(_) => hashed += 1,
                Err(Error::LimitExceeded(_, retry)) => {
                    assert!(retry >= 100, "retry_after_ms {retry}");
                    refused += 1;
                }
                Err(e) => panic!("unexpected error {e}"),
            }
        }
        // One thread plus one queue slot: at most a few can be in the pool at once.
        assert!(hashed >= 1, "nothing was hashed");
        assert!(
            refused >= 1,
            "a full queue refused nothing ({hashed} hashed)"
        );
        assert_eq!(hashed + refused, 16);
        assert_eq!(pool.queued(), 0);
    }
}
