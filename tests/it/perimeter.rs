//! The perimeter, tried as an attacker would on loopback:
//!
//! * **Outbound address policy.** A recording listener on `127.0.0.2` counts every
//!   connection it gets. weft allows only `127.0.0.1` (its `.well-known` responder and DNS
//!   server live there); IP-literal X-Matrix origins, `/key/v2/query` names, a `.well-known`
//!   delegation and an SRV answer all point at the recorder, and it is never dialled. A
//!   second weft whose allow-list names `127.0.0.2` does dial it: the list admits exactly
//!   what it names. DNS is a small server of our own (hickory-proto messages over UDP).
//! * **Key validity.** A fedpeer whose key answer has expired, or whose signing key is only
//!   listed under `old_verify_keys`, gets 401 for a correctly signed request; a peer with a
//!   current key gets through.
//! * **Rate limits.** Each limit answers 429 `M_LIMIT_EXCEEDED` with `retry_after_ms`, and
//!   recovers after it; a flood of logins does not stall other requests; one `/send` in
//!   flight per origin (a second one while the first fills a gap gets 429).
//! * **Key validity for events.** An event whose server's key expired before the event's
//!   timestamp is rejected for its signature.
//! * **Retention.** Transaction IDs older than the configured age are pruned (both backends).
//! * **Smaller.** `/.well-known/matrix/{server,client}` come from the config; an
//!   `?access_token=` never reaches the request log; generated key files are 0600.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use serde_json::{Value, json};

use crate::both_backends;
use crate::client::{Client, enc};
use crate::harness::{Backend, Federation, Options, Server};

both_backends!(retention_prunes_old_rows);

/// Polls `f` until it is true; panics with `what` after `within`.
#[track_caller]
fn wait_until(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < within {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

/// A TCP listener that counts the connections it accepts (and closes them). For plain
/// HTTP it can also answer every request with a fixed JSON body.
struct Recorder {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Recorder {
    fn start(ip: &str, answer: Option<(u16, String)>) -> Recorder {
        let l = TcpListener::bind((ip, 0)).expect("bind recorder");
        l.set_nonblocking(true).expect("nonblocking");
        let addr = l.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (Arc::clone(&accepted), Arc::clone(&stop));
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(300);
            while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                match l.accept() {
                    Ok((mut conn, _)) => {
                        a.fetch_add(1, Ordering::Relaxed);
                        if let Some((status, body)) = &answer {
                            use std::io::{Read, Write};
                            let _ = conn.set_nonblocking(false);
                            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                            let mut buf = [0u8; 4096];
                            let _ = conn.read(&mut buf);
                            let _ = write!(
                                conn,
                                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                                body.len()
                            );
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Recorder {
            addr,
            accepted,
            stop,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A UDP DNS server on 127.0.0.1 answering A and SRV questions from a table; records the
/// names it was asked.
struct Dns {
    addr: SocketAddr,
    asked: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

enum Answer {
    A(std::net::Ipv4Addr),
    Srv(u16, &'static str),
}

impl Dns {
    fn start(table: Vec<(&'static str, Answer)>) -> Dns {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind dns");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let addr = sock.local_addr().expect("addr");
        let asked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (q, s) = (Arc::clone(&asked), Arc::clone(&stop));
        let table: HashMap<String, Answer> = table
            .into_iter()
            .map(|(n, a)| (format!("{n}."), a))
            .collect();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(300);
            let mut buf = [0u8; 1500];
            while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(req) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let mut resp = Message::new();
                resp.set_id(req.id())
                    .set_message_type(MessageType::Response)
                    .set_op_code(req.op_code())
                    .set_authoritative(true)
                    .set_recursion_desired(req.recursion_desired())
                    .set_recursion_available(true);
                let mut found = false;
                for query in req.queries() {
                    resp.add_query(query.clone());
                    let name = query.name().to_ascii().to_lowercase();
                    q.lock().unwrap().push(name.clone());
                    let rdata = match (table.get(&name), query.query_type()) {
                        (Some(Answer::A(ip)), RecordType::A) => Some(RData::A(A(*ip))),
                        (Some(Answer::Srv(port, target)), RecordType::SRV) => {
                            Some(RData::SRV(SRV::new(
                                10,
                                5,
                                *port,
                                Name::from_ascii(format!("{target}.")).unwrap(),
                            )))
                        }
                        _ => None,
                    };
                    if table.contains_key(&name) {
                        found = true;
                    }
                    if let Some(rdata) = rdata {
                        resp.add_answer(Record::from_rdata(query.name().clone(), 5, rdata));
                    }
                }
                if !found {
                    resp.set_response_code(ResponseCode::NXDomain);
                }
                if let Ok(bytes) = resp.to_vec() {
                    let _ = sock.send_to(&bytes, from);
                }
            }
        });
        Dns { addr, asked, stop }
    }

    fn was_asked(&self, name: &str) -> bool {
        let want = format!("{name}.");
        self.asked.lock().unwrap().contains(&want)
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A weft speaking plain HTTP on federation, with the given allow-list and DNS server.
fn weft_with(allowed: &[&str], dns: SocketAddr, well_known_port: u16) -> Server {
    let list: Vec<String> = allowed.iter().map(|a| format!("\"{a}\"")).collect();
    Server::start_with(
        Backend::Sqlite,
        Options {
            federation: Some(Federation::default()),
            extra_federation: format!("plain_http = true\nwell_known_port = {well_known_port}\n"),
            extra_toml: format!(
                "[outbound]\nallowed_addresses = [{}]\ndns_servers = [\"{dns}\"]\n",
                list.join(", ")
            ),
            ..Default::default()
        },
    )
}

fn fed_client(srv: &Server) -> Client {
    Client::new(&format!(
        "http://127.0.0.1:{}",
        srv.fed_port.expect("federation port")
    ))
}

/// A request from `origin` with a well-formed but unverifiable X-Matrix header.
fn forged(srv: &Server, origin: &str) -> crate::client::Resp {
    let header = format!(
        "X-Matrix origin=\"{origin}\",destination=\"{}\",key=\"ed25519:a\",sig=\"AAAA\"",
        srv.server_name
    );
    fed_client(srv).raw_with(
        "GET",
        &format!(
            "/_matrix/federation/v1/query/profile?user_id={}",
            enc("@a:x.test")
        ),
        None,
        None,
        &[("Authorization", &header)],
    )
}

#[test]
fn private_targets_are_never_dialled() {
    let recorder = Recorder::start("127.0.0.2", None);
    let rport = recorder.addr.port();
    let delegation = json!({"m.server": format!("127.0.0.2:{rport}")}).to_string();
    let well_known = Recorder::start("127.0.0.1", Some((200, delegation)));
    let dns = Dns::start(vec![
        ("wk.test", Answer::A("127.0.0.1".parse().unwrap())),
        (
            "_matrix-fed._tcp.srv.test",
            Answer::Srv(rport, "inner.test"),
        ),
        ("inner.test", Answer::A("127.0.0.2".parse().unwrap())),
        ("_matrix._tcp.old.test", Answer::Srv(rport, "inner.test")),
        ("far.test", Answer::A("127.0.0.2".parse().unwrap())),
    ]);
    let srv = weft_with(&["127.0.0.1/32"], dns.addr, well_known.addr.port());
    let ip_origin = format!("127.0.0.2:{rport}");
    let mapped_origin = format!("[::ffff:127.0.0.2]:{rport}");

    // X-Matrix origins: the key fetch before the signature check must not dial them.
    for origin in [
        ip_origin.as_str(),
        mapped_origin.as_str(),
        "wk.test",
        "srv.test",
        "old.test",
        &format!("far.test:{rport}"),
    ] {
        forged(&srv, origin).expect_err(401, "M_UNAUTHORIZED");
    }
    // Notary queries naming the same servers.
    let r = fed_client(&srv).post(
        "/_matrix/key/v2/query",
        &json!({"server_keys": {
            ip_origin.clone(): {}, "wk.test": {}, "srv.test": {}, "old.test": {},
            format!("far.test:{rport}"): {},
        }}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["server_keys"], json!([]));
    // Too many servers in one query.
    let many: serde_json::Map<String, Value> =
        (0..21).map(|i| (format!("s{i}.test"), json!({}))).collect();
    fed_client(&srv)
        .post("/_matrix/key/v2/query", &json!({"server_keys": many}))
        .expect_err(400, "M_INVALID_PARAM");

    // Discovery did run (positive conditions), it just never reached 127.0.0.2.
    wait_until(Duration::from_secs(20), ".well-known fetched", || {
        well_known.accepted() >= 1
    });
    wait_until(Duration::from_secs(20), "SRV asked", || {
        dns.was_asked("_matrix-fed._tcp.srv.test")
            && dns.was_asked("inner.test")
            && dns.was_asked("_matrix._tcp.old.test")
    });
    assert_eq!(
        recorder.accepted(),
        0,
        "a private address outside the allow-list was dialled"
    );
    srv.assert_no_panics();

    // The allow-list admits exactly what it names: allowing 127.0.0.2 makes the same
    // IP-literal origin reachable.
    let open = weft_with(
        &["127.0.0.1/32", "127.0.0.2/32"],
        dns.addr,
        well_known.addr.port(),
    );
    forged(&open, &ip_origin).expect_err(401, "M_UNAUTHORIZED");
    wait_until(Duration::from_secs(20), "allowed address dialled", || {
        recorder.accepted() >= 1
    });
}

#[test]
fn expired_and_old_keys_do_not_authenticate_requests() {
    use fedpeer::Peer;
    use fedpeer::peer::KeyMode;
    let srv = Server::start_with(
        Backend::Sqlite,
        Options {
            federation: Some(Federation::default()),
            ..Default::default()
        },
    );
    let path = format!(
        "/_matrix/federation/v1/query/profile?user_id={}",
        enc(&format!("@nobody:{}", srv.server_name))
    );
    let status_for = |mode: KeyMode| {
        let peer = Peer::start(0).expect("peer");
        peer.set_key_mode(mode);
        let mut fed = peer.client(&srv.server_name).expect("client");
        let r = fed.request("GET", &path, None).expect("request");
        (r.status, r.errcode())
    };
    let (status, errcode) = status_for(KeyMode::Expired);
    assert_eq!(
        (status, errcode.as_deref()),
        (401, Some("M_UNAUTHORIZED")),
        "a key past valid_until_ts"
    );
    let (status, errcode) = status_for(KeyMode::Old);
    assert_eq!(
        (status, errcode.as_deref()),
        (401, Some("M_UNAUTHORIZED")),
        "a key listed only under old_verify_keys"
    );
    let (status, _) = status_for(KeyMode::Current);
    assert_ne!(status, 401, "a current key authenticates");
}

#[test]
fn events_signed_with_a_key_expired_before_their_timestamp_are_rejected() {
    use fedpeer::Peer;
    use fedpeer::peer::{KeyMode, pdu_results};
    use weft_protocol::builder::EventDraft;
    let srv = Server::start_with(
        Backend::Sqlite,
        Options {
            federation: Some(Federation::default()),
            ..Default::default()
        },
    );
    let alice = srv.register("alice");
    let room = alice.create_room(&json!({"preset": "public_chat"}));
    let a = Peer::start(0).expect("peer a");
    let mut fed = a.client(&srv.server_name).expect("client");
    a.join(&mut fed, &room, "mallory").expect("mallory joins");
    let version = a.room_version(&room).expect("version");
    // Two other servers sign events that peer A relays: one whose key expired an hour
    // before the events' timestamps, one with a current key.
    let expired = Peer::start(0).expect("peer b");
    expired.set_key_mode(KeyMode::Expired);
    let current = Peer::start(0).expect("peer c");
    let good = a.message(&room, "mallory", "hello").expect("message");
    let foreign = |p: &Peer| {
        let draft = EventDraft::new(
            "m.room.message",
            p.user("eve"),
            json!({"msgtype": "m.text", "body": "from elsewhere"}),
        );
        let obj = a.template(&room, &draft).expect("template");
        p.sign(obj, version).expect("sign")
    };
    let (late, fresh) = (foreign(&expired), foreign(&current));
    let r = fed
        .send_transaction(
            "keys1",
            vec![
                good.to_federation_value(),
                late.to_federation_value(),
                fresh.to_federation_value(),
            ],
            vec![],
        )
        .expect("send");
    assert_eq!(r.status, 200, "{}", r.text());
    let results = pdu_results(&r.json());
    assert_eq!(results.get(good.event_id()), Some(&None), "{results:?}");
    let late_err = results
        .get(late.event_id())
        .cloned()
        .flatten()
        .expect("the expired-key event is rejected");
    assert!(
        late_err.contains("valid key"),
        "rejected for its signature: {late_err}"
    );
    // weft did get that server's key (so the refusal is its validity, not its absence).
    assert!(
        expired
            .inbound()
            .iter()
            .any(|i| i.path.starts_with("/_matrix/key/v2/server")),
        "the expired key was fetched"
    );
    // The current-key event passes the signature check (it fails later, on the auth
    // rules: eve never joined), so the first rejection was the key's validity.
    let fresh_err = results
        .get(fresh.event_id())
        .cloned()
        .flatten()
        .unwrap_or_default();
    assert!(!fresh_err.contains("valid key"), "{fresh_err}");
    srv.assert_no_panics();
}

#[test]
fn well_known_secrets_and_key_files() {
    let srv = Server::start_with(
        Backend::Sqlite,
        Options {
            federation: Some(Federation::default()),
            extra_toml: "[well_known]\nserver = \"hs.example.org:443\"\n\
                         client_base_url = \"https://hs.example.org\"\n"
                .into(),
            ..Default::default()
        },
    );
    let anon = srv.anonymous();
    let r = anon.get("/.well-known/matrix/server");
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body, json!({"m.server": "hs.example.org:443"}));
    assert!(
        r.header("cache-control")
            .is_some_and(|c| c.contains("max-age"))
    );
    let r = anon.get("/.well-known/matrix/client");
    assert_eq!(
        r.body,
        json!({"m.homeserver": {"base_url": "https://hs.example.org"}})
    );
    // Unconfigured: 404 M_NOT_FOUND.
    let plain = Server::start(Backend::Sqlite);
    plain
        .anonymous()
        .get("/.well-known/matrix/server")
        .expect_err(404, "M_NOT_FOUND");

    // An access token in the query string never reaches the request log.
    let alice = srv.register("alice");
    let token = alice.token.clone().expect("token");
    let r = anon.get(&format!(
        "/_matrix/client/v3/account/whoami?access_token={token}"
    ));
    assert_eq!(r.status, 200, "{}", r.text);
    wait_until(Duration::from_secs(10), "the request to be logged", || {
        srv.log().contains("whoami?access_token=<redacted>")
    });
    assert!(!srv.log().contains(&token), "the token was logged");

    // Generated private keys are readable by the server's user only.
    use std::os::unix::fs::PermissionsExt;
    for f in ["signing.key", "federation.key"] {
        let mode = std::fs::metadata(srv.data_dir().join(f))
            .unwrap_or_else(|e| panic!("{f}: {e}"))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f} has mode {:o}", mode & 0o777);
    }
}

fn limited_server(extra: &str) -> Server {
    Server::start_with(
        Backend::Sqlite,
        Options {
            extra_toml: format!("[rate_limits]\nenabled = true\n{extra}"),
            ..Default::default()
        },
    )
}

/// Asserts a 429 with a usable `retry_after_ms`, returns it.
#[track_caller]
fn limited(r: &crate::client::Resp) -> u64 {
    r.expect_err(429, "M_LIMIT_EXCEEDED");
    let ms = r.body["retry_after_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("no retry_after_ms in {}", r.text));
    assert!((1..=60_000).contains(&ms), "retry_after_ms {ms}");
    ms
}

#[test]
fn each_limit_answers_429_and_recovers() {
    let srv = limited_server(
        "login_per_ip = { per_second = 0.5, burst = 4 }\n\
         login_per_account = { per_second = 0.5, burst = 2 }\n\
         register_per_ip = { per_second = 0.5, burst = 3 }\n\
         send_per_user = { per_second = 1.0, burst = 3 }\n\
         create_room_per_user = { per_second = 0.5, burst = 2 }\n",
    );
    // Registration per IP (each register is one request with inhibit_login off).
    let alice = srv.register("alice");
    let mut last = None;
    for i in 0..6 {
        let r = srv.anonymous().post(
            "/register",
            &json!({"username": format!("u{i}"), "password": "pw-long-enough",
                    "auth": {"type": "m.login.dummy"}}),
        );
        if r.status == 429 {
            last = Some(r);
            break;
        }
    }
    let r = last.expect("registration was never limited");
    let ms = limited(&r);
    std::thread::sleep(Duration::from_millis(ms + 50));
    let r = srv.anonymous().post(
        "/register",
        &json!({"username": "late", "password": "pw-long-enough", "auth": {"type": "m.login.dummy"}}),
    );
    assert_eq!(r.status, 200, "registration recovers: {}", r.text);

    // Login per account: wrong passwords for alice.
    let login = |user: &str, pw: &str| {
        srv.anonymous().post(
            "/login",
            &json!({"type": "m.login.password",
                    "identifier": {"type": "m.id.user", "user": user}, "password": pw}),
        )
    };
    let mut hit = None;
    for _ in 0..5 {
        let r = login("alice", "wrong");
        if r.status == 429 {
            hit = Some(r);
            break;
        }
        r.expect_err(403, "M_FORBIDDEN");
    }
    let ms = limited(&hit.expect("login was never limited"));
    std::thread::sleep(Duration::from_millis(ms + 600));
    let r = login("alice", "pw-alice");
    assert_eq!(r.status, 200, "login recovers: {}", r.text);

    // Sends per user.
    let room = alice.create_room(&json!({}));
    let mut hit = None;
    for i in 0..8 {
        let r = alice.put(
            &format!("/rooms/{}/send/m.room.message/t{i}", enc(&room)),
            &json!({"msgtype": "m.text", "body": "x"}),
        );
        if r.status == 429 {
            hit = Some(r);
            break;
        }
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let ms = limited(&hit.expect("sends were never limited"));
    std::thread::sleep(Duration::from_millis(ms + 50));
    let r = alice.put(
        &format!("/rooms/{}/send/m.room.message/after", enc(&room)),
        &json!({"msgtype": "m.text", "body": "x"}),
    );
    assert_eq!(r.status, 200, "sends recover: {}", r.text);

    // Room creation per user (one room made above).
    let mut hit = None;
    for _ in 0..4 {
        let r = alice.post("/createRoom", &json!({}));
        if r.status == 429 {
            hit = Some(r);
            break;
        }
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let ms = limited(&hit.expect("room creation was never limited"));
    std::thread::sleep(Duration::from_millis(ms + 50));
    assert_eq!(alice.post("/createRoom", &json!({})).status, 200);
    srv.assert_no_panics();
}

#[test]
fn federation_requests_are_limited_per_origin() {
    let srv = Server::start_with(
        Backend::Sqlite,
        Options {
            federation: Some(Federation::default()),
            extra_toml: "[rate_limits]\nenabled = true\n\
                         federation_per_origin = { per_second = 2.0, burst = 4 }\n"
                .into(),
            ..Default::default()
        },
    );
    let path = format!(
        "/_matrix/federation/v1/query/profile?user_id={}",
        enc(&format!("@nobody:{}", srv.server_name))
    );
    let peer = fedpeer::Peer::start(0).expect("peer");
    let mut fed = peer.client(&srv.server_name).expect("client");
    let mut hit = None;
    for _ in 0..10 {
        let r = fed.request("GET", &path, None).expect("request");
        if r.status == 429 {
            hit = Some(r);
            break;
        }
        assert_ne!(r.status, 401, "{}", r.text());
    }
    let r = hit.expect("the origin was never limited");
    assert_eq!(r.errcode().as_deref(), Some("M_LIMIT_EXCEEDED"));
    let ms = r.json()["retry_after_ms"].as_u64().expect("retry_after_ms");
    assert!((1..=60_000).contains(&ms), "{ms}");
    // Another origin is not affected; the limited one recovers after the wait.
    let other = fedpeer::Peer::start(0).expect("peer");
    let mut fed2 = other.client(&srv.server_name).expect("client");
    let r = fed2.request("GET", &path, None).expect("request");
    assert!(r.status != 429 && r.status != 401, "{}", r.text());
    std::thread::sleep(Duration::from_millis(ms + 100));
    let r = fed.request("GET", &path, None).expect("request");
    assert!(r.status != 429 && r.status != 401, "recovers: {}", r.text());
    srv.assert_no_panics();
}

/// One `/send` in flight per origin: while a transaction from a server is still being
/// processed (here: weft is filling a gap from that server, which answers slowly), a
/// second one from the same server gets 429 with `retry_after_ms`; another server is not
/// held up; once the first is answered, the origin may send again, and the first
/// transaction's events all landed.
#[test]
fn one_transaction_in_flight_per_origin() {
    use fedpeer::Peer;
    use fedpeer::peer::pdu_results;
    let srv = Server::start_with(
        Backend::Sqlite,
        Options {
            federation: Some(Federation::default()),
            extra_toml: "[rate_limits]\nenabled = true\nfederation_send_wait_ms = 300\n\
                         federation_per_origin = { per_second = 1000.0, burst = 1000 }\n"
                .into(),
            ..Default::default()
        },
    );
    let alice = srv.register("alice");
    let room = alice.create_room(&json!({"preset": "public_chat"}));
    let a = Peer::start(0).expect("peer a");
    let mut fed = a.client(&srv.server_name).expect("client");
    a.join(&mut fed, &room, "mallory").expect("mallory joins");
    // `hidden` is on the peer's chain but never pushed: weft must fetch it to accept `tip`,
    // and the peer takes its time answering.
    let hidden = a.message(&room, "mallory", "hidden").expect("message");
    let tip = a.message(&room, "mallory", "tip").expect("message");
    let slow = Duration::from_secs(4);
    for (method, path) in [
        ("POST", "/_matrix/federation/v1/get_missing_events"),
        ("GET", "/_matrix/federation/v1/event/"),
        ("GET", "/_matrix/federation/v1/state_ids/"),
        ("GET", "/_matrix/federation/v1/state/"),
    ] {
        a.delay(method, path, slow);
    }
    let fetches = |p: &Peer| {
        p.inbound()
            .iter()
            .filter(|i| {
                i.path.contains("get_missing_events")
                    || i.path.starts_with("/_matrix/federation/v1/event/")
                    || i.path.starts_with("/_matrix/federation/v1/state")
            })
            .count()
    };
    let before = fetches(&a);
    let mut first_client = a.client(&srv.server_name).expect("client");
    let tip_json = tip.to_federation_value();
    let first = std::thread::spawn(move || {
        let t0 = Instant::now();
        let r = first_client
            .send_transaction("slot-first", vec![tip_json], vec![])
            .expect("first /send");
        (r, t0.elapsed())
    });
    // The first transaction is in flight once weft asks the peer for the missing event.
    wait_until(
        Duration::from_secs(30),
        "weft fetches the missing event",
        || fetches(&a) > before,
    );
    let second = fed
        .send_transaction("slot-second", vec![], vec![])
        .expect("second /send");
    assert_eq!(second.status, 429, "{}", second.text());
    assert_eq!(second.errcode().as_deref(), Some("M_LIMIT_EXCEEDED"));
    let ms = second.json()["retry_after_ms"]
        .as_u64()
        .expect("retry_after_ms");
    assert!((1..=60_000).contains(&ms), "{ms}");
    // Another origin is not held up by it.
    let b = Peer::start(0).expect("peer b");
    let mut fed_b = b.client(&srv.server_name).expect("client");
    let other = fed_b
        .send_transaction("slot-other", vec![], vec![])
        .expect("other origin's /send");
    assert_eq!(other.status, 200, "{}", other.text());
    let (r, took) = first.join().expect("first /send thread");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        took >= slow,
        "the first /send was answered before its gap was filled ({took:?})"
    );
    let results = pdu_results(&r.json());
    assert_eq!(results.get(tip.event_id()), Some(&None), "{results:?}");
    // The slot is free again: the same origin's next transaction is taken.
    let again = fed
        .send_transaction("slot-again", vec![], vec![])
        .expect("third /send");
    assert_eq!(again.status, 200, "{}", again.text());
    // And nothing of the first transaction was lost.
    for (pdu, body) in [(&hidden, "hidden"), (&tip, "tip")] {
        let ev = alice.get(&format!(
            "/_matrix/client/v3/rooms/{}/event/{}",
            enc(&room),
            enc(pdu.event_id().as_str())
        ));
        assert_eq!(ev.status, 200, "{body}: {}", ev.text);
        assert_eq!(ev.body["content"]["body"], json!(body));
    }
    srv.assert_no_panics();
}

#[test]
fn a_login_flood_does_not_stall_other_requests() {
    let srv = limited_server("");
    let _alice = srv.register("alice");
    let stop = Arc::new(AtomicBool::new(false));
    let limited_count = Arc::new(AtomicUsize::new(0));
    let mut flooders = Vec::new();
    for t in 0..4 {
        let (stop, n) = (Arc::clone(&stop), Arc::clone(&limited_count));
        let anon = srv.anonymous();
        flooders.push(std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && i < 400 {
                i += 1;
                let r = anon.post(
                    "/login",
                    &json!({"type": "m.login.password",
                            "identifier": {"type": "m.id.user", "user": "alice"},
                            "password": format!("guess{t}-{i}")}),
                );
                if r.status == 429 {
                    n.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    wait_until(Duration::from_secs(30), "the flood to be limited", || {
        limited_count.load(Ordering::Relaxed) >= 20
    });
    // Meanwhile ordinary requests answer promptly (generous bound for a loaded machine).
    let anon = srv.anonymous();
    for _ in 0..5 {
        let t = Instant::now();
        assert_eq!(anon.get("/_matrix/client/versions").status, 200);
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "versions took {:?} during the flood",
            t.elapsed()
        );
    }
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        f.join().expect("flooder");
    }
}

fn retention_prunes_old_rows(backend: Backend) {
    let srv = Server::start_with(
        backend,
        Options {
            extra_toml: "[retention]\nsweep_interval_secs = 1\nevent_txn_secs = 2\n".into(),
            ..Default::default()
        },
    );
    let alice = srv.register("alice");
    let room = alice.create_room(&json!({}));
    for i in 0..5 {
        alice
            .put(
                &format!("/rooms/{}/send/m.room.message/t{i}", enc(&room)),
                &json!({"msgtype": "m.text", "body": "1"}),
            )
            .ok();
    }
    let before = srv.count_rows("event_txns");
    assert!(before >= 5, "{before} transaction IDs stored");
    // Stamped by one sweep, deleted by a later one once older than the age.
    wait_until(
        Duration::from_secs(30),
        "transaction IDs to be pruned",
        || srv.count_rows("event_txns") == 0,
    );
    // A new one is kept until it is old enough.
    alice
        .put(
            &format!("/rooms/{}/send/m.room.message/late", enc(&room)),
            &json!({"msgtype": "m.text", "body": "1"}),
        )
        .ok();
    assert_eq!(srv.count_rows("event_txns"), 1);
    assert!(srv.log().contains("retention sweep"));
}
