//! A tiny harness for the Linearized Matrix tests: weft processes on loopback with plain-HTTP
//! federation, each with a temporary data directory, a fresh database (SQLite or PostgreSQL,
//! [`crate::harness::TestDb`]) and free ports, and a blocking
//! client for the client API. Dropping a [`Weft`] kills its process; a failing test prints
//! the tail of every log first.

use std::fs;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Backend, TestDb};

pub const LM: &str = "org.matrix.i-d.ralston-mimi-linearized-matrix.02";

/// A loopback port nobody listens on now (kernel-chosen, never a fixed one).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn unique_dir() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("weft-lm-{}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A weft server under test.
pub struct Weft {
    /// `localhost:PORT` (the federation port).
    pub name: String,
    /// `http://127.0.0.1:PORT` of the client API.
    pub client: String,
    pub fed_port: u16,
    dir: PathBuf,
    config: PathBuf,
    child: Option<Child>,
    starts: u32,
    /// Dropped after the process is killed.
    db: TestDb,
}

impl Weft {
    pub fn start(backend: Backend) -> Weft {
        Self::start_with(backend, "")
    }

    /// Starts a server; `extra` is appended to its `[federation]` table.
    pub fn start_with(backend: Backend, extra_federation: &str) -> Weft {
        let dir = unique_dir();
        let db = TestDb::new(backend, &dir);
        let fed_port = free_port();
        let client_port = free_port();
        let name = format!("localhost:{fed_port}");
        let config = dir.join("weft.toml");
        // Quick retries unless the test sets its own.
        let retry = if extra_federation.contains("retry_") {
            ""
        } else {
            "retry_min_ms = 200\nretry_max_ms = 1000\n"
        };
        let text = format!(
            "server_name = \"{name}\"\n\
             data_dir = \"{d}\"\n\
             {database}\
             [listeners]\nclient = \"127.0.0.1:{client_port}\"\nfederation = \"127.0.0.1:{fed_port}\"\n\
             [registration]\nopen = true\n\
             [federation]\nplain_http = true\nverify_tls = false\n\
             request_timeout_ms = 10000\n{retry}{extra_federation}\n\
             [outbound]\nallowed_addresses = [\"127.0.0.0/8\"]\n\
             [rate_limits]\nenabled = false\n\
             [logging]\nfilter = \"info,weft=debug\"\n",
            d = dir.display(),
            database = db.toml(),
        );
        fs::write(&config, text).expect("write config");
        let mut w = Weft {
            name,
            client: format!("http://127.0.0.1:{client_port}"),
            fed_port,
            dir,
            config,
            child: None,
            starts: 0,
            db,
        };
        w.spawn();
        w
    }

    fn spawn(&mut self) {
        let log =
            fs::File::create(self.dir.join(format!("weft-{}.log", self.starts))).expect("log file");
        self.starts += 1;
        let child = Command::new(env!("CARGO_BIN_EXE_weft"))
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .env_remove("RUST_LOG")
            .env_remove("WEFT_CONFIG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn weft");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = get(&format!("{}/_matrix/client/versions", self.client), None) {
                break;
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("weft exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "weft did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the process (SIGKILL: nothing flushed, nothing said to peers).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the process again on the same data and ports.
    pub fn restart(&mut self) {
        self.kill();
        // The old sockets may take a moment to be released.
        std::thread::sleep(Duration::from_millis(300));
        self.spawn();
    }

    pub fn log(&self) -> String {
        (0..self.starts)
            .map(|i| fs::read_to_string(self.dir.join(format!("weft-{i}.log"))).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Fails the test if the server panicked, or if, as a participant, it found an event of
    /// the hub that breaks the auth rules (hub and participants must agree on every rule).
    pub fn assert_quiet(&self) {
        let log = self.log();
        for bad in ["panicked", "fails the auth rules here"] {
            assert!(!log.contains(bad), "{} logged {bad:?}:\n{log}", self.name);
        }
    }

    /// Drops everything this server still owes `destination` (as if it had given up).
    pub fn drop_outbound_queue(&self, destination: &str) -> usize {
        self.db.execute(
            "DELETE FROM outbound_queue WHERE destination = ?",
            &[destination],
        )
    }

    /// Registers `localpart` (password `pw-<localpart>`).
    pub fn register(&self, localpart: &str) -> User {
        let (status, body) = post(
            &format!("{}/_matrix/client/v3/register", self.client),
            None,
            &json!({"username": localpart, "password": format!("pw-{localpart}"),
                    "auth": {"type": "m.login.dummy"}}),
        );
        assert_eq!(status, 200, "register {localpart}: {body}");
        User {
            base: self.client.clone(),
            token: body["access_token"].as_str().expect("token").to_owned(),
            id: body["user_id"].as_str().expect("user_id").to_owned(),
            txn: AtomicU64::new(0),
        }
    }

    /// Creates an admin with `weft register-user --admin` and logs in.
    pub fn admin(&self, localpart: &str) -> User {
        let out = Command::new(env!("CARGO_BIN_EXE_weft"))
            .args(["register-user", "--config"])
            .arg(&self.config)
            .args([localpart, "--password", "pw-admin", "--admin"])
            .output()
            .expect("weft register-user");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (status, body) = post(
            &format!("{}/_matrix/client/v3/login", self.client),
            None,
            &json!({"type": "m.login.password",
                    "identifier": {"type": "m.id.user", "user": localpart},
                    "password": "pw-admin"}),
        );
        assert_eq!(status, 200, "login: {body}");
        User {
            base: self.client.clone(),
            token: body["access_token"].as_str().expect("token").to_owned(),
            id: body["user_id"].as_str().expect("user_id").to_owned(),
            txn: AtomicU64::new(0),
        }
    }
}

impl Drop for Weft {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "---- log of {} ({}) ----\n{}\n---- end ----",
                self.name,
                self.dir.display(),
                lines[lines.len().saturating_sub(60)..].join("\n")
            );
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(60)))
        .http_status_as_error(false)
        .build()
        .into()
}

fn answer(
    r: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<(u16, Value), String> {
    let mut r = r.map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap_or_default();
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

pub fn get(url: &str, auth: Option<&str>) -> Result<(u16, Value), String> {
    let mut rq = agent().get(url);
    if let Some(a) = auth {
        rq = rq.header("Authorization", a);
    }
    answer(rq.call())
}

pub fn send_json(method: &str, url: &str, auth: Option<&str>, body: &Value) -> (u16, Value) {
    let a = agent();
    let text = body.to_string();
    let rq = match method {
        "PUT" => a.put(url),
        "POST" => a.post(url),
        other => panic!("method {other}"),
    };
    let rq = rq.header("Content-Type", "application/json");
    let rq = match auth {
        Some(h) => rq.header("Authorization", h),
        None => rq,
    };
    answer(rq.send(text.as_bytes())).unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

pub fn post(url: &str, auth: Option<&str>, body: &Value) -> (u16, Value) {
    send_json("POST", url, auth, body)
}

/// Escapes one path segment.
pub fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A logged-in user of a server under test.
pub struct User {
    pub base: String,
    pub token: String,
    pub id: String,
    txn: AtomicU64,
}

impl User {
    fn auth(&self) -> String {
        format!("Bearer {}", self.token)
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        get(
            &format!("{}/_matrix/client/v3{path}", self.base),
            Some(&self.auth()),
        )
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    pub fn get_raw(&self, full_path: &str) -> (u16, Value) {
        get(&format!("{}{full_path}", self.base), Some(&self.auth()))
            .unwrap_or_else(|e| panic!("GET {full_path}: {e}"))
    }

    pub fn post(&self, path: &str, body: Value) -> (u16, Value) {
        post(
            &format!("{}/_matrix/client/v3{path}", self.base),
            Some(&self.auth()),
            &body,
        )
    }

    pub fn create_lm_room(&self, invite: &[&str], preset: &str) -> String {
        let (s, b) = self.post(
            "/createRoom",
            json!({"room_version": LM, "invite": invite, "preset": preset}),
        );
        assert_eq!(s, 200, "createRoom: {b}");
        b["room_id"].as_str().expect("room_id").to_owned()
    }

    pub fn join(&self, room: &str) {
        let (s, b) = self.post(&format!("/join/{}", enc(room)), json!({}));
        assert_eq!(s, 200, "{} joins {room}: {b}", self.id);
    }

    /// Sends a message; the answer's status and body.
    pub fn try_say(&self, room: &str, body: &str) -> (u16, Value) {
        let n = self.txn.fetch_add(1, Ordering::Relaxed);
        send_json(
            "PUT",
            &format!(
                "{}/_matrix/client/v3/rooms/{}/send/m.room.message/t{n}",
                self.base,
                enc(room)
            ),
            Some(&self.auth()),
            &json!({"msgtype": "m.text", "body": body}),
        )
    }

    /// Sends a message with a given transaction ID.
    pub fn say_in_txn(&self, room: &str, body: &str, txn: &str) -> (u16, Value) {
        send_json(
            "PUT",
            &format!(
                "{}/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
                self.base,
                enc(room),
                enc(txn)
            ),
            Some(&self.auth()),
            &json!({"msgtype": "m.text", "body": body}),
        )
    }

    /// Sends a message and returns its event ID.
    pub fn say(&self, room: &str, body: &str) -> String {
        let (s, b) = self.try_say(room, body);
        assert_eq!(s, 200, "{} says {body:?}: {b}", self.id);
        b["event_id"].as_str().expect("event_id").to_owned()
    }

    /// The room's whole timeline as this user's server shows it, oldest first:
    /// `(event_id, sender, type, body or "membership:target")`.
    pub fn timeline(&self, room: &str) -> Vec<(String, String, String, String)> {
        let mut out = Vec::new();
        let mut from: Option<String> = None;
        loop {
            let mut path = format!("/rooms/{}/messages?dir=b&limit=100", enc(room));
            if let Some(f) = &from {
                path.push_str(&format!("&from={}", enc(f)));
            }
            let (s, b) = self.get(&path);
            assert_eq!(s, 200, "messages: {b}");
            let chunk = b["chunk"].as_array().cloned().unwrap_or_default();
            for e in &chunk {
                // Messages show their body; membership events "membership:target".
                let what = match e["content"]["membership"].as_str() {
                    Some(m) => format!("{m}:{}", e["state_key"].as_str().unwrap_or_default()),
                    None => e["content"]["body"].as_str().unwrap_or_default().to_owned(),
                };
                out.push((
                    e["event_id"].as_str().unwrap_or_default().to_owned(),
                    e["sender"].as_str().unwrap_or_default().to_owned(),
                    e["type"].as_str().unwrap_or_default().to_owned(),
                    what,
                ));
            }
            match b["end"].as_str() {
                Some(end) if !chunk.is_empty() => from = Some(end.to_owned()),
                _ => break,
            }
        }
        out.reverse();
        out
    }

    /// Waits (bounded) until `ok` holds for this user's timeline of the room.
    pub fn wait_timeline(
        &self,
        room: &str,
        what: &str,
        ok: impl Fn(&[(String, String, String, String)]) -> bool,
    ) -> Vec<(String, String, String, String)> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let t = self.timeline(room);
            if ok(&t) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "{} never saw {what}; timeline:\n{:#?}",
                self.id,
                t
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until this user is invited to `room`.
    pub fn wait_invite(&self, room: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, b) = self.get("/sync?timeout=0");
            if b["rooms"]["invite"].get(room).is_some() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} was never invited to {room}",
                self.id
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
