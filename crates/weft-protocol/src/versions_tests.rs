//! Tables over every DAG room version (1 to 12): what each version's events look like, that
//! they parse back, verify and pass the rules; where the versions' rules differ; state
//! resolution v1; and the spec's signed-event example.

use std::collections::BTreeMap;

use ruma::events::StateEventType;
use ruma::{CanonicalJsonObject, CanonicalJsonValue, OwnedEventId};
use serde_json::json;

use crate::auth;
use crate::pdu::{self, Pdu, PduError};
use crate::redaction;
use crate::room_version::RoomVersion;
use crate::signatures::{self, HashCheck, KnownKey};
use crate::testing::*;

fn lookup() -> impl Fn(&str, &str) -> Option<KnownKey> {
    |server, key_id| {
        let key = server_key(server);
        (key.key_id() == key_id).then(|| KnownKey {
            key: key.verifying_key(),
            valid_until_ts: u64::MAX,
        })
    }
}

fn redaction_of(sender: &str, target: &OwnedEventId) -> crate::builder::EventDraft {
    let mut d = crate::builder::EventDraft::new("m.room.redaction", uid(sender), json!({}));
    d.redacts = Some(target.clone());
    d
}

/// A room with a bit of everything: joins, power levels, join rules, a message, a topic and a
/// redaction of the message.
fn busy_room(v: RoomVersion) -> Room {
    let mut room = Room::base(v);
    let msg = room.send_labeled("msg", message(BOB, "hello"));
    room.send_labeled("topic", topic(ALICE, "a topic"));
    room.send_labeled("redaction", redaction_of(ALICE, &msg));
    room
}

fn cited(json: &CanonicalJsonObject, key: &str) -> Vec<CanonicalJsonValue> {
    match json.get(key) {
        Some(CanonicalJsonValue::Array(items)) => items.clone(),
        _ => panic!("{key} is not a list"),
    }
}

#[test]
fn every_version_builds_parses_verifies_and_passes_its_rules() {
    for v in EVERY_DAG_VERSION {
        let room = busy_room(v);
        for label in [
            "create",
            "alice",
            "pl",
            "jr",
            "bob",
            "msg",
            "topic",
            "redaction",
        ] {
            let ev = room.event(label);
            let id = ev.event_id().as_str();
            let json = &ev.json();
            // The event ID's format.
            let local = id.strip_prefix('$').unwrap();
            if v.event_id_in_event() {
                let (_, server) = local.split_once(':').expect("v1/v2 IDs name a server");
                assert_eq!(server, ev.sender().server_name().as_str(), "v{v} {label}");
                assert_eq!(
                    json.get("event_id"),
                    Some(&CanonicalJsonValue::String(id.to_owned())),
                    "v{v} {label}"
                );
            } else {
                assert!(!json.contains_key("event_id"), "v{v} {label}");
                assert_eq!(
                    local.len(),
                    43,
                    "v{v} {label}: a SHA-256 in unpadded base64"
                );
                assert!(!local.contains(':'), "v{v} {label}");
                let url_safe = !local.contains(['+', '/']);
                let standard = !local.contains(['-', '_']);
                assert!(
                    standard || v != RoomVersion::V3,
                    "v3 IDs use standard base64"
                );
                assert!(url_safe || v == RoomVersion::V3, "v{v} IDs are URL-safe");
                assert_eq!(
                    local,
                    pdu::reference_hash(json, v).unwrap(),
                    "v{v} {label}: the ID is the reference hash"
                );
            }
            // How other events are cited.
            for key in ["prev_events", "auth_events"] {
                let items = cited(json, key);
                let ids = if key == "prev_events" {
                    ev.prev_events()
                } else {
                    ev.auth_events()
                };
                assert_eq!(items.len(), ids.len(), "v{v} {label} {key}");
                for (item, cited_id) in items.iter().zip(ids) {
                    if v.cites_event_hashes() {
                        let CanonicalJsonValue::Array(pair) = item else {
                            panic!("v{v} {label} {key}: not a pair");
                        };
                        assert_eq!(pair[0], CanonicalJsonValue::String(cited_id.to_string()));
                        let want =
                            pdu::reference_hash(&room.get(cited_id).unwrap().json(), v).unwrap();
                        let CanonicalJsonValue::Object(h) = &pair[1] else {
                            panic!("v{v} {label} {key}: no hashes");
                        };
                        assert_eq!(h.get("sha256"), Some(&CanonicalJsonValue::String(want)));
                    } else {
                        assert_eq!(item, &CanonicalJsonValue::String(cited_id.to_string()));
                    }
                }
            }
            // It parses back to the same event.
            let again = Pdu::from_json(json.clone(), v).unwrap();
            assert_eq!(again.event_id(), ev.event_id(), "v{v} {label}");
            assert_eq!(again.prev_events(), ev.prev_events(), "v{v} {label}");
            assert_eq!(again.auth_events(), ev.auth_events(), "v{v} {label}");
            // Signatures and hashes verify, also once redacted.
            assert_eq!(
                signatures::verify_pdu(json, v, lookup()),
                Ok(HashCheck::Valid),
                "v{v} {label}"
            );
            let redacted = redaction::redact(json, v).unwrap();
            assert!(
                signatures::verify_pdu(&redacted, v, lookup()).is_ok(),
                "v{v} {label}: the signature covers the redacted form"
            );
            let redacted_pdu = Pdu::from_json_with_id(ev.owned_event_id(), redacted, v).unwrap();
            assert_eq!(redacted_pdu.event_id(), ev.event_id());
            // The format and the rules against its own auth events.
            auth::check_format(v, &ev).unwrap_or_else(|e| panic!("v{v} {label}: {e}"));
            auth::check_against_auth_events(v, &ev, room.fetch())
                .unwrap_or_else(|e| panic!("v{v} {label}: {e}"));
        }
        let redaction = room.event("redaction");
        assert_eq!(redaction.redacts(), Some(&*room.id("msg")), "v{v}");
    }
}

#[test]
fn events_of_one_format_do_not_parse_as_the_other() {
    let v1 = busy_room(RoomVersion::V1);
    let v4 = busy_room(RoomVersion::V4);
    for label in ["bob", "msg"] {
        // v1 events cite pairs, which later versions refuse.
        let got = Pdu::from_json(v1.event(label).json(), RoomVersion::V4);
        assert_eq!(got.err(), Some(PduError::Field("prev_events")), "{label}");
        // v4 events have no event_id, which v1 and v2 need.
        for old in [RoomVersion::V1, RoomVersion::V2] {
            let got = Pdu::from_json(v4.event(label).json(), old);
            assert_eq!(got.err(), Some(PduError::Field("event_id")), "{label}");
        }
    }
}

#[test]
fn malformed_v1_fields_are_refused() {
    let room = busy_room(RoomVersion::V2);
    let good = room.event("msg").json();
    let prev = room.event("msg").prev_events()[0].to_string();
    // (what is wrong, field, new value, expected error)
    let cases: Vec<(&str, &str, serde_json::Value, PduError)> = vec![
        (
            "event ID without a server",
            "event_id",
            json!("$abc"),
            PduError::Field("event_id"),
        ),
        (
            "event ID not a string",
            "event_id",
            json!(1),
            PduError::Field("event_id"),
        ),
        (
            "event ID without sigil",
            "event_id",
            json!("abc:b.test"),
            PduError::Field("event_id"),
        ),
        (
            "bare prev event",
            "prev_events",
            json!([prev]),
            PduError::Field("prev_events"),
        ),
        (
            "pair of one",
            "prev_events",
            json!([[prev]]),
            PduError::Field("prev_events"),
        ),
        (
            "pair with a non-object",
            "prev_events",
            json!([[prev, "h"]]),
            PduError::Field("prev_events"),
        ),
        (
            "sha256 not a string",
            "auth_events",
            json!([[prev, {"sha256": 1}]]),
            PduError::Field("auth_events"),
        ),
        (
            "pair of three",
            "auth_events",
            json!([[prev, {"sha256": "x"}, 1]]),
            PduError::Field("auth_events"),
        ),
        (
            "cited ID without server",
            "auth_events",
            json!([["$abc", {"sha256": "x"}]]),
            PduError::Field("auth_events"),
        ),
    ];
    assert!(Pdu::from_json(good.clone(), RoomVersion::V2).is_ok());
    // Empty hashes, as Synapse sends some, are fine.
    let mut synapse_style = good.clone();
    synapse_style.insert(
        "prev_events".into(),
        crate::canonical::value_to_canonical(json!([[prev, {}]])).unwrap(),
    );
    assert!(Pdu::from_json(synapse_style, RoomVersion::V2).is_ok());
    for (name, field, value, want) in cases {
        let mut json = good.clone();
        json.insert(
            field.to_owned(),
            crate::canonical::value_to_canonical(value).unwrap(),
        );
        assert_eq!(
            Pdu::from_json(json, RoomVersion::V2).err(),
            Some(want),
            "{name}"
        );
    }
    // A stored ID that does not match the event's own is refused.
    let other = OwnedEventId::try_from("$other:b.test").unwrap();
    assert!(matches!(
        Pdu::from_json_with_id(other, good, RoomVersion::V2),
        Err(PduError::Format(_))
    ));
}

#[test]
fn v1_event_ids_need_the_event_id_servers_signature() {
    // A v1/v2 event whose ID names another server needs that server's signature too.
    let room = busy_room(RoomVersion::V1);
    let mut json = room.event("msg").json();
    json.insert(
        "event_id".into(),
        CanonicalJsonValue::String("$forged:c.test".into()),
    );
    let servers = signatures::required_servers(&json, RoomVersion::V1).unwrap();
    assert!(servers.contains("c.test") && servers.contains("b.test"));
    assert!(signatures::verify_pdu(&json, RoomVersion::V1, lookup()).is_err());
    // From v3 the ID is the hash, and only the sender's server signs.
    let room = busy_room(RoomVersion::V3);
    let servers = signatures::required_servers(&room.event("msg").json(), RoomVersion::V3).unwrap();
    assert_eq!(
        servers.into_iter().collect::<Vec<_>>(),
        vec!["b.test".to_owned()]
    );
}

/// Where the authorization rules of the versions differ, each case run on every version.
#[test]
fn rule_differences_per_version() {
    struct Diff {
        name: &'static str,
        setup: fn(RoomVersion, &mut Room),
        event: fn(RoomVersion, &Room) -> crate::builder::EventDraft,
        allowed_in: &'static [RoomVersion],
    }
    let all_from = |from: usize| -> &'static [RoomVersion] { &EVERY_DAG_VERSION[from - 1..] };
    let cases = vec![
        Diff {
            name: "knocking (v7+)",
            setup: |_, r| {
                r.send(join_rules(ALICE, "knock"));
            },
            event: |_, _| member(ELLA, ELLA, "knock"),
            allowed_in: all_from(7),
        },
        Diff {
            name: "restricted join (v8+)",
            setup: |_, r| {
                r.send(state_draft(
                    "m.room.join_rules",
                    "",
                    ALICE,
                    json!({"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": "!space:a.test"}]}),
                ));
            },
            event: |_, _| {
                member_with(
                    ELLA,
                    ELLA,
                    json!({"membership": "join", "join_authorised_via_users_server": ALICE}),
                )
            },
            allowed_in: all_from(8),
        },
        Diff {
            name: "knock_restricted join (v10+)",
            setup: |_, r| {
                r.send(state_draft(
                    "m.room.join_rules",
                    "",
                    ALICE,
                    json!({"join_rule": "knock_restricted", "allow": [{"type": "m.room_membership", "room_id": "!space:a.test"}]}),
                ));
            },
            event: |_, _| {
                member_with(
                    ELLA,
                    ELLA,
                    json!({"membership": "join", "join_authorised_via_users_server": ALICE}),
                )
            },
            allowed_in: all_from(10),
        },
        Diff {
            name: "power levels as strings (before v10)",
            setup: |_, _| {},
            event: |v, _| {
                let mut c = pl_content(v, &[], json!({}));
                c["ban"] = json!("50");
                power_levels(ALICE, c)
            },
            allowed_in: &EVERY_DAG_VERSION[..9],
        },
        Diff {
            name: "redacting another server's event without power (v1, v2 check the domain)",
            setup: |_, r| {
                r.send_labeled("amsg", message(ALICE, "mine"));
            },
            event: |_, r| redaction_of(BOB, &r.id("amsg")),
            allowed_in: all_from(3),
        },
        Diff {
            name: "m.room.aliases for another server (v1-v5 check the domain)",
            setup: |_, _| {},
            event: |_, _| state_draft("m.room.aliases", "b.test", ALICE, json!({"aliases": []})),
            allowed_in: all_from(6),
        },
        Diff {
            name: "m.room.aliases for one's own server without power (v1-v5 allow it)",
            setup: |_, _| {},
            event: |_, _| state_draft("m.room.aliases", "b.test", BOB, json!({"aliases": []})),
            allowed_in: &EVERY_DAG_VERSION[..5],
        },
    ];
    let mut failures = Vec::new();
    for case in &cases {
        for v in EVERY_DAG_VERSION {
            let mut room = Room::base(v);
            (case.setup)(v, &mut room);
            let draft = (case.event)(v, &room);
            let pdu = room.build_next(&draft);
            let (against_state, against_auth) = room.verdicts(&pdu);
            let want = case.allowed_in.contains(&v);
            if against_state.is_ok() != want || against_auth.is_ok() != want {
                failures.push(format!(
                    "v{v} {}: want allowed={want}, got {against_state:?} / {against_auth:?}",
                    case.name
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn labelled(room: &Room, state: &crate::auth::StateMap<OwnedEventId>) -> BTreeMap<String, String> {
    state
        .iter()
        .map(|((kind, key), id)| (format!("{kind}|{key}"), room.label_of(id)))
        .collect()
}

/// State resolution v1 (room version 1): forks of a base room, resolved at a merge.
#[test]
fn state_res_v1_table() {
    struct Fork {
        name: &'static str,
        /// Setup on the common trunk (labels usable below).
        trunk: Vec<(&'static str, crate::builder::EventDraft)>,
        /// Two branches from the trunk's head, oldest first.
        a: Vec<(&'static str, crate::builder::EventDraft)>,
        b: Vec<(&'static str, crate::builder::EventDraft)>,
        /// `(type|state_key, label)` expected in the resolved state.
        want: Vec<(&'static str, &'static str)>,
    }
    let v = RoomVersion::V1;
    let pl_bob = |level: i64| power_levels(ALICE, pl_content(v, &[(BOB, level)], json!({})));
    let forks = vec![
        Fork {
            name: "a key set on one branch only is kept",
            trunk: vec![],
            a: vec![(
                "name",
                state_draft("m.room.name", "", ALICE, json!({"name": "n"})),
            )],
            b: vec![("bmsg", message(BOB, "x"))],
            want: vec![("m.room.name|", "name"), ("m.room.topic|", "t0")],
        },
        Fork {
            name: "the deeper of two topics wins",
            trunk: vec![],
            a: vec![("ta", topic(ALICE, "a"))],
            b: vec![("m1", message(BOB, "x")), ("tb", topic(ALICE, "b"))],
            want: vec![("m.room.topic|", "tb")],
        },
        Fork {
            name: "power levels: the later change applies on top of the earlier one",
            trunk: vec![],
            a: vec![("pa", pl_bob(50))],
            b: vec![("m1", message(BOB, "x")), ("pb", pl_bob(10))],
            want: vec![("m.room.power_levels|", "pb")],
        },
        Fork {
            name: "power levels: a change its predecessor forbids stops the step",
            trunk: vec![("pt", pl_bob(50))],
            // Alice demotes Bob; Bob (still 50 on his branch) promotes Ella, later.
            a: vec![("pa", pl_bob(0))],
            b: vec![
                ("m1", message(BOB, "x")),
                (
                    "pb",
                    power_levels(BOB, pl_content(v, &[(BOB, 50), (ELLA, 10)], json!({}))),
                ),
            ],
            want: vec![("m.room.power_levels|", "pa")],
        },
        Fork {
            name: "join rules: the later change wins",
            trunk: vec![],
            a: vec![("ja", join_rules(ALICE, "invite"))],
            b: vec![
                ("m1", message(BOB, "x")),
                ("jb", join_rules(ALICE, "public")),
            ],
            want: vec![("m.room.join_rules|", "jb")],
        },
        Fork {
            name: "a ban beats the banned user's concurrent profile change",
            trunk: vec![],
            a: vec![("ban", member(ALICE, BOB, "ban"))],
            b: vec![(
                "prof",
                member_with(BOB, BOB, json!({"membership": "join", "displayname": "B"})),
            )],
            want: vec![("m.room.member|@bob:b.test", "ban")],
        },
        Fork {
            name: "other conflicts: the deepest event allowed in the resolved state",
            trunk: vec![("pt", pl_bob(50)), ("t1", topic(ALICE, "one"))],
            // Alice demotes Bob; Bob, on his branch, sets a deeper topic.
            a: vec![("pa", pl_bob(0))],
            b: vec![
                ("m1", message(BOB, "x")),
                ("m2", message(BOB, "y")),
                ("tb", topic(BOB, "bob's")),
            ],
            want: vec![("m.room.power_levels|", "pa"), ("m.room.topic|", "t1")],
        },
    ];
    for fork in forks {
        let mut room = Room::base(v);
        room.send_labeled("t0", topic(ALICE, "zero"));
        for (label, draft) in fork.trunk {
            room.send_labeled(label, draft);
        }
        let base = room.head.clone();
        let mut heads = Vec::new();
        for branch in [fork.a, fork.b] {
            room.head = base.clone();
            for (label, draft) in branch {
                room.send_labeled(label, draft);
            }
            heads.push(room.head[0].clone());
        }
        let sets: Vec<_> = heads.iter().map(|h| room.state_after(h)).collect();
        let got = crate::state_res::resolve(v, &sets, room.fetch()).unwrap();
        // The order of the state sets does not matter.
        let reversed: Vec<_> = sets.iter().rev().cloned().collect();
        assert_eq!(
            crate::state_res::resolve(v, &reversed, room.fetch()).unwrap(),
            got,
            "{}",
            fork.name
        );
        let got = labelled(&room, &got);
        for (key, label) in fork.want {
            assert_eq!(
                got.get(key).map(String::as_str),
                Some(label),
                "{}: {key}",
                fork.name
            );
        }
        // Keys no branch touched keep their common value.
        assert_eq!(
            got.get("m.room.create|").map(String::as_str),
            Some("create"),
            "{}",
            fork.name
        );
    }
    // A key no candidate of which can be found is dropped; one set alone is returned as is.
    let room = Room::base(v);
    let state = room.state();
    let mut other = state.clone();
    other.insert(
        (StateEventType::RoomTopic, String::new()),
        OwnedEventId::try_from("$missing:x.test").unwrap(),
    );
    let mut with_missing = state.clone();
    with_missing.insert(
        (StateEventType::RoomTopic, String::new()),
        OwnedEventId::try_from("$missing2:x.test").unwrap(),
    );
    let got = crate::state_res::resolve(v, &[other, with_missing], room.fetch()).unwrap();
    assert!(!got.contains_key(&(StateEventType::RoomTopic, String::new())));
    assert_eq!(
        crate::state_res::resolve(v, std::slice::from_ref(&state), room.fetch()).unwrap(),
        state
    );
}

/// The spec's example of a signed, redacted-form event (appendices, "signing events"), with the
/// example signing key: a v1-format event (its ID is in the event) that must verify.
#[test]
fn spec_signed_event_example_verifies() {
    // The spec's example key, as a PKCS#8 document; its seed is bytes 16..48.
    let der = crate::keys::b64_decode(
        "MFECAQEwBQYDK2VwBCIEINjozvdfbsGEt6DD+7Uf4PiJ/YvTNXV2mIPc/tA0T+6tgSEA3TPraTczVkDPTRaX4K+AfUuyx7Mzq1UafTXypnl0t2k",
    )
    .unwrap();
    let seed: [u8; 32] = der[16..48].try_into().unwrap();
    let key = crate::keys::ServerSigningKey::from_seed(seed, "1").unwrap();
    let lookup = |server: &str, key_id: &str| {
        (server == "domain" && key_id == "ed25519:1").then(|| KnownKey {
            key: key.verifying_key(),
            valid_until_ts: u64::MAX,
        })
    };
    let event = crate::canonical::parse_object(br#"{"content":{"body":"Here is the message content"},"event_id":"$0:domain","hashes":{"sha256":"onLKD1bGljeBWQhWZ1kaP9SorVmRQNdN5aM2JYU2n/g"},"origin":"domain","origin_server_ts":1000000,"room_id":"!r:domain","sender":"@u:domain","signatures":{"domain":{"ed25519:1":"D2V+qWBJssVuK/pEUJtwaYMdww2q1fP4PRCo226ChlLz8u8AWmQdLKes19NMjs/X0Hv0HIjU0c1TDKFMtGuoCA"}},"type":"m.room.message","unsigned":{"age_ts":1000000}}"#).unwrap();
    assert_eq!(
        signatures::content_hash(&event).unwrap(),
        "onLKD1bGljeBWQhWZ1kaP9SorVmRQNdN5aM2JYU2n/g"
    );
    for v in [RoomVersion::V1, RoomVersion::V2] {
        assert_eq!(
            signatures::verify_pdu(&event, v, lookup),
            Ok(HashCheck::Valid)
        );
        let mut tampered = event.clone();
        tampered.insert(
            "event_id".into(),
            CanonicalJsonValue::String("$1:domain".into()),
        );
        assert!(signatures::verify_pdu(&tampered, v, lookup).is_err());
    }
}
