//! weft cluster (`docs/CLUSTER.md`): three weft nodes on loopback sharing one PostgreSQL
//! database (the harness's `TestDb`) and the NATS server at 127.0.0.1:4222, each test run
//! under its own subject prefix. Cluster mode needs PostgreSQL, so these run on it only.
//!
//! * users on two nodes share a room owned by the third: messages, state, `/sync` wake-ups,
//!   typing and to-device cross nodes, and a sync token from one node works on another;
//! * SIGKILL of a room's owner during a burst of sends: every acknowledged event is stored,
//!   the room is owned again within the lease time, the room's DAG never forks;
//! * SIGSTOP of an owner past its lease, then SIGCONT: its writes are refused (the fence);
//! * the lease rows themselves: a former owner's epoch no longer passes the fence.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use diesel::prelude::*;
use serde_json::{Value, json};

use crate::client::Client;
use crate::harness::{Backend, TestDb, free_port};

const NATS: &str = "nats://127.0.0.1:4222";
const TTL_MS: u64 = 2000;

struct Node {
    name: String,
    base: String,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    /// The node's log without terminal colour codes.
    fn log_text(&self) -> String {
        let raw = fs::read_to_string(&self.log).unwrap_or_default();
        let mut out = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(ch) = chars.next() {
            if ch == '\u{1b}' {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                out.push(ch);
            }
        }
        out
    }

    fn pid(&self) -> libc::pid_t {
        self.child.as_ref().expect("running").id() as libc::pid_t
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on the pid of our own child, not yet reaped.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn client(&self) -> Client {
        Client::new(&self.base)
    }

    /// A server admin (for `/_weft/admin/v1/sync_waiters`), made with the CLI.
    fn admin(&self, localpart: &str) -> Client {
        let mut child = Command::new(env!("CARGO_BIN_EXE_weft"))
            .args(["register-user", localpart, "--admin", "--config"])
            .arg(&self.config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn weft cli");
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("stdin");
            stdin
                .write_all(format!("pw-{localpart}\n").as_bytes())
                .expect("password");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = child.try_wait().expect("wait") {
                assert!(st.success(), "register-user --admin failed");
                break;
            }
            assert!(Instant::now() < deadline, "register-user did not finish");
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut c = self.client();
        c.login(localpart, &format!("pw-{localpart}"));
        c
    }

    /// Waits (bounded) until `n` `/sync` requests are parked on this node.
    #[track_caller]
    fn wait_parked(&self, admin: &Client, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = admin.get("/_weft/admin/v1/sync_waiters");
            assert_eq!(r.status, 200, "sync_waiters: {}", r.text);
            if r.body["parked"].as_u64() == Some(n) {
                return;
            }
            assert!(Instant::now() < deadline, "{n} parked syncs never showed");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

struct TestCluster {
    db: TestDb,
    nodes: Vec<Node>,
    server_name: String,
    _dir: PathBuf,
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if n.child.is_some() {
                n.signal(libc::SIGCONT);
            }
            n.kill();
        }
    }
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}{}_{nanos:x}", std::process::id())
}

/// Federation settings of a node: its own federation port and the cluster's server name.
struct Fed<'a> {
    port: u16,
    server_name: &'a str,
    /// Extra `[federation]` keys (replacing the test defaults of the same name).
    extra: &'a str,
}

fn write_config(
    dir: &Path,
    db: &TestDb,
    node: &str,
    port: u16,
    prefix: &str,
    fed: Option<&Fed<'_>>,
    nats: &str,
) -> PathBuf {
    let data = dir.join(node);
    fs::create_dir_all(&data).expect("node dir");
    let (server_name, fed_listener, fed_section) = match fed {
        Some(f) => {
            let mut section = String::from("enabled = true\nverify_tls = false\n");
            for (key, default) in [
                ("retry_min_ms", "200"),
                ("retry_max_ms", "2000"),
                ("request_timeout_ms", "15000"),
            ] {
                if !f.extra.lines().any(|l| l.trim_start().starts_with(key)) {
                    section.push_str(&format!("{key} = {default}\n"));
                }
            }
            section.push_str(f.extra);
            section.push_str("\n[outbound]\nallowed_addresses = [\"127.0.0.0/8\", \"::1\"]\n");
            (
                f.server_name.to_owned(),
                format!("127.0.0.1:{}", f.port),
                section,
            )
        }
        None => (
            "weft.test".to_owned(),
            String::new(),
            "enabled = false\n".to_owned(),
        ),
    };
    let text = format!(
        "server_name = \"{server_name}\"\n\
         data_dir = \"{data}\"\n\
         signing_key_path = \"{key}\"\n\
         {db}\
         [listeners]\nclient = \"127.0.0.1:{port}\"\nfederation = \"{fed_listener}\"\n\
         [registration]\nopen = true\n\
         [federation]\n{fed_section}\
         [rate_limits]\nenabled = false\n\
         [cluster]\nenabled = true\nnode_id = \"{node}\"\nnats_url = \"{nats}\"\n\
         prefix = \"{prefix}\"\nlease_ttl_ms = {TTL_MS}\nrequest_timeout_ms = 3000\nadvertise = \"http://127.0.0.1:{port}\"\n\
         [logging]\nfilter = \"info,weft=debug,ruma_state_res=warn\"\n",
        data = data.display(),
        key = dir.join("signing.key").display(),
        db = db.toml(),
    );
    let path = data.join("weft.toml");
    fs::write(&path, text).expect("config");
    path
}

fn spawn(node: &mut Node) {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&node.log)
        .expect("log");
    let child = Command::new(env!("CARGO_BIN_EXE_weft"))
        .arg("serve")
        .arg("--config")
        .arg(&node.config)
        .env_remove("RUST_LOG")
        .env_remove("WEFT_CONFIG")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn weft");
    node.child = Some(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    // The log is appended to by every start of the node: wait for this start's line.
    let before = node.log_text().matches("client API listening").count();
    loop {
        if node.log_text().matches("client API listening").count() > before
            && node.client().get("/_matrix/client/versions").status == 200
        {
            return;
        }
        if let Some(c) = node.child.as_mut()
            && let Ok(Some(st)) = c.try_wait()
        {
            panic!("{} exited with {st}:\n{}", node.name, node.log_text());
        }
        assert!(
            Instant::now() < deadline,
            "{} did not start:\n{}",
            node.name,
            node.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How a test cluster is set up.
#[derive(Default)]
struct Setup<'a> {
    /// Federation on: the node whose federation port the server name points at.
    front: Option<&'a str>,
    /// Extra `[federation]` keys of every node.
    federation: &'a str,
    /// A NATS URL for some nodes (a proxy in front of the server), by node name.
    nats: Vec<(&'a str, String)>,
    /// Start only this many nodes now (0: all three); the others with [`TestCluster::start`].
    start: usize,
}

/// Three nodes, started one after the other (the first creates the shared signing key), then
/// waited for until each has heard the other two.
fn start_cluster() -> TestCluster {
    start_cluster_setup(Setup::default())
}

/// [`start_cluster`], with federation on when `fed` names the node whose federation port the
/// server name points at (every node listens on a port of its own).
fn start_cluster_with(fed: Option<&str>) -> TestCluster {
    start_cluster_setup(Setup {
        front: fed,
        ..Setup::default()
    })
}

fn start_cluster_setup(setup: Setup<'_>) -> TestCluster {
    let dir = std::env::temp_dir().join(unique("weft-cluster-"));
    fs::create_dir_all(&dir).expect("dir");
    let db = TestDb::new(Backend::Postgres, &dir);
    let prefix = unique("weft_it_");
    let names = ["n1", "n2", "n3"];
    let fed_ports: Vec<u16> = names.iter().map(|_| free_port()).collect();
    let server_name = setup.front.map(|front| {
        let i = names.iter().position(|n| *n == front).expect("a node name");
        format!("localhost:{}", fed_ports[i])
    });
    let mut nodes = Vec::new();
    for (i, name) in names.into_iter().enumerate() {
        let port = free_port();
        let f = server_name.as_deref().map(|server_name| Fed {
            port: fed_ports[i],
            server_name,
            extra: setup.federation,
        });
        let nats = setup
            .nats
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, u)| u.as_str())
            .unwrap_or(NATS);
        let config = write_config(&dir, &db, name, port, &prefix, f.as_ref(), nats);
        nodes.push(Node {
            name: name.to_owned(),
            base: format!("http://127.0.0.1:{port}"),
            log: dir.join(format!("{name}.log")),
            config,
            child: None,
        });
    }
    let mut c = TestCluster {
        db,
        nodes,
        server_name: server_name.unwrap_or_else(|| "weft.test".to_owned()),
        _dir: dir,
    };
    let now = if setup.start == 0 { 3 } else { setup.start };
    for i in 0..now {
        spawn(&mut c.nodes[i]);
    }
    c.wait_heard(&names[..now]);
    c
}

impl TestCluster {
    /// Waits until each of `names` has heard every other one of them.
    fn wait_heard(&self, names: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(20);
        for n in self
            .nodes
            .iter()
            .filter(|n| names.contains(&n.name.as_str()))
        {
            for other in names.iter().filter(|o| **o != n.name) {
                let line = format!("peer={other}");
                while !n
                    .log_text()
                    .lines()
                    .any(|l| l.contains("cluster: peer joined") && l.contains(&line))
                {
                    assert!(
                        Instant::now() < deadline,
                        "{} never heard {other}:\n{}",
                        n.name,
                        n.log_text()
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// Starts a node not started yet (or stopped) and waits until it has heard the others
    /// that run and they have heard it.
    fn start(&mut self, name: &str) {
        let i = self
            .nodes
            .iter()
            .position(|n| n.name == name)
            .expect("node");
        spawn(&mut self.nodes[i]);
        let running: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.name.clone())
            .collect();
        let names: Vec<&str> = running.iter().map(String::as_str).collect();
        self.wait_heard(&names);
    }

    fn pg(&self) -> diesel::PgConnection {
        diesel::PgConnection::establish(&self.db.url()).expect("connect")
    }

    /// The room's lease as stored: `(owner, epoch, ms left)`.
    fn lease(&self, room: &str) -> Option<(String, i64, i64)> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = diesel::sql_types::Text)]
            owner: String,
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            epoch: i64,
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            left: i64,
        }
        let rows: Vec<Row> = diesel::sql_query(
            "SELECT owner, epoch, expires_at - (extract(epoch from clock_timestamp()) * 1000)::bigint AS left \
             FROM cluster_leases WHERE room_id = $1",
        )
        .bind::<diesel::sql_types::Text, _>(room)
        .load(&mut self.pg())
        .expect("lease");
        rows.into_iter().next().map(|r| (r.owner, r.epoch, r.left))
    }

    /// `(event_id, depth, prev_events)` of every event of a room.
    fn events(&self, room: &str) -> Vec<(String, i64, Vec<String>)> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = diesel::sql_types::Text)]
            event_id: String,
            #[diesel(sql_type = diesel::sql_types::Text)]
            json: String,
        }
        let rows: Vec<Row> = diesel::sql_query(
            "SELECT event_id, json FROM events WHERE room_id = $1 ORDER BY stream_ordering",
        )
        .bind::<diesel::sql_types::Text, _>(room)
        .load(&mut self.pg())
        .expect("events");
        rows.into_iter()
            .map(|r| {
                let v: Value = serde_json::from_str(&r.json).expect("event json");
                let prev = v["prev_events"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|p| p.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                (r.event_id, v["depth"].as_i64().unwrap_or(-1), prev)
            })
            .collect()
    }

    /// Asserts the room's events form one chain: no two events cite the same prev event, so
    /// no two owners ever appended concurrently.
    #[track_caller]
    fn assert_linear(&self, room: &str) {
        let events = self.events(room);
        let mut cited = std::collections::HashMap::new();
        for (id, _, prev) in &events {
            for p in prev {
                if let Some(other) = cited.insert(p.clone(), id.clone()) {
                    panic!("{p} is the prev event of both {other} and {id}: the room forked");
                }
            }
        }
    }

    /// Public rooms made by `creator` until one is owned by `owner` (a third of them are).
    fn room_owned_by(&self, creator: &Client, owner: &str) -> String {
        for i in 0..30 {
            let room =
                creator.create_room(&json!({"preset": "public_chat", "name": format!("r{i}")}));
            let (o, _, _) = self.lease(&room).expect("a created room has a lease");
            if o == owner {
                return room;
            }
        }
        panic!("no room of 30 hashed to {owner}");
    }

    fn node(&self, name: &str) -> &Node {
        self.nodes.iter().find(|n| n.name == name).expect("node")
    }
}

fn texts(sync: &Value, room: &str) -> Vec<String> {
    sync["rooms"]["join"][room]["timeline"]["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["type"] == "m.room.message")
                .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// `/sync` on another thread, parked on `node` before the caller acts.
fn parked_sync(
    c: &Client,
    node: &Node,
    admin: &Client,
    since: &str,
) -> std::thread::JoinHandle<Value> {
    let c = c.clone_session();
    let since = since.to_owned();
    let h = std::thread::spawn(move || {
        // A push-count answer (see `only_counts`) is not the wake-up under test: poll on.
        let mut since = since;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = c.sync(Some(&since), 20_000, None);
            if !crate::client::only_counts(&r) || Instant::now() >= deadline {
                return r;
            }
            since = r["next_batch"].as_str().expect("next_batch").to_owned();
        }
    });
    node.wait_parked(admin, 1);
    h
}

#[test]
fn users_on_two_nodes_share_a_room_owned_by_the_third() {
    let c = start_cluster();
    let (n1, n2) = (c.node("n1"), c.node("n2"));
    let mut alice = n1.client();
    alice.register("alice", "pw-alice");
    let mut bob = n2.client();
    bob.register("bob", "pw-bob");
    let admin2 = n2.admin("admin2");
    let admin1 = n1.admin("admin1");

    let room = c.room_owned_by(&alice, "n3");
    assert_eq!(bob.join(&room).status, 200, "bob joins through n2");

    // A message sent on n1 wakes bob's /sync parked on n2; the room's owner n3 wrote it.
    let first = bob.sync(None, 0, None);
    let since = first["next_batch"].as_str().expect("next_batch").to_owned();
    let waiting = parked_sync(&bob, n2, &admin2, &since);
    alice.send_text(&room, "hello from n1");
    let woken = waiting.join().expect("sync thread");
    assert_eq!(texts(&woken, &room), vec!["hello from n1"]);
    assert_eq!(
        c.lease(&room).expect("lease").0,
        "n3",
        "n3 still owns the room"
    );

    // State set on n1 is read on n2.
    alice
        .put_state(&room, "m.room.topic", "", &json!({"topic": "across nodes"}))
        .ok();
    let topic = bob.get(&format!(
        "/rooms/{}/state/m.room.topic/",
        crate::client::enc(&room)
    ));
    assert_eq!(topic.status, 200, "{}", topic.text);
    assert_eq!(topic.body["topic"], "across nodes");

    // bob answers from n2; alice's sync on n1 is woken by it.
    let a0 = alice.sync(None, 0, None);
    let a_since = a0["next_batch"].as_str().expect("next_batch").to_owned();
    let waiting = parked_sync(&alice, n1, &admin1, &a_since);
    bob.send_text(&room, "hello from n2");
    let woken = waiting.join().expect("sync thread");
    assert_eq!(texts(&woken, &room), vec!["hello from n2"]);

    // A sync token from n2 means the same on n1 (one cluster-wide stream).
    let b_token = woken["next_batch"].as_str().expect("next_batch").to_owned();
    let bob_on_n1 =
        Client::with_token(&n1.base, &bob.user_id, bob.token.as_deref().expect("token"));
    let later = bob_on_n1.sync(Some(&b_token), 0, None);
    assert!(
        texts(&later, &room).is_empty(),
        "nothing new after the token: {later}"
    );
    alice.send_text(&room, "after the token");
    let mut since = Some(b_token);
    bob_on_n1.sync_until(
        &mut since,
        Duration::from_secs(20),
        "the next message",
        |s| texts(s, &room) == vec!["after the token"],
    );

    // Typing on n1 wakes bob on n2 with alice typing.
    let b0 = bob.sync(None, 0, None);
    let since = b0["next_batch"].as_str().expect("next_batch").to_owned();
    let waiting = parked_sync(&bob, n2, &admin2, &since);
    let r = alice.put(
        &format!(
            "/rooms/{}/typing/{}",
            crate::client::enc(&room),
            crate::client::enc(&alice.user_id)
        ),
        &json!({"typing": true, "timeout": 20000}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let woken = waiting.join().expect("sync thread");
    let typing: Vec<String> = woken["rooms"]["join"][&room]["ephemeral"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == "m.typing")
        .flat_map(|e| {
            e["content"]["user_ids"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|u| u.as_str().map(str::to_owned))
        .collect();
    assert_eq!(typing, vec![alice.user_id.clone()], "{woken}");

    // To-device (E2EE key exchange) from n1 reaches bob's device on n2.
    let since = woken["next_batch"].as_str().expect("next_batch").to_owned();
    let waiting = parked_sync(&bob, n2, &admin2, &since);
    let r = alice.put(
        &format!("/sendToDevice/m.room_key_request/{}", alice.next_txn()),
        &json!({"messages": {bob.user_id.clone(): {bob.device_id.clone(): {"probe": "n1->n2"}}}}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let woken = waiting.join().expect("sync thread");
    let got: Vec<&Value> = woken["to_device"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["content"]["probe"] == "n1->n2")
        .collect();
    assert_eq!(got.len(), 1, "{woken}");
    assert_eq!(got[0]["sender"], alice.user_id.as_str());

    assert_eq!(c.lease(&room).expect("lease").0, "n3");
    c.assert_linear(&room);
    let n3_log = c.node("n3").log_text();
    assert!(
        n3_log.contains("cluster: room acquired") && n3_log.contains(room.as_str()),
        "n3 acquired the room"
    );
    for n in &c.nodes {
        let log = n.log_text();
        assert!(!log.contains("panicked"), "{} panicked", n.name);
        // Every node's push worker follows the one event stream; each batch must be stored
        // by one of them (two storing it raced on the notification rows, and would queue
        // each push once per node).
        assert!(
            !log.contains("push_notifications_pkey"),
            "{} stored notifications another node had stored",
            n.name
        );
    }
}

/// Sends `count` messages one after the other from `c` with retries (the same transaction
/// ID, as a client does), returning the acknowledged event IDs and the times of the acks.
fn burst(c: &Client, room: &str, count: usize, tag: &str) -> Vec<(String, Instant)> {
    let mut acked = Vec::new();
    for i in 0..count {
        let txn = c.next_txn();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = c.send_txn(
                room,
                "m.room.message",
                &txn,
                &json!({"msgtype": "m.text", "body": format!("{tag} {i}")}),
            );
            if r.status == 200 {
                let id = r.body["event_id"].as_str().expect("event_id").to_owned();
                acked.push((id, Instant::now()));
                break;
            }
            assert!(
                Instant::now() < deadline,
                "send {i} never acknowledged: {} {}",
                r.status,
                r.text
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    acked
}

#[test]
fn sigkill_of_an_owner_loses_no_acknowledged_event() {
    let mut c = start_cluster();
    let mut alice = c.node("n1").client();
    alice.register("alice", "pw-alice");
    let room = c.room_owned_by(&alice, "n3");
    let (_, epoch_before, _) = c.lease(&room).expect("lease");

    // Two senders (through n1 and n2), so one request lost with the owner does not hold up
    // the other.
    let bursts: Vec<_> = ["n1", "n2"]
        .iter()
        .map(|n| {
            let sender = Client::with_token(
                &c.node(n).base,
                &alice.user_id,
                alice.token.as_deref().expect("token"),
            );
            let (r, tag) = (room.clone(), format!("via {n}"));
            std::thread::spawn(move || burst(&sender, &r, 30, &tag))
        })
        .collect();
    // Kill the owner once the bursts are under way.
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.events(&room).len() < 20 {
        assert!(Instant::now() < deadline, "the burst did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let killed_at = Instant::now();
    c.nodes[2].kill();
    // The room is owned again (by a live node, at a new epoch) within the lease time plus
    // one TTL of slack for a loaded two-core machine.
    let owned_again = loop {
        if let Some((owner, epoch, left)) = c.lease(&room)
            && owner != "n3"
            && epoch > epoch_before
            && left > 0
        {
            break killed_at.elapsed();
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(30),
            "the room was never owned again"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut acked = Vec::new();
    for b in bursts {
        acked.extend(b.join().expect("burst"));
    }
    assert_eq!(acked.len(), 60);
    eprintln!("owned again {owned_again:?} after the SIGKILL (lease {TTL_MS} ms)");
    assert!(
        owned_again < Duration::from_millis(TTL_MS * 2),
        "the room was owned again only after {owned_again:?} (lease {TTL_MS} ms)"
    );

    let stored: std::collections::HashSet<String> =
        c.events(&room).into_iter().map(|(id, _, _)| id).collect();
    for (id, _) in &acked {
        assert!(stored.contains(id), "acknowledged {id} is not stored");
    }
    assert!(
        acked.iter().any(|(_, t)| *t > killed_at),
        "sends were acknowledged after the kill"
    );
    c.assert_linear(&room);
}

/// The message bodies of `room` as `c` sees them, in its timeline order.
fn timeline_bodies(c: &Client, room: &str) -> Vec<String> {
    c.all_messages(room, 100, 20)
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

/// Sends `bodies` one after the other, alternating between `senders` (the first body through
/// the first sender, ...), each retried with its transaction ID until acknowledged.
fn send_alternating(senders: &[&Client], room: &str, bodies: &[String]) {
    for (i, body) in bodies.iter().enumerate() {
        let c = senders[i % senders.len()];
        let txn = c.next_txn();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = c.send_txn(
                room,
                "m.room.message",
                &txn,
                &json!({"msgtype": "m.text", "body": body}),
            );
            if r.status == 200 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{body} never acknowledged: {} {}",
                r.status,
                r.text
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Waits until `c` has seen exactly `sent` in `room`, in that order, each once.
#[track_caller]
fn wait_exactly(c: &Client, room: &str, sent: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let have = timeline_bodies(c, room);
        let ours: Vec<String> = have.iter().filter(|b| sent.contains(b)).cloned().collect();
        let mut seen = std::collections::HashSet::new();
        for b in &ours {
            assert!(seen.insert(b.clone()), "{b} arrived twice: {ours:?}");
        }
        if ours.len() == sent.len() {
            assert_eq!(ours, sent, "the remote server's order differs");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the remote server has {} of {} messages: {ours:?}",
            ours.len(),
            sent.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn outbound_delivery_is_sharded_over_destinations_and_survives_the_owners_sigkill() {
    use crate::harness::{Federation, Options, Server};
    // The remote server (a single weft) exists first: its name decides which node its
    // delivery lease is placed on, and the cluster's name must point at another node, so
    // killing the destination's owner leaves the address the peer knows us by running.
    let peer = Server::start_with(
        Backend::Sqlite,
        Options {
            federation: Some(Federation::default()),
            ..Default::default()
        },
    );
    let dest_key = format!("dest:{}", peer.server_name);
    let placed = weft::cluster::placement::owner(&dest_key, ["n1", "n2", "n3"])
        .expect("an owner")
        .to_owned();
    let front = front_for(&dest_key);
    let mut c = start_cluster_with(Some(front));
    let others: Vec<String> = ["n1", "n2", "n3"]
        .iter()
        .filter(|n| **n != front)
        .map(|n| n.to_string())
        .collect();

    let mut alice = c.node(front).client();
    alice.register("alice", "pw-alice");
    let mut bob = c.node(&others[0]).client();
    bob.register("bob", "pw-bob");
    let carol = peer.register("carol");

    // A room owned by a third node; users on two nodes in it, and carol from the peer,
    // joined through the cluster's address.
    let room = c.room_owned_by(&alice, &others[1]);
    assert_eq!(bob.join(&room).status, 200, "bob joins");
    let r = carol.post(
        &format!(
            "/join/{}?server_name={}",
            crate::client::enc(&room),
            crate::client::enc(&c.server_name)
        ),
        &json!({}),
    );
    assert_eq!(r.status, 200, "carol joins from the peer: {}", r.text);

    // Alternating senders on two nodes: the peer gets each once, in the room's order.
    let first: Vec<String> = (0..12).map(|i| format!("before {i}")).collect();
    send_alternating(&[&alice, &bob], &room, &first);
    wait_exactly(&carol, &room, &first);

    // One node sends the peer: the lease holder.
    let (owner, epoch, left) = c.lease(&dest_key).expect("the destination is leased");
    assert!(left > 0, "the destination's lease is valid");
    assert_eq!(
        owner, placed,
        "the destination went to its rendezvous owner"
    );
    for n in &c.nodes {
        let sent = n
            .log_text()
            .lines()
            .filter(|l| l.contains("transaction delivered") && l.contains(&peer.server_name))
            .count();
        if n.name == owner {
            assert!(sent > 0, "{owner} holds the lease but sent nothing");
        } else {
            assert_eq!(sent, 0, "{} sent to the peer without the lease", n.name);
        }
    }

    // SIGKILL the destination's owner; the others keep sending, through the surviving nodes.
    let killed_at = Instant::now();
    let idx = c.nodes.iter().position(|n| n.name == owner).expect("owner");
    c.nodes[idx].kill();
    let survivors: Vec<String> = c
        .nodes
        .iter()
        .filter(|n| n.name != owner)
        .map(|n| n.base.clone())
        .collect();
    let alice2 = Client::with_token(
        &survivors[0],
        &alice.user_id,
        alice.token.as_deref().expect("token"),
    );
    let bob2 = Client::with_token(
        &survivors[1],
        &bob.user_id,
        bob.token.as_deref().expect("token"),
    );
    let after: Vec<String> = (0..8).map(|i| format!("after {i}")).collect();
    send_alternating(&[&alice2, &bob2], &room, &after);
    let all: Vec<String> = first.iter().chain(after.iter()).cloned().collect();
    wait_exactly(&carol, &room, &all);
    let (new_owner, new_epoch, _) = c.lease(&dest_key).expect("leased again");
    assert_ne!(new_owner, owner, "a live node sends the peer now");
    assert!(new_epoch > epoch, "at a new epoch");
    eprintln!(
        "destination moved {owner} -> {new_owner} (epoch {epoch} -> {new_epoch}); all delivered {:?} after the kill",
        killed_at.elapsed()
    );
    c.assert_linear(&room);
    for n in &c.nodes {
        let log = n.log_text();
        assert!(!log.contains("panicked"), "{} panicked", n.name);
        assert!(
            !log.contains("outbound_queue_pkey"),
            "{}: a queue ID collided",
            n.name
        );
    }
}

#[test]
fn a_paused_owner_cannot_append_after_its_lease() {
    let c = start_cluster();
    let n3 = c.node("n3");
    let mut alice = c.node("n1").client();
    alice.register("alice", "pw-alice");
    // Writers on the owner itself keep its actor busy when it is paused, so some of its
    // writes are in flight at that moment; up to eight tries to catch one in flight.
    let on_owner = Client::with_token(
        &n3.base,
        &alice.user_id,
        alice.token.as_deref().expect("token"),
    );
    let mut refused_seen = false;
    for round in 0..8 {
        let room = c.room_owned_by(&alice, "n3");
        alice.send_text(&room, "before the pause");
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let c = on_owner.clone_session();
                let r = room.clone();
                std::thread::spawn(move || {
                    let mut results = Vec::new();
                    for i in 0..40 {
                        let resp = c.send_txn(
                            &r,
                            "m.room.message",
                            &c.next_txn(),
                            &json!({"msgtype": "m.text", "body": format!("n3 r{round} w{w} {i}")}),
                        );
                        results.push((
                            resp.status,
                            resp.body["event_id"].as_str().map(str::to_owned),
                        ));
                        if resp.status != 200 {
                            break;
                        }
                    }
                    results
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        n3.signal(libc::SIGSTOP);
        // Past the lease: another node takes the room over (a send through n1 succeeds).
        std::thread::sleep(Duration::from_millis(TTL_MS + 500));
        let (_, epoch_paused, _) = c.lease(&room).expect("lease");
        alice.send_text(&room, &format!("while n3 is paused {round}"));
        let (owner, epoch_now, _) = c.lease(&room).expect("lease");
        assert_ne!(owner, "n3", "a paused node kept the room");
        assert!(epoch_now > epoch_paused || owner != "n3");
        n3.signal(libc::SIGCONT);
        let mut acked = Vec::new();
        for w in writers {
            for (status, id) in w.join().expect("writer") {
                if let (200, Some(id)) = (status, id) {
                    acked.push(id);
                }
            }
        }
        // Everything n3 acknowledged is stored, and the room never forked.
        let stored: std::collections::HashSet<String> =
            c.events(&room).into_iter().map(|(id, _, _)| id).collect();
        for id in &acked {
            assert!(stored.contains(id), "acknowledged {id} is not stored");
        }
        c.assert_linear(&room);
        let log = n3.log_text();
        // Refused by the fence (the lease check in the write's transaction), or by
        // PostgreSQL ending the transaction the paused node had left open.
        if log.contains("fenced: a write of a room this node no longer owns")
            || log.contains("write batch failed to commit")
        {
            for l in log
                .lines()
                .filter(|l| l.contains("fenced") || l.contains("failed to commit"))
            {
                eprintln!("round {round}: n3 refused: {l}");
            }
            eprintln!("round {round}: n3 acknowledged {} sends", acked.len());
            refused_seen = true;
            break;
        }
    }
    assert!(
        refused_seen,
        "no write of n3 was in flight at any of the pauses:\n{}",
        crate::harness::tail(&n3.log_text(), 40)
    );
}

#[test]
fn a_former_owners_epoch_does_not_pass_the_fence() {
    let dir = std::env::temp_dir().join(unique("weft-lease-"));
    fs::create_dir_all(&dir).expect("dir");
    let db = TestDb::new(Backend::Postgres, &dir);
    // The schema comes from a weft start (migrations) with cluster mode off.
    let mut node = Node {
        name: "plain".into(),
        base: format!("http://127.0.0.1:{}", free_port()),
        config: dir.join("plain.toml"),
        log: dir.join("plain.log"),
        child: None,
    };
    let port: u16 = node
        .base
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    fs::write(
        &node.config,
        format!(
            "server_name = \"weft.test\"\ndata_dir = \"{}\"\n{}[listeners]\nclient = \"127.0.0.1:{port}\"\nfederation = \"\"\n[federation]\nenabled = false\n",
            dir.display(),
            db.toml()
        ),
    )
    .expect("config");
    spawn(&mut node);
    node.kill();

    use weft::storage::AnyConnection;
    use weft::storage::cluster as rows;
    let mut conn = AnyConnection::establish(&db.url()).expect("connect");
    let room = "!fence:weft.test";
    let e1 = rows::acquire(&mut conn, room, "a", 60_000)
        .expect("acquire")
        .expect("free");
    assert_eq!(
        rows::acquire(&mut conn, room, "b", 60_000).expect("acquire"),
        None,
        "held by a"
    );
    assert!(rows::holds(&mut conn, room, "a", e1).expect("holds"));
    assert!(!rows::holds(&mut conn, room, "b", e1).expect("holds"));
    // a's lease runs out (as if a were paused); b takes the room at a new epoch.
    diesel::sql_query("UPDATE cluster_leases SET expires_at = 0 WHERE room_id = $1")
        .bind::<diesel::sql_types::Text, _>(room)
        .execute(&mut conn)
        .expect("expire");
    assert!(
        !rows::holds(&mut conn, room, "a", e1).expect("holds"),
        "expired"
    );
    let e2 = rows::acquire(&mut conn, room, "b", 60_000)
        .expect("acquire")
        .expect("expired");
    assert!(e2 > e1);
    assert!(
        !rows::holds(&mut conn, room, "a", e1).expect("holds"),
        "a was taken over"
    );
    assert!(rows::holds(&mut conn, room, "b", e2).expect("holds"));
    // a renewing finds nothing; b renewing keeps it.
    let a_renewed = rows::renew(&mut conn, "a", &[room.to_owned()], 60_000).expect("renew");
    assert!(a_renewed.is_empty());
    let b_renewed = rows::renew(&mut conn, "b", &[room.to_owned()], 60_000).expect("renew");
    assert_eq!(b_renewed.get(room), Some(&e2));
    // The sequences never go backwards.
    rows::init_sequences(&mut conn, 500, 40).expect("init");
    let p = rows::next_stream_position(&mut conn).expect("next");
    assert!(p > 500);
    rows::init_sequences(&mut conn, 10, 10).expect("init lower");
    assert!(rows::next_stream_position(&mut conn).expect("next") > p);
    assert!(rows::next_state_group(&mut conn).expect("group") > 40);
    // Queue IDs and backfill values: past the floors given, then increasing, never back.
    rows::init_sequences_with_queue(&mut conn, 0, 0, 1_000_000, 77).expect("init queue");
    let q1 = rows::next_queue_id(&mut conn).expect("queue id");
    assert!(q1 > 1_000_000);
    rows::init_sequences_with_queue(&mut conn, 0, 0, 5, 5).expect("init lower");
    assert!(rows::next_queue_id(&mut conn).expect("queue id") > q1);
    assert!(rows::next_backfill(&mut conn).expect("backfill") > 77);

    // A destination's lease given back keeps its row, so the next owner's epoch is higher;
    // an `expire` naming an old epoch leaves a re-acquired lease alone.
    let dest = "dest:peer.test";
    let d1 = rows::acquire(&mut conn, dest, "a", 60_000)
        .expect("acquire")
        .expect("free");
    rows::expire(&mut conn, "a", dest, d1).expect("expire");
    let d2 = rows::acquire(&mut conn, dest, "b", 60_000)
        .expect("acquire")
        .expect("released");
    assert!(d2 > d1);
    rows::expire(&mut conn, "b", dest, d1).expect("stale expire");
    assert!(
        rows::lease(&mut conn, dest)
            .expect("lease")
            .is_some_and(|l| l.owner == "b" && l.remaining_ms > 0),
        "an expire with an old epoch ended the new lease"
    );
    // The sweep: queued rows of a destination nobody holds are found; held by another
    // node they are not; held by the asking node they are, marked as its own.
    diesel::sql_query(
        "INSERT INTO outbound_queue (id, destination, kind, payload, created_ts) VALUES \
         (1, 'peer.test', 'pdu', '$e', 0), (2, 'free.test', 'pdu', '$f', 0)",
    )
    .execute(&mut conn)
    .expect("queue rows");
    let mut seen = rows::destinations_to_sweep(&mut conn, "a", "dest:").expect("sweep");
    seen.sort();
    assert_eq!(seen, vec![("free.test".to_owned(), false)]);
    let mut seen = rows::destinations_to_sweep(&mut conn, "b", "dest:").expect("sweep");
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("free.test".to_owned(), false),
            ("peer.test".to_owned(), true)
        ]
    );

    // cluster_nodes: how many *other* nodes heard NATS lately, as a node records its own.
    assert_eq!(
        rows::note_nats_seen(&mut conn, "a", 0, 60_000).expect("note"),
        0,
        "nobody else has a row"
    );
    assert_eq!(
        rows::note_nats_seen(&mut conn, "b", 120_000, 60_000).expect("note"),
        1,
        "a heard NATS just now"
    );
    assert_eq!(
        rows::note_nats_seen(&mut conn, "a", 0, 60_000).expect("note"),
        0,
        "b last heard NATS two minutes ago"
    );
    // Giving every lease up touches only the named node's rows, and keeps them.
    let other = rows::acquire(&mut conn, "!other:weft.test", "a", 60_000)
        .expect("acquire")
        .expect("free");
    rows::expire_all(
        &mut conn,
        "b",
        &[dest.to_owned(), "!other:weft.test".to_owned()],
    )
    .expect("expire all");
    assert!(
        rows::lease(&mut conn, dest)
            .expect("lease")
            .is_some_and(|l| l.owner == "b" && l.remaining_ms <= 0),
        "b's lease ended"
    );
    assert!(
        rows::lease(&mut conn, "!other:weft.test")
            .expect("lease")
            .is_some_and(|l| l.owner == "a" && l.epoch == other && l.remaining_ms > 0),
        "a's lease was left alone"
    );
}

/// A node other than the one `key` is placed on while all three are live (the node the
/// server name points at, so the destination's sender is another node).
fn front_for(key: &str) -> &'static str {
    let placed = weft::cluster::placement::owner(key, ["n1", "n2", "n3"]).expect("an owner");
    ["n1", "n2", "n3"]
        .into_iter()
        .find(|n| *n != placed)
        .expect("another node")
}

#[test]
fn federation_with_synapse_through_the_cluster() {
    use crate::federation::{join_via, wait_bodies, wait_membership};
    let syn = crate::synapse::Synapse::shared();
    let front = front_for(&format!("dest:{}", syn.server_name()));
    let c = start_cluster_with(Some(front));
    let others: Vec<&str> = ["n1", "n2", "n3"]
        .into_iter()
        .filter(|n| *n != front)
        .collect();
    let mut alice = c.node(front).client();
    alice.register("alice", "pw-alice");
    let mut bob = c.node(others[0]).client();
    bob.register("bob", "pw-bob");
    let sam = syn.register_fresh("sam");

    // A cluster room owned by a node Synapse never talks to: Synapse joins it through the
    // server name (the front node) and both sides send.
    let room = c.room_owned_by(&alice, others[1]);
    assert_eq!(bob.join(&room).status, 200, "bob joins");
    join_via(&sam, &room, &c.server_name);
    wait_membership(&alice, &room, &sam.user_id, "join");
    alice.send_text(&room, "from the front node");
    bob.send_text(&room, "from another node");
    wait_bodies(&sam, &room, &["from the front node", "from another node"]);
    sam.send_text(&room, "from synapse");
    wait_bodies(&alice, &room, &["from synapse"]);
    wait_bodies(&bob, &room, &["from synapse"]);
    assert_eq!(
        c.lease(&room).expect("lease").0,
        others[1],
        "the room stayed on its owner"
    );

    // A Synapse room joined by a user of a node that is not the front: its events come in
    // through the front and reach the room's owner, ours go out from the destination's owner.
    let sroom = sam.create_room(&json!({"preset": "public_chat", "name": "on synapse"}));
    let early: Vec<String> = (0..4).map(|i| format!("before bob {i}")).collect();
    for b in &early {
        sam.send_text(&sroom, b);
    }
    join_via(&bob, &sroom, &syn.server_name());
    wait_membership(&sam, &sroom, &bob.user_id, "join");
    sam.send_text(&sroom, "synapse room, synapse");
    bob.send_text(&sroom, "synapse room, cluster");
    wait_bodies(&bob, &sroom, &["synapse room, synapse"]);
    wait_bodies(&sam, &sroom, &["synapse room, cluster"]);
    let on_alice = Client::with_token(
        &c.node(front).base,
        &bob.user_id,
        bob.token.as_deref().expect("token"),
    );
    wait_bodies(
        &on_alice,
        &sroom,
        &["synapse room, synapse", "synapse room, cluster"],
    );

    // History from before the join is backfilled (whichever node pages back first asks
    // Synapse; the rows reach the room's owner as `AppendHistory`, written under its lease)
    // and every node reads it.
    let (sowner, _, _) = c.lease(&sroom).expect("the synapse room is leased");
    let early_refs: Vec<&str> = early.iter().map(String::as_str).collect();
    let the_owner = c.nodes.iter().filter(|n| n.name == sowner);
    for reader in c.nodes.iter().filter(|n| n.name != sowner).chain(the_owner) {
        let bob_there = Client::with_token(
            &reader.base,
            &bob.user_id,
            bob.token.as_deref().expect("token"),
        );
        wait_bodies(&bob_there, &sroom, &early_refs);
    }
    let backfilled_by: Vec<&str> = c
        .nodes
        .iter()
        .filter(|n| {
            n.log_text()
                .lines()
                .any(|l| l.contains("backfilled history") && l.contains(sroom.as_str()))
        })
        .map(|n| n.name.as_str())
        .collect();
    assert!(
        !backfilled_by.is_empty(),
        "no node logged the backfill of the Synapse room's early history"
    );
    for n in &c.nodes {
        assert!(
            !n.log_text().contains("could not store backfilled events"),
            "{} could not store backfilled history:\n{}",
            n.name,
            crate::harness::tail(&n.log_text(), 30)
        );
    }

    let (sender, _, _) = c
        .lease(&format!("dest:{}", syn.server_name()))
        .expect("the destination is leased");
    assert_ne!(sender, front, "placed off the front node");
    c.assert_linear(&room);
    for n in &c.nodes {
        assert!(!n.log_text().contains("panicked"), "{} panicked", n.name);
    }
}

const LM: &str = "org.matrix.i-d.ralston-mimi-linearized-matrix.02";

/// A weft peer with federation on (TLS on loopback), for the cluster to talk to.
fn federated_peer() -> crate::harness::Server {
    use crate::harness::{Federation, Options, Server};
    Server::start_with(
        Backend::Sqlite,
        Options {
            federation: Some(Federation::default()),
            ..Default::default()
        },
    )
}

#[test]
fn linearized_messages_reach_the_rooms_owner() {
    use crate::federation::{wait_bodies, wait_invite};
    let peer = federated_peer();
    let front = front_for(&format!("dest:{}", peer.server_name));
    let c = start_cluster_with(Some(front));
    let others: Vec<&str> = ["n1", "n2", "n3"]
        .into_iter()
        .filter(|n| *n != front)
        .collect();
    let mut alice = c.node(others[0]).client();
    alice.register("alice", "pw-alice");
    let mut bob = c.node(others[0]).client();
    bob.register("bob", "pw-bob");
    let carol = peer.register("carol");
    let dave = peer.register("dave");

    // The cluster hubs an LM room owned by a node that is neither alice's nor the front
    // (where the peer's requests arrive): every HubAppend of it crosses to the owner.
    let room = (0..30)
        .find_map(|i| {
            let r = alice.create_room(
                &json!({"room_version": LM, "preset": "private_chat", "name": format!("lm{i}")}),
            );
            (c.lease(&r).expect("a created room has a lease").0 == others[1]).then_some(r)
        })
        .expect("an LM room owned by the third node");
    let r = alice.invite(&room, &carol.user_id);
    assert_eq!(r.status, 200, "the hub invites carol: {}", r.text);
    wait_invite(&carol, &room);
    let r = carol.join(&room);
    assert_eq!(r.status, 200, "carol joins through the front: {}", r.text);
    carol.send_text(&room, "from the participant");
    wait_bodies(&alice, &room, &["from the participant"]);
    alice.send_text(&room, "from the hub");
    wait_bodies(&carol, &room, &["from the hub"]);
    assert_eq!(
        c.lease(&room).expect("lease").0,
        others[1],
        "still its owner"
    );

    // The peer hubs an LM room placed on a node other than the front: the hub's PDUs reach
    // the front and cross to the owner as ParticipantReceive.
    let proom = (0..30)
        .find_map(|i| {
            let r = dave.create_room(
                &json!({"room_version": LM, "preset": "private_chat", "name": format!("p{i}")}),
            );
            let placed = weft::cluster::placement::owner(&r, ["n1", "n2", "n3"])?;
            (placed != front).then_some(r)
        })
        .expect("a peer room placed off the front");
    let r = dave.invite(&proom, &bob.user_id);
    assert_eq!(r.status, 200, "the peer hub invites bob: {}", r.text);
    wait_invite(&bob, &proom);
    let r = bob.join(&proom);
    assert_eq!(r.status, 200, "bob joins the peer's room: {}", r.text);
    dave.send_text(&proom, "from the peer hub");
    wait_bodies(&bob, &proom, &["from the peer hub"]);
    bob.send_text(&proom, "from a cluster participant");
    wait_bodies(&dave, &proom, &["from a cluster participant"]);
    let (powner, _, _) = c.lease(&proom).expect("the peer room is leased");
    assert_ne!(powner, front, "the peer's room is owned off the front");

    let front_log = c.node(front).log_text();
    assert!(
        !front_log.contains("fenced: a write of a room this node no longer owns"),
        "the front wrote a room it does not own:\n{}",
        crate::harness::tail(&front_log, 30)
    );
    c.assert_linear(&room);
    for n in &c.nodes {
        assert!(!n.log_text().contains("panicked"), "{} panicked", n.name);
    }
}

#[test]
fn a_sign_of_life_seen_on_another_node_ends_the_owners_backoff() {
    use crate::federation::wait_bodies;
    let mut peer = federated_peer();
    let dest_key = format!("dest:{}", peer.server_name);
    let placed = weft::cluster::placement::owner(&dest_key, ["n1", "n2", "n3"])
        .expect("an owner")
        .to_owned();
    let front = front_for(&dest_key);
    // Two minutes of backoff and no probes: only a sign of life ends the outage quickly.
    let c = start_cluster_setup(Setup {
        front: Some(front),
        federation: "retry_min_ms = 120000\nretry_max_ms = 120000\nprobe_per_second = 0\n",
        ..Setup::default()
    });
    let mut alice = c.node(front).client();
    alice.register("alice", "pw-alice");
    let carol = peer.register("carol");
    let room = alice.create_room(&json!({"preset": "public_chat"}));
    let r = carol.post(
        &format!(
            "/join/{}?server_name={}",
            crate::client::enc(&room),
            crate::client::enc(&c.server_name)
        ),
        &json!({}),
    );
    assert_eq!(r.status, 200, "carol joins: {}", r.text);
    alice.send_text(&room, "before the outage");
    wait_bodies(&carol, &room, &["before the outage"]);

    // The peer goes down; the destination's owner fails to deliver and backs off.
    peer.stop();
    alice.send_text(&room, "during the outage");
    let owner = c.node(&placed);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !owner
        .log_text()
        .lines()
        .any(|l| l.contains("delivery failed") && l.contains(&peer.server_name))
    {
        assert!(
            Instant::now() < deadline,
            "{placed} never failed a delivery"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Back up, the peer talks to the front only (the server name): the front does not send
    // the peer, passes the sign of life on, and the owner ends its backoff.
    peer.start_again();
    let back = Instant::now();
    carol.send_text(&room, "the peer is back");
    wait_bodies(&alice, &room, &["the peer is back"]);
    wait_bodies(&carol, &room, &["during the outage"]);
    let took = back.elapsed();
    eprintln!("delivered {took:?} after the peer came back (backoff 120 s)");
    assert!(
        took < Duration::from_secs(60),
        "the owner waited out its backoff ({took:?})"
    );
    assert!(
        owner
            .log_text()
            .contains("cluster: a sign of life seen on another node"),
        "{placed} was not told of the sign of life:\n{}",
        crate::harness::tail(&owner.log_text(), 30)
    );
    for n in &c.nodes {
        assert!(!n.log_text().contains("panicked"), "{} panicked", n.name);
    }
}

#[test]
fn rooms_move_to_a_joining_node_once_idle() {
    let mut c = start_cluster_setup(Setup {
        start: 2,
        ..Setup::default()
    });
    let mut alice = c.node("n1").client();
    alice.register("alice", "pw-alice");
    // Rooms owned by n1 and n2; those that hash to n3 among the three are the ones to move.
    let mut rooms = Vec::new();
    for i in 0..40 {
        let room = alice.create_room(&json!({"preset": "public_chat", "name": format!("r{i}")}));
        alice.send_text(&room, "before n3");
        rooms.push(room);
        let moving = rooms
            .iter()
            .filter(|r| weft::cluster::placement::owner(r, ["n1", "n2", "n3"]) == Some("n3"))
            .count();
        if rooms.len() >= 8 && moving >= 2 {
            break;
        }
    }
    let before: Vec<(String, String, i64)> = rooms
        .iter()
        .map(|r| {
            let (o, e, _) = c.lease(r).expect("lease");
            assert_ne!(o, "n3");
            (r.clone(), o, e)
        })
        .collect();
    c.start("n3");
    let joined = Instant::now();

    // Each room placed on n3 is given back once idle for a TTL; the next message takes it
    // to n3. The others stay where they are, at the same epoch.
    let deadline = joined + Duration::from_millis(TTL_MS * 8);
    for (room, owner, epoch) in &before {
        let to = weft::cluster::placement::owner(room, ["n1", "n2", "n3"]).expect("owner");
        if to != "n3" {
            continue;
        }
        loop {
            let (o, e, left) = c.lease(room).expect("lease");
            if o != *owner || e != *epoch || left <= 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{owner} kept {room} although it hashes to n3"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        alice.send_text(room, "after n3");
        let (o, e, _) = c.lease(room).expect("lease");
        assert_eq!(o, "n3", "{room} went to n3");
        assert!(e > *epoch, "at a new epoch");
    }
    eprintln!("rooms moved within {:?} of n3 joining", joined.elapsed());
    for (room, owner, epoch) in &before {
        let to = weft::cluster::placement::owner(room, ["n1", "n2", "n3"]).expect("owner");
        if to == "n3" {
            continue;
        }
        alice.send_text(room, "after n3");
        let (o, e, _) = c.lease(room).expect("lease");
        assert_eq!((&o, e), (owner, *epoch), "{room} moved although it stays");
    }
    for (room, _, _) in &before {
        let bodies = timeline_bodies(&alice, room);
        assert_eq!(bodies, vec!["before n3", "after n3"], "{room}");
        c.assert_linear(room);
    }
    let n3 = c.node("n3").log_text();
    assert!(n3.contains("cluster: room acquired"), "n3 took rooms");
    for n in &c.nodes {
        assert!(!n.log_text().contains("panicked"), "{} panicked", n.name);
    }
}

#[test]
fn a_node_cut_off_from_nats_gives_its_rooms_up() {
    let proxy = crate::proxy::Proxy::start(4222);
    let c = start_cluster_setup(Setup {
        nats: vec![("n3", format!("nats://127.0.0.1:{}", proxy.port))],
        ..Setup::default()
    });
    let mut alice = c.node("n1").client();
    alice.register("alice", "pw-alice");
    let room = c.room_owned_by(&alice, "n3");
    alice.send_text(&room, "before the cut");
    let (_, epoch, _) = c.lease(&room).expect("lease");

    // n3 loses NATS but keeps PostgreSQL: it gives the room up, and another node takes it
    // at a new epoch; sends through n1 go on.
    let cut = Instant::now();
    proxy.block();
    let moved = loop {
        if let Some((o, e, left)) = c.lease(&room)
            && o != "n3"
            && e > epoch
            && left > 0
        {
            break cut.elapsed();
        }
        // A send through n1 routes the room once n3's lease is gone.
        let _ = alice.send_txn(
            &room,
            "m.room.message",
            &alice.next_txn(),
            &json!({"msgtype": "m.text", "body": "while n3 is cut off"}),
        );
        assert!(
            cut.elapsed() < Duration::from_secs(30),
            "the room never left n3"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("the room left n3 {moved:?} after the cut (lease {TTL_MS} ms)");
    assert!(
        moved < Duration::from_millis(TTL_MS * 3),
        "the room left n3 only after {moved:?}"
    );
    let n3 = c.node("n3");
    assert!(
        n3.log_text().contains("cluster: cut off from NATS"),
        "n3 did not notice the cut:\n{}",
        crate::harness::tail(&n3.log_text(), 30)
    );
    send_alternating(&[&alice], &room, &["after the move".to_owned()]);

    // Through n3 the room is refused, not taken back: n3 cannot be reached by the others.
    let on_n3 = Client::with_token(
        &n3.base,
        &alice.user_id,
        alice.token.as_deref().expect("token"),
    );
    let r = on_n3.send_txn(
        &room,
        "m.room.message",
        &on_n3.next_txn(),
        &json!({"msgtype": "m.text", "body": "through the cut-off node"}),
    );
    assert_ne!(r.status, 200, "n3 wrote while cut off: {}", r.text);
    assert_ne!(c.lease(&room).expect("lease").0, "n3");

    // NATS back: n3 hears itself again and serves requests again.
    proxy.unblock();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !n3.log_text().contains("cluster: NATS reached again") {
        assert!(Instant::now() < deadline, "n3 never reached NATS again");
        std::thread::sleep(Duration::from_millis(100));
    }
    send_alternating(&[&on_n3], &room, &["through n3 again".to_owned()]);
    let bodies = timeline_bodies(&alice, &room);
    assert!(
        !bodies.iter().any(|b| b == "through the cut-off node"),
        "{bodies:?}"
    );
    for b in ["before the cut", "after the move", "through n3 again"] {
        assert!(bodies.iter().any(|x| x == b), "{b} missing: {bodies:?}");
    }
    c.assert_linear(&room);
    for n in &c.nodes {
        assert!(!n.log_text().contains("panicked"), "{} panicked", n.name);
    }
}
