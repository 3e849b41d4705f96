//! Acknowledged means durable, even when the power goes: weft's database sits on a
//! filesystem that keeps written data in memory until it is fsync'ed
//! (`tools/powercut/volatilefs.py`, FUSE). Under load, right after the last acknowledgement,
//! weft (and PostgreSQL) are killed and the filesystem process too, which throws away
//! everything not synced, as a power cut does with the page cache. The filesystem is
//! mounted again on the same "disk", the database restarts (PostgreSQL replays its WAL) and
//! weft must still serve every event it acknowledged.
//!
//! SIGKILL alone (tests/it/durability.rs) cannot tell `fsync` from no `fsync`: the kernel's
//! page cache survives a killed process. This test can: weft with SQLite `synchronous =
//! OFF` (or NORMAL, in WAL mode), or PostgreSQL with `fsync = off`, loses events here.
//!
//! SQLite: the database file (and its WAL) on the volatile mount. PostgreSQL: a private
//! cluster (`initdb` and `postgres` from the PostgreSQL packages, run as the `postgres` user)
//! whose data directory is on the mount, on a free loopback port. weft's signing key stays
//! off the mount (`data_dir`): only the database is under test.
//!
//! Needs root (FUSE mounts), /dev/fuse, libfuse2 and fusepy in the venv
//! `$WEFT_POWERCUT_VENV` (default `$TMPDIR/weft-powercut-venv`; .ci/run makes it).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::both_backends;
use crate::client::{Client, bodies};
use crate::harness::{Backend, free_port, tail};

both_backends!(acknowledged_events_survive_a_power_cut);

const SEQUENTIAL: usize = 30;
const THREADS: usize = 4;
const PER_THREAD: usize = 15;

fn run(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn wait_for(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The volatile filesystem: `backing` is the disk, `mount` what processes see.
struct Volatile {
    backing: PathBuf,
    mount: PathBuf,
    daemon: Option<Child>,
}

fn is_mounted(path: &Path) -> bool {
    let wanted = path.display().to_string();
    fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(wanted.as_str()))
}

impl Volatile {
    fn new(dir: &Path) -> Volatile {
        let v = Volatile {
            backing: dir.join("disk"),
            mount: dir.join("mnt"),
            daemon: None,
        };
        fs::create_dir_all(&v.backing).expect("backing dir");
        fs::create_dir_all(&v.mount).expect("mount point");
        v
    }

    fn mount(&mut self) {
        let venv = std::env::var("WEFT_POWERCUT_VENV").unwrap_or_else(|_| {
            std::env::temp_dir()
                .join("weft-powercut-venv")
                .display()
                .to_string()
        });
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/powercut/volatilefs.py");
        let child = Command::new(Path::new(&venv).join("bin/python"))
            .arg(script)
            .arg(&self.backing)
            .arg(&self.mount)
            .stdin(Stdio::null())
            .spawn()
            .expect("start volatilefs.py (make the venv: see .ci/run)");
        self.daemon = Some(child);
        wait_for("the volatile mount", Duration::from_secs(20), || {
            if let Some(Ok(Some(status))) = self.daemon.as_mut().map(|c| c.try_wait()) {
                panic!("volatilefs.py exited: {status}");
            }
            is_mounted(&self.mount)
        });
    }

    /// The power cut: the filesystem process dies with everything not synced.
    fn cut(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let path = std::ffi::CString::new(self.mount.display().to_string()).expect("path");
        // SAFETY: umount2(2) with a valid NUL-terminated path.
        unsafe {
            libc::umount2(path.as_ptr(), libc::MNT_DETACH);
        }
    }
}

impl Drop for Volatile {
    fn drop(&mut self) {
        self.cut();
    }
}

/// A private PostgreSQL cluster with its data directory on the volatile mount. The
/// postmaster is this test's own child (run as the `postgres` user), so killing it reaps it.
struct PrivatePg {
    data: PathBuf,
    socket_dir: PathBuf,
    port: u16,
    log: PathBuf,
    postmaster: Option<Child>,
}

/// The `postgres` user's uid and gid.
fn postgres_ids() -> (u32, u32) {
    let line = fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("postgres:"))
        .map(str::to_owned)
        .expect("a postgres user (Debian's postgresql packages make it)");
    let f: Vec<&str> = line.split(':').collect();
    (f[2].parse().expect("uid"), f[3].parse().expect("gid"))
}

fn as_postgres(program: &str) -> Command {
    use std::os::unix::process::CommandExt;
    let (uid, gid) = postgres_ids();
    let mut c = Command::new(program);
    c.uid(uid).gid(gid).current_dir("/");
    c
}

impl PrivatePg {
    fn init(mount: &Path, outside: &Path) -> PrivatePg {
        let data = mount.join("pg");
        fs::create_dir_all(&data).expect("pg dir");
        let socket_dir = outside.join("pgsock");
        fs::create_dir_all(&socket_dir).expect("socket dir");
        let (uid, gid) = postgres_ids();
        for d in [&data, &socket_dir] {
            std::os::unix::fs::chown(d, Some(uid), Some(gid)).expect("chown");
        }
        run(
            as_postgres("initdb")
                .args(["-A", "trust", "-U", "postgres", "--no-instructions", "-D"])
                .arg(&data),
            "initdb",
        );
        PrivatePg {
            data,
            socket_dir,
            port: free_port(),
            log: outside.join("pg.log"),
            postmaster: None,
        }
    }

    fn start(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("pg log");
        let child = as_postgres("postgres")
            .arg("-D")
            .arg(&self.data)
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
            ])
            .arg("-k")
            .arg(&self.socket_dir)
            .args(["-c", "fsync=on", "-c", "synchronous_commit=on"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start postgres");
        self.postmaster = Some(child);
        let url = self.url("postgres");
        wait_for(
            "PostgreSQL to accept connections",
            Duration::from_secs(120),
            || {
                if let Some(Ok(Some(status))) = self.postmaster.as_mut().map(|c| c.try_wait()) {
                    panic!(
                        "postgres exited ({status}):\n{}",
                        tail(&fs::read_to_string(&self.log).unwrap_or_default(), 30)
                    );
                }
                Command::new("psql")
                    .arg(&url)
                    .args(["-qAtc", "SELECT 1"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            },
        );
    }

    fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// SIGKILL to the postmaster and every process it started.
    fn kill(&mut self) {
        let Some(mut postmaster) = self.postmaster.take() else {
            return;
        };
        let children = Command::new("pgrep")
            .args(["-P", &postmaster.id().to_string()])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let _ = postmaster.kill();
        let _ = postmaster.wait();
        let pids: Vec<i32> = children
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        for p in &pids {
            // SAFETY: kill(2) on backends of the cluster this test started.
            unsafe {
                libc::kill(*p, libc::SIGKILL);
            }
        }
        wait_for(
            "PostgreSQL's backends to die",
            Duration::from_secs(20),
            || pids.iter().all(|p| gone(*p)),
        );
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Exited (reaped, or a zombie nobody reaps).
fn gone(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next())
                == Some("Z")
        })
        .unwrap_or(true)
}

struct Weft {
    child: Option<Child>,
    config: PathBuf,
    log: PathBuf,
    base: String,
}

impl Weft {
    fn start(dir: &Path, db_url: &str) -> Weft {
        let port = free_port();
        let config = dir.join("weft.toml");
        fs::write(
            &config,
            format!(
                "server_name = \"weft.test\"\ndata_dir = \"{}\"\n\
                 [database]\nurl = \"{db_url}\"\n\
                 [listeners]\nclient = \"127.0.0.1:{port}\"\nfederation = \"\"\n\
                 [registration]\nopen = true\n[federation]\nenabled = false\n\
                 [rate_limits]\nenabled = false\n",
                dir.join("data").display()
            ),
        )
        .expect("config");
        let mut w = Weft {
            child: None,
            config,
            log: dir.join("weft.log"),
            base: format!("http://127.0.0.1:{port}"),
        };
        w.spawn();
        w
    }

    fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        self.child = Some(
            Command::new(env!("CARGO_BIN_EXE_weft"))
                .arg("serve")
                .arg("--config")
                .arg(&self.config)
                .env_remove("RUST_LOG")
                .env_remove("WEFT_CONFIG")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("spawn weft"),
        );
        let url = format!("{}/_matrix/client/versions", self.base);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(2)))
            .http_status_as_error(false)
            .build()
            .into();
        wait_for("weft to answer", Duration::from_secs(60), || {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("weft exited ({status}):\n{}", self.log_tail());
            }
            agent.get(&url).call().is_ok_and(|r| r.status() == 200)
        });
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log_tail(&self) -> String {
        tail(&fs::read_to_string(&self.log).unwrap_or_default(), 40)
    }
}

impl Drop for Weft {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("---- weft log ----\n{}\n----", self.log_tail());
        }
    }
}

fn acknowledged_events_survive_a_power_cut(backend: Backend) {
    let dir = std::env::temp_dir().join(format!(
        "weft-powercut-{}-{}",
        std::process::id(),
        free_port()
    ));
    fs::create_dir_all(&dir).expect("temp dir");
    let mut disk = Volatile::new(&dir);
    disk.mount();
    let mut pg = (backend == Backend::Postgres).then(|| {
        let mut pg = PrivatePg::init(&disk.mount, &dir);
        pg.start();
        run(
            Command::new("psql")
                .arg(pg.url("postgres"))
                .args(["-qc", "CREATE DATABASE weft"]),
            "CREATE DATABASE",
        );
        pg
    });
    let db_url = match &pg {
        Some(pg) => pg.url("weft"),
        None => format!("sqlite://{}", disk.mount.join("weft.db").display()),
    };
    let mut weft = Weft::start(&dir, &db_url);

    let mut alice = Client::new(&weft.base);
    alice.register("alice", "pw-alice");
    let mut bob = Client::new(&weft.base);
    bob.register("bob", "pw-bob");
    let room = alice.create_room(&json!({"preset": "public_chat"}));
    bob.join(&room).ok();
    let mut acked: Vec<(String, String)> = Vec::new();
    for i in 0..SEQUENTIAL {
        let body = format!("seq {i}");
        acked.push((alice.send_text(&room, &body), body));
    }
    let per_thread: Vec<Vec<(String, String)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let sender = if t % 2 == 0 {
                    alice.clone_session()
                } else {
                    bob.clone_session()
                };
                let room = room.clone();
                scope.spawn(move || {
                    (0..PER_THREAD)
                        .map(|i| {
                            let body = format!("thread {t} msg {i}");
                            (sender.send_text(&room, &body), body)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("sender thread"))
            .collect()
    });
    for v in per_thread {
        acked.extend(v);
    }

    // The power cut, right after the last acknowledgement: processes die, then whatever
    // was written but not synced.
    weft.kill();
    if let Some(pg) = pg.as_mut() {
        pg.kill();
    }
    disk.cut();
    disk.mount();
    if let Some(pg) = pg.as_mut() {
        pg.start();
    }
    weft.spawn();

    let mut reader = Client::new(&weft.base);
    let r = reader.post(
        "/login",
        &json!({"type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": "bob"},
                "password": "pw-bob"}),
    );
    assert_eq!(
        r.status, 200,
        "bob's account is gone after the power cut: {}",
        r.text
    );
    reader.login("bob", "pw-bob");
    let all = reader.all_messages(&room, 50, 100);
    let found: HashMap<&str, &Value> = all
        .iter()
        .filter_map(|e| e["event_id"].as_str().map(|id| (id, e)))
        .collect();
    let lost: Vec<&(String, String)> = acked
        .iter()
        .filter(|(id, _)| !found.contains_key(id.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged events are gone after the power cut, e.g. {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(3)]
    );
    for (id, body) in &acked {
        assert_eq!(found[id.as_str()]["content"]["body"], body.as_str());
    }
    assert_eq!(
        bodies(&all).len(),
        acked.len(),
        "messages duplicated or invented"
    );
    weft.kill();
    drop(pg);
    drop(disk);
    let _ = fs::remove_dir_all(&dir);
}
