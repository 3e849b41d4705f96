//! The server under test: the built `weft` binary, run as a subprocess on a free loopback
//! port with a temporary data directory and a fresh database (a SQLite file in the data
//! directory, or a new PostgreSQL database that is dropped afterwards).
//!
//! Every wait is bounded. Dropping a [`Server`] kills the process and removes what it made;
//! when the test is failing, the tail of the server's log is printed first.
//!
//! PostgreSQL: `WEFT_TEST_PG` names the server (default `postgres://postgres@127.0.0.1:5432`,
//! trust auth); the harness connects to its `test` database to create and drop
//! `weft_it_<random>` databases.

use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;

use crate::client::Client;

/// Which database the server under test uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// How long the server may take to answer `/versions` after it is spawned.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a graceful stop (SIGTERM) may take before the harness gives up.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Options for starting a server.
#[derive(Debug, Clone)]
pub struct Options {
    pub registration_open: bool,
    /// Extra TOML appended to the generated config (top-level tables only).
    pub extra_toml: String,
    /// Turn federation on (TLS listener on loopback, self-signed, fast retries).
    pub federation: Option<Federation>,
    /// Extra keys for the `[federation]` table (when federation is on).
    pub extra_federation: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            registration_open: true,
            extra_toml: String::new(),
            federation: None,
            extra_federation: String::new(),
        }
    }
}

/// Federation settings of a server under test.
#[derive(Debug, Clone, Default)]
pub struct Federation {
    /// The federation listener's port (free port if `None`).
    pub listen_port: Option<u16>,
    /// The port in the server name, when peers must go through something else (a proxy).
    pub advertised_port: Option<u16>,
    /// `key = value` lines for the `[federation]` table; a key given here replaces the
    /// harness's test default (e.g. production retry timings instead of fast ones).
    pub settings: String,
}

/// A fresh database for one server under test: a SQLite file path, or a new PostgreSQL
/// database that is dropped with this value. The other harnesses (hostile peer, Linearized,
/// power cut) use it too, so every scenario can run on both backends.
pub struct TestDb {
    kind: Database,
}

enum Database {
    Sqlite(PathBuf),
    Postgres { name: String, url: String },
}

impl TestDb {
    /// A new database; for SQLite, the file `weft.db` in `dir` (not created yet).
    pub fn new(backend: Backend, dir: &std::path::Path) -> TestDb {
        let kind = match backend {
            Backend::Sqlite => Database::Sqlite(dir.join("weft.db")),
            Backend::Postgres => {
                let name = unique("weft_it_");
                pg_admin()
                    .batch_execute(&format!("CREATE DATABASE {name}"))
                    .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
                let url = format!("{}/{name}", pg_base_url());
                Database::Postgres { name, url }
            }
        };
        TestDb { kind }
    }

    /// The `[database] url` for weft's config.
    pub fn url(&self) -> String {
        match &self.kind {
            Database::Sqlite(path) => format!("sqlite://{}", path.display()),
            Database::Postgres { url, .. } => url.clone(),
        }
    }

    /// The TOML `[database]` table naming this database.
    pub fn toml(&self) -> String {
        format!("[database]\nurl = \"{}\"\n", self.url())
    }

    /// Runs one SQL statement with text parameters (`?` placeholders; rewritten to `$n` on
    /// PostgreSQL) and returns the number of rows it touched.
    pub fn execute(&self, sql: &str, params: &[&str]) -> usize {
        match &self.kind {
            Database::Sqlite(path) => {
                let mut c = diesel::SqliteConnection::establish(&path.display().to_string())
                    .expect("open the SQLite database");
                c.batch_execute("PRAGMA busy_timeout = 10000;")
                    .expect("busy timeout");
                let mut q = diesel::sql_query(sql).into_boxed::<diesel::sqlite::Sqlite>();
                for p in params {
                    q = q.bind::<diesel::sql_types::Text, _>(p.to_string());
                }
                q.execute(&mut c).expect("execute")
            }
            Database::Postgres { url, .. } => {
                let mut c = diesel::PgConnection::establish(url).expect("connect to PostgreSQL");
                let mut q = diesel::sql_query(pg_placeholders(sql)).into_boxed::<diesel::pg::Pg>();
                for p in params {
                    q = q.bind::<diesel::sql_types::Text, _>(p.to_string());
                }
                q.execute(&mut c).expect("execute")
            }
        }
    }
}

/// `?` placeholders to PostgreSQL's `$1, $2, ...` (the harness's queries have no `?` in
/// string literals).
fn pg_placeholders(sql: &str) -> String {
    let mut out = String::new();
    let mut n = 0;
    for ch in sql.chars() {
        if ch == '?' {
            n += 1;
            out.push_str(&format!("${n}"));
        } else {
            out.push(ch);
        }
    }
    out
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Database::Postgres { name, .. } = &self.kind {
            // FORCE: a pool connection may linger for a moment after SIGKILL.
            let _ =
                pg_admin().batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        }
    }
}

/// A running (or stopped, between restarts) weft process.
pub struct Server {
    pub backend: Backend,
    pub server_name: String,
    /// The federation listener's port, when federation is on.
    pub fed_port: Option<u16>,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    dir: PathBuf,
    config_path: PathBuf,
    log_path: PathBuf,
    database: TestDb,
    options: Options,
    child: Option<Child>,
    /// Number of times the process was started (log files are kept per start).
    starts: u32,
    /// The client port; kept across restarts so clients keep working.
    port: Option<u16>,
    /// Extra PostgreSQL databases made for this server (dropped with it).
    extra_pg: Vec<TestDb>,
}

fn pg_base_url() -> String {
    std::env::var("WEFT_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A name unique across the processes and threads of this test run.
fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}{}_{n}_{nanos:x}", std::process::id())
}

/// A loopback port nobody listens on right now (the kernel's ephemeral range, so never the
/// fixed ranges other tools here use).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

fn pg_admin() -> diesel::PgConnection {
    let url = format!("{}/test", pg_base_url());
    diesel::PgConnection::establish(&url)
        .unwrap_or_else(|e| panic!("cannot connect to PostgreSQL at {url}: {e}"))
}

impl Server {
    /// Starts a server with open registration.
    pub fn start(backend: Backend) -> Server {
        Self::start_with(backend, Options::default())
    }

    pub fn start_with(backend: Backend, options: Options) -> Server {
        let dir = std::env::temp_dir().join(unique("weft-it-"));
        fs::create_dir_all(&dir).expect("create temp dir");
        let database = TestDb::new(backend, &dir);
        let fed_ports = options.federation.as_ref().map(|f| {
            let listen = f.listen_port.unwrap_or_else(free_port);
            (listen, f.advertised_port.unwrap_or(listen))
        });
        let mut server = Server {
            backend,
            server_name: match fed_ports {
                Some((_, advertised)) => format!("localhost:{advertised}"),
                None => "weft.test".into(),
            },
            fed_port: fed_ports.map(|p| p.0),
            base: String::new(),
            config_path: dir.join("weft.toml"),
            log_path: dir.join("weft-0.log"),
            dir,
            database,
            options,
            child: None,
            starts: 0,
            port: None,
            extra_pg: Vec::new(),
        };
        server.spawn();
        server
    }

    fn write_config(&self, port: u16) {
        let db_url = self.database.url();
        let (fed_listener, fed_section) = match self.fed_port {
            Some(p) => {
                // Keys given by the test (`Federation::settings`, `extra_federation`)
                // replace the harness's test defaults.
                let ours = self
                    .options
                    .federation
                    .as_ref()
                    .map(|f| f.settings.clone())
                    .unwrap_or_default()
                    + "\n"
                    + &self.options.extra_federation;
                let key = |line: &str| line.split('=').next().unwrap_or("").trim().to_owned();
                let given: Vec<String> = ours.lines().map(key).collect();
                let mut section: String = [
                    "enabled = true",
                    "verify_tls = false",
                    "retry_min_ms = 200",
                    "retry_max_ms = 2000",
                    "request_timeout_ms = 15000",
                ]
                .iter()
                .filter(|l| !given.contains(&key(l)))
                .map(|l| format!("{l}\n"))
                .collect();
                for l in ours.lines().filter(|l| !l.trim().is_empty()) {
                    section.push_str(l.trim());
                    section.push('\n');
                }
                (format!("127.0.0.1:{p}"), section)
            }
            None => (String::new(), "enabled = false\n".to_owned()),
        };
        // Loopback peers are allowed by name (the outbound address policy refuses them
        // otherwise); rate limits are off. A test that sets either section itself wins.
        let extra = &self.options.extra_toml;
        let mut defaults = String::new();
        if !extra.contains("[outbound]") {
            defaults.push_str("[outbound]\nallowed_addresses = [\"127.0.0.0/8\", \"::1\"]\n");
        }
        if !extra.contains("[rate_limits]") {
            defaults.push_str("[rate_limits]\nenabled = false\n");
        }
        let text = format!(
            "server_name = \"{name}\"\n\
             data_dir = \"{dir}\"\n\
             [database]\nurl = \"{db_url}\"\n\
             [listeners]\nclient = \"127.0.0.1:{port}\"\nfederation = \"{fed_listener}\"\n\
             [registration]\nopen = {open}\n\
             [federation]\n{fed_section}\
             {defaults}\
             [logging]\nfilter = \"info,weft=debug,ruma_state_res=warn\"\n\
             {extra}\n",
            name = self.server_name,
            dir = self.dir.display(),
            open = self.options.registration_open,
        );
        fs::write(&self.config_path, text).expect("write config");
    }

    /// Spawns the process and waits until it answers. The first start picks a free port
    /// (another one if it was taken meanwhile); restarts reuse it, retrying while the old
    /// process's socket is released.
    fn spawn(&mut self) {
        assert!(self.child.is_none(), "server already running");
        for _attempt in 0..5 {
            let port = self.port.unwrap_or_else(free_port);
            self.write_config(port);
            self.log_path = self.dir.join(format!("weft-{}.log", self.starts));
            self.starts += 1;
            let log = fs::File::create(&self.log_path).expect("create log");
            let child = Command::new(env!("CARGO_BIN_EXE_weft"))
                .arg("serve")
                .arg("--config")
                .arg(&self.config_path)
                .env_remove("RUST_LOG")
                .env_remove("WEFT_CONFIG")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone log handle"))
                .stderr(log)
                .spawn()
                .expect("spawn weft");
            self.child = Some(child);
            self.base = format!("http://127.0.0.1:{port}");
            match self.wait_ready() {
                Ok(()) => {
                    self.port = Some(port);
                    return;
                }
                Err(log) if log.contains("cannot listen") => {
                    self.child = None;
                    if self.port.is_some() {
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    continue;
                }
                Err(log) => panic!("weft did not start:\n{log}"),
            }
        }
        panic!("weft could not bind a port in 5 attempts:\n{}", self.log());
    }

    /// Polls `/versions` (bounded) until the server answers; on failure returns the log.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(2)))
            .http_status_as_error(false)
            .build()
            .into();
        let url = format!("{}/_matrix/client/versions", self.base);
        let mut step = Duration::from_millis(10);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!("(exited with {status})\n{}", self.log()));
            }
            // Ours is listening (its log says so) and answers; another process that happens
            // to hold the port must not pass for it.
            if self.log().contains("listening")
                && let Ok(r) = agent.get(&url).call()
                && r.status() == 200
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(format!("(no answer in {START_TIMEOUT:?})\n{}", self.log()));
            }
            std::thread::sleep(step);
            step = (step * 2).min(Duration::from_millis(200));
        }
    }

    /// A new, empty PostgreSQL database `(name, url)`; dropped with this server (or, after
    /// [`Server::use_postgres`], as the server's own database).
    pub fn new_pg_database(&mut self) -> (String, String) {
        let db = TestDb::new(Backend::Postgres, &self.dir);
        let Database::Postgres { name, url } = &db.kind else {
            unreachable!("TestDb::new(Postgres) makes a PostgreSQL database")
        };
        let out = (name.clone(), url.clone());
        self.extra_pg.push(db);
        out
    }

    /// Drops the server's PostgreSQL database under it (terminating its connections): the
    /// database outage of a readiness test.
    pub fn drop_database_now(&self) {
        let Database::Postgres { name, .. } = &self.database.kind else {
            panic!("drop_database_now needs PostgreSQL");
        };
        pg_admin()
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .unwrap_or_else(|e| panic!("DROP DATABASE {name}: {e}"));
    }

    /// Points the (stopped) server at a PostgreSQL database made by
    /// [`Server::new_pg_database`]; the next start uses it.
    pub fn use_postgres(&mut self, name: &str) {
        assert!(self.child.is_none(), "stop the server first");
        let at = self
            .extra_pg
            .iter()
            .position(|d| matches!(&d.kind, Database::Postgres { name: n, .. } if n == name))
            .expect("a database made by new_pg_database");
        self.database = self.extra_pg.remove(at);
        self.backend = Backend::Postgres;
    }

    /// The server's data directory (keys, SQLite database).
    pub fn data_dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// The log of the current (or last) run.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Every log of this server, all runs.
    pub fn all_logs(&self) -> String {
        (0..self.starts)
            .map(|i| fs::read_to_string(self.dir.join(format!("weft-{i}.log"))).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Kills the process with SIGKILL (no chance to flush or clean up) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the process with SIGTERM and waits (bounded) for it to exit.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill(2) on the pid of a child we have not reaped yet.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("weft did not stop within {STOP_TIMEOUT:?} of SIGTERM");
                }
            }
        }
    }

    /// Starts the process again on the same data directory and database.
    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Fails the test if any run of the server panicked.
    pub fn assert_no_panics(&self) {
        let logs = self.all_logs();
        assert!(
            !logs.contains("panicked"),
            "the server panicked:\n{}",
            tail(&logs, 60)
        );
    }

    /// A client with no access token.
    pub fn anonymous(&self) -> Client {
        Client::new(&self.base)
    }

    /// Registers `localpart` (password `pw-<localpart>`) through `/register`.
    pub fn register(&self, localpart: &str) -> Client {
        let mut c = self.anonymous();
        c.register(localpart, &format!("pw-{localpart}"));
        c
    }

    /// A server admin made with `weft register-user --admin`, logged in.
    pub fn admin(&self, localpart: &str) -> Client {
        let pw = format!("pw-{localpart}");
        let (ok, out, err) = self.cli_input(
            &["register-user", localpart, "--admin"],
            Some(&format!("{pw}\n")),
        );
        assert!(ok, "register-user --admin failed: {out} {err}");
        let mut c = self.anonymous();
        c.login(localpart, &pw);
        c
    }

    /// Waits (bounded) until `n` `/sync` requests are parked on a wake-up, as the server's
    /// notifier counts them (`/_weft/admin/v1/sync_waiters`, asked as `admin`): a wake-up
    /// test sends only then, so the event cannot be read by the request's first pass.
    #[track_caller]
    pub fn wait_parked_syncs(&self, admin: &Client, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = admin.get("/_weft/admin/v1/sync_waiters");
            assert_eq!(r.status, 200, "sync_waiters: {}", r.text);
            if r.body["parked"].as_u64() == Some(n) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{n} parked /sync request(s) never showed: {}",
                r.text
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The stored PDU JSON of every event of a room, in stream order, as
    /// `(event_id column, json)`.
    pub fn stored_events(&self, room_id: &str) -> Vec<(String, String)> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = diesel::sql_types::Text)]
            event_id: String,
            #[diesel(sql_type = diesel::sql_types::Text)]
            json: String,
        }
        let rows: Vec<Row> = match &self.database.kind {
            Database::Sqlite(path) => {
                let mut c = diesel::SqliteConnection::establish(&path.display().to_string())
                    .expect("open the SQLite database");
                diesel::sql_query(
                    "SELECT event_id, json FROM events WHERE room_id = ? ORDER BY stream_ordering",
                )
                .bind::<diesel::sql_types::Text, _>(room_id)
                .load(&mut c)
                .expect("read events")
            }
            Database::Postgres { url, .. } => {
                let mut c = diesel::PgConnection::establish(url).expect("connect to PostgreSQL");
                diesel::sql_query(
                    "SELECT event_id, json FROM events WHERE room_id = $1 ORDER BY stream_ordering",
                )
                .bind::<diesel::sql_types::Text, _>(room_id)
                .load(&mut c)
                .expect("read events")
            }
        };
        rows.into_iter().map(|r| (r.event_id, r.json)).collect()
    }

    /// Runs a query returning one text column named `v`, with one text parameter written
    /// `?` (turned into `$1` for PostgreSQL), straight on the server's database.
    pub fn query_text(&self, sql: &str, param: &str) -> Vec<String> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = diesel::sql_types::Text)]
            v: String,
        }
        let rows: Vec<Row> = match &self.database.kind {
            Database::Sqlite(path) => {
                let mut c = diesel::SqliteConnection::establish(&path.display().to_string())
                    .expect("open the SQLite database");
                diesel::sql_query(sql)
                    .bind::<diesel::sql_types::Text, _>(param)
                    .load(&mut c)
                    .expect("query")
            }
            Database::Postgres { url, .. } => {
                let mut c = diesel::PgConnection::establish(url).expect("connect to PostgreSQL");
                diesel::sql_query(sql.replace('?', "$1"))
                    .bind::<diesel::sql_types::Text, _>(param)
                    .load(&mut c)
                    .expect("query")
            }
        };
        rows.into_iter().map(|r| r.v).collect()
    }

    /// Runs one SQL statement on the server's database (see `TestDb::execute`).
    pub fn execute(&self, sql: &str, params: &[&str]) -> usize {
        self.database.execute(sql, params)
    }

    /// The number of rows of a table (a fixed name from the test, not user input).
    pub fn count_rows(&self, table: &str) -> i64 {
        #[derive(QueryableByName)]
        struct Count {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let sql = format!("SELECT COUNT(*) AS n FROM {table}");
        let row: Count = match &self.database.kind {
            Database::Sqlite(path) => {
                let mut c = diesel::SqliteConnection::establish(&path.display().to_string())
                    .expect("open the SQLite database");
                diesel::sql_query(sql)
                    .get_result(&mut c)
                    .expect("count rows")
            }
            Database::Postgres { url, .. } => {
                let mut c = diesel::PgConnection::establish(url).expect("connect to PostgreSQL");
                diesel::sql_query(sql)
                    .get_result(&mut c)
                    .expect("count rows")
            }
        };
        row.n
    }

    /// Replaces the extra TOML of the config; takes effect at the next (re)start.
    pub fn set_extra_toml(&mut self, toml: &str) {
        self.options.extra_toml = toml.to_owned();
    }

    /// The stored password hash (PHC string) of a local user.
    pub fn password_hash(&self, user_id: &str) -> String {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
            password_hash: Option<String>,
        }
        let rows: Vec<Row> = match &self.database.kind {
            Database::Sqlite(path) => {
                let mut c = diesel::SqliteConnection::establish(&path.display().to_string())
                    .expect("open the SQLite database");
                diesel::sql_query("SELECT password_hash FROM users WHERE user_id = ?")
                    .bind::<diesel::sql_types::Text, _>(user_id)
                    .load(&mut c)
                    .expect("read users")
            }
            Database::Postgres { url, .. } => {
                let mut c = diesel::PgConnection::establish(url).expect("connect to PostgreSQL");
                diesel::sql_query("SELECT password_hash FROM users WHERE user_id = $1")
                    .bind::<diesel::sql_types::Text, _>(user_id)
                    .load(&mut c)
                    .expect("read users")
            }
        };
        rows.into_iter()
            .next()
            .and_then(|r| r.password_hash)
            .unwrap_or_else(|| panic!("{user_id} has no stored password"))
    }

    /// Runs `weft <args> --config <this server's config>` to completion (bounded) and returns
    /// (success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        self.cli_input(args, None)
    }

    /// Like [`Server::cli`], with `input` written to the command's standard input (passwords).
    pub fn cli_input(&self, args: &[&str], input: Option<&str>) -> (bool, String, String) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_weft"))
            .args(args)
            .arg("--config")
            .arg(&self.config_path)
            .env_remove("RUST_LOG")
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn weft cli");
        if let Some(text) = input {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("stdin");
            stdin.write_all(text.as_bytes()).expect("write stdin");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for weft cli") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("weft {args:?} did not finish in 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut out = String::new();
        let mut err = String::new();
        if let Some(mut s) = child.stdout.take() {
            let _ = s.read_to_string(&mut out);
        }
        if let Some(mut s) = child.stderr.take() {
            let _ = s.read_to_string(&mut err);
        }
        (status.success(), out, err)
    }
}

/// The last `n` lines of a text.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- weft log ({:?}, {}) ----\n{}\n---- end of weft log ----",
                self.backend,
                self.dir.display(),
                tail(&self.all_logs(), 80)
            );
        }
        // The database (a PostgreSQL one is dropped) goes with `self.database`.
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Runs one test body against both backends: `both_backends!(name, ...)` makes
/// `name::sqlite` and `name::postgres` tests that call `name(Backend)`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn sqlite() {
                super::$name($crate::harness::Backend::Sqlite)
            }
            #[test]
            fn postgres() {
                super::$name($crate::harness::Backend::Postgres)
            }
        }
    )*};
}
