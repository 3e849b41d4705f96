//! Real Synapse (1.163.2) as a federation peer, driven through the project's harness
//! scripts in `tools/synapse/` (install once into a venv, start an instance on loopback
//! with TLS and fast retries, register users, stop or kill it). A test that stops or kills
//! Synapse gets its own instance ([`Synapse::start`]); the others share one with whatever
//! test runs at the same time ([`Synapse::shared`], e.g. a scenario's `::sqlite` and
//! `::postgres` runs), each with users of its own ([`Synapse::register_fresh`]).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::client::Client;
use crate::harness::free_port;

/// The Python interpreter of Synapse's venv (`SYNAPSE_VENV`, as tools/synapse/common.sh).
pub fn venv_python() -> PathBuf {
    let venv = std::env::var("SYNAPSE_VENV").unwrap_or_else(|_| "/tmp/synvenv".into());
    PathBuf::from(venv).join("bin/python")
}

fn scripts() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tools/synapse")
}

/// Runs a harness script with a deadline; returns stdout, panics with stderr on failure.
fn run(script: &str, args: &[&str], data: &PathBuf, timeout: Duration) -> String {
    let mut child = Command::new(scripts().join(script))
        .args(args)
        .env("SYNAPSE_DATA", data)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {script}: {e}"));
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{script} {args:?} did not finish within {timeout:?}");
            }
        }
    }
    let out = child.wait_with_output().expect("script output");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} {args:?} failed:\n{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Installs Synapse once per test run (idempotent; a minute at most on a fresh machine).
pub fn install() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let tmp = std::env::temp_dir();
        run("install.sh", &[], &tmp, Duration::from_secs(600));
    });
}

pub struct Synapse {
    name: String,
    data: PathBuf,
    pub fed_port: u16,
    pub client_port: u16,
    running: bool,
}

impl Synapse {
    /// Starts a fresh Synapse instance.
    pub fn start() -> Synapse {
        install();
        let name = format!("syn{}_{}", std::process::id(), free_port());
        let data = std::env::temp_dir().join(format!("weft-it-synapse-{name}"));
        std::fs::create_dir_all(&data).expect("synapse data dir");
        let mut s = Synapse {
            name,
            data,
            fed_port: free_port(),
            client_port: free_port(),
            running: false,
        };
        s.start_again();
        s
    }

    /// A running instance shared with the tests that hold it at the same time; it stops
    /// when the last of them drops it. Never stop or kill a shared instance.
    pub fn shared() -> Arc<Synapse> {
        static SHARED: Mutex<Weak<Synapse>> = Mutex::new(Weak::new());
        // Held while a new instance starts, so concurrent callers wait for it.
        let mut slot = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = slot.upgrade() {
            return s;
        }
        let s = Arc::new(Synapse::start());
        *slot = Arc::downgrade(&s);
        s
    }

    /// Registers a new user `<localpart>_<n>` (unique on this instance), for tests sharing it.
    pub fn register_fresh(&self, localpart: &str) -> Client {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        self.register(&format!("{localpart}_{n}"))
    }

    pub fn server_name(&self) -> String {
        format!("localhost:{}", self.fed_port)
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// (Re)starts this instance on its data directory.
    pub fn start_again(&mut self) {
        run(
            "start.sh",
            &[
                &self.name,
                &self.fed_port.to_string(),
                &self.client_port.to_string(),
            ],
            &self.data,
            Duration::from_secs(120),
        );
        self.running = true;
    }

    /// Stops it (SIGTERM).
    pub fn stop(&mut self) {
        run(
            "stop.sh",
            &[&self.name],
            &self.data,
            Duration::from_secs(60),
        );
        self.running = false;
    }

    /// Kills it (SIGKILL).
    pub fn kill(&mut self) {
        run(
            "stop.sh",
            &[&self.name, "--kill"],
            &self.data,
            Duration::from_secs(60),
        );
        self.running = false;
    }

    /// Registers (or logs in) a user through the admin API and returns a client for them.
    pub fn register(&self, localpart: &str) -> Client {
        let out = run(
            "register.sh",
            &[&self.name, localpart, "pw"],
            &self.data,
            Duration::from_secs(60),
        );
        let v: Value = serde_json::from_str(out.trim()).expect("register.sh prints JSON");
        let token = v["access_token"].as_str().expect("access_token");
        let user = v["user_id"].as_str().expect("user_id");
        Client::with_token(&self.base(), user, token)
    }

    /// The last lines of its log (for failure messages).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.data.join(&self.name).join("homeserver.log"))
            .unwrap_or_default();
        crate::harness::tail(&text, 40)
    }
}

impl Drop for Synapse {
    fn drop(&mut self) {
        if self.running {
            let _ = Command::new(scripts().join("stop.sh"))
                .args([&self.name, "--kill"])
                .env("SYNAPSE_DATA", &self.data)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- synapse log ({}) ----\n{}\n---- end ----",
                self.name,
                self.log_tail()
            );
        }
        let _ = std::fs::remove_dir_all(&self.data);
    }
}
