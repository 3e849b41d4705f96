//! Tests of the E2EE services over a real temporary database, each on SQLite and on
//! PostgreSQL (`<test>::sqlite`, `<test>::postgres`; `WEFT_TEST_PG` names the PostgreSQL
//! server as for the integration tests): claim atomicity, fallback keys, to-device delivery
//! and acknowledgement, device-list changes and wake-ups, cross-signing checks and the
//! federation service functions.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use serde_json::{Map, Value, json};
use weft_protocol::keys::ServerSigningKey;

use super::cross_signing::{self, DeviceSigningRequest};
use super::federation::{self, NotFederated};
use super::json::signing_bytes;
use super::keys::{self, ClaimRequest, QueryRequest, UploadRequest};
use super::sync::{SyncExtensions, TO_DEVICE_LIMIT};
use super::to_device;
use crate::core::Core;
use crate::error::Error;
use crate::storage::test_db::{Backend, TempDb};
use crate::storage::{e2ee as store, rooms, users};

const HS: &str = "test.example";

struct TestCore {
    core: Arc<Core>,
    /// The data directory and the PostgreSQL database made for this test, dropped after
    /// the core.
    _tmp: TempDb,
}

fn open(backend: Backend) -> TestCore {
    let tmp = TempDb::new(backend, "e2ee", HS);
    let core = Core::open(tmp.config.clone()).expect("open core");
    TestCore { core, _tmp: tmp }
}

/// `#[tokio::test]`s (or another test attribute) `<name>::sqlite` and `<name>::postgres`
/// calling `async fn name(Backend)`.
macro_rules! both_backends {
    ($attr:meta => $($name:ident),* $(,)?) => {$(
        mod $name {
            #[$attr]
            async fn sqlite() {
                super::$name(super::Backend::Sqlite).await
            }
            #[$attr]
            async fn postgres() {
                super::$name(super::Backend::Postgres).await
            }
        }
    )*};
}

both_backends!(tokio::test =>
    one_time_keys_are_claimed_once_each_in_upload_order,
    conflicting_one_time_key_fails_the_whole_upload,
    fallback_key_is_handed_out_when_one_time_keys_run_out,
    to_device_messages_are_delivered_once_and_wake_the_recipient,
    a_long_to_device_queue_is_cut_and_the_token_stops_there,
    device_list_changes_follow_keys_and_memberships,
    cross_signing_upload_checks_signatures_and_asks_auth_only_to_replace,
    signatures_upload_verifies_and_merges_signatures,
    federation_answers_and_outbound_edus,
    inbound_edus_update_the_cache_and_deliver_once,
);
both_backends!(actix_rt::test =>
    deleting_a_device_deletes_its_keys_and_is_a_change,
);

fn uid(local: &str) -> String {
    format!("@{local}:{HS}")
}

async fn add_user(core: &Core, local: &str, devices: &[&str]) -> String {
    let u = uid(local);
    let (u2, devs): (String, Vec<String>) =
        (u.clone(), devices.iter().map(|d| d.to_string()).collect());
    core.db
        .write(&u, move |c| {
            users::create_user(c, &u2, None, false, None, 0)?;
            for d in &devs {
                users::upsert_device(c, &u2, d, Some("dev"), 0)?;
            }
            Ok(())
        })
        .await
        .unwrap();
    u
}

/// Sets a membership at a fresh stream position (as a room actor would).
async fn set_membership(core: &Core, room: &str, user: &str, membership: &str) -> i64 {
    let pos = core.notifier.allocate();
    let (r, u, m) = (room.to_owned(), user.to_owned(), membership.to_owned());
    core.db
        .write(room, move |c| {
            rooms::set_membership(c, &r, &u, &m, &format!("$ev{pos}"), pos, &u, None)
        })
        .await
        .unwrap();
    core.notifier.complete(&[pos], []);
    pos
}

fn device_keys(user: &str, device: &str, curve: &str) -> Value {
    json!({
        "user_id": user,
        "device_id": device,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {format!("curve25519:{device}"): curve, format!("ed25519:{device}"): "ed"},
        "signatures": {user: {format!("ed25519:{device}"): "sig"}},
    })
}

fn otks(prefix: &str, n: usize) -> Map<String, Value> {
    (0..n)
        .map(|i| {
            (
                format!("signed_curve25519:{prefix}{i:03}"),
                json!({"key": format!("k{prefix}{i}"), "signatures": {}}),
            )
        })
        .collect()
}

fn claim_req(user: &str, device: &str) -> ClaimRequest {
    ClaimRequest {
        one_time_keys: BTreeMap::from([(
            user.to_owned(),
            BTreeMap::from([(device.to_owned(), "signed_curve25519".to_owned())]),
        )]),
        timeout: None,
    }
}

fn claimed_key_id(answer: &Value, user: &str, device: &str) -> Option<String> {
    answer["one_time_keys"][user][device]
        .as_object()
        .and_then(|m| m.keys().next().cloned())
}

async fn one_time_keys_are_claimed_once_each_in_upload_order(backend: Backend) {
    let t = open(backend);
    let alice = add_user(&t.core, "alice", &["A1"]).await;
    let bob = add_user(&t.core, "bob", &["B1"]).await;
    let first = keys::upload(
        &t.core,
        &alice,
        "A1",
        UploadRequest {
            one_time_keys: Some(otks("a", 10)),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        first,
        json!({"one_time_key_counts": {"signed_curve25519": 10}})
    );
    keys::upload(
        &t.core,
        &alice,
        "A1",
        UploadRequest {
            one_time_keys: Some(otks("0", 10)),
            ..Default::default()
        },
    )
    .await
    .unwrap();

    // 25 claim jobs, queued at once from separate tasks (and so committed in shared
    // batches), race for 20 keys: every key goes out exactly once, the rest get nothing.
    let claims: Vec<_> = (0..25)
        .map(|i| {
            let core = Arc::clone(&t.core);
            let wanted = claim_req(&alice, "A1").one_time_keys;
            tokio::spawn(async move {
                core.db
                    .write(&format!("requester{i}"), move |c| {
                        keys::claim_held(c, &wanted)
                    })
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut got = Vec::new();
    for h in claims {
        let answer = Value::Object(h.await.unwrap());
        if let Some(id) = answer[&alice]["A1"]
            .as_object()
            .and_then(|m| m.keys().next().cloned())
        {
            got.push(id);
        }
    }
    assert_eq!(got.len(), 20);
    let distinct: HashSet<&String> = got.iter().collect();
    assert_eq!(distinct.len(), 20, "a key was handed out twice: {got:?}");
    let counts = t
        .core
        .db
        .read(|c| keys::one_time_key_counts(c, "@alice:test.example", "A1"))
        .await
        .unwrap();
    assert_eq!(counts["signed_curve25519"], json!(0));
    // Through the service: nothing left, and no failure for a local user.
    let answer = keys::claim(&t.core, &bob, claim_req(&alice, "A1"), &NotFederated)
        .await
        .unwrap();
    assert_eq!(answer, json!({"one_time_keys": {}, "failures": {}}));

    let t2 = open(backend);
    let alice = add_user(&t2.core, "alice", &["A1"]).await;
    for prefix in ["b", "a"] {
        keys::upload(
            &t2.core,
            &alice,
            "A1",
            UploadRequest {
                one_time_keys: Some(otks(prefix, 1)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    }
    let answer = keys::claim(&t2.core, &alice, claim_req(&alice, "A1"), &NotFederated)
        .await
        .unwrap();
    assert_eq!(
        claimed_key_id(&answer, &alice, "A1").as_deref(),
        Some("signed_curve25519:b000"),
        "the older upload goes first"
    );
}

async fn conflicting_one_time_key_fails_the_whole_upload(backend: Backend) {
    let t = open(backend);
    let alice = add_user(&t.core, "alice", &["A1"]).await;
    let upload = |keys: Map<String, Value>| UploadRequest {
        one_time_keys: Some(keys),
        ..Default::default()
    };
    keys::upload(&t.core, &alice, "A1", upload(otks("a", 2)))
        .await
        .unwrap();
    // The same keys again are fine (a retried request).
    let again = keys::upload(&t.core, &alice, "A1", upload(otks("a", 2)))
        .await
        .unwrap();
    assert_eq!(again["one_time_key_counts"]["signed_curve25519"], json!(2));
    let mut changed = otks("a", 1);
    changed.insert(
        "signed_curve25519:a000".into(),
        json!({"key": "different", "signatures": {}}),
    );
    changed.extend(otks("new", 3));
    let err = keys::upload(&t.core, &alice, "A1", upload(changed))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidParam(_)), "{err:?}");
    let counts = t
        .core
        .db
        .read(|c| keys::one_time_key_counts(c, "@alice:test.example", "A1"))
        .await
        .unwrap();
    assert_eq!(
        counts["signed_curve25519"],
        json!(2),
        "nothing of it was stored"
    );
    // Malformed names and foreign device keys are refused.
    let err = keys::upload(
        &t.core,
        &alice,
        "A1",
        upload(Map::from_iter([("nocolon".to_owned(), json!({}))])),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::InvalidParam(_)), "{err:?}");
    let err = keys::upload(
        &t.core,
        &alice,
        "A1",
        UploadRequest {
            device_keys: Some(device_keys(&alice, "OTHER", "c")),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::InvalidParam(_)), "{err:?}");
}

async fn fallback_key_is_handed_out_when_one_time_keys_run_out(backend: Backend) {
    let t = open(backend);
    let alice = add_user(&t.core, "alice", &["A1"]).await;
    let fallback = |id: &str| {
        Map::from_iter([(
            format!("signed_curve25519:{id}"),
            json!({"key": id, "fallback": true, "signatures": {}}),
        )])
    };
    keys::upload(
        &t.core,
        &alice,
        "A1",
        UploadRequest {
            one_time_keys: Some(otks("a", 1)),
            fallback_keys: Some(fallback("FB1")),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let unused = |core: Arc<Core>| async move {
        core.db
            .read(|c| store::unused_fallback_key_types(c, "@alice:test.example", "A1"))
            .await
            .unwrap()
    };
    assert_eq!(unused(Arc::clone(&t.core)).await, vec!["signed_curve25519"]);
    let claim = || keys::claim(&t.core, &alice, claim_req(&alice, "A1"), &NotFederated);
    let one = claim().await.unwrap();
    assert_eq!(
        claimed_key_id(&one, &alice, "A1").as_deref(),
        Some("signed_curve25519:a000")
    );
    let two = claim().await.unwrap();
    assert_eq!(
        claimed_key_id(&two, &alice, "A1").as_deref(),
        Some("signed_curve25519:FB1")
    );
    assert_eq!(
        two["one_time_keys"][&alice]["A1"]["signed_curve25519:FB1"]["fallback"],
        json!(true)
    );
    assert!(
        unused(Arc::clone(&t.core)).await.is_empty(),
        "used fallback keys are not listed"
    );
    // The fallback key keeps being handed out until replaced.
    let three = claim().await.unwrap();
    assert_eq!(
        claimed_key_id(&three, &alice, "A1").as_deref(),
        Some("signed_curve25519:FB1")
    );
    // Re-uploading the same key keeps it used; a new one is unused.
    for (id, expect_unused) in [("FB1", false), ("FB2", true)] {
        keys::upload(
            &t.core,
            &alice,
            "A1",
            UploadRequest {
                fallback_keys: Some(fallback(id)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(
            !unused(Arc::clone(&t.core)).await.is_empty(),
            expect_unused,
            "{id}"
        );
    }
}

async fn load_sync(core: &Core, user: &str, device: &str, since: Option<i64>) -> SyncExtensions {
    let upto = core.notifier.frontier();
    let (u, d) = (user.to_owned(), device.to_owned());
    core.db
        .read(move |c| SyncExtensions::load(c, &u, &d, since, upto))
        .await
        .unwrap()
}

fn messages(pairs: &[(&str, &str, Value)]) -> to_device::Messages {
    let mut m = to_device::Messages::new();
    for (u, d, c) in pairs {
        m.entry(u.to_string())
            .or_default()
            .insert(d.to_string(), c.clone());
    }
    m
}

async fn to_device_messages_are_delivered_once_and_wake_the_recipient(backend: Backend) {
    let t = open(backend);
    let alice = add_user(&t.core, "alice", &["A1"]).await;
    let bob = add_user(&t.core, "bob", &["B1", "B2"]).await;
    let rx = t.core.notifier.subscribe(&bob);
    let start = t.core.notifier.frontier();
    to_device::send(
        &t.core,
        &alice,
        "A1",
        "m.test",
        "txn1",
        messages(&[
            (&bob, "*", json!({"n": 1})),
            (&bob, "B2", json!({"n": 2})),
            (&bob, "NOPE", json!({})),
        ]),
    )
    .await
    .unwrap();
    assert!(rx.has_changed().unwrap(), "the recipient's sync is woken");
    // A retry of the same transaction sends nothing more.
    to_device::send(
        &t.core,
        &alice,
        "A1",
        "m.test",
        "txn1",
        messages(&[(&bob, "B1", json!({"n": 9}))]),
    )
    .await
    .unwrap();

    let b1 = load_sync(&t.core, &bob, "B1", Some(start)).await;
    assert_eq!(
        b1.to_device,
        vec![json!({"sender": alice, "type": "m.test", "content": {"n": 1}})]
    );
    assert!(b1.has_changes());
    let b2 = load_sync(&t.core, &bob, "B2", Some(start)).await;
    assert_eq!(
        b2.to_device[0]["content"],
        json!({"n": 2}),
        "a named device wins over *"
    );
    // Not acknowledged yet: a repeated sync with the same since delivers again.
    assert_eq!(
        load_sync(&t.core, &bob, "B1", Some(start))
            .await
            .to_device
            .len(),
        1
    );
    // A later since acknowledges and deletes them.
    to_device::acknowledge(&t.core, &bob, "B1", b1.upto)
        .await
        .unwrap();
    assert!(
        load_sync(&t.core, &bob, "B1", None)
            .await
            .to_device
            .is_empty()
    );
    assert_eq!(
        load_sync(&t.core, &bob, "B2", None).await.to_device.len(),
        1
    );
}

async fn a_long_to_device_queue_is_cut_and_the_token_stops_there(backend: Backend) {
    let t = open(backend);
    let alice = add_user(&t.core, "alice", &["A1"]).await;
    let bob = add_user(&t.core, "bob", &["B1"]).await;
    let total = TO_DEVICE_LIMIT as usize + 5;
    for i in 0..total {
        to_device::send(
            &t.core,
            &alice,
            "A1",
            "m.test",
            &format!("t{i}"),
            messages(&[(&bob, "B1", json!({"i": i}))]),
        )
        .await
        .unwrap();
    }
    let first = load_sync(&t.core, &bob, "B1", None).await;
    assert_eq!(first.to_device.len(), TO_DEVICE_LIMIT as usize);
    assert!(
        first.upto < t.core.notifier.frontier(),
        "next_batch stops at the last message sent"
    );
    to_device::acknowledge(&t.core, &bob, "B1", first.upto)
        .await
        .unwrap();
    let second = load_sync(&t.core, &bob, "B1", Some(first.upto)).await;
    let rest: Vec<Value> = second
        .to_device
        .iter()
        .map(|e| e["content"]["i"].clone())
        .collect();
    assert_eq!(
        rest,
        (TO_DEVICE_LIMIT as usize..total)
            .map(|i| json!(i))
            .collect::<Vec<_>>()
    );
    assert_eq!(second.upto, t.core.notifier.frontier());
}

async fn device_list_changes_follow_keys_and_memberships(backend: Backend) {
    let t = open(backend);
    let alice = add_user(&t.core, "alice", &["A1"]).await;
    let bob = add_user(&t.core, "bob", &["B1"]).await;
    let carol = add_user(&t.core, "carol", &["C1"]).await;
    let room = "!room:test.example";
    set_membership(&t.core, room, &alice, "join").await;
    set_membership(&t.core, room, &bob, "join").await;
    let since = t.core.notifier.frontier();
    let mut rx = t.core.notifier.subscribe(&alice);

    keys::upload(
        &t.core,
        &bob,
        "B1",
        UploadRequest {
            device_keys: Some(device_keys(&bob, "B1", "c1")),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(
        rx.has_changed().unwrap(),
        "a room-mate's new keys wake the sync"
    );
    rx.borrow_and_update();
    let s = load_sync(&t.core, &alice, "A1", Some(since)).await;
    assert_eq!(s.changed, vec![bob.clone()]);
    assert!(s.has_changes());
    // Carol shares no room with Alice: her keys are not Alice's business.
    let since = t.core.notifier.frontier();
    keys::upload(
        &t.core,
        &carol,
        "C1",
        UploadRequest {
            device_keys: Some(device_keys(&carol, "C1", "c")),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(!rx.has_changed().unwrap());
    assert!(
        load_sync(&t.core, &alice, "A1", Some(since))
            .await
            .changed
            .is_empty()
    );
    // Uploading identical keys again is no change.
    let since = t.core.notifier.frontier();
    keys::upload(
        &t.core,
        &bob,
        "B1",
        UploadRequest {
            device_keys: Some(device_keys(&bob, "B1", "c1")),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(
        load_sync(&t.core, &alice, "A1", Some(since))
            .await
            .changed
            .is_empty()
    );
    // Carol joins: she is new to Alice and Alice is new to her.
    let since = t.core.notifier.frontier();
    set_membership(&t.core, room, &carol, "join").await;
    assert_eq!(
        load_sync(&t.core, &alice, "A1", Some(since)).await.changed,
        vec![carol.clone()]
    );
    let mut for_carol = load_sync(&t.core, &carol, "C1", Some(since)).await.changed;
    for_carol.sort();
    assert_eq!(for_carol, vec![alice.clone(), bob.clone()]);
    // Bob leaves the only shared room: he is `left` for Alice.
    let since = t.core.notifier.frontier();
    set_membership(&t.core, room, &bob, "leave").await;
    let s = load_sync(&t.core, &alice, "A1", Some(since)).await;
    assert_eq!(s.left, vec![bob.clone()]);
    assert!(s.changed.is_empty());
    // /keys/changes gives the same over a range.
    let answer = keys::changes(&t.core, &alice, since, t.core.notifier.frontier())
        .await
        .unwrap();
    assert_eq!(answer, json!({"changed": [], "left": [bob]}));
    // The initial sync reports no list and always counts signed_curve25519.
    let initial = load_sync(&t.core, &alice, "A1", None).await;
    assert!(initial.changed.is_empty() && initial.left.is_empty());
    assert_eq!(
        initial.one_time_key_counts,
        Map::from_iter([("signed_curve25519".into(), json!(0))])
    );
}

async fn deleting_a_device_deletes_its_keys_and_is_a_change(backend: Backend) {
    let t = open(backend);
    let alice = add_user(&t.core, "alice", &["A1"]).await;
    let bob = add_user(&t.core, "bob", &["B1", "B2"]).await;
    let room = "!room:test.example";
    set_membership(&t.core, room, &alice, "join").await;
    set_membership(&t.core, room, &bob, "join").await;
    keys::upload(
        &t.core,
        &bob,
        "B2",
        UploadRequest {
            device_keys: Some(device_keys(&bob, "B2", "c")),
            one_time_keys: Some(otks("x", 3)),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    to_device::send(
        &t.core,
        &alice,
        "A1",
        "m.test",
        "t",
        messages(&[(&bob, "B2", json!({}))]),
    )
    .await
    .unwrap();
    let since = t.core.notifier.frontier();
    let tokens = crate::accounts::TokenCache::default();
    crate::devices::delete_devices(&t.core, &tokens, &bob, vec!["B2".into()])
        .await
        .unwrap();
    assert_eq!(
        load_sync(&t.core, &alice, "A1", Some(since)).await.changed,
        vec![bob.clone()]
    );
    let b = bob.clone();
    let (keys_left, otks_left, inbox) = t
        .core
        .db
        .read(move |c| {
            Ok((
                store::get_device_keys(c, &b, "B2")?.is_some(),
                store::one_time_key_counts(c, &b, "B2")?,
                store::has_to_device_upto(c, &b, "B2", i64::MAX)?,
            ))
        })
        .await
        .unwrap();
    assert!(!keys_left && otks_left.is_empty() && !inbox);
    let q = keys::query(
        &t.core,
        &alice,
        QueryRequest {
            device_keys: BTreeMap::from([(bob.clone(), vec![])]),
            timeout: None,
        },
        &NotFederated,
    )
    .await
    .unwrap();
    assert_eq!(q["device_keys"][&bob], json!({}));
}

// ---------------------------------------------------------------- cross-signing

struct Signer(ServerSigningKey);

impl Signer {
    fn new(seed: u8) -> Self {
        Self(ServerSigningKey::from_seed([seed; 32], "x").unwrap())
    }
    fn public(&self) -> String {
        self.0.public_key_b64()
    }
    fn key_id(&self) -> String {
        format!("ed25519:{}", self.public())
    }
    /// Adds `user`'s signature with this key to `obj`.
    fn sign(&self, obj: &mut Value, user: &str, key_id: &str) {
        let sig = self.0.sign_b64(signing_bytes(obj).unwrap().as_bytes());
        obj["signatures"][user][key_id] = json!(sig);
    }
    fn cross_signing_key(&self, user: &str, usage: &str) -> Value {
        json!({"user_id": user, "usage": [usage], "keys": {self.key_id(): self.public()}})
    }
}

fn signing_request(
    master: Option<Value>,
    ssk: Option<Value>,
    usk: Option<Value>,
) -> DeviceSigningRequest {
    DeviceSigningRequest {
        master_key: master,
        self_signing_key: ssk,
        user_signing_key: usk,
        auth: None,
    }
}

async fn cross_signing_upload_checks_signatures_and_asks_auth_only_to_replace(backend: Backend) {
    let t = open(backend);
    let alice = add_user(&t.core, "alice", &["A1"]).await;
    let (master, ssk, usk) = (Signer::new(1), Signer::new(2), Signer::new(3));
    let m = master.cross_signing_key(&alice, "master");
    let mut s = ssk.cross_signing_key(&alice, "self_signing");
    master.sign(&mut s, &alice, &master.key_id());
    let mut u = usk.cross_signing_key(&alice, "user_signing");
    master.sign(&mut u, &alice, &master.key_id());

    // A self-signing key not signed by the master key is refused.
    let unsigned = ssk.cross_signing_key(&alice, "self_signing");
    let err = cross_signing::prepare_upload(
        &t.core,
        &alice,
        &signing_request(Some(m.clone()), Some(unsigned), None),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::InvalidSignature(_)), "{err:?}");
    // Without any master key there is nothing to check against.
    let err = cross_signing::prepare_upload(
        &t.core,
        &alice,
        &signing_request(None, Some(s.clone()), None),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::MissingParam(_)), "{err:?}");

    let req = signing_request(Some(m.clone()), Some(s.clone()), Some(u.clone()));
    let first = cross_signing::prepare_upload(&t.core, &alice, &req)
        .await
        .unwrap();
    assert!(!first.needs_auth, "the first upload needs no UIA");
    cross_signing::store_upload(&t.core, &alice, first)
        .await
        .unwrap();
    let again = cross_signing::prepare_upload(&t.core, &alice, &req)
        .await
        .unwrap();
    assert!(!again.needs_auth, "an identical retry needs no UIA");
    let new_master = Signer::new(4).cross_signing_key(&alice, "master");
    let replace = cross_signing::prepare_upload(
        &t.core,
        &alice,
        &signing_request(Some(new_master), None, None),
    )
    .await
    .unwrap();
    assert!(replace.needs_auth, "replacing keys needs UIA");

    // Who sees what: Bob sees master + self-signing, Alice also her user-signing key.
    let bob = add_user(&t.core, "bob", &["B1"]).await;
    let query = |who: String| {
        let core = Arc::clone(&t.core);
        let alice = alice.clone();
        async move {
            keys::query(
                &core,
                &who,
                QueryRequest {
                    device_keys: BTreeMap::from([(alice, vec![])]),
                    timeout: None,
                },
                &NotFederated,
            )
            .await
            .unwrap()
        }
    };
    let by_bob = query(bob.clone()).await;
    assert_eq!(by_bob["master_keys"][&alice], m);
    assert_eq!(by_bob["self_signing_keys"][&alice], s);
    assert_eq!(by_bob["user_signing_keys"], json!({}));
    let by_alice = query(alice.clone()).await;
    assert_eq!(by_alice["user_signing_keys"][&alice], u);
}

async fn signatures_upload_verifies_and_merges_signatures(backend: Backend) {
    let t = open(backend);
    let alice = add_user(&t.core, "alice", &["A1"]).await;
    let bob = add_user(&t.core, "bob", &["B1"]).await;
    let device = Signer::new(9);
    let mut dk = json!({
        "user_id": alice, "device_id": "A1",
        "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
        "keys": {"curve25519:A1": "c", "ed25519:A1": device.public()},
    });
    device.sign(&mut dk, &alice, "ed25519:A1");
    keys::upload(
        &t.core,
        &alice,
        "A1",
        UploadRequest {
            device_keys: Some(dk.clone()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let (master, ssk, usk) = (Signer::new(1), Signer::new(2), Signer::new(3));
    let m = master.cross_signing_key(&alice, "master");
    let mut s = ssk.cross_signing_key(&alice, "self_signing");
    master.sign(&mut s, &alice, &master.key_id());
    let mut u = usk.cross_signing_key(&alice, "user_signing");
    master.sign(&mut u, &alice, &master.key_id());
    let p = cross_signing::prepare_upload(
        &t.core,
        &alice,
        &signing_request(Some(m.clone()), Some(s), Some(u)),
    )
    .await
    .unwrap();
    cross_signing::store_upload(&t.core, &alice, p)
        .await
        .unwrap();
    let bob_master_signer = Signer::new(5);
    let bob_master = bob_master_signer.cross_signing_key(&bob, "master");
    let p = cross_signing::prepare_upload(
        &t.core,
        &bob,
        &signing_request(Some(bob_master.clone()), None, None),
    )
    .await
    .unwrap();
    cross_signing::store_upload(&t.core, &bob, p).await.unwrap();

    // Alice signs her device (self-signing key), her master key (device key) and Bob's
    // master key (user-signing key); one forged signature fails alone.
    let mut signed_dk = dk.clone();
    ssk.sign(&mut signed_dk, &alice, &ssk.key_id());
    let mut signed_m = m.clone();
    device.sign(&mut signed_m, &alice, "ed25519:A1");
    let mut signed_bob = bob_master.clone();
    usk.sign(&mut signed_bob, &alice, &usk.key_id());
    let mut forged = bob_master.clone();
    forged["signatures"] = json!({(alice.clone()): {(usk.key_id()): "AAAA"}});
    let body = Map::from_iter([
        (
            alice.clone(),
            json!({"A1": signed_dk, (master.public()): signed_m, "NOSUCH": {}}),
        ),
        (
            bob.clone(),
            json!({(bob_master_signer.public()): signed_bob}),
        ),
    ]);
    let answer = cross_signing::upload_signatures(&t.core, &alice, body)
        .await
        .unwrap();
    assert_eq!(
        answer["failures"][&alice]["NOSUCH"]["errcode"],
        json!("M_NOT_FOUND")
    );
    assert_eq!(
        answer["failures"].as_object().map(|f| f.len()),
        Some(1),
        "{answer}"
    );
    let forged_answer = cross_signing::upload_signatures(
        &t.core,
        &alice,
        Map::from_iter([(bob.clone(), json!({(bob_master_signer.public()): forged}))]),
    )
    .await
    .unwrap();
    assert_eq!(
        forged_answer["failures"][&bob][bob_master_signer.public()]["errcode"],
        json!("M_INVALID_SIGNATURE")
    );

    let q = |who: String| {
        let core = Arc::clone(&t.core);
        let wanted = BTreeMap::from([(alice.clone(), vec![]), (bob.clone(), vec![])]);
        async move {
            let req = QueryRequest {
                device_keys: wanted,
                timeout: None,
            };
            keys::query(&core, &who, req, &NotFederated).await
        }
    };
    let by_bob = q(bob.clone()).await.unwrap();
    let dev = &by_bob["device_keys"][&alice]["A1"];
    assert!(dev["signatures"][&alice][ssk.key_id()].is_string(), "{dev}");
    assert!(dev["signatures"][&alice]["ed25519:A1"].is_string());
    assert!(by_bob["master_keys"][&alice]["signatures"][&alice]["ed25519:A1"].is_string());
    // Alice's signature on Bob's master key is hers to see, not Bob's.
    assert!(
        by_bob["master_keys"][&bob]
            .get("signatures")
            .is_none_or(|s| s.get(&alice).is_none())
    );
    let by_alice = q(alice.clone()).await.unwrap();
    assert!(by_alice["master_keys"][&bob]["signatures"][&alice][usk.key_id()].is_string());

    // Re-uploading the device's identical keys keeps the self-signing signature.
    keys::upload(
        &t.core,
        &alice,
        "A1",
        UploadRequest {
            device_keys: Some(dk),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let by_bob = q(bob.clone()).await.unwrap();
    assert!(by_bob["device_keys"][&alice]["A1"]["signatures"][&alice][ssk.key_id()].is_string());
}

// ---------------------------------------------------------------- federation

async fn federation_answers_and_outbound_edus(backend: Backend) {
    let t = open(backend);
    let alice = add_user(&t.core, "alice", &["A1"]).await;
    let remote = "@rita:remote.example";
    let room = "!room:test.example";
    set_membership(&t.core, room, &alice, "join").await;
    set_membership(&t.core, room, remote, "join").await;
    keys::upload(
        &t.core,
        &alice,
        "A1",
        UploadRequest {
            device_keys: Some(device_keys(&alice, "A1", "c")),
            one_time_keys: Some(otks("a", 1)),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // The key upload queued an m.device_list_update for remote.example.
    let edus = pending_edus(&t.core, "remote.example", 10).await.unwrap();
    assert_eq!(edus.len(), 1);
    let (id, edu) = &edus[0];
    assert_eq!(edu.edu_type, "m.device_list_update");
    assert_eq!(edu.content["user_id"], json!(alice));
    assert_eq!(edu.content["device_id"], json!("A1"));
    assert_eq!(edu.content["keys"]["keys"]["curve25519:A1"], json!("c"));
    let stream_id = edu.content["stream_id"].as_i64().unwrap();
    ack_edus(&t.core, "remote.example", vec![*id])
        .await
        .unwrap();
    assert!(
        pending_edus(&t.core, "remote.example", 10)
            .await
            .unwrap()
            .is_empty()
    );

    // GET /user/devices matches the announced stream_id.
    let a = alice.clone();
    let devices = t
        .core
        .db
        .read(move |c| federation::user_devices(c, HS, &a))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(devices["stream_id"], json!(stream_id));
    assert_eq!(devices["devices"][0]["device_id"], json!("A1"));
    assert_eq!(devices["devices"][0]["device_display_name"], json!("dev"));
    assert!(
        t.core
            .db
            .read(|c| federation::user_devices(c, HS, "@nobody:test.example"))
            .await
            .unwrap()
            .is_none()
    );

    // A second change names the first in prev_id.
    keys::upload(
        &t.core,
        &alice,
        "A1",
        UploadRequest {
            device_keys: Some(device_keys(&alice, "A1", "c2")),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let edus = pending_edus(&t.core, "remote.example", 10).await.unwrap();
    assert_eq!(edus[0].1.content["prev_id"], json!([stream_id]));

    // user/keys/claim hands out the key once; users of other servers are ignored.
    let claim = ClaimRequest {
        one_time_keys: BTreeMap::from([
            (
                alice.clone(),
                BTreeMap::from([("A1".to_owned(), "signed_curve25519".to_owned())]),
            ),
            (
                remote.to_owned(),
                BTreeMap::from([("R1".to_owned(), "signed_curve25519".to_owned())]),
            ),
        ]),
        timeout: None,
    };
    let answer = federation::answer_keys_claim(&t.core, "remote.example", claim)
        .await
        .unwrap();
    assert!(answer["one_time_keys"][&alice]["A1"]["signed_curve25519:a000"].is_object());
    assert!(answer["one_time_keys"].get(remote).is_none());

    // To-device for the remote user becomes an m.direct_to_device EDU.
    to_device::send(
        &t.core,
        &alice,
        "A1",
        "m.room_key_request",
        "t1",
        messages(&[(remote, "R1", json!({"x": 1}))]),
    )
    .await
    .unwrap();
    let edus = pending_edus(&t.core, "remote.example", 10).await.unwrap();
    let dtd = edus
        .iter()
        .find(|(_, e)| e.edu_type == "m.direct_to_device")
        .unwrap();
    assert_eq!(dtd.1.content["messages"][remote]["R1"], json!({"x": 1}));
    assert_eq!(dtd.1.content["sender"], json!(alice));
    assert!(
        dtd.1.content["message_id"]
            .as_str()
            .is_some_and(|m| !m.is_empty() && m.len() <= 32)
    );

    // /keys/query for the remote user: no federation yet, so remote.example is a failure.
    let q = keys::query(
        &t.core,
        &alice,
        QueryRequest {
            device_keys: BTreeMap::from([(remote.to_owned(), vec![])]),
            timeout: None,
        },
        &NotFederated,
    )
    .await
    .unwrap();
    assert!(q["failures"]["remote.example"].is_object(), "{q}");
}

async fn inbound_edus_update_the_cache_and_deliver_once(backend: Backend) {
    let t = open(backend);
    let alice = add_user(&t.core, "alice", &["A1"]).await;
    let remote = "@rita:remote.example";
    let room = "!room:test.example";
    set_membership(&t.core, room, &alice, "join").await;
    set_membership(&t.core, room, remote, "join").await;

    // A to-device message arrives twice (a retried transaction): delivered once.
    let dtd = json!({
        "sender": remote, "type": "m.room.encrypted", "message_id": "m1",
        "messages": {&alice: {"*": {"ciphertext": "x"}}, "@other:elsewhere.example": {"D": {}}},
    });
    let since = t.core.notifier.frontier();
    for _ in 0..2 {
        federation::apply_edu(&t.core, "remote.example", "m.direct_to_device", &dtd)
            .await
            .unwrap();
    }
    let s = load_sync(&t.core, &alice, "A1", Some(since)).await;
    assert_eq!(
        s.to_device,
        vec![json!({"sender": remote, "type": "m.room.encrypted", "content": {"ciphertext": "x"}})]
    );
    // A server may not speak for another server's users.
    let err = federation::apply_edu(&t.core, "evil.example", "m.direct_to_device", &dtd)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Forbidden(_)), "{err:?}");

    // The first device-list update has no snapshot behind it: cache it, ask for a resync.
    let update = |stream: i64, prev: Vec<i64>, curve: &str| {
        json!({"user_id": remote, "device_id": "R1", "stream_id": stream, "prev_id": prev,
               "device_display_name": "rita's phone", "keys": device_keys(remote, "R1", curve)})
    };
    let since = t.core.notifier.frontier();
    let applied = federation::apply_edu(
        &t.core,
        "remote.example",
        "m.device_list_update",
        &update(5, vec![], "c5"),
    )
    .await
    .unwrap();
    assert_eq!(applied.resync, vec![remote.to_owned()]);
    assert_eq!(
        load_sync(&t.core, &alice, "A1", Some(since)).await.changed,
        vec![remote.to_owned()]
    );
    // The snapshot makes the cache current; query answers from it.
    let snapshot = json!({"user_id": remote, "stream_id": 6, "devices": [
        {"device_id": "R1", "keys": device_keys(remote, "R1", "c6"), "device_display_name": "phone"}]});
    federation::apply_device_list_snapshot(&t.core, "remote.example", &snapshot)
        .await
        .unwrap();
    let query = || {
        keys::query(
            &t.core,
            &alice,
            QueryRequest {
                device_keys: BTreeMap::from([(remote.to_owned(), vec![])]),
                timeout: None,
            },
            &NotFederated,
        )
    };
    let q = query().await.unwrap();
    assert_eq!(q["failures"], json!({}));
    assert_eq!(
        q["device_keys"][remote]["R1"]["keys"]["curve25519:R1"],
        json!("c6")
    );
    assert_eq!(
        q["device_keys"][remote]["R1"]["unsigned"]["device_display_name"],
        json!("phone")
    );
    // In sequence: applied without a resync. A gap (prev_id 8 never seen): resync.
    let ok = federation::apply_edu(
        &t.core,
        "remote.example",
        "m.device_list_update",
        &update(7, vec![6], "c7"),
    )
    .await
    .unwrap();
    assert!(ok.resync.is_empty());
    let gap = federation::apply_edu(
        &t.core,
        "remote.example",
        "m.device_list_update",
        &update(9, vec![8], "c9"),
    )
    .await
    .unwrap();
    assert_eq!(gap.resync, vec![remote.to_owned()]);
    let q = query().await.unwrap();
    assert!(
        q["failures"]["remote.example"].is_object(),
        "a stale list is not answered from cache"
    );
    // Replays of old updates change nothing; deletion removes the device.
    federation::apply_device_list_snapshot(&t.core, "remote.example", &snapshot)
        .await
        .unwrap();
    let deleted = json!({"user_id": remote, "device_id": "R1", "stream_id": 10, "prev_id": [6], "deleted": true});
    federation::apply_edu(&t.core, "remote.example", "m.device_list_update", &deleted)
        .await
        .unwrap();
    assert_eq!(query().await.unwrap()["device_keys"][remote], json!({}));

    // Signing keys of a remote user are cached and shown.
    let master = Signer::new(8).cross_signing_key(remote, "master");
    federation::apply_edu(
        &t.core,
        "remote.example",
        "m.signing_key_update",
        &json!({"user_id": remote, "master_key": master}),
    )
    .await
    .unwrap();
    assert_eq!(query().await.unwrap()["master_keys"][remote], master);
}

/// The EDUs queued for a destination in the federation outbound queue, oldest first.
async fn pending_edus(
    core: &crate::core::Core,
    destination: &str,
    limit: i64,
) -> crate::error::Result<Vec<(i64, super::OutboundEdu)>> {
    let d = destination.to_owned();
    let rows = core
        .db
        .read(move |c| {
            crate::storage::federation::peek_queue(c, &d, crate::delivery::KIND_EDU, limit)
        })
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            let v: serde_json::Value = serde_json::from_str(&r.payload).ok()?;
            Some((
                r.id,
                super::OutboundEdu {
                    destination: r.destination,
                    edu_type: v["edu_type"].as_str()?.to_owned(),
                    content: v["content"].clone(),
                },
            ))
        })
        .collect())
}

/// Removes delivered EDUs from the queue.
async fn ack_edus(
    core: &crate::core::Core,
    destination: &str,
    ids: Vec<i64>,
) -> crate::error::Result<()> {
    let d = destination.to_owned();
    core.db
        .write(destination, move |c| {
            crate::storage::federation::dequeue(c, &d, &ids)
        })
        .await?;
    Ok(())
}
