//! A hostile federation peer against a running weft.
//!
//! Each test starts weft (the built binary, federation on, TLS with a self-signed
//! certificate), registers a local user `alice` who creates a public room, and has a
//! `fedpeer` (`tools/fedpeer`) join it as `@mallory:localhost:PORT` over real federation
//! (make_join/send_join). mallory gets power level 50: enough for a topic, not for power
//! levels. Then the peer sends bad input and checks that:
//!
//! * every bad request is refused with the right status and Matrix error (401
//!   `M_UNAUTHORIZED` for X-Matrix failures, 400/413 for malformed transactions), and
//!   every bad PDU gets its own `error` entry in the `/send` answer;
//! * a PDU whose content hash is wrong is *kept, redacted* (spec: checks on receipt of a
//!   PDU), not refused;
//! * good PDUs in the same transaction still land, and bad ones never do (both read back as
//!   alice through the client API);
//! * weft neither panics (its log has no "panicked") nor exits.
//!
//! Every case runs on SQLite and on PostgreSQL (`<case>::sqlite`, `<case>::postgres`).
//!
//! Ports: free loopback ports from the kernel's ephemeral range.

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fedpeer::client::ClientApi;
use fedpeer::craft::{self, HeaderSpec};
use fedpeer::peer::{enc, generate_key, pdu_results};
use fedpeer::{FedClient, Peer};
use ruma::{CanonicalJsonObject, OwnedEventId};
use serde_json::{Value, json};
use weft_protocol::builder::EventDraft;
use weft_protocol::{Pdu, RoomVersion};

use crate::both_backends;
use crate::harness::{Backend, TestDb};

both_backends!(
    bad_signatures_and_hashes_are_refused_and_good_pdus_land,
    forged_senders_and_auth_violations_are_refused,
    malformed_transactions_are_refused,
    bad_xmatrix_headers_are_refused,
    spoofed_edus_are_ignored,
    duplicate_pdus_are_harmless,
    forks_with_conflicting_state_resolve_whatever_the_arrival_order,
    an_invite_never_overwrites_a_join_or_a_ban,
    an_out_of_band_invite_is_kept_apart_and_declined_here,
    history_is_served_only_to_servers_in_the_room,
    a_gap_filled_from_a_state_answer_that_repeats_its_events_lands,
    a_rejected_event_stays_rejected_through_get_missing_events,
    a_rejected_event_stays_rejected_through_event,
    a_rejected_event_stays_rejected_through_state,
    backfill_takes_only_ancestors_of_the_point,
    a_rejected_event_stays_rejected_through_backfill,
    concurrent_chains_of_messages_land_and_bad_ones_do_not,
    concurrent_forks_with_state_resolve_as_the_spec_says,
    many_origins_at_once_keep_each_chains_order,
    a_transactions_answer_is_stored_with_its_pdus,
    a_batch_of_pdus_counts_every_notification_and_highlight,
    two_events_after_a_gap_in_one_transaction_both_land,
);

const START_TIMEOUT: Duration = Duration::from_secs(60);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A free loopback port (the kernel's ephemeral range, via the shared harness).
fn free_port() -> u16 {
    crate::harness::free_port()
}

/// A weft process with federation enabled.
struct Weft {
    child: Option<Child>,
    dir: PathBuf,
    log: PathBuf,
    client_port: u16,
    server_name: String,
    /// Dropped after the process is killed (a PostgreSQL database is dropped with it).
    _db: TestDb,
}

impl Weft {
    fn start(backend: Backend) -> Weft {
        let (client_port, fed_port) = (free_port(), free_port());
        let dir = std::env::temp_dir().join(format!(
            "weft-hostile-{}-{client_port}-{fed_port}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create temp dir");
        let db = TestDb::new(backend, &dir);
        let server_name = format!("localhost:{fed_port}");
        let config = dir.join("weft.toml");
        fs::write(
            &config,
            format!(
                "server_name = \"{server_name}\"\n\
                 data_dir = \"{dir}\"\n\
                 {database}\
                 [listeners]\nclient = \"127.0.0.1:{client_port}\"\nfederation = \"127.0.0.1:{fed_port}\"\n\
                 [registration]\nopen = true\n\
                 [federation]\nverify_tls = false\nrequest_timeout_ms = 10000\n\
                 [outbound]\nallowed_addresses = [\"127.0.0.0/8\"]\n\
                 [rate_limits]\nenabled = false\n\
                 [logging]\nfilter = \"info\"\n",
                dir = dir.display(),
                database = db.toml(),
            ),
        )
        .expect("write config");
        let log = dir.join("weft.log");
        let out = fs::File::create(&log).expect("create log");
        let child = Command::new(env!("CARGO_BIN_EXE_weft"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env_remove("RUST_LOG")
            .env_remove("WEFT_CONFIG")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone log"))
            .stderr(out)
            .spawn()
            .expect("spawn weft");
        let mut weft = Weft {
            child: Some(child),
            dir,
            log,
            client_port,
            server_name,
            _db: db,
        };
        weft.wait_ready();
        weft
    }

    fn wait_ready(&mut self) {
        let start = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "weft exited during startup ({status}):\n{}",
                    self.log_text()
                );
            }
            let up = ClientApi::new(&self.base(), Duration::from_secs(2))
                .and_then(|mut c| c.call("GET", "/_matrix/client/versions", None))
                .is_ok_and(|r| r.status == 200);
            if up {
                return;
            }
            assert!(
                start.elapsed() < START_TIMEOUT,
                "weft not ready after {START_TIMEOUT:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// weft is still running and its log shows no panic.
    fn assert_healthy(&mut self) {
        let log = self.log_text();
        assert!(!log.contains("panicked"), "weft panicked:\n{log}");
        if let Some(child) = self.child.as_mut() {
            assert!(matches!(child.try_wait(), Ok(None)), "weft exited:\n{log}");
        }
    }
}

impl Drop for Weft {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let log = self.log_text();
            let tail: String = log
                .lines()
                .rev()
                .take(60)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            eprintln!("---- weft log tail ({}) ----\n{tail}", self.log.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// weft, alice's room, and mallory joined to it from the peer.
struct Scene {
    weft: Weft,
    peer: Peer,
    fed: FedClient,
    alice: ClientApi,
    room: String,
    version: RoomVersion,
    txn: u32,
}

impl Scene {
    /// On SQLite (for cases not yet listed in `both_backends!`; prefer [`Scene::on`]).
    #[allow(dead_code)]
    fn new() -> Scene {
        Scene::on(Backend::Sqlite)
    }

    fn on(backend: Backend) -> Scene {
        let weft = Weft::start(backend);
        let mut alice = ClientApi::new(&weft.base(), REQUEST_TIMEOUT).expect("client");
        alice
            .register("alice", "alice-password")
            .expect("register alice");
        let peer = Peer::start(free_port()).expect("start peer");
        let mut users = serde_json::Map::new();
        users.insert(peer.user("mallory").to_string(), json!(50));
        let room = alice
            .create_room(&json!({
                "preset": "public_chat",
                "name": "hostile",
                "power_level_content_override": {"users": users},
            }))
            .expect("create room");
        let mut fed = peer.client(&weft.server_name).expect("fed client");
        peer.join(&mut fed, &room, "mallory")
            .expect("mallory joins over federation");
        let version = peer.room_version(&room).expect("joined");
        Scene {
            weft,
            peer,
            fed,
            alice,
            room,
            version,
            txn: 0,
        }
    }

    fn message_draft(&self, localpart: &str, body: &str) -> EventDraft {
        EventDraft::new(
            "m.room.message",
            self.peer.user(localpart),
            json!({"msgtype": "m.text", "body": body}),
        )
    }

    /// A good message from mallory, appended to the peer's chain.
    fn good(&self, body: &str) -> Pdu {
        self.peer
            .message(&self.room, "mallory", body)
            .expect("build message")
    }

    /// A signed message at the current tip, *not* appended (to damage, or to be refused).
    fn side_message(&self, localpart: &str, body: &str) -> Pdu {
        self.peer
            .build(&self.room, &self.message_draft(localpart, body))
            .expect("build")
    }

    fn next_txn(&mut self) -> String {
        self.txn += 1;
        format!("hostile{}-{}", fedpeer::peer::now_ms(), self.txn)
    }

    /// A correctly signed transaction; returns the status and the per-PDU results.
    fn send(&mut self, pdus: Vec<Value>, edus: Vec<Value>) -> (u16, Value) {
        let txn = self.next_txn();
        let r = self
            .fed
            .send_transaction(&txn, pdus, edus)
            .expect("send transaction");
        (r.status, r.json())
    }

    fn results(&mut self, pdus: Vec<Value>) -> HashMap<OwnedEventId, Option<String>> {
        let (status, body) = self.send(pdus, Vec::new());
        eprintln!("/send answer: {body:#}");
        assert_eq!(status, 200, "transaction refused as a whole: {body}");
        pdu_results(&body)
    }

    /// The event as alice reads it (`None`: not readable).
    fn read(&mut self, id: &str) -> Option<Value> {
        self.alice.event(&self.room, id).expect("read event")
    }

    fn assert_landed(&mut self, pdu: &Pdu, body: &str) {
        let ev = self
            .read(pdu.event_id().as_str())
            .unwrap_or_else(|| panic!("good PDU {} ({body}) did not land", pdu.event_id()));
        assert_eq!(ev["content"]["body"], json!(body), "{ev}");
    }

    fn assert_absent(&mut self, id: &str, what: &str) {
        if let Some(ev) = self.read(id) {
            panic!("{what} ({id}) landed: {ev}");
        }
        let bodies: Vec<Value> = self
            .alice
            .messages(&self.room, 200)
            .expect("messages")
            .into_iter()
            .filter(|e| e["event_id"] == json!(id))
            .collect();
        assert!(bodies.is_empty(), "{what} ({id}) is in /messages");
    }
}

/// The PDU got an `error` entry. `reason` is a word weft's message must contain (which
/// check refused it: "signature", "rejected" for the auth rules, "missing" for unknown
/// prev events, "malformed", "large"), so a PDU refused for the wrong reason fails too.
fn refused(
    results: &HashMap<OwnedEventId, Option<String>>,
    id: &OwnedEventId,
    what: &str,
    reason: &str,
) {
    match results.get(id) {
        Some(Some(err)) => assert!(
            err.to_lowercase().contains(reason),
            "{what} ({id}) refused, but not for its {reason}: {err}"
        ),
        Some(None) => panic!("{what} ({id}) was accepted"),
        None => panic!("{what} ({id}) is missing from the /send answer: {results:?}"),
    }
}

fn accepted(results: &HashMap<OwnedEventId, Option<String>>, id: &OwnedEventId, what: &str) {
    match results.get(id) {
        Some(None) => {}
        Some(Some(err)) => panic!("{what} ({id}) was refused: {err}"),
        None => panic!("{what} ({id}) is missing from the /send answer: {results:?}"),
    }
}

fn id_of(obj: &CanonicalJsonObject, version: RoomVersion) -> OwnedEventId {
    craft::event_id(obj, version).expect("event id")
}

fn bad_signatures_and_hashes_are_refused_and_good_pdus_land(backend: Backend) {
    let mut s = Scene::on(backend);
    let v = s.version;
    let good1 = s.good("good before");

    let mut bad_sig = s.side_message("mallory", "bad signature").into_json();
    craft::corrupt_signatures(&mut bad_sig);
    let mut unknown_key = s.side_message("mallory", "unknown key").into_json();
    craft::rename_signing_key(&mut unknown_key, s.peer.server_name(), "ed25519:nosuchkey");
    let mut unsigned = s.side_message("mallory", "unsigned").into_json();
    craft::strip_signatures(&mut unsigned);
    let mut tampered = s.side_message("mallory", "tampered").into_json();
    craft::set(&mut tampered, "origin_server_ts", json!(12345)).unwrap();
    // Signed by a key that is not the server's (same key ID, other key).
    let other_key = generate_key();
    let impostor_obj = s
        .peer
        .template(&s.room, &s.message_draft("mallory", "other key"))
        .unwrap();
    let mut impostor = craft::sign_as(impostor_obj, v, s.peer.server_name(), &other_key).unwrap();
    craft::rename_signing_key(&mut impostor, s.peer.server_name(), s.peer.key().key_id());
    // Content changed after signing: signatures still verify, the hash does not.
    let mut wrong_hash = s.side_message("mallory", "original content").into_json();
    craft::set(
        &mut wrong_hash,
        "content",
        json!({"msgtype": "m.text", "body": "swapped content"}),
    )
    .unwrap();
    let good2 = s.good("good after");

    let bad: Vec<(&str, &CanonicalJsonObject)> = vec![
        ("corrupted signature", &bad_sig),
        ("signature under an unknown key ID", &unknown_key),
        ("no signatures", &unsigned),
        ("field changed after signing", &tampered),
        ("signed with another key", &impostor),
    ];
    let mut pdus = vec![good1.to_federation_value()];
    pdus.extend(bad.iter().map(|(_, o)| craft::to_value(o)));
    pdus.push(craft::to_value(&wrong_hash));
    pdus.push(good2.to_federation_value());
    let results = s.results(pdus);

    accepted(&results, &good1.owned_event_id(), "good PDU before");
    accepted(&results, &good2.owned_event_id(), "good PDU after");
    for (what, obj) in &bad {
        refused(&results, &id_of(obj, v), what, "signature");
    }
    let wrong_hash_id = id_of(&wrong_hash, v);
    accepted(&results, &wrong_hash_id, "PDU with a wrong content hash");

    s.assert_landed(&good1, "good before");
    s.assert_landed(&good2, "good after");
    for (what, obj) in &bad {
        s.assert_absent(id_of(obj, v).as_str(), what);
    }
    // Kept, but redacted: the content is gone (neither body is shown).
    let ev = s
        .read(wrong_hash_id.as_str())
        .expect("the wrong-hash PDU must be stored (redacted), not dropped");
    assert_eq!(ev["type"], json!("m.room.message"), "{ev}");
    assert_eq!(ev["content"], json!({}), "stored unredacted: {ev}");
    s.weft.assert_healthy();
}

fn forged_senders_and_auth_violations_are_refused(backend: Backend) {
    let mut s = Scene::on(backend);
    let v = s.version;
    let weft_name = s.weft.server_name.clone();
    let alice_id = format!("@alice:{weft_name}");
    let third = format!("localhost:{}", free_port());

    // A message "from" weft's own alice, signed by the peer as itself.
    let mut forged_local = s
        .peer
        .template(&s.room, &s.message_draft("mallory", "forged local sender"))
        .unwrap();
    craft::set(&mut forged_local, "sender", json!(alice_id)).unwrap();
    let forged_local = s.peer.sign(forged_local, v).unwrap().into_json();
    // The same, but the peer also claims to be weft when signing.
    let mut claims_weft = s
        .peer
        .template(&s.room, &s.message_draft("mallory", "claims to be weft"))
        .unwrap();
    craft::set(&mut claims_weft, "sender", json!(alice_id)).unwrap();
    let claims_weft = craft::sign_as(claims_weft, v, &weft_name, s.peer.key()).unwrap();
    // A sender on a third server (which does not exist), signed by the peer.
    let mut third_party = s
        .peer
        .template(&s.room, &s.message_draft("mallory", "third-party sender"))
        .unwrap();
    craft::set(&mut third_party, "sender", json!(format!("@eve:{third}"))).unwrap();
    let third_party = s.peer.sign(third_party, v).unwrap().into_json();

    // Auth rules: mallory (power 50) raising herself to 100 (needs 100).
    let mut pl = s
        .peer
        .with_room(&s.room, |r| {
            r.state_event("m.room.power_levels", "")
                .map(|e| e.content_value())
        })
        .unwrap()
        .expect("power levels in the joined state");
    pl["users"][s.peer.user("mallory").as_str()] = json!(100);
    let pl_change = s
        .peer
        .build(
            &s.room,
            &EventDraft::state("m.room.power_levels", "", s.peer.user("mallory"), pl),
        )
        .unwrap();
    // A user of the peer's server who never joined.
    let non_member = s.side_message("ghost", "from a non-member");
    // mallory kicking the room's creator.
    let kick = s
        .peer
        .build(
            &s.room,
            &EventDraft::state(
                "m.room.member",
                alice_id.clone(),
                s.peer.user("mallory"),
                json!({"membership": "leave"}),
            ),
        )
        .unwrap();
    // A message citing a prev event that exists nowhere (weft asks the peer, which does
    // not know it either).
    let mut dangling = s
        .peer
        .template(&s.room, &s.message_draft("mallory", "dangling prev"))
        .unwrap();
    craft::set(
        &mut dangling,
        "prev_events",
        json!(["$doesnotexistdoesnotexistdoesnotexistdoesnot"]),
    )
    .unwrap();
    let dangling = s.peer.sign(dangling, v).unwrap();

    // Allowed: a topic at power 50.
    let topic = s
        .peer
        .build(
            &s.room,
            &EventDraft::state(
                "m.room.topic",
                "",
                s.peer.user("mallory"),
                json!({"topic": "set by mallory"}),
            ),
        )
        .unwrap();
    s.peer.append(&s.room, &topic).unwrap();
    let good = s.good("good among forgeries");

    let bad: Vec<(&str, &str, OwnedEventId, Value)> = vec![
        (
            "sender of weft signed by the peer",
            "signature",
            id_of(&forged_local, v),
            craft::to_value(&forged_local),
        ),
        (
            "sender of weft, peer signing as weft",
            "signature",
            id_of(&claims_weft, v),
            craft::to_value(&claims_weft),
        ),
        (
            "sender of a third server",
            "signature",
            id_of(&third_party, v),
            craft::to_value(&third_party),
        ),
        (
            "power levels changed without power",
            "rejected",
            pl_change.owned_event_id(),
            pl_change.to_federation_value(),
        ),
        (
            "message from a non-member",
            "rejected",
            non_member.owned_event_id(),
            non_member.to_federation_value(),
        ),
        (
            "kick of the creator by power 50",
            "rejected",
            kick.owned_event_id(),
            kick.to_federation_value(),
        ),
        (
            "prev event that exists nowhere",
            "missing",
            dangling.owned_event_id(),
            dangling.to_federation_value(),
        ),
    ];
    let mut pdus: Vec<Value> = bad.iter().map(|(_, _, _, p)| p.clone()).collect();
    pdus.push(topic.to_federation_value());
    pdus.push(good.to_federation_value());
    let started = Instant::now();
    let results = s.results(pdus);
    assert!(
        started.elapsed() < Duration::from_secs(45),
        "the transaction took {:?}",
        started.elapsed()
    );

    for (what, reason, id, _) in &bad {
        refused(&results, id, what, reason);
    }
    accepted(&results, &topic.owned_event_id(), "topic at power 50");
    accepted(&results, &good.owned_event_id(), "good message");
    s.assert_landed(&good, "good among forgeries");
    for (what, _, id, _) in &bad {
        s.assert_absent(id.as_str(), what);
    }
    let topic_now = s
        .alice
        .state(&s.room, "m.room.topic", "")
        .unwrap()
        .expect("topic state");
    assert_eq!(topic_now["topic"], json!("set by mallory"));
    let pl_now = s
        .alice
        .state(&s.room, "m.room.power_levels", "")
        .unwrap()
        .expect("power levels state");
    assert_eq!(
        pl_now["users"][s.peer.user("mallory").as_str()],
        json!(50),
        "{pl_now}"
    );
    let alice_member = s
        .alice
        .state(&s.room, "m.room.member", &alice_id)
        .unwrap()
        .expect("alice's membership");
    assert_eq!(alice_member["membership"], json!("join"));

    // Auth events that must not count: the power levels event just rejected (it gave
    // mallory 100), and a power levels event of *another* room of weft that gives mallory
    // 100. Each is cited for a history visibility change (needs 100).
    let mut users = serde_json::Map::new();
    users.insert(s.peer.user("mallory").to_string(), json!(100));
    let room2 = s
        .alice
        .create_room(
            &json!({"preset": "public_chat", "power_level_content_override": {"users": users}}),
        )
        .expect("second room");
    let room2_state = s
        .alice
        .call_ok(
            "GET",
            &format!("/_matrix/client/v3/rooms/{}/state", enc(&room2)),
            None,
        )
        .expect("state of the second room");
    let room2_pl: String = room2_state
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["type"] == json!("m.room.power_levels"))
        .and_then(|e| e["event_id"].as_str())
        .expect("power levels of the second room")
        .to_owned();
    let own_pl = s
        .peer
        .with_room(&s.room, |r| {
            r.state_event("m.room.power_levels", "")
                .map(|e| e.event_id().to_string())
        })
        .unwrap()
        .expect("power levels id");
    let with_auth_pl = |s: &Scene, pl_id: &str, text: &str| {
        let mut t = s
            .peer
            .template(
                &s.room,
                &EventDraft::state(
                    "m.room.history_visibility",
                    "",
                    s.peer.user("mallory"),
                    json!({"history_visibility": text}),
                ),
            )
            .unwrap();
        let auth: Vec<String> = match t.get("auth_events") {
            Some(ruma::CanonicalJsonValue::Array(a)) => a
                .iter()
                .filter_map(|i| match i {
                    ruma::CanonicalJsonValue::String(i) if *i == own_pl => Some(pl_id.to_owned()),
                    ruma::CanonicalJsonValue::String(i) => Some(i.clone()),
                    _ => None,
                })
                .collect(),
            _ => panic!("template without auth_events"),
        };
        assert!(auth.iter().any(|a| a == pl_id), "power levels not replaced");
        craft::set(&mut t, "auth_events", json!(auth)).unwrap();
        s.peer.sign(t, v).unwrap()
    };
    let via_rejected = with_auth_pl(&s, pl_change.event_id().as_str(), "world_readable");
    let via_other_room = with_auth_pl(&s, &room2_pl, "joined");
    let good = s.good("good after borrowed auth");
    let results = s.results(vec![
        via_rejected.to_federation_value(),
        via_other_room.to_federation_value(),
        good.to_federation_value(),
    ]);
    refused(
        &results,
        &via_rejected.owned_event_id(),
        "auth event that was rejected",
        "rejected",
    );
    refused(
        &results,
        &via_other_room.owned_event_id(),
        "auth event of another room",
        "rejected",
    );
    accepted(&results, &good.owned_event_id(), "good message");
    s.assert_landed(&good, "good after borrowed auth");
    s.assert_absent(
        via_rejected.event_id().as_str(),
        "auth event that was rejected",
    );
    s.assert_absent(
        via_other_room.event_id().as_str(),
        "auth event of another room",
    );
    let hv = s
        .alice
        .state(&s.room, "m.room.history_visibility", "")
        .unwrap()
        .expect("history visibility");
    assert_eq!(hv["history_visibility"], json!("shared"), "{hv}");
    s.weft.assert_healthy();
}

fn malformed_transactions_are_refused(backend: Backend) {
    let mut s = Scene::on(backend);
    let v = s.version;
    let path = |txn: &str| format!("/_matrix/federation/v1/send/{}", enc(txn));

    // Not JSON (signed as a request without content).
    let txn = s.next_txn();
    let auth = s.fed.authorization("PUT", &path(&txn), None).unwrap();
    let r = s
        .fed
        .raw("PUT", &path(&txn), &[auth], Some(b"{not json"))
        .unwrap();
    assert_eq!(
        (r.status, r.errcode().as_deref()),
        (400, Some("M_NOT_JSON")),
        "{}",
        r.text()
    );

    // JSON, but not an object; `pdus` of the wrong type.
    for (what, body) in [
        ("array body", json!([1, 2])),
        ("pdus is an object", json!({"pdus": {"a": 1}, "edus": []})),
        ("edus is a string", json!({"pdus": [], "edus": "x"})),
    ] {
        let txn = s.next_txn();
        let r = s.fed.request("PUT", &path(&txn), Some(&body)).unwrap();
        assert_eq!(
            (r.status, r.errcode().as_deref()),
            (400, Some("M_BAD_JSON")),
            "{what}: {}",
            r.text()
        );
    }

    // 51 PDUs: the whole transaction is refused; none of them lands.
    let many: Vec<Pdu> = (0..51)
        .map(|i| s.side_message("mallory", &format!("one of 51 ({i})")))
        .collect();
    let (status, body) = s.send(
        many.iter().map(|p| p.to_federation_value()).collect(),
        vec![],
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["errcode"], json!("M_BAD_JSON"), "{body}");
    for p in [&many[0], &many[25], &many[50]] {
        s.assert_absent(p.event_id().as_str(), "PDU of a 51-PDU transaction");
    }

    // A body over the size limit (1 MiB by default).
    let big = json!({"pdus": [], "edus": [], "padding": "x".repeat(1_100_000)});
    let txn = s.next_txn();
    let r = s.fed.request("PUT", &path(&txn), Some(&big)).unwrap();
    assert_eq!(
        (r.status, r.errcode().as_deref()),
        (413, Some("M_TOO_LARGE")),
        "{}",
        r.text()
    );

    // Bad entries next to good PDUs: wrong types, bad fields, an oversized PDU, another
    // room, garbage EDUs. The good PDUs land; the bad ones get errors where they have an
    // ID at all.
    let good1 = s.good("good among junk 1");
    let mut bad_depth = s.side_message("mallory", "depth is a string").into_json();
    craft::set(&mut bad_depth, "depth", json!("five")).unwrap();
    let mut bad_type = s.side_message("mallory", "type is a number").into_json();
    craft::set(&mut bad_type, "type", json!(7)).unwrap();
    // Over 64 KiB: the builder refuses it, so sign it by hand.
    let mut huge = s
        .peer
        .template(&s.room, &s.message_draft("mallory", "huge"))
        .unwrap();
    craft::set(
        &mut huge,
        "content",
        json!({"msgtype": "m.text", "body": "y".repeat(70_000)}),
    )
    .unwrap();
    let huge = craft::sign_as(huge, v, s.peer.server_name(), s.peer.key()).unwrap();
    let mut other_room = s.side_message("mallory", "for another room").into_json();
    craft::set(&mut other_room, "room_id", json!("!nosuchroom:localhost:1")).unwrap();
    let good2 = s.good("good among junk 2");
    let pdus = vec![
        json!(1),
        json!("a string"),
        Value::Null,
        json!([]),
        json!({}),
        good1.to_federation_value(),
        craft::to_value(&bad_depth),
        craft::to_value(&bad_type),
        craft::to_value(&huge),
        craft::to_value(&other_room),
        good2.to_federation_value(),
    ];
    let edus = vec![
        json!(1),
        json!({"edu_type": 5}),
        json!({"edu_type": "m.typing", "content": "not an object"}),
        json!({"edu_type": "m.receipt", "content": {"!x:y": {"m.read": 3}}}),
        json!({"edu_type": "m.presence", "content": {"push": "nope"}}),
    ];
    let (status, body) = s.send(pdus, edus);
    assert_eq!(status, 200, "{body}");
    let results = pdu_results(&body);
    accepted(&results, &good1.owned_event_id(), "good PDU 1");
    accepted(&results, &good2.owned_event_id(), "good PDU 2");
    refused(
        &results,
        &id_of(&bad_depth, v),
        "depth of the wrong type",
        "malformed",
    );
    refused(&results, &id_of(&huge, v), "PDU over 64 KiB", "large");
    // Without a string `type` no event ID can be computed (redaction needs the type), so
    // it cannot be listed; it must not be accepted under any ID (checked just below).
    assert!(craft::event_id(&bad_type, v).is_err());
    assert!(
        results.values().filter(|r| r.is_none()).count() == 2,
        "only the two good PDUs may be accepted: {body}"
    );
    s.assert_landed(&good1, "good among junk 1");
    s.assert_landed(&good2, "good among junk 2");
    for (what, obj) in [
        ("depth of the wrong type", &bad_depth),
        ("PDU over 64 KiB", &huge),
    ] {
        s.assert_absent(id_of(obj, v).as_str(), what);
    }
    let junk_bodies = ["type is a number", "for another room"];
    let timeline = s.alice.messages(&s.room, 200).expect("messages");
    for e in &timeline {
        let body = e["content"]["body"].as_str().unwrap_or_default();
        assert!(!junk_bodies.contains(&body), "junk landed: {e}");
    }

    // Format limits of the room version and field types, next to a good PDU.
    let tip = s
        .peer
        .with_room(&s.room, |r| r.extremities().to_vec())
        .unwrap();
    let mut too_many_prevs = s.side_message("mallory", "21 prev events").into_json();
    let prevs: Vec<String> = (0..21)
        .map(|i| {
            if i == 0 {
                tip[0].to_string()
            } else {
                format!("${}", "A".repeat(42) + &format!("{i:02}"))
            }
        })
        .collect();
    craft::set(&mut too_many_prevs, "prev_events", json!(prevs)).unwrap();
    let too_many_prevs = s.peer.sign(too_many_prevs, v).expect("sign 21-prev event");
    let mut numeric_state_key = s
        .peer
        .template(
            &s.room,
            &EventDraft::state(
                "m.room.topic",
                "",
                s.peer.user("mallory"),
                json!({"topic": "numeric state key"}),
            ),
        )
        .unwrap();
    craft::set(&mut numeric_state_key, "state_key", json!(5)).unwrap();
    let numeric_state_key =
        craft::sign_as(numeric_state_key, v, s.peer.server_name(), s.peer.key()).unwrap();
    let good3 = s.good("good among format errors");
    let results = s.results(vec![
        too_many_prevs.to_federation_value(),
        craft::to_value(&numeric_state_key),
        good3.to_federation_value(),
    ]);
    refused(
        &results,
        &too_many_prevs.owned_event_id(),
        "21 prev events",
        "malformed",
    );
    let numeric_id = id_of(&numeric_state_key, v);
    refused(&results, &numeric_id, "numeric state_key", "malformed");
    s.assert_absent(numeric_id.as_str(), "numeric state_key");
    accepted(&results, &good3.owned_event_id(), "good PDU 3");
    s.assert_landed(&good3, "good among format errors");
    s.assert_absent(too_many_prevs.event_id().as_str(), "21 prev events");

    // The largest depth canonical JSON allows: accepted (no rule limits depth), and the
    // room keeps working for local users afterwards.
    let mut deep = s
        .peer
        .template(&s.room, &s.message_draft("mallory", "deepest"))
        .unwrap();
    craft::set(&mut deep, "depth", json!(9_007_199_254_740_991_i64)).unwrap();
    let deep = s.peer.sign(deep, v).unwrap();
    let results = s.results(vec![deep.to_federation_value()]);
    accepted(&results, &deep.owned_event_id(), "PDU at the maximum depth");
    s.peer.append(&s.room, &deep).unwrap();
    s.assert_landed(&deep, "deepest");
    let sent = s
        .alice
        .call_ok(
            "PUT",
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/after-deep",
                enc(&s.room)
            ),
            Some(&json!({"msgtype": "m.text", "body": "alice after the deepest"})),
        )
        .expect("alice can still send after a maximum-depth event");
    let alice_event = sent["event_id"].as_str().expect("event_id").to_owned();
    let ev = s.read(&alice_event).expect("alice's message readable");
    assert_eq!(ev["content"]["body"], json!("alice after the deepest"));
    let after_deep = s.good("mallory after the deepest");
    let results = s.results(vec![after_deep.to_federation_value()]);
    accepted(
        &results,
        &after_deep.owned_event_id(),
        "PDU after the maximum depth",
    );
    s.assert_landed(&after_deep, "mallory after the deepest");

    // A transaction ID used again with other content: the first answer is replayed and
    // the new PDUs are not processed.
    let first = s.good("first use of the txn id");
    let txn = s.next_txn();
    let r1 = s
        .fed
        .send_transaction(&txn, vec![first.to_federation_value()], vec![])
        .unwrap();
    assert_eq!(r1.status, 200, "{}", r1.text());
    let sneaky = s.side_message("mallory", "replayed txn id");
    let r2 = s
        .fed
        .send_transaction(&txn, vec![sneaky.to_federation_value()], vec![])
        .unwrap();
    assert_eq!(r2.status, 200, "{}", r2.text());
    assert_eq!(
        r2.json(),
        r1.json(),
        "a reused txn id must get the first answer"
    );
    s.assert_landed(&first, "first use of the txn id");
    s.assert_absent(sneaky.event_id().as_str(), "PDU in a reused transaction ID");
    s.weft.assert_healthy();
}

fn bad_xmatrix_headers_are_refused(backend: Backend) {
    let mut s = Scene::on(backend);
    let weft_name = s.weft.server_name.clone();
    let origin = s.peer.server_name().to_owned();
    let other_key = generate_key();
    let third = format!("localhost:{}", free_port());
    let key = s.peer.key().clone();

    // Each case sends a valid transaction with one good, unique PDU under a bad header.
    type Case<'a> = (&'static str, Box<dyn Fn(&str, &Value) -> Vec<String> + 'a>);
    let spec = |uri: &str, body: &Value| HeaderSpec {
        key: &key,
        key_id: key.key_id().to_owned(),
        origin: origin.clone(),
        destination: Some(weft_name.clone()),
        signed_destination: weft_name.clone(),
        signed_method: "PUT".into(),
        signed_uri: uri.to_owned(),
        signed_content: Some(body.clone()),
    };
    let cases: Vec<Case> = vec![
        ("no Authorization header", Box::new(|_, _| vec![])),
        (
            "not X-Matrix",
            Box::new(|_, _| vec!["Bearer abcdef".to_owned()]),
        ),
        (
            "malformed X-Matrix",
            Box::new(|_, _| vec!["X-Matrix origin".to_owned()]),
        ),
        (
            "X-Matrix without a signature",
            Box::new(|_, _| {
                vec![format!(
                    "X-Matrix origin=\"{origin}\",key=\"{}\",destination=\"{weft_name}\"",
                    key.key_id()
                )]
            }),
        ),
        (
            "unknown key ID",
            Box::new(|u, b| {
                let mut h = spec(u, b);
                h.key_id = "ed25519:nosuchkey".into();
                vec![h.header().unwrap()]
            }),
        ),
        (
            "signed by another key",
            Box::new(|u, b| {
                let mut h = spec(u, b);
                h.key = &other_key;
                vec![h.header().unwrap()]
            }),
        ),
        (
            "wrong destination",
            Box::new(|u, b| {
                let mut h = spec(u, b);
                h.destination = Some("localhost:1".into());
                h.signed_destination = "localhost:1".into();
                vec![h.header().unwrap()]
            }),
        ),
        (
            "destination omitted, signature for another destination",
            Box::new(|u, b| {
                let mut h = spec(u, b);
                h.destination = None;
                h.signed_destination = "localhost:1".into();
                vec![h.header().unwrap()]
            }),
        ),
        (
            "origin of a server that does not exist",
            Box::new(|u, b| {
                let mut h = spec(u, b);
                h.origin = third.clone();
                vec![h.header().unwrap()]
            }),
        ),
        (
            "origin is weft itself",
            Box::new(|u, b| {
                let mut h = spec(u, b);
                h.origin = weft_name.clone();
                vec![h.header().unwrap()]
            }),
        ),
        (
            "signature over another URI",
            Box::new(|u, b| {
                let mut h = spec(u, b);
                h.signed_uri = format!("{u}x");
                vec![h.header().unwrap()]
            }),
        ),
        (
            "signature over another method",
            Box::new(|u, b| {
                let mut h = spec(u, b);
                h.signed_method = "POST".into();
                vec![h.header().unwrap()]
            }),
        ),
        (
            "signature over another body",
            Box::new(|u, b| {
                let mut h = spec(u, b);
                let mut other = b.clone();
                other["origin_server_ts"] = json!(1);
                h.signed_content = Some(other);
                vec![h.header().unwrap()]
            }),
        ),
        (
            "signature over no body",
            Box::new(|u, b| {
                let mut h = spec(u, b);
                h.signed_content = None;
                vec![h.header().unwrap()]
            }),
        ),
        (
            "corrupted signature",
            Box::new(|u, b| {
                let good = spec(u, b).header().unwrap();
                vec![good.replacen("sig=\"", "sig=\"AAAA", 1)]
            }),
        ),
    ];

    let mut refused_pdus = Vec::new();
    for (i, (what, make)) in cases.iter().enumerate() {
        let pdu = s.side_message("mallory", &format!("under a bad header {i}"));
        let txn = s.next_txn();
        let uri = format!("/_matrix/federation/v1/send/{}", enc(&txn));
        let body = s
            .fed
            .transaction_body(vec![pdu.to_federation_value()], vec![]);
        let headers = make(&uri, &body);
        let r = s
            .fed
            .raw("PUT", &uri, &headers, Some(body.to_string().as_bytes()))
            .unwrap();
        assert_eq!(
            (r.status, r.errcode().as_deref()),
            (401, Some("M_UNAUTHORIZED")),
            "{what}: {}",
            r.text()
        );
        refused_pdus.push((what, pdu));
    }
    for (what, pdu) in &refused_pdus {
        s.assert_absent(pdu.event_id().as_str(), &format!("PDU sent with {what}"));
    }

    // Control: the same kind of request, correctly signed, is accepted and lands (so the
    // refusals above are about the headers).
    let good = s.good("under a good header");
    let txn = s.next_txn();
    let uri = format!("/_matrix/federation/v1/send/{}", enc(&txn));
    let body = s
        .fed
        .transaction_body(vec![good.to_federation_value()], vec![]);
    let header = spec(&uri, &body).header().unwrap();
    let r = s
        .fed
        .raw("PUT", &uri, &[header], Some(body.to_string().as_bytes()))
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    accepted(
        &pdu_results(&r.json()),
        &good.owned_event_id(),
        "control PDU",
    );
    s.assert_landed(&good, "under a good header");

    // Other endpoints check X-Matrix too.
    let event_path = format!(
        "/_matrix/federation/v1/event/{}",
        enc(good.event_id().as_str())
    );
    let r = s.fed.raw("GET", &event_path, &[], None).unwrap();
    assert_eq!(
        (r.status, r.errcode().as_deref()),
        (401, Some("M_UNAUTHORIZED")),
        "unsigned GET /event: {}",
        r.text()
    );
    let r = s.fed.request("GET", &event_path, None).unwrap();
    assert_eq!(r.status, 200, "signed GET /event: {}", r.text());
    let r = s
        .fed
        .raw(
            "GET",
            &format!(
                "/_matrix/federation/v1/make_join/{}/{}?ver=12",
                enc(&s.room),
                enc(s.peer.user("mallory2").as_str())
            ),
            &[],
            None,
        )
        .unwrap();
    assert_eq!(
        (r.status, r.errcode().as_deref()),
        (401, Some("M_UNAUTHORIZED")),
        "unsigned make_join: {}",
        r.text()
    );
    s.weft.assert_healthy();
}

fn spoofed_edus_are_ignored(backend: Backend) {
    let mut s = Scene::on(backend);
    let alice_id = format!("@alice:{}", s.weft.server_name);
    let mallory = s.peer.user("mallory").to_string();
    let ghost = s.peer.user("ghost").to_string();
    let good = s.good("something to read");
    let typing = |user: &str| {
        json!({"edu_type": "m.typing", "content": {
            "room_id": s.room, "user_id": user, "typing": true, "timeout": 60000,
        }})
    };
    let receipt = |user: &str| {
        json!({"edu_type": "m.receipt", "content": {s.room.clone(): {"m.read": {user: {
            "event_ids": [good.event_id().as_str()], "data": {"ts": 1},
        }}}}})
    };
    // Spoofed: weft's own alice (typing, receipt), and a user of the peer's server who is
    // not in the room. Genuine: mallory (the controls, which must show up).
    let edus = vec![
        typing(&alice_id),
        receipt(&alice_id),
        typing(&ghost),
        receipt(&ghost),
        typing(&mallory),
        receipt(&mallory),
    ];
    let (status, body) = s.send(vec![good.to_federation_value()], edus);
    assert_eq!(status, 200, "{body}");
    accepted(&pdu_results(&body), &good.owned_event_id(), "good message");

    let sync = s
        .alice
        .call_ok("GET", "/_matrix/client/v3/sync?timeout=0", None)
        .expect("sync");
    let ephemeral = sync["rooms"]["join"][&s.room]["ephemeral"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let typing_now: Vec<String> = ephemeral
        .iter()
        .filter(|e| e["type"] == json!("m.typing"))
        .flat_map(|e| {
            e["content"]["user_ids"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|u| u.as_str().map(str::to_owned))
        .collect();
    assert!(
        typing_now.contains(&mallory),
        "mallory's genuine typing is missing: {ephemeral:?}"
    );
    for spoofed in [&alice_id, &ghost] {
        assert!(
            !typing_now.contains(spoofed),
            "spoofed typing for {spoofed} shown: {ephemeral:?}"
        );
    }
    let readers: Vec<String> = ephemeral
        .iter()
        .filter(|e| e["type"] == json!("m.receipt"))
        .filter_map(|e| {
            e["content"][good.event_id().as_str()]["m.read"]
                .as_object()
                .cloned()
        })
        .flat_map(|m| m.keys().cloned().collect::<Vec<_>>())
        .collect();
    assert!(
        readers.contains(&mallory),
        "mallory's genuine receipt is missing: {ephemeral:?}"
    );
    for spoofed in [&alice_id, &ghost] {
        assert!(
            !readers.contains(spoofed),
            "spoofed receipt for {spoofed} shown: {ephemeral:?}"
        );
    }
    s.weft.assert_healthy();
}

fn duplicate_pdus_are_harmless(backend: Backend) {
    let mut s = Scene::on(backend);
    let a = s.good("duplicated in one transaction");
    let b = s.good("after the duplicates");
    // The same PDU three times in one transaction, and a good one after it.
    let results = s.results(vec![
        a.to_federation_value(),
        a.to_federation_value(),
        a.to_federation_value(),
        b.to_federation_value(),
    ]);
    accepted(&results, &a.owned_event_id(), "duplicated PDU");
    accepted(&results, &b.owned_event_id(), "PDU after the duplicates");
    // Sent again in a later transaction (a retry under another txn ID).
    let c = s.good("after the resend");
    let results = s.results(vec![
        a.to_federation_value(),
        b.to_federation_value(),
        c.to_federation_value(),
    ]);
    accepted(&results, &a.owned_event_id(), "resent PDU");
    accepted(&results, &c.owned_event_id(), "new PDU next to resent ones");
    s.assert_landed(&a, "duplicated in one transaction");
    s.assert_landed(&b, "after the duplicates");
    s.assert_landed(&c, "after the resend");
    let timeline = s.alice.messages(&s.room, 200).expect("messages");
    for (pdu, what) in [(&a, "duplicated PDU"), (&b, "PDU after the duplicates")] {
        let copies = timeline
            .iter()
            .filter(|e| e["event_id"] == json!(pdu.event_id().as_str()))
            .count();
        assert_eq!(copies, 1, "{what} appears {copies} times in /messages");
    }
    s.weft.assert_healthy();
}

/// Two topics on two forks of the peer's tip, sent in the given order (`concurrent`: both
/// at once on two connections), then a message merging them. State resolution orders the
/// two by mainline position (equal here) then `origin_server_ts`, and applies the later one
/// last: the topic with the greater timestamp must win whatever the arrival order.
fn fork_and_merge(s: &mut Scene, first: (&str, u64), second: (&str, u64), concurrent: bool) {
    let tip = s
        .peer
        .with_room(&s.room, |r| r.extremities().to_vec())
        .unwrap();
    let topic = |s: &Scene, (text, ts): (&str, u64)| {
        let mut d = EventDraft::state(
            "m.room.topic",
            "",
            s.peer.user("mallory"),
            json!({"topic": text}),
        );
        d.origin_server_ts = ts;
        s.peer
            .with_room(&s.room, |r| {
                r.build(&d, Some(&tip), s.peer.server_name(), s.peer.key())
            })
            .unwrap()
            .unwrap()
    };
    let a = topic(s, first);
    let b = topic(s, second);
    assert_eq!(a.prev_events(), b.prev_events());
    let answers: Vec<(u16, Value)> = if concurrent {
        let mut fed2 = s.peer.client(&s.weft.server_name).unwrap();
        let fed1 = &mut s.fed;
        let (ta, tb) = (a.to_federation_value(), b.to_federation_value());
        let (ida, idb) = (
            format!("fork-{}", a.event_id()),
            format!("fork-{}", b.event_id()),
        );
        std::thread::scope(|scope| {
            let h1 = scope.spawn(move || fed1.send_transaction(&ida, vec![ta], vec![]).unwrap());
            let h2 = scope.spawn(move || fed2.send_transaction(&idb, vec![tb], vec![]).unwrap());
            [h1.join().unwrap(), h2.join().unwrap()]
                .into_iter()
                .map(|r| (r.status, r.json()))
                .collect()
        })
    } else {
        vec![
            s.send(vec![a.to_federation_value()], vec![]),
            s.send(vec![b.to_federation_value()], vec![]),
        ]
    };
    for ((status, body), pdu) in answers.iter().zip([&a, &b]) {
        assert_eq!(*status, 200, "{body}");
        accepted(&pdu_results(body), &pdu.owned_event_id(), "topic on a fork");
    }
    let winner = if first.1 > second.1 {
        first.0
    } else {
        second.0
    };
    // The current state right after both forks arrived (before any merge).
    let topic_now = s
        .alice
        .state(&s.room, "m.room.topic", "")
        .unwrap()
        .expect("topic");
    assert_eq!(
        topic_now["topic"],
        json!(winner),
        "after the forks ({}, sent {}): {topic_now}",
        if concurrent {
            "concurrently"
        } else {
            "in order"
        },
        [first.0, second.0].join(" then ")
    );
    s.peer.append(&s.room, &a).unwrap();
    s.peer.append(&s.room, &b).unwrap();
    let merge = s.good(&format!("merging {} and {}", first.0, second.0));
    assert_eq!(merge.prev_events().len(), 2, "{:?}", merge.prev_events());
    let results = s.results(vec![merge.to_federation_value()]);
    accepted(&results, &merge.owned_event_id(), "merge");
    let topic_now = s
        .alice
        .state(&s.room, "m.room.topic", "")
        .unwrap()
        .expect("topic");
    assert_eq!(
        topic_now["topic"],
        json!(winner),
        "after the merge: {topic_now}"
    );
}

fn forks_with_conflicting_state_resolve_whatever_the_arrival_order(backend: Backend) {
    let mut s = Scene::on(backend);
    let now = fedpeer::peer::now_ms();
    // The winner (later timestamp) arrives second, then first, then both at once.
    fork_and_merge(&mut s, ("A early", now), ("B late", now + 1000), false);
    fork_and_merge(
        &mut s,
        ("D late", now + 3000),
        ("C early", now + 2000),
        false,
    );
    for i in 0..3 {
        let t = now + 10_000 * (i + 1);
        fork_and_merge(
            &mut s,
            (&format!("E{i} early"), t),
            (&format!("F{i} late"), t + 500),
            true,
        );
    }
    // Alice's next event builds on the resolved state.
    let sent = s
        .alice
        .call_ok(
            "PUT",
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/after-merges",
                enc(&s.room)
            ),
            Some(&json!({"msgtype": "m.text", "body": "alice after the merges"})),
        )
        .expect("alice sends after the merges");
    let id = sent["event_id"].as_str().expect("event_id").to_owned();
    assert!(s.read(&id).is_some(), "alice's message not readable");
    s.weft.assert_healthy();
}

// ---- doors into a room's history (issue 8): each attack, then what a local user sees.

fn alice_id(s: &Scene) -> String {
    format!("@alice:{}", s.weft.server_name)
}

/// Alice's `/sync` (no filter, no since): the room's section under `join` / `invite`.
fn sync_rooms(c: &mut ClientApi) -> Value {
    c.call_ok("GET", "/_matrix/client/v3/sync?timeout=0", None)
        .expect("sync")["rooms"]
        .clone()
}

/// A membership event of `sender` about `target`, built by `origin` on `prevs` of the peer's
/// copy of the room (the default: its tip).
fn membership_pdu(s: &Scene, origin: &Peer, sender: &str, target: &str, membership: &str) -> Pdu {
    let draft = EventDraft {
        origin_server_ts: fedpeer::peer::now_ms(),
        ..EventDraft::state(
            "m.room.member",
            target,
            origin.user(sender),
            json!({"membership": membership}),
        )
    };
    s.peer
        .with_room(&s.room, |r| {
            r.build(&draft, None, origin.server_name(), origin.key())
        })
        .expect("room")
        .expect("build")
}

fn put_invite(fed: &mut FedClient, s: &Scene, pdu: &Pdu) -> fedpeer::http::Response {
    let body = json!({
        "room_version": s.version.as_str(),
        "event": pdu.to_federation_value(),
        "invite_room_state": [
            {"type": "m.room.name", "state_key": "", "sender": pdu.sender().as_str(),
             "content": {"name": "chosen by the attacker"}}
        ],
    });
    fed.request(
        "PUT",
        &format!(
            "/_matrix/federation/v2/invite/{}/{}",
            enc(&s.room),
            enc(pdu.event_id().as_str())
        ),
        Some(&body),
    )
    .expect("invite request")
}

/// Alice is still joined, as every client API view says.
fn assert_still_joined(s: &mut Scene, what: &str) {
    let joined = s
        .alice
        .call_ok("GET", "/_matrix/client/v3/joined_rooms", None)
        .expect("joined_rooms");
    assert!(
        joined["joined_rooms"]
            .as_array()
            .is_some_and(|a| a.contains(&json!(s.room))),
        "{what}: room left alice's /joined_rooms: {joined}"
    );
    let r = s
        .alice
        .call(
            "GET",
            &format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=5",
                enc(&s.room)
            ),
            None,
        )
        .expect("messages");
    assert_eq!(r.status, 200, "{what}: /messages {}", r.text());
    let rooms = sync_rooms(&mut s.alice);
    assert!(
        rooms["invite"].get(&s.room).is_none(),
        "{what}: /sync shows an invite: {}",
        rooms["invite"]
    );
    assert!(
        rooms["join"].get(&s.room).is_some(),
        "{what}: /sync no longer shows the room joined"
    );
    let member = s
        .alice
        .state(&s.room, "m.room.member", &alice_id(s))
        .expect("member state")
        .expect("alice's member event");
    assert_eq!(member["membership"], json!("join"), "{what}: {member}");
}

fn an_invite_never_overwrites_a_join_or_a_ban(backend: Backend) {
    let mut s = Scene::on(backend);
    let alice = alice_id(&s);
    // 1. A server with no member in the room invites alice, who is joined.
    let outsider = Peer::start(free_port()).expect("outsider peer");
    let mut ofed = outsider.client(&s.weft.server_name).expect("client");
    let pdu = membership_pdu(&s, &outsider, "eve", &alice, "invite");
    let r = put_invite(&mut ofed, &s, &pdu);
    assert_eq!(
        r.status,
        403,
        "outsider's invite of a joined user: {}",
        r.text()
    );
    assert_eq!(r.errcode().as_deref(), Some("M_FORBIDDEN"), "{}", r.text());
    assert_still_joined(&mut s, "after an outsider's invite");

    // 2. A member's server invites alice (joined) too: the room's state refuses it.
    let mut fed = s.peer.client(&s.weft.server_name).expect("client");
    let pdu = membership_pdu(&s, &s.peer, "mallory", &alice, "invite");
    let r = put_invite(&mut fed, &s, &pdu);
    assert_eq!(
        r.status,
        403,
        "member's invite of a joined user: {}",
        r.text()
    );
    assert_eq!(r.errcode().as_deref(), Some("M_FORBIDDEN"), "{}", r.text());
    assert_still_joined(&mut s, "after a member's invite");

    // 3. A banned local user stays banned.
    let mut bob = ClientApi::new(&s.weft.base(), REQUEST_TIMEOUT).expect("client");
    bob.register("bob", "bob-password").expect("register bob");
    let bob_id = format!("@bob:{}", s.weft.server_name);
    bob.call_ok(
        "POST",
        &format!("/_matrix/client/v3/join/{}", enc(&s.room)),
        Some(&json!({})),
    )
    .expect("bob joins");
    let ban = s
        .alice
        .call_ok(
            "POST",
            &format!("/_matrix/client/v3/rooms/{}/ban", enc(&s.room)),
            Some(&json!({"user_id": bob_id})),
        )
        .expect("alice bans bob");
    let _ = ban;
    // The peer learns of the ban the way it learns of everything: weft's /send.
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    while s
        .peer
        .with_room(&s.room, |r| {
            r.state_event("m.room.member", &bob_id)
                .and_then(|e| e.membership())
                .is_some_and(|m| m == "ban")
        })
        .ok()
        != Some(true)
    {
        assert!(Instant::now() < deadline, "the peer never saw bob's ban");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pdu = membership_pdu(&s, &s.peer, "mallory", &bob_id, "invite");
    let r = put_invite(&mut fed, &s, &pdu);
    assert_eq!(r.status, 403, "invite of a banned user: {}", r.text());
    assert_eq!(r.errcode().as_deref(), Some("M_FORBIDDEN"), "{}", r.text());
    let member = s
        .alice
        .state(&s.room, "m.room.member", &bob_id)
        .expect("state")
        .expect("bob's member event");
    assert_eq!(member["membership"], json!("ban"), "{member}");
    let rooms = sync_rooms(&mut bob);
    assert!(
        rooms["invite"].get(&s.room).is_none(),
        "bob's /sync shows an invite: {}",
        rooms["invite"]
    );

    // 4. A legitimate invite still works: mallory invites a local user who is not in it.
    let mut carol = ClientApi::new(&s.weft.base(), REQUEST_TIMEOUT).expect("client");
    carol
        .register("carol", "carol-password")
        .expect("register carol");
    let carol_id = format!("@carol:{}", s.weft.server_name);
    let pdu = membership_pdu(&s, &s.peer, "mallory", &carol_id, "invite");
    let r = put_invite(&mut fed, &s, &pdu);
    assert_eq!(r.status, 200, "a good invite: {}", r.text());
    let rooms = sync_rooms(&mut carol);
    assert!(
        rooms["invite"].get(&s.room).is_some(),
        "carol's /sync shows no invite: {rooms}"
    );
    s.weft.assert_healthy();
}

/// An invite to a room weft holds no copy of is kept out of band (through that room's actor,
/// which holds nothing else of it) and shown to the invitee; declined while the inviting
/// server refuses `make_leave`, it becomes a leave here. Neither touches a room the invitee
/// is joined to, and the same server's second invite after the decline is shown again.
fn an_out_of_band_invite_is_kept_apart_and_declined_here(backend: Backend) {
    let mut s = Scene::on(backend);
    let alice = alice_id(&s);
    let elsewhere = s.peer.create_room("mallory").expect("a room on the peer");
    let version = s.peer.room_version(&elsewhere).expect("version");
    let invite = |s: &Scene, fed: &mut FedClient| {
        let draft = EventDraft {
            origin_server_ts: fedpeer::peer::now_ms(),
            ..EventDraft::state(
                "m.room.member",
                &alice,
                s.peer.user("mallory"),
                json!({"membership": "invite"}),
            )
        };
        let pdu = s.peer.build(&elsewhere, &draft).expect("build invite");
        let body = json!({
            "room_version": version.as_str(),
            "event": pdu.to_federation_value(),
            "invite_room_state": [],
        });
        fed.request(
            "PUT",
            &format!(
                "/_matrix/federation/v2/invite/{}/{}",
                enc(&elsewhere),
                enc(pdu.event_id().as_str())
            ),
            Some(&body),
        )
        .expect("invite request")
    };
    let mut fed = s.peer.client(&s.weft.server_name).expect("client");
    let r = invite(&s, &mut fed);
    assert_eq!(
        r.status,
        200,
        "an invite to a room weft does not hold: {}",
        r.text()
    );
    let rooms = sync_rooms(&mut s.alice);
    assert!(
        rooms["invite"].get(&elsewhere).is_some(),
        "alice's /sync shows no out-of-band invite: {rooms}"
    );
    assert_still_joined(&mut s, "after an out-of-band invite to another room");

    // The inviting server cannot take the decline: it is recorded here.
    s.peer.script(
        "GET",
        "/_matrix/federation/v1/make_leave/",
        500,
        json!({"errcode": "M_UNKNOWN", "error": "down for maintenance"}),
    );
    let before = s
        .alice
        .call_ok("GET", "/_matrix/client/v3/sync?timeout=0", None)
        .expect("sync")["next_batch"]
        .as_str()
        .expect("next_batch")
        .to_owned();
    s.alice
        .call_ok(
            "POST",
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&elsewhere)),
            Some(&json!({})),
        )
        .expect("alice declines");
    let after = s
        .alice
        .call_ok(
            "GET",
            &format!("/_matrix/client/v3/sync?timeout=0&since={}", enc(&before)),
            None,
        )
        .expect("sync");
    assert!(
        after["rooms"]["leave"].get(&elsewhere).is_some(),
        "the decline does not reach /sync as a leave: {after}"
    );
    let rooms = sync_rooms(&mut s.alice);
    assert!(
        rooms["invite"].get(&elsewhere).is_none(),
        "the declined invite is still shown: {}",
        rooms["invite"]
    );
    assert_still_joined(&mut s, "after declining an out-of-band invite");

    // A new invite after the decline is kept again.
    let r = invite(&s, &mut fed);
    assert_eq!(r.status, 200, "a second invite: {}", r.text());
    let rooms = sync_rooms(&mut s.alice);
    assert!(
        rooms["invite"].get(&elsewhere).is_some(),
        "the second invite is not shown: {rooms}"
    );
    s.weft.assert_healthy();
}

/// The federation history endpoints, as a server asks them about `event`.
fn history_requests(s: &Scene, event: &str) -> Vec<(&'static str, String, Option<Value>)> {
    let (room, ev) = (enc(&s.room), enc(event));
    vec![
        ("GET", format!("/_matrix/federation/v1/event/{ev}"), None),
        (
            "GET",
            format!("/_matrix/federation/v1/state/{room}?event_id={ev}"),
            None,
        ),
        (
            "GET",
            format!("/_matrix/federation/v1/state_ids/{room}?event_id={ev}"),
            None,
        ),
        (
            "GET",
            format!("/_matrix/federation/v1/event_auth/{room}/{ev}"),
            None,
        ),
        (
            "GET",
            format!("/_matrix/federation/v1/backfill/{room}?v={ev}&limit=10"),
            None,
        ),
        (
            "POST",
            format!("/_matrix/federation/v1/get_missing_events/{room}"),
            Some(json!({"earliest_events": [], "latest_events": [event], "limit": 10})),
        ),
    ]
}

fn history_is_served_only_to_servers_in_the_room(backend: Backend) {
    let mut s = Scene::on(backend);
    let sent = s
        .alice
        .call_ok(
            "PUT",
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/private-1",
                enc(&s.room)
            ),
            Some(&json!({"msgtype": "m.text", "body": "for members only"})),
        )
        .expect("alice sends");
    let secret = sent["event_id"].as_str().expect("event_id").to_owned();
    // A member's server may read it (the control).
    for (method, path, body) in history_requests(&s, &secret) {
        let r = s
            .fed
            .request(method, &path, body.as_ref())
            .expect("request");
        assert_eq!(
            r.status,
            200,
            "member server: {method} {path}: {}",
            r.text()
        );
    }
    let outsider = Peer::start(free_port()).expect("outsider peer");
    let mut ofed = outsider.client(&s.weft.server_name).expect("client");
    for (method, path, body) in history_requests(&s, &secret) {
        let r = ofed.request(method, &path, body.as_ref()).expect("request");
        assert_eq!(r.status, 403, "outsider: {method} {path}: {}", r.text());
        assert_eq!(r.errcode().as_deref(), Some("M_FORBIDDEN"), "{}", r.text());
        assert!(
            !r.text().contains("for members only"),
            "outsider got the event: {}",
            r.text()
        );
    }
    // world_readable history is for everyone.
    s.alice
        .call_ok(
            "PUT",
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.history_visibility/",
                enc(&s.room)
            ),
            Some(&json!({"history_visibility": "world_readable"})),
        )
        .expect("world_readable");
    let sent = s
        .alice
        .call_ok(
            "PUT",
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/public-1",
                enc(&s.room)
            ),
            Some(&json!({"msgtype": "m.text", "body": "for the world"})),
        )
        .expect("alice sends");
    let public = sent["event_id"].as_str().expect("event_id").to_owned();
    let r = ofed
        .request(
            "GET",
            &format!("/_matrix/federation/v1/event/{}", enc(&public)),
            None,
        )
        .expect("request");
    assert_eq!(r.status, 200, "world_readable event: {}", r.text());
    assert!(r.text().contains("for the world"), "{}", r.text());
    // The earlier event was not world_readable when sent: still refused.
    let r = ofed
        .request(
            "GET",
            &format!("/_matrix/federation/v1/event/{}", enc(&secret)),
            None,
        )
        .expect("request");
    assert_eq!(r.status, 403, "shared event after the change: {}", r.text());
    // The local user's view is unchanged.
    assert!(s.read(&secret).is_some(), "alice lost her own event");
    s.weft.assert_healthy();
}

fn a_gap_filled_from_a_state_answer_that_repeats_its_events_lands(backend: Backend) {
    let mut s = Scene::on(backend);
    // X extends the tip but is never sent; E follows X. get_missing_events finds nothing,
    // so weft asks /state at X, whose answer (like Synapse's) lists every state event in
    // `auth_chain` too.
    let x = s.good("the missing one");
    let e = s.good("after the gap");
    s.peer.script(
        "POST",
        "/_matrix/federation/v1/get_missing_events/",
        200,
        json!({"events": []}),
    );
    let (state, chain) = s
        .peer
        .with_room(&s.room, |r| {
            let (st, ch) = r.state_ids_at(&x.owned_event_id()).expect("state at X");
            let mut all = ch.clone();
            all.extend(st.iter().cloned());
            (r.events_json(&st), r.events_json(&all))
        })
        .expect("room");
    assert!(chain.len() > state.len(), "the answer repeats its state");
    s.peer.script(
        "GET",
        "/_matrix/federation/v1/state/",
        200,
        json!({"pdus": state, "auth_chain": chain}),
    );
    let results = s.results(vec![e.to_federation_value()]);
    accepted(
        &results,
        &e.owned_event_id(),
        "event after a gap filled with /state",
    );
    s.assert_landed(&e, "after the gap");
    let log = s.weft.log_text();
    assert!(!log.contains("UNIQUE constraint"), "{log}");
    s.weft.assert_healthy();
}

/// Mallory (power 50) changes the power levels (needs 100): rejected by the auth rules.
fn power_grab(s: &Scene) -> Pdu {
    let mut users = serde_json::Map::new();
    users.insert(s.peer.user("mallory").to_string(), json!(100));
    users.insert(alice_id(s), json!(100));
    let d = EventDraft {
        origin_server_ts: fedpeer::peer::now_ms(),
        ..EventDraft::state(
            "m.room.power_levels",
            "",
            s.peer.user("mallory"),
            json!({"users": users}),
        )
    };
    s.peer.build(&s.room, &d).expect("build")
}

fn mallory_power(s: &mut Scene) -> Value {
    let pl = s
        .alice
        .state(&s.room, "m.room.power_levels", "")
        .expect("state")
        .expect("power levels");
    pl["users"][s.peer.user("mallory").as_str()].clone()
}

/// R is rejected on /send; then a child of R is sent, and weft fetches R again the way
/// `how` says (the peer's answers are scripted so that only that path can bring it).
fn rejected_comes_back(backend: Backend, how: &str) {
    let mut s = Scene::on(backend);
    let r = power_grab(&s);
    let results = s.results(vec![r.to_federation_value()]);
    refused(&results, &r.owned_event_id(), "power grab", "rejected");
    // The peer builds on R as if it had been accepted.
    s.peer.append(&s.room, &r).expect("append");
    // The child needs the power R grants (a tombstone needs 100), so it stands only if R
    // counts as state.
    let child = {
        let d = EventDraft {
            origin_server_ts: fedpeer::peer::now_ms(),
            ..EventDraft::state(
                "m.room.tombstone",
                "",
                s.peer.user("mallory"),
                json!({"body": format!("taken over ({how})"), "replacement_room": "!elsewhere:x"}),
            )
        };
        let pdu = s.peer.build(&s.room, &d).expect("build");
        s.peer.append(&s.room, &pdu).expect("append");
        pdu
    };
    let r_json = r.to_federation_value();
    match how {
        "get_missing_events" => s.peer.script(
            "POST",
            "/_matrix/federation/v1/get_missing_events/",
            200,
            json!({"events": [r_json]}),
        ),
        "event" => {
            s.peer.script(
                "POST",
                "/_matrix/federation/v1/get_missing_events/",
                200,
                json!({"events": []}),
            );
            s.peer.script(
                "GET",
                "/_matrix/federation/v1/event/",
                200,
                json!({"origin": s.peer.server_name(), "origin_server_ts": 0, "pdus": [r_json]}),
            );
        }
        "state" => {
            // The state "at" R's child names R as the power levels.
            s.peer.script(
                "POST",
                "/_matrix/federation/v1/get_missing_events/",
                200,
                json!({"events": []}),
            );
            let (state, chain) = s
                .peer
                .with_room(&s.room, |room| {
                    let (st, ch) = room.state_ids_at(&child.owned_event_id()).expect("state");
                    (room.events_json(&st), room.events_json(&ch))
                })
                .expect("room");
            assert!(
                state
                    .iter()
                    .any(|e| e["event_id"] == json!(r.event_id().as_str()) || e == &r_json),
                "the scripted state holds R"
            );
            s.peer.script(
                "GET",
                "/_matrix/federation/v1/state/",
                200,
                json!({"pdus": state, "auth_chain": chain}),
            );
        }
        other => panic!("unknown path {other}"),
    }
    let _ = s.results(vec![child.to_federation_value()]);
    // Whatever became of the child, R is not in the timeline, not state, not readable.
    s.assert_absent(r.event_id().as_str(), "rejected power grab");
    assert_eq!(
        mallory_power(&mut s),
        json!(50),
        "the rejected power levels became state ({how})"
    );
    let tomb = s
        .alice
        .state(&s.room, "m.room.tombstone", "")
        .expect("state");
    assert!(
        tomb.is_none(),
        "an event authorized by the rejected one is state ({how}): {tomb:?}"
    );
    // Sent once more on /send: still rejected.
    let results = s.results(vec![r.to_federation_value()]);
    refused(
        &results,
        &r.owned_event_id(),
        "power grab, again",
        "rejected",
    );
    s.assert_absent(r.event_id().as_str(), "rejected power grab");
    s.weft.assert_healthy();
}

fn a_rejected_event_stays_rejected_through_get_missing_events(backend: Backend) {
    rejected_comes_back(backend, "get_missing_events");
}

fn a_rejected_event_stays_rejected_through_event(backend: Backend) {
    rejected_comes_back(backend, "event");
}

fn a_rejected_event_stays_rejected_through_state(backend: Backend) {
    rejected_comes_back(backend, "state");
}

/// weft with alice, and a room hosted by the peer (mallory created it) with some history,
/// built by `history` before alice joins; returns (weft, alice, peer, fed client, room).
fn hosted_room(
    backend: Backend,
    history: impl FnOnce(&Peer, &str),
) -> (Weft, ClientApi, Peer, FedClient, String) {
    let weft = Weft::start(backend);
    let mut alice = ClientApi::new(&weft.base(), REQUEST_TIMEOUT).expect("client");
    alice
        .register("alice", "alice-password")
        .expect("register alice");
    let peer = Peer::start(free_port()).expect("start peer");
    let room = peer.create_room("mallory").expect("create room");
    history(&peer, &room);
    alice
        .call_ok(
            "POST",
            &format!(
                "/_matrix/client/v3/join/{}?server_name={}",
                enc(&room),
                enc(peer.server_name())
            ),
            Some(&json!({})),
        )
        .expect("alice joins the peer's room");
    let fed = peer.client(&weft.server_name).expect("fed client");
    (weft, alice, peer, fed, room)
}

fn peer_message(peer: &Peer, room: &str, who: &str, body: &str) -> Pdu {
    peer.message(room, who, body).expect("message")
}

/// Bodies of the messages alice reads paging back through the room.
fn bodies_back(alice: &mut ClientApi, room: &str) -> Vec<String> {
    let r = alice
        .call_ok(
            "GET",
            &format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50",
                enc(room)
            ),
            None,
        )
        .expect("messages");
    r["chunk"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

fn backfill_takes_only_ancestors_of_the_point(backend: Backend) {
    let mut real = Vec::new();
    let (mut weft, mut alice, peer, _fed, room) = hosted_room(backend, |peer, room| {
        for i in 0..3 {
            real.push(peer_message(peer, room, "mallory", &format!("history {i}")));
        }
    });
    let version = peer.room_version(&room).expect("version");
    // The peer's true history, plus events that descend from nothing we asked about: a
    // message and a topic on a fabricated parent.
    let tip = real.last().expect("history").owned_event_id();
    let mut answer = peer
        .with_room(&room, |r| r.backfill(&[tip], 50))
        .expect("room");
    let orphan_parent = {
        let d = EventDraft::new(
            "m.room.message",
            peer.user("mallory"),
            json!({"msgtype": "m.text", "body": "never sent"}),
        );
        peer.build(&room, &d).expect("build")
    };
    let fabricated: Vec<Pdu> = [
        EventDraft::new(
            "m.room.message",
            peer.user("mallory"),
            json!({"msgtype": "m.text", "body": "injected"}),
        ),
        EventDraft::state(
            "m.room.topic",
            "",
            peer.user("mallory"),
            json!({"topic": "injected topic"}),
        ),
    ]
    .iter()
    .map(|d| {
        peer.with_room(&room, |r| {
            r.build(
                d,
                Some(&[orphan_parent.owned_event_id()]),
                peer.server_name(),
                peer.key(),
            )
        })
        .expect("room")
        .expect("build")
    })
    .collect();
    for f in &fabricated {
        answer.insert(0, f.to_federation_value());
    }
    let _ = version;
    peer.script(
        "GET",
        "/_matrix/federation/v1/backfill/",
        200,
        json!({"origin": peer.server_name(), "origin_server_ts": 0, "pdus": answer}),
    );
    let bodies = bodies_back(&mut alice, &room);
    for i in 0..3 {
        assert!(
            bodies.contains(&format!("history {i}")),
            "backfilled history {i} missing: {bodies:?}"
        );
    }
    assert!(
        !bodies.iter().any(|b| b == "injected"),
        "a non-ancestor was backfilled: {bodies:?}"
    );
    let topic = alice.state(&room, "m.room.topic", "").expect("state");
    assert!(
        topic.is_none(),
        "backfill changed the current state: {topic:?}"
    );
    for f in &fabricated {
        assert!(
            alice
                .event(&room, f.event_id().as_str())
                .expect("event")
                .is_none(),
            "fabricated {} readable",
            f.event_id()
        );
    }
    assert!(
        weft.log_text().contains("not history of the point"),
        "dropping was not logged"
    );
    weft.assert_healthy();
}

fn a_rejected_event_stays_rejected_through_backfill(backend: Backend) {
    // eve joins, is banned, then "speaks" citing her old join as auth event: rejected by
    // the state before it (the ban), not by its own auth events.
    let mut held: Vec<Pdu> = Vec::new();
    let (mut weft, mut alice, peer, mut fed, room) = hosted_room(backend, |peer, room| {
        let eve = peer.user("eve");
        let join = EventDraft::state(
            "m.room.member",
            eve.as_str(),
            eve.clone(),
            json!({"membership": "join"}),
        );
        let join = peer.build(room, &join).expect("build");
        peer.append(room, &join).expect("append");
        held.push(peer_message(peer, room, "mallory", "before the ban"));
        let ban = EventDraft::state(
            "m.room.member",
            eve.as_str(),
            peer.user("mallory"),
            json!({"membership": "ban"}),
        );
        let ban = peer.build(room, &ban).expect("build");
        peer.append(room, &ban).expect("append");
        let version = peer.room_version(room).expect("version");
        let mut obj = peer
            .template(
                room,
                &EventDraft::new(
                    "m.room.message",
                    eve.clone(),
                    json!({"msgtype": "m.text", "body": "banned but speaking"}),
                ),
            )
            .expect("template");
        let (create, pl) = peer
            .with_room(room, |r| {
                (
                    r.state_event("m.room.create", "")
                        .map(|e| e.event_id().to_string()),
                    r.state_event("m.room.power_levels", "")
                        .map(|e| e.event_id().to_string()),
                )
            })
            .expect("room");
        let auth: Vec<String> = [create, pl, Some(join.event_id().to_string())]
            .into_iter()
            .flatten()
            .collect();
        craft::set(&mut obj, "auth_events", json!(auth)).expect("set");
        let banned_speech = peer.sign(obj, version).expect("sign");
        peer.append(room, &banned_speech).expect("append");
        held.push(banned_speech);
        held.push(peer_message(peer, room, "mallory", "after the ban"));
    });
    let bad = held[1].clone();
    // The banned speech arrives on /send: a gap (its parent, the ban, predates our join),
    // filled from /state and /event; then it is rejected.
    peer.script(
        "POST",
        "/_matrix/federation/v1/get_missing_events/",
        200,
        json!({"events": []}),
    );
    let r = fed
        .send_transaction("banned-speech", vec![bad.to_federation_value()], vec![])
        .expect("send");
    let results = pdu_results(&r.json());
    refused(&results, &bad.owned_event_id(), "banned speech", "rejected");
    // Paging back: backfill brings the whole history, the banned speech included.
    let bodies = bodies_back(&mut alice, &room);
    assert!(
        bodies.iter().any(|b| b == "before the ban") && bodies.iter().any(|b| b == "after the ban"),
        "history not backfilled: {bodies:?}"
    );
    assert!(
        !bodies.iter().any(|b| b == "banned but speaking"),
        "the rejected event entered the timeline through backfill: {bodies:?}"
    );
    assert!(
        alice
            .event(&room, bad.event_id().as_str())
            .expect("event")
            .is_none(),
        "the rejected event is readable"
    );
    weft.assert_healthy();
}

fn concurrent_chains_of_messages_land_and_bad_ones_do_not(backend: Backend) {
    let mut s = Scene::on(backend);
    let tip = s
        .peer
        .with_room(&s.room, |r| r.extremities().to_vec())
        .expect("room");
    // Four chains of three messages from one tip, sent interleaved; the third chain's
    // last message is from a user who never joined.
    let mut chains: Vec<Vec<Pdu>> = Vec::new();
    for c in 0..4 {
        let mut prev = tip.clone();
        let mut chain = Vec::new();
        for i in 0..3 {
            let who = if c == 2 && i == 2 {
                "stranger"
            } else {
                "mallory"
            };
            let d = EventDraft {
                origin_server_ts: fedpeer::peer::now_ms(),
                ..s.message_draft(who, &format!("chain {c} message {i}"))
            };
            let pdu = s
                .peer
                .with_room(&s.room, |r| {
                    r.build(&d, Some(&prev), s.peer.server_name(), s.peer.key())
                })
                .expect("room")
                .expect("build");
            prev = vec![pdu.owned_event_id()];
            chain.push(pdu);
        }
        chains.push(chain);
    }
    for i in 0..3 {
        let pdus: Vec<Value> = chains.iter().map(|c| c[i].to_federation_value()).collect();
        let results = s.results(pdus);
        for (c, chain) in chains.iter().enumerate() {
            let id = chain[i].owned_event_id();
            if c == 2 && i == 2 {
                refused(&results, &id, "stranger's message on a fork", "rejected");
            } else {
                accepted(&results, &id, "message on a fork");
            }
        }
    }
    for (c, chain) in chains.iter().enumerate() {
        for (i, pdu) in chain.iter().enumerate() {
            let body = format!("chain {c} message {i}");
            if c == 2 && i == 2 {
                s.assert_absent(pdu.event_id().as_str(), "stranger's message");
            } else {
                s.assert_landed(pdu, &body);
            }
        }
    }
    // Alice's next event merges the tips (at most ten prev events).
    let sent = s
        .alice
        .call_ok(
            "PUT",
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/after-chains",
                enc(&s.room)
            ),
            Some(&json!({"msgtype": "m.text", "body": "alice merges"})),
        )
        .expect("alice sends");
    let id = sent["event_id"].as_str().expect("event_id").to_owned();
    let ev = s.read(&id).expect("alice's message readable");
    assert_eq!(ev["content"]["body"], json!("alice merges"));
    s.weft.assert_healthy();
}

/// Three chains forked from one tip, each with state events among its messages, arrive
/// interleaved (the room actor admits them from memory: the states after recent events and
/// in-memory resolution). What a local user sees must be what the spec's resolution gives:
/// of two topics set with equal power on two forks the later one wins, an unconflicted name
/// stands, a ban on one fork makes the banned user's later message on another fork
/// soft-fail (stored, never shown), a power grab on a fork is rejected, and a merge of the
/// three tips changes none of it.
fn concurrent_forks_with_state_resolve_as_the_spec_says(backend: Backend) {
    let mut s = Scene::on(backend);
    let now = fedpeer::peer::now_ms();
    // eve (the peer's second user) joins first.
    let eve = s.peer.user("eve");
    let join = s
        .peer
        .build(
            &s.room,
            &EventDraft::state(
                "m.room.member",
                eve.as_str(),
                eve.clone(),
                json!({"membership": "join"}),
            ),
        )
        .expect("build eve's join");
    let results = s.results(vec![join.to_federation_value()]);
    accepted(&results, &join.owned_event_id(), "eve's join");
    s.peer.append(&s.room, &join).expect("append");
    let tip = vec![join.owned_event_id()];

    let state = |s: &Scene, kind: &str, key: &str, content: Value, ts: u64| {
        let mut d = EventDraft::state(kind, key, s.peer.user("mallory"), content);
        d.origin_server_ts = ts;
        d
    };
    let msg = |s: &Scene, who: &str, body: String, ts: u64| EventDraft {
        origin_server_ts: ts,
        ..s.message_draft(who, &body)
    };
    let mallory = s.peer.user("mallory").to_string();
    let mut grab_pl = s
        .peer
        .with_room(&s.room, |r| {
            r.state_event("m.room.power_levels", "")
                .map(|e| serde_json::from_str::<Value>(e.content().get()).expect("content"))
        })
        .expect("room")
        .expect("power levels");
    grab_pl["users"][mallory.as_str()] = json!(100);
    let chains_drafts: Vec<Vec<EventDraft>> = vec![
        vec![
            msg(&s, "mallory", "fork 0 message 0".into(), now + 10),
            state(
                &s,
                "m.room.topic",
                "",
                json!({"topic": "T early"}),
                now + 1000,
            ),
            msg(&s, "mallory", "fork 0 message 2".into(), now + 1010),
            msg(&s, "mallory", "fork 0 message 3".into(), now + 1020),
        ],
        vec![
            msg(&s, "mallory", "fork 1 message 0".into(), now + 20),
            EventDraft {
                origin_server_ts: now + 30,
                ..EventDraft::state(
                    "m.room.member",
                    eve.as_str(),
                    s.peer.user("mallory"),
                    json!({"membership": "ban"}),
                )
            },
            state(&s, "m.room.name", "", json!({"name": "N"}), now + 1500),
            state(&s, "m.room.power_levels", "", grab_pl, now + 1600),
        ],
        vec![
            msg(&s, "mallory", "fork 2 message 0".into(), now + 40),
            state(
                &s,
                "m.room.topic",
                "",
                json!({"topic": "T late"}),
                now + 2000,
            ),
            msg(&s, "eve", "eve on fork 2".into(), now + 2010),
            msg(&s, "mallory", "fork 2 message 3".into(), now + 2020),
        ],
    ];
    let mut chains: Vec<Vec<Pdu>> = Vec::new();
    for drafts in &chains_drafts {
        let mut prev = tip.clone();
        let mut chain = Vec::new();
        for d in drafts {
            let pdu = s
                .peer
                .with_room(&s.room, |r| {
                    r.build(d, Some(&prev), s.peer.server_name(), s.peer.key())
                })
                .expect("room")
                .expect("build");
            prev = vec![pdu.owned_event_id()];
            chain.push(pdu);
        }
        chains.push(chain);
    }
    let grab = chains[1][3].owned_event_id();
    let eve_msg = chains[2][2].owned_event_id();
    let (memory_before, db_before) = (
        admission_count(&mut s, "memory"),
        admission_count(&mut s, "database"),
    );
    for i in 0..4 {
        let pdus: Vec<Value> = chains.iter().map(|c| c[i].to_federation_value()).collect();
        let results = s.results(pdus);
        for chain in &chains {
            let id = chain[i].owned_event_id();
            if id == grab {
                refused(&results, &id, "power grab on a fork", "rejected");
            } else {
                // Soft-failed events are answered like accepted ones.
                accepted(&results, &id, "event on a fork");
            }
        }
    }
    let check_state = |s: &mut Scene, when: &str| {
        let topic = s.alice.state(&s.room, "m.room.topic", "").unwrap();
        assert_eq!(
            topic.map(|t| t["topic"].clone()),
            Some(json!("T late")),
            "{when}: topic"
        );
        let name = s.alice.state(&s.room, "m.room.name", "").unwrap();
        assert_eq!(
            name.map(|n| n["name"].clone()),
            Some(json!("N")),
            "{when}: name"
        );
        let member = s
            .alice
            .state(&s.room, "m.room.member", eve.as_str())
            .unwrap();
        assert_eq!(
            member.map(|m| m["membership"].clone()),
            Some(json!("ban")),
            "{when}: eve's membership"
        );
        let pl = s
            .alice
            .state(&s.room, "m.room.power_levels", "")
            .unwrap()
            .expect("power levels");
        assert_eq!(
            pl["users"][mallory.as_str()],
            json!(50),
            "{when}: power levels"
        );
    };
    check_state(&mut s, "after the forks");
    // All twelve were admitted (or rejected, or soft-failed) from the actor's memory.
    assert_eq!(
        admission_count(&mut s, "memory") - memory_before,
        12.0,
        "fork events admitted from memory"
    );
    assert_eq!(
        admission_count(&mut s, "database"),
        db_before,
        "a fork event took the database path"
    );
    for (c, chain) in chains.iter().enumerate() {
        for (i, pdu) in chain.iter().enumerate() {
            let id = pdu.owned_event_id();
            if id == grab {
                s.assert_absent(id.as_str(), "the power grab");
            } else if id == eve_msg {
                let shown = s
                    .alice
                    .messages(&s.room, 200)
                    .expect("messages")
                    .into_iter()
                    .any(|e| e["event_id"] == json!(id.as_str()));
                assert!(
                    !shown,
                    "eve's message after her ban (soft-failed) is in /messages"
                );
            } else if pdu.state_key().is_none() {
                let body = if c == 2 && i == 2 {
                    "eve on fork 2".to_owned()
                } else {
                    format!("fork {c} message {i}")
                };
                s.assert_landed(pdu, &body);
            }
        }
    }
    // The peer merges the three tips (the grab's parent ends fork 1).
    for chain in &chains {
        for pdu in chain {
            if pdu.owned_event_id() != grab {
                s.peer.append(&s.room, pdu).expect("append");
            }
        }
    }
    let merge = s.good("merging three forks");
    assert!(merge.prev_events().len() >= 3, "{:?}", merge.prev_events());
    let results = s.results(vec![merge.to_federation_value()]);
    accepted(&results, &merge.owned_event_id(), "merge of the forks");
    check_state(&mut s, "after the merge");
    s.assert_landed(&merge, "merging three forks");
    s.weft.assert_healthy();
}

/// How many received PDUs room actors admitted by `path` (`memory`, `database`), from
/// weft's `/metrics` (0 before the first one).
fn admission_count(s: &mut Scene, path: &str) -> f64 {
    let r = s.alice.call("GET", "/metrics", None).expect("/metrics");
    assert_eq!(r.status, 200, "/metrics: {}", r.text());
    let label = format!("path=\"{path}\"");
    r.text()
        .lines()
        .find(|l| l.starts_with("weft_room_admission_path_total") && l.contains(&label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Three origin servers (each its own name and key, each with a chain of its own from its
/// own tip) send at once, three transactions of 20 PDUs each: the room actor takes their
/// PDUs into shared batches and the writer commits those together. Every PDU lands and is
/// readable, each chain keeps its order in `/messages`, search finds each chain's marker
/// word, and alice is notified of every message.
fn many_origins_at_once_keep_each_chains_order(backend: Backend) {
    const PER_ORIGIN: usize = 60;
    let mut s = Scene::on(backend);
    let with0 = metric(&mut s, "weft_federation_txn_records_total", "with_pdus");
    let mut others: Vec<(Peer, &str)> = Vec::new();
    for name in ["carol", "dave"] {
        let peer = Peer::start(free_port()).expect("start peer");
        let mut fed = peer.client(&s.weft.server_name).expect("fed client");
        peer.join(&mut fed, &s.room, name)
            .expect("joins over federation");
        others.push((peer, name));
    }
    let names: Vec<&str> = std::iter::once("mallory")
        .chain(others.iter().map(|(_, n)| *n))
        .collect();
    // Each origin's chain, built on its own copy of the room (from its own tip), and a
    // signed client of each origin.
    let (chains, clients): (Vec<Vec<Pdu>>, Vec<FedClient>) = {
        let peers: Vec<&Peer> = std::iter::once(&s.peer)
            .chain(others.iter().map(|(p, _)| p))
            .collect();
        peers
            .iter()
            .zip(&names)
            .map(|(peer, name)| {
                let chain = (0..PER_ORIGIN)
                    .map(|i| {
                        let marker = if i == 0 {
                            format!(" {name}marker")
                        } else {
                            String::new()
                        };
                        peer.message(&s.room, name, &format!("{name} says {i}{marker}"))
                            .expect("build message")
                    })
                    .collect();
                let fed = peer.client(&s.weft.server_name).expect("fed client");
                (chain, fed)
            })
            .unzip()
    };
    let senders: Vec<_> = clients
        .into_iter()
        .zip(&chains)
        .zip(&names)
        .map(|((mut fed, chain), name)| {
            let first_txn = chain[..20]
                .iter()
                .map(Pdu::to_federation_value)
                .collect::<Vec<_>>();
            let txns: Vec<(Vec<OwnedEventId>, Vec<Value>)> = chain
                .chunks(20)
                .map(|c| {
                    (
                        c.iter().map(Pdu::owned_event_id).collect(),
                        c.iter().map(Pdu::to_federation_value).collect(),
                    )
                })
                .collect();
            let name = name.to_string();
            std::thread::spawn(move || {
                let mut answers = Vec::new();
                for (t, (ids, pdus)) in txns.into_iter().enumerate() {
                    let r = fed
                        .send_transaction(&format!("many-{name}-{t}"), pdus, Vec::new())
                        .expect("send");
                    assert_eq!(r.status, 200, "{name}'s transaction {t}: {}", r.text());
                    let results = pdu_results(&r.json());
                    for id in &ids {
                        accepted(&results, id, &format!("{name}'s message"));
                    }
                    answers.push(r.json());
                }
                (fed, first_txn, answers)
            })
        })
        .collect();
    let mut repeats = Vec::new();
    for t in senders {
        repeats.push(t.join().expect("an origin's sender failed"));
    }
    // The origins' transactions into the one room may share a commit: each answer was still
    // stored with its own PDUs, and a repeat of each ID gets that origin's stored answer.
    let txns_sent = (PER_ORIGIN / 20 * names.len()) as f64;
    assert_eq!(
        metric(&mut s, "weft_federation_txn_records_total", "with_pdus") - with0,
        txns_sent,
        "every transaction's answer went into a commit of its PDUs"
    );
    for ((mut fed, first_txn, answers), name) in repeats.into_iter().zip(&names) {
        let again = fed
            .send_transaction(&format!("many-{name}-0"), first_txn, Vec::new())
            .expect("send again");
        assert_eq!(again.status, 200, "{}", again.text());
        assert_eq!(again.json(), answers[0], "{name}'s repeated transaction");
    }
    for (chain, name) in chains.iter().zip(&names) {
        for (i, pdu) in chain.iter().enumerate() {
            let body = if i == 0 {
                format!("{name} says {i} {name}marker")
            } else {
                format!("{name} says {i}")
            };
            s.assert_landed(pdu, &body);
        }
    }
    // Newest first: each chain's messages appear in reverse order of the chain.
    let listed: Vec<String> = s
        .alice
        .messages(&s.room, 1000)
        .expect("messages")
        .iter()
        .filter_map(|e| e["event_id"].as_str().map(str::to_owned))
        .collect();
    for (chain, name) in chains.iter().zip(&names) {
        let at: Vec<usize> = chain
            .iter()
            .map(|p| {
                listed
                    .iter()
                    .position(|id| id == p.event_id().as_str())
                    .unwrap_or_else(|| panic!("{name}'s {} not in /messages", p.event_id()))
            })
            .collect();
        assert!(
            at.windows(2).all(|w| w[0] > w[1]),
            "{name}'s chain out of order in /messages: {at:?}"
        );
    }
    // Search rows were written with the events.
    for (chain, name) in chains.iter().zip(&names) {
        let found = s
            .alice
            .call_ok(
                "POST",
                "/_matrix/client/v3/search",
                Some(&json!({"search_categories": {"room_events": {
                    "search_term": format!("{name}marker")}}})),
            )
            .expect("search");
        let hits: Vec<&str> = found["search_categories"]["room_events"]["results"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter_map(|h| h["result"]["event_id"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(hits, vec![chain[0].event_id().as_str()], "{name}: {found}");
    }
    // Push evaluation: alice is notified of every message.
    let want: std::collections::HashSet<String> = chains
        .iter()
        .flatten()
        .map(|p| p.event_id().to_string())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // Pages of at most 100, newest first, followed by `next_token`.
        let mut got: std::collections::HashSet<String> = std::collections::HashSet::new();
        let mut from: Option<String> = None;
        loop {
            let path = match &from {
                Some(t) => format!("/_matrix/client/v3/notifications?limit=100&from={}", enc(t)),
                None => "/_matrix/client/v3/notifications?limit=100".to_owned(),
            };
            let n = s.alice.call_ok("GET", &path, None).expect("notifications");
            got.extend(
                n["notifications"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|x| x["event"]["event_id"].as_str().map(str::to_owned)),
            );
            match n["next_token"].as_str() {
                Some(t) if from.as_deref() != Some(t) => from = Some(t.to_owned()),
                _ => break,
            }
        }
        let missing = want.difference(&got).count();
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} messages never notified alice",
            want.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    s.weft.assert_healthy();
}

/// A counter from weft's `/metrics`: the sum of the series of `name` whose labels contain
/// `label` (0 before the first one).
fn metric(s: &mut Scene, name: &str, label: &str) -> f64 {
    let r = s.alice.call("GET", "/metrics", None).expect("/metrics");
    assert_eq!(r.status, 200, "/metrics: {}", r.text());
    r.text()
        .lines()
        .filter(|l| l.split([' ', '{']).next() == Some(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// A transaction of PDUs only, all for one room: its answer is stored in the commit of its
/// PDUs (one commit per `/send`, not a second one for the de-duplication record), and a
/// repeat of its ID is answered from that record without processing what it carries. A
/// transaction with an EDU still stores its answer on its own, after the EDUs.
fn a_transactions_answer_is_stored_with_its_pdus(backend: Backend) {
    let with = |s: &mut Scene| metric(s, "weft_federation_txn_records_total", "with_pdus");
    let alone = |s: &mut Scene| metric(s, "weft_federation_txn_records_total", "alone");
    let mut s = Scene::on(backend);
    let (with0, alone0) = (with(&mut s), alone(&mut s));
    let pdus: Vec<Pdu> = (0..20).map(|i| s.good(&format!("folded {i}"))).collect();
    let txn = s.next_txn();
    let r = s
        .fed
        .send_transaction(
            &txn,
            pdus.iter().map(|p| p.to_federation_value()).collect(),
            vec![],
        )
        .expect("send");
    assert_eq!(r.status, 200, "{}", r.text());
    let first = r.json();
    let results = pdu_results(&first);
    for p in &pdus {
        accepted(
            &results,
            &p.owned_event_id(),
            "PDU of the folded transaction",
        );
    }
    assert_eq!(
        with(&mut s) - with0,
        1.0,
        "the answer went into the PDUs' commit"
    );
    assert_eq!(
        alone(&mut s) - alone0,
        0.0,
        "no commit of its own for the answer"
    );
    // The 200 came after the commit: every PDU is readable.
    for (i, p) in pdus.iter().enumerate() {
        s.assert_landed(p, &format!("folded {i}"));
    }
    // The same ID again, now carrying another PDU: the stored answer, and nothing processed.
    let extra = s.side_message("mallory", "never processed");
    let again = s
        .fed
        .send_transaction(&txn, vec![extra.to_federation_value()], vec![])
        .expect("send again");
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(
        again.json(),
        first,
        "a repeated transaction ID gets the stored answer"
    );
    assert!(
        s.read(extra.event_id().as_str()).is_none(),
        "the repeat's PDU was processed"
    );
    // The same PDUs under a new ID: the store had decided them, so no room commit carries
    // the answer; it is a deferred write the 200 did not wait for.
    let deferred = |s: &mut Scene| metric(s, "weft_federation_txn_records_total", "deferred");
    let deferred0 = deferred(&mut s);
    let resent = s.next_txn();
    let r = s
        .fed
        .send_transaction(
            &resent,
            pdus.iter().map(|p| p.to_federation_value()).collect(),
            vec![],
        )
        .expect("resend");
    assert_eq!(r.status, 200, "{}", r.text());
    let resent_answer = r.json();
    for p in &pdus {
        accepted(
            &pdu_results(&resent_answer),
            &p.owned_event_id(),
            "PDU sent again under a new ID",
        );
    }
    assert_eq!(
        deferred(&mut s) - deferred0,
        1.0,
        "the answer of PDUs decided before is a deferred write"
    );
    // An EDU in the transaction: the answer is stored after the EDUs, on its own.
    let p = s.good("with an EDU");
    let edu = json!({"edu_type": "m.typing", "content": {
        "room_id": s.room, "user_id": s.peer.user("mallory").to_string(), "typing": true}});
    let (status, body) = s.send(vec![p.to_federation_value()], vec![edu]);
    assert_eq!(status, 200, "{body}");
    accepted(
        &pdu_results(&body),
        &p.owned_event_id(),
        "PDU next to an EDU",
    );
    assert_eq!(
        alone(&mut s) - alone0,
        1.0,
        "with EDUs the answer is stored alone"
    );
    assert_eq!(with(&mut s) - with0, 1.0);
    // That durable record went to the origin's writer after the deferred one, so the deferred
    // one is stored now: a repeat of its ID gets it, and what the repeat carries is not
    // processed.
    let extra = s.side_message("mallory", "never processed either");
    let again = s
        .fed
        .send_transaction(&resent, vec![extra.to_federation_value()], vec![])
        .expect("send the resent ID again");
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(
        again.json(),
        resent_answer,
        "a repeat of a deferred record's ID gets the stored answer"
    );
    assert!(
        s.read(extra.event_id().as_str()).is_none(),
        "the repeat's PDU was processed"
    );
    // The stages of those `/send`s were recorded (`observe::send`), the room's included.
    for stage in ["dedup_read", "verify", "actor", "commit_sync", "total"] {
        assert!(
            metric(
                &mut s,
                "weft_federation_send_stage_seconds_count",
                &format!("stage=\"{stage}\"")
            ) >= 1.0,
            "no {stage} stage recorded"
        );
    }
    s.weft.assert_healthy();
}

/// One `/send` of 40 messages from mallory, 6 of them mentioning alice: alice's counts for
/// the room are 40 notifications and 6 highlights (the push worker's rows for the batch,
/// stored in chunks), `/notifications` lists each message once with its highlight, and
/// a read receipt on the last message clears both counts.
fn a_batch_of_pdus_counts_every_notification_and_highlight(backend: Backend) {
    let mut s = Scene::on(backend);
    let alice = alice_id(&s);
    let mut mentions = std::collections::HashSet::new();
    let pdus: Vec<Pdu> = (0..40)
        .map(|i| {
            let mut content = json!({"msgtype": "m.text", "body": format!("batch {i}")});
            if i % 7 == 3 {
                content["m.mentions"] = json!({"user_ids": [alice]});
            }
            let draft = EventDraft::new("m.room.message", s.peer.user("mallory"), content);
            let pdu = s.peer.build(&s.room, &draft).expect("build");
            s.peer.append(&s.room, &pdu).expect("append");
            if i % 7 == 3 {
                mentions.insert(pdu.event_id().to_string());
            }
            pdu
        })
        .collect();
    assert_eq!(mentions.len(), 6);
    let results = s.results(pdus.iter().map(|p| p.to_federation_value()).collect());
    for p in &pdus {
        accepted(&results, &p.owned_event_id(), "message of the batch");
    }
    let counts = |s: &mut Scene| {
        let rooms = sync_rooms(&mut s.alice);
        let u = &rooms["join"][&s.room]["unread_notifications"];
        (
            u["notification_count"].as_u64().unwrap_or(0),
            u["highlight_count"].as_u64().unwrap_or(0),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = counts(&mut s);
        if got == (40, 6) {
            break;
        }
        assert!(Instant::now() < deadline, "counts after the batch: {got:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let n = s
        .alice
        .call_ok("GET", "/_matrix/client/v3/notifications?limit=100", None)
        .expect("notifications");
    let listed: Vec<(String, bool)> = n["notifications"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| {
            let id = x["event"]["event_id"].as_str()?.to_owned();
            let highlight = x["actions"].as_array().is_some_and(|a| {
                a.iter()
                    .any(|t| t["set_tweak"] == json!("highlight") && t["value"] != json!(false))
            });
            Some((id, highlight))
        })
        .collect();
    let ids: std::collections::HashSet<&str> = listed.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(listed.len(), 40, "{n}");
    assert_eq!(ids.len(), 40, "each message once: {n}");
    for p in &pdus {
        assert!(
            ids.contains(p.event_id().as_str()),
            "{} not listed",
            p.event_id()
        );
    }
    for (id, highlight) in &listed {
        assert_eq!(*highlight, mentions.contains(id), "highlight of {id}");
    }
    let last = pdus[39].event_id().to_string();
    let r = s
        .alice
        .call(
            "POST",
            &format!(
                "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
                enc(&s.room),
                enc(&last)
            ),
            Some(&json!({})),
        )
        .expect("receipt");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(counts(&mut s), (0, 0), "the receipt cleared the counts");
    s.weft.assert_healthy();
}

/// A sender catching up (its queue compacted to the latest events of the room) sends the
/// last two events of a chain whose start we lack: X and Y in one transaction, Y after X,
/// X after W, W never sent. weft finds both missing; filling X's gap brings W, and X lands;
/// Y's own fill then finds nothing new (its prev, X, is held now), and Y must land all the
/// same, not be answered "missing" (the sender does not send it again, so it would be lost).
fn two_events_after_a_gap_in_one_transaction_both_land(backend: Backend) {
    let mut s = Scene::on(backend);
    let w = s.good("the one never sent");
    let x = s.good("the next to last");
    let y = s.good("the last");
    let results = s.results(vec![x.to_federation_value(), y.to_federation_value()]);
    accepted(&results, &x.owned_event_id(), "the next to last event");
    accepted(&results, &y.owned_event_id(), "the last event");
    s.assert_landed(&w, "the one never sent");
    s.assert_landed(&x, "the next to last");
    s.assert_landed(&y, "the last");
    let bodies = bodies_back(&mut s.alice, &s.room);
    let at = |b: &str| {
        bodies
            .iter()
            .position(|x| x == b)
            .unwrap_or_else(|| panic!("{b} not in /messages: {bodies:?}"))
    };
    // Newest first.
    assert!(
        at("the last") < at("the next to last")
            && at("the next to last") < at("the one never sent"),
        "{bodies:?}"
    );
    s.weft.assert_healthy();
}
