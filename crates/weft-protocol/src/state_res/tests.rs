//! State resolution: the classic v2 scenarios (the ones every implementation checks itself
//! against), scenarios of our own, the v2.1 (room v12) changes, and the two helpers this
//! module supplies to ruma: `auth_chain` and `conflicted_state_subgraph`.
//!
//! Scenarios are written as in the well-known v2 test suite: a common initial room, then
//! events whose `prev_events` are given as chains (oldest first), then an `END` message whose
//! prev events are the heads. The room state at `END` is what is checked, in full.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use ruma::events::StateEventType;
use ruma::{EventId, OwnedEventId, OwnedRoomId};
use serde_json::json;

use super::*;
use crate::builder::{EventDraft, Position, build_pdu};
use crate::testing::*;

/// The initial room of the classic scenarios, built linearly.
fn initial(v: RoomVersion) -> Room {
    let mut room = Room::with_create(v, json!({}));
    let steps = [
        ("IMA", member(ALICE, ALICE, "join")),
        ("IPOWER", power_levels(ALICE, pl_content(v, &[], json!({})))),
        ("IJR", join_rules(ALICE, "public")),
        ("IMB", member(BOB, BOB, "join")),
        ("IMC", member(CHARLIE, CHARLIE, "join")),
        ("IMZ", member(ZARA, ZARA, "join")),
        ("START", message(ZARA, "start")),
    ];
    let mut prev = "create";
    for (label, draft) in steps {
        room.add_checked(label, draft, &[prev]);
        prev = label;
    }
    room
}

/// A state map with labels instead of event IDs, sorted, for readable comparisons.
fn labelled(room: &Room, state: &StateMap<OwnedEventId>) -> BTreeMap<(String, String), String> {
    state
        .iter()
        .map(|((kind, key), id)| ((kind.to_string(), key.clone()), room.label_of(id)))
        .collect()
}

fn key_of(room: &Room, label: &str) -> (StateEventType, String) {
    let ev = room.event(label);
    (ev.kind_str().into(), ev.state_key().unwrap().to_owned())
}

struct Scenario {
    name: &'static str,
    events: Vec<(&'static str, EventDraft)>,
    /// `prev_events` chains, oldest first; `END` is added at the end.
    chains: Vec<Vec<&'static str>>,
    /// Events expected in the state at `END`, replacing the initial state at their keys.
    expected: Vec<&'static str>,
    /// Keys expected to be absent from the state at `END`.
    absent: Vec<(StateEventType, String)>,
}

fn run_scenario(v: RoomVersion, s: Scenario) {
    let mut room = initial(v);
    let mut prevs: HashMap<&str, Vec<&str>> = HashMap::new();
    for chain in &s.chains {
        for pair in chain.windows(2) {
            let list = prevs.entry(pair[1]).or_default();
            if !list.contains(&pair[0]) {
                list.push(pair[0]);
            }
        }
    }
    for (label, draft) in s.events {
        let p = prevs
            .get(label)
            .unwrap_or_else(|| panic!("{}: {label} has no prev events", s.name));
        room.add_checked(label, draft, p);
    }
    let end_prevs = prevs[&"END"].clone();
    room.add_checked("END", message(ALICE, "end"), &end_prevs);

    let got = room.state_after(&room.id("END"));
    let mut want = room.state_after(&room.id("START"));
    for label in &s.expected {
        want.insert(key_of(&room, label), room.id(label));
    }
    for key in &s.absent {
        assert!(
            !want.contains_key(key),
            "{}: absent key is in the initial state",
            s.name
        );
    }
    assert_eq!(
        labelled(&room, &got),
        labelled(&room, &want),
        "v{v} {}",
        s.name
    );

    // The result does not depend on the order of the state sets.
    let mut sets: Vec<StateMap<OwnedEventId>> = end_prevs
        .iter()
        .map(|l| room.state_after(&room.id(l)))
        .collect();
    sets.reverse();
    let reversed = resolve(v, &sets, room.fetch()).unwrap();
    assert_eq!(
        labelled(&room, &reversed),
        labelled(&room, &got),
        "v{v} {} (state sets reversed)",
        s.name
    );
}

fn user_key(user: &str) -> (StateEventType, String) {
    (StateEventType::RoomMember, user.to_owned())
}

/// Alice bans Bob while Bob, a moderator, re-sends the power levels: the ban wins and Bob's
/// power levels event, sent by a user who is banned by then, is dropped.
fn ban_vs_power_levels(v: RoomVersion) -> Scenario {
    Scenario {
        name: "ban_vs_power_levels",
        events: vec![
            (
                "PA",
                power_levels(ALICE, pl_content(v, &[(BOB, 50)], json!({}))),
            ),
            ("MA", member(ALICE, ALICE, "join")),
            ("MB", member(ALICE, BOB, "ban")),
            (
                "PB",
                power_levels(BOB, pl_content(v, &[(BOB, 50)], json!({}))),
            ),
        ],
        chains: vec![
            vec!["START", "PA", "MA", "MB", "END"],
            vec!["PA", "PB", "END"],
        ],
        expected: vec!["PA", "MA", "MB"],
        absent: vec![],
    }
}

/// Alice demotes Bob while Bob sets the topic: Alice's demotion is applied first, so Bob's
/// topic (and his power levels event) fail, and Alice's earlier topic stays.
fn topic_basic(v: RoomVersion) -> Scenario {
    Scenario {
        name: "topic_basic",
        events: vec![
            ("T1", topic(ALICE, "t1")),
            (
                "PA1",
                power_levels(ALICE, pl_content(v, &[(BOB, 50)], json!({}))),
            ),
            ("T2", topic(ALICE, "t2")),
            (
                "PA2",
                power_levels(ALICE, pl_content(v, &[(BOB, 0)], json!({}))),
            ),
            (
                "PB",
                power_levels(BOB, pl_content(v, &[(BOB, 50)], json!({}))),
            ),
            ("T3", topic(BOB, "t3")),
        ],
        chains: vec![
            vec!["START", "T1", "PA1", "T2", "PA2", "END"],
            vec!["PA1", "PB", "T3", "END"],
        ],
        expected: vec!["PA2", "T2"],
        absent: vec![],
    }
}

/// Bob sets the topic and is then banned; a fork that never saw any of it must not let Bob's
/// topic through, and must not lose the ban or the power levels.
fn topic_reset(v: RoomVersion) -> Scenario {
    Scenario {
        name: "topic_reset",
        events: vec![
            ("T1", topic(ALICE, "t1")),
            (
                "PA",
                power_levels(ALICE, pl_content(v, &[(BOB, 50)], json!({}))),
            ),
            ("T2", topic(BOB, "t2")),
            ("MB", member(ALICE, BOB, "ban")),
        ],
        chains: vec![
            vec!["START", "T1", "PA", "T2", "MB", "END"],
            vec!["T1", "END"],
        ],
        expected: vec!["T1", "MB", "PA"],
        absent: vec![],
    }
}

/// Ella joins the public room concurrently with Alice making it invite-only: the join rules
/// change is a power event and is applied first, so the join fails.
fn join_rule_evasion(_v: RoomVersion) -> Scenario {
    Scenario {
        name: "join_rule_evasion",
        events: vec![
            ("JR", join_rules(ALICE, "invite")),
            ("ME", member(ELLA, ELLA, "join")),
        ],
        chains: vec![vec!["START", "JR", "END"], vec!["START", "ME", "END"]],
        expected: vec!["JR"],
        absent: vec![user_key(ELLA)],
    }
}

/// A chain of power levels events where each builds on the last: the latest stands.
fn offtopic_power_levels(v: RoomVersion) -> Scenario {
    Scenario {
        name: "offtopic_power_levels",
        events: vec![
            (
                "PA",
                power_levels(ALICE, pl_content(v, &[(BOB, 50)], json!({}))),
            ),
            (
                "PB",
                power_levels(BOB, pl_content(v, &[(BOB, 50), (CHARLIE, 50)], json!({}))),
            ),
            (
                "PC",
                power_levels(
                    CHARLIE,
                    pl_content(v, &[(BOB, 50), (CHARLIE, 0)], json!({})),
                ),
            ),
        ],
        chains: vec![vec!["START", "PA", "PB", "PC", "END"], vec!["PA", "END"]],
        expected: vec!["PC"],
        absent: vec![],
    }
}

/// topic_basic, then the forks merge (at a message from Zara) and Alice sets the topic again.
fn topic_setting(v: RoomVersion) -> Scenario {
    Scenario {
        name: "topic_setting",
        events: vec![
            ("T1", topic(ALICE, "t1")),
            (
                "PA1",
                power_levels(ALICE, pl_content(v, &[(BOB, 50)], json!({}))),
            ),
            ("T2", topic(ALICE, "t2")),
            (
                "PA2",
                power_levels(ALICE, pl_content(v, &[(BOB, 0)], json!({}))),
            ),
            (
                "PB",
                power_levels(BOB, pl_content(v, &[(BOB, 50)], json!({}))),
            ),
            ("T3", topic(BOB, "t3")),
            ("MZ1", message(ZARA, "merge")),
            ("T4", topic(ALICE, "t4")),
        ],
        chains: vec![
            vec!["START", "T1", "PA1", "T2", "PA2", "MZ1", "T4", "END"],
            vec!["PA1", "PB", "T3", "MZ1", "END"],
        ],
        expected: vec!["T4", "PA2"],
        absent: vec![],
    }
}

#[test]
fn classic_scenarios() {
    for v in STATE_RES_V2_VERSIONS {
        for scenario in [
            ban_vs_power_levels(v),
            topic_basic(v),
            topic_reset(v),
            join_rule_evasion(v),
            offtopic_power_levels(v),
            topic_setting(v),
        ] {
            run_scenario(v, scenario);
        }
    }
}

#[test]
fn more_scenarios() {
    for v in STATE_RES_V2_VERSIONS {
        let mod_bob = || power_levels(ALICE, pl_content(v, &[(BOB, 50)], json!({})));
        let scenarios = vec![
            Scenario {
                name: "changes to different keys merge",
                events: vec![
                    ("ME", member(ELLA, ELLA, "join")),
                    ("LC", member(CHARLIE, CHARLIE, "leave")),
                ],
                chains: vec![vec!["START", "ME", "END"], vec!["START", "LC", "END"]],
                expected: vec!["ME", "LC"],
                absent: vec![],
            },
            Scenario {
                name: "same power, concurrent topics: the later timestamp wins",
                events: vec![("T1", topic(ALICE, "early")), ("T2", topic(ALICE, "late"))],
                chains: vec![vec!["START", "T2", "END"], vec!["START", "T1", "END"]],
                expected: vec!["T2"],
                absent: vec![],
            },
            Scenario {
                name: "concurrent join rules: the lower-power sender's is applied last",
                events: vec![
                    ("PA", mod_bob()),
                    ("JA", join_rules(ALICE, "invite")),
                    ("JB", join_rules(BOB, "knock")),
                ],
                chains: vec![vec!["START", "PA", "JA", "END"], vec!["PA", "JB", "END"]],
                expected: vec!["PA", "JB"],
                absent: vec![],
            },
            Scenario {
                name: "a demotion beats the demoted moderator's concurrent change",
                events: vec![
                    ("PA", mod_bob()),
                    ("PD", power_levels(ALICE, pl_content(v, &[], json!({})))),
                    ("JB", join_rules(BOB, "knock")),
                ],
                chains: vec![vec!["START", "PA", "PD", "END"], vec!["PA", "JB", "END"]],
                expected: vec!["PD"],
                absent: vec![],
            },
            Scenario {
                // In a public room a kick does not stop the member's concurrent profile
                // update (a join), which is re-applied after the kick: the member is back.
                name: "a kick does not beat a concurrent profile update in a public room",
                events: vec![
                    ("KC", member(ALICE, CHARLIE, "leave")),
                    (
                        "CC",
                        member_with(
                            CHARLIE,
                            CHARLIE,
                            json!({"membership": "join", "displayname": "c"}),
                        ),
                    ),
                ],
                chains: vec![vec!["START", "KC", "END"], vec!["START", "CC", "END"]],
                expected: vec!["CC"],
                absent: vec![],
            },
            Scenario {
                name: "a ban beats the banned member's concurrent profile update",
                events: vec![
                    ("KC", member(ALICE, CHARLIE, "ban")),
                    (
                        "CC",
                        member_with(
                            CHARLIE,
                            CHARLIE,
                            json!({"membership": "join", "displayname": "c"}),
                        ),
                    ),
                ],
                chains: vec![vec!["START", "KC", "END"], vec!["START", "CC", "END"]],
                expected: vec!["KC"],
                absent: vec![],
            },
        ];
        for s in scenarios {
            run_scenario(v, s);
        }
    }
}

/// Alice (the creator) and Bob (listed at 100) change the join rules concurrently, Bob first.
/// Before v12 they tie on power, so the earlier event (Bob's) is applied first and Alice's
/// overrides it. From v12 the creator outranks everyone, so Alice's is applied first and
/// Bob's, still allowed, overrides it. (ruma finds the creator through the create event named
/// by each event's room ID, so this also checks what our PDUs expose.)
#[test]
fn v12_creator_outranks_everyone_in_power_ordering() {
    for v in DAG_VERSIONS {
        let winner = if v.creators_have_infinite_power() {
            "JB"
        } else {
            "JA"
        };
        run_scenario(
            v,
            Scenario {
                name: "creator vs admin join rules race",
                events: vec![
                    (
                        "PA",
                        power_levels(ALICE, pl_content(v, &[(BOB, 100)], json!({}))),
                    ),
                    ("JB", join_rules(BOB, "knock")),
                    ("JA", join_rules(ALICE, "invite")),
                ],
                chains: vec![vec!["START", "PA", "JB", "END"], vec!["PA", "JA", "END"]],
                expected: vec!["PA", winner],
                absent: vec![],
            },
        );
    }
}

#[test]
fn trivial_inputs() {
    for v in DAG_VERSIONS {
        let room = initial(v);
        let state = room.state_after(&room.id("START"));
        assert!(resolve(v, &[], room.fetch()).unwrap().is_empty());
        assert_eq!(
            resolve(v, std::slice::from_ref(&state), room.fetch()).unwrap(),
            state
        );
        assert_eq!(
            resolve(
                v,
                &[state.clone(), state.clone(), state.clone()],
                room.fetch()
            )
            .unwrap(),
            state
        );
        // A state set that is a strict subset: the missing key is conflicted and, being valid,
        // comes back.
        let mut without_zara = state.clone();
        without_zara.remove(&user_key(ZARA));
        assert_eq!(
            resolve(v, &[state.clone(), without_zara], room.fetch()).unwrap(),
            state
        );
    }
}

/// MSC4297 problem A, which room v12 fixes by starting the first iterative auth checks from
/// an empty state. Alice makes the room invite-only and leaves; Bob and Charlie then change
/// their profiles concurrently. Charlie's side of the state is stale (it still has the old,
/// public join rules), so the join rules are conflicted while Alice's leave is unconflicted.
/// Replayed on top of "Alice has left", both join rules events fail in v2.0 and the room ends
/// up with no join rules at all; v2.1 replays them on their own auth events.
#[test]
fn v12_fixes_msc4297_problem_a() {
    for v in DAG_VERSIONS {
        let mut room = Room::with_create(v, json!({}));
        room.add_checked("IMA", member(ALICE, ALICE, "join"), &["create"]);
        room.add_checked(
            "IPOWER",
            power_levels(ALICE, pl_content(v, &[], json!({}))),
            &["IMA"],
        );
        room.add_checked("IJR", join_rules(ALICE, "public"), &["IPOWER"]);
        room.add_checked("IMB", member(BOB, BOB, "join"), &["IJR"]);
        room.add_checked("IMC", member(CHARLIE, CHARLIE, "join"), &["IMB"]);
        room.add_checked("JR", join_rules(ALICE, "invite"), &["IMC"]);
        room.add_checked("AL", member(ALICE, ALICE, "leave"), &["JR"]);
        room.add_checked(
            "B2",
            member_with(BOB, BOB, json!({"membership": "join", "displayname": "b"})),
            &["AL"],
        );
        room.add_checked(
            "C2",
            member_with(
                CHARLIE,
                CHARLIE,
                json!({"membership": "join", "displayname": "c"}),
            ),
            &["AL"],
        );
        let bob_side = room.state_after(&room.id("B2"));
        let mut charlie_side = room.state_after(&room.id("C2"));
        charlie_side.insert(key_of(&room, "IJR"), room.id("IJR"));

        let got = resolve(v, &[bob_side.clone(), charlie_side], room.fetch()).unwrap();
        let mut want = bob_side;
        want.insert(key_of(&room, "C2"), room.id("C2"));
        if v != RoomVersion::V12 {
            // The state reset v2.1 was made for.
            want.remove(&key_of(&room, "JR"));
        }
        assert_eq!(labelled(&room, &got), labelled(&room, &want), "v{v}");
        assert_eq!(
            got.contains_key(&key_of(&room, "JR")),
            v == RoomVersion::V12,
            "v{v}"
        );
    }
}

/// MSC4297 problem B, which room v12 fixes with the conflicted state subgraph. Alice promotes
/// Bob (PL1), Bob promotes Charlie (PL2). Ella's side of the state is stale (it has the
/// original power levels PL0) although Ella's own events cite PL2. PL1 is in both auth
/// chains, so it is not in the auth difference; without it, PL2 is replayed right after PL0
/// and fails. PL1 lies on the auth path from PL2 to PL0, so v2.1 replays it.
#[test]
fn v12_fixes_msc4297_problem_b() {
    for v in DAG_VERSIONS {
        let mut room = Room::with_create(v, json!({}));
        room.add_checked("IMA", member(ALICE, ALICE, "join"), &["create"]);
        room.add_checked(
            "PL0",
            power_levels(ALICE, pl_content(v, &[], json!({}))),
            &["IMA"],
        );
        room.add_checked("IJR", join_rules(ALICE, "public"), &["PL0"]);
        room.add_checked("IMB", member(BOB, BOB, "join"), &["IJR"]);
        room.add_checked("IMC", member(CHARLIE, CHARLIE, "join"), &["IMB"]);
        room.add_checked(
            "PL1",
            power_levels(ALICE, pl_content(v, &[(BOB, 50)], json!({}))),
            &["IMC"],
        );
        room.add_checked(
            "PL2",
            power_levels(BOB, pl_content(v, &[(BOB, 50), (CHARLIE, 50)], json!({}))),
            &["PL1"],
        );
        room.add_checked("ZJ", member(ZARA, ZARA, "join"), &["PL2"]);
        room.add_checked("EJ", member(ELLA, ELLA, "join"), &["PL2"]);
        room.add_checked(
            "E2",
            member_with(
                ELLA,
                ELLA,
                json!({"membership": "join", "displayname": "e"}),
            ),
            &["EJ"],
        );
        let mut ella_side = room.state_after(&room.id("E2"));
        ella_side.insert(key_of(&room, "PL0"), room.id("PL0"));
        let zara_side = room.state_after(&room.id("ZJ"));

        let got = resolve(v, &[ella_side, zara_side.clone()], room.fetch()).unwrap();
        let mut want = zara_side;
        want.insert(key_of(&room, "E2"), room.id("E2"));
        if v != RoomVersion::V12 {
            // The state reset v2.1 was made for.
            want.insert(key_of(&room, "PL0"), room.id("PL0"));
        }
        assert_eq!(labelled(&room, &got), labelled(&room, &want), "v{v}");

        // The subgraph is what brings PL1 in. Bob's join (cited by PL2) and the join rules
        // (cited by Bob's join) also lead from PL2 back to PL0, so they are in it too; Alice's
        // join, cited by PL1 but citing no power levels, is not.
        let conflicted: HashSet<OwnedEventId> = [room.id("PL0"), room.id("PL2")].into();
        let subgraph = conflicted_state_subgraph(&conflicted, &room.fetch());
        let mut want_subgraph = HashSet::new();
        for label in ["PL0", "PL1", "PL2", "IMB", "IJR"] {
            want_subgraph.insert(room.id(label));
        }
        let names = |set: &HashSet<OwnedEventId>| {
            let mut n: Vec<String> = set.iter().map(|id| room.label_of(id)).collect();
            n.sort();
            n
        };
        assert_eq!(names(&subgraph), names(&want_subgraph), "v{v}");
    }
}

/// A hand-made auth DAG: each node is a state event whose `auth_events` are the listed
/// earlier nodes (or unknown IDs, written `?name`).
struct Dag {
    events: HashMap<OwnedEventId, Arc<Pdu>>,
    ids: HashMap<String, OwnedEventId>,
}

impl Dag {
    fn new(nodes: &[(&str, &[&str])]) -> Self {
        let mut dag = Dag {
            events: HashMap::new(),
            ids: HashMap::new(),
        };
        for (name, parents) in nodes {
            dag.push(name, parents);
        }
        dag
    }

    fn push(&mut self, name: &str, parents: &[&str]) {
        let room = OwnedRoomId::try_from("!dag:a.test").unwrap();
        let auth_events = parents.iter().map(|p| self.id(p)).collect();
        let draft = state_draft("org.example.node", name, ALICE, json!({}));
        let position = Position {
            version: RoomVersion::V11,
            room_id: Some(&room),
            prev_events: vec![],
            auth_events,
            depth: 1,
        };
        let pdu = build_pdu(&draft, &position, "a.test", &server_key("a.test")).unwrap();
        let id = pdu.owned_event_id();
        self.events.insert(id.clone(), Arc::new(pdu));
        assert!(self.ids.insert(name.to_owned(), id).is_none());
    }

    fn id(&self, name: &str) -> OwnedEventId {
        match name.strip_prefix('?') {
            Some(unknown) => OwnedEventId::try_from(format!("$unknown-{unknown}")).unwrap(),
            None => self.ids[name].clone(),
        }
    }

    fn set(&self, names: &[&str]) -> HashSet<OwnedEventId> {
        names.iter().map(|n| self.id(n)).collect()
    }

    fn fetch(&self) -> impl Fn(&EventId) -> Option<Arc<Pdu>> + '_ {
        |id| self.events.get(id).cloned()
    }

    fn names(&self, set: &HashSet<OwnedEventId>) -> Vec<String> {
        let mut names: Vec<String> = set
            .iter()
            .map(|id| {
                self.ids
                    .iter()
                    .find(|(_, v)| *v == id)
                    .map(|(k, _)| k.clone())
                    .unwrap_or_else(|| id.to_string())
            })
            .collect();
        names.sort();
        names
    }
}

#[test]
fn conflicted_state_subgraph_table() {
    // (name, DAG, conflicted, expected subgraph)
    type Nodes = &'static [(&'static str, &'static [&'static str])];
    let cases: &[(&str, Nodes, &[&str], &[&str])] = &[
        (
            "chain: events between two conflicted events, not beyond them",
            &[
                ("a", &[]),
                ("b", &["a"]),
                ("c", &["b"]),
                ("d", &["c"]),
                ("e", &["d"]),
            ],
            &["b", "d"],
            &["b", "c", "d"],
        ),
        (
            "siblings: a common ancestor is not between them",
            &[("r", &[]), ("x", &["r"]), ("y", &["r"])],
            &["x", "y"],
            &["x", "y"],
        ),
        (
            "every path is included, dead ends are not",
            &[
                ("a", &[]),
                ("b", &["a"]),
                ("z", &["b"]),
                ("x", &["b"]),
                ("y", &["z"]),
                ("w", &["a"]),
                ("d", &["x", "y", "w"]),
            ],
            &["d", "b"],
            &["b", "d", "x", "y", "z"],
        ),
        (
            "diamond",
            &[
                ("bottom", &[]),
                ("l", &["bottom"]),
                ("r", &["bottom"]),
                ("top", &["l", "r"]),
            ],
            &["top", "bottom"],
            &["bottom", "l", "r", "top"],
        ),
        (
            "three conflicted events: a non-conflicted event in the middle counts",
            &[
                ("root", &[]),
                ("c1", &["root"]),
                ("m1", &["c1"]),
                ("c2", &["m1"]),
                ("m2", &["c2"]),
                ("c3", &["m2"]),
            ],
            &["c1", "c3"],
            &["c1", "c2", "c3", "m1", "m2"],
        ),
        (
            "a side branch joining the path above the lower end is included",
            &[
                ("low", &[]),
                ("mid", &["low"]),
                ("side", &["low"]),
                ("high", &["mid", "side"]),
                ("unrelated", &["low"]),
            ],
            &["high", "low"],
            &["high", "low", "mid", "side"],
        ),
        (
            "a single conflicted event",
            &[("a", &[]), ("b", &["a"])],
            &["b"],
            &["b"],
        ),
        (
            "unknown events are kept if conflicted and never followed",
            &[("a", &[]), ("b", &["a", "?gone"])],
            &["b", "?gone", "?lost"],
            &["b", "?gone", "?lost"],
        ),
        (
            "direct edge: nothing in between",
            &[("a", &[]), ("b", &["a"]), ("c", &["b"])],
            &["a", "b"],
            &["a", "b"],
        ),
    ];
    for (name, nodes, conflicted, want) in cases {
        let dag = Dag::new(nodes);
        let got = conflicted_state_subgraph(&dag.set(conflicted), &dag.fetch());
        assert_eq!(dag.names(&got), dag.names(&dag.set(want)), "{name}");
    }
}

#[test]
fn conflicted_state_subgraph_of_a_long_chain() {
    // Deep enough that a recursive walk would be at risk; every event is on the path.
    const LEN: usize = 3000;
    let mut dag = Dag::new(&[("n0", &[])]);
    for i in 1..LEN {
        let parent = format!("n{}", i - 1);
        dag.push(&format!("n{i}"), &[parent.as_str()]);
    }
    let top = format!("n{}", LEN - 1);
    let got = conflicted_state_subgraph(&dag.set(&["n0", top.as_str()]), &dag.fetch());
    assert_eq!(got.len(), LEN);
    let got = conflicted_state_subgraph(&dag.set(&["n1500", top.as_str()]), &dag.fetch());
    assert_eq!(got.len(), LEN - 1500);
    assert!(!got.contains(&dag.id("n1499")));
}

#[test]
fn auth_chain_table() {
    let dag = Dag::new(&[
        ("create", &[]),
        ("join", &["create"]),
        ("pl", &["create", "join"]),
        ("jr", &["create", "join", "pl"]),
        ("bob", &["create", "pl", "jr"]),
        ("msg", &["create", "pl", "bob"]),
        ("orphan", &["?gone"]),
    ]);
    // (roots, expected chain)
    let cases: &[(&[&str], &[&str])] = &[
        (&["create"], &[]),
        (&["join"], &["create"]),
        (&["bob"], &["create", "join", "pl", "jr"]),
        (&["msg"], &["create", "join", "pl", "jr", "bob"]),
        // A root is only in the chain when another root leads to it.
        (&["pl", "bob"], &["create", "join", "pl", "jr"]),
        (&["pl", "join"], &["create", "join"]),
        // Unknown events: an unknown root contributes nothing, an unknown auth event is in
        // the chain but cannot be followed.
        (&["?nowhere"], &[]),
        (&["orphan"], &["?gone"]),
        (&[], &[]),
    ];
    for (roots, want) in cases {
        let got = auth_chain(roots.iter().map(|r| dag.id(r)), &dag.fetch());
        assert_eq!(dag.names(&got), dag.names(&dag.set(want)), "{roots:?}");
    }
}

#[test]
fn auth_chain_of_real_rooms() {
    // In v12 nothing cites the create event, so it is in no auth chain; before, everything
    // leads to it.
    for v in DAG_VERSIONS {
        let room = initial(v);
        let got = auth_chain([room.id("IMB")], &room.fetch());
        let mut want: HashSet<OwnedEventId> =
            [room.id("IMA"), room.id("IPOWER"), room.id("IJR")].into();
        if !v.room_id_from_create_event() {
            want.insert(room.id("create"));
        }
        assert_eq!(got, want, "v{v}");
        assert!(auth_chain([room.id("create")], &room.fetch()).is_empty());
    }
}

/// Room versions 1 and 2 let senders choose event IDs, so `auth_events` can form a cycle. The
/// `state_res` fuzz target found that ruma's resolution then never ends (its mainline walk
/// follows power-levels auth events round the loop); such inputs are refused instead, at once.
#[test]
fn auth_cycles_are_refused_not_followed() {
    use ruma::CanonicalJsonValue;
    for v in [RoomVersion::V1, RoomVersion::V2] {
        let room = Room::base(v);
        let pl = room.event("pl");
        let create = room.id("create");
        // Two power-levels events citing each other.
        let with = |id: &str, cites: &str| {
            let mut json = pl.json();
            json.insert("event_id".into(), CanonicalJsonValue::String(id.into()));
            let pair = |e: &str| {
                crate::canonical::value_to_canonical(json!([e, {"sha256": "x"}])).unwrap()
            };
            json.insert(
                "auth_events".into(),
                CanonicalJsonValue::Array(vec![pair(create.as_str()), pair(cites)]),
            );
            Arc::new(Pdu::from_json(json, v).unwrap())
        };
        let a = with("$a:a.test", "$b:a.test");
        let b = with("$b:a.test", "$a:a.test");
        let mut events: HashMap<OwnedEventId, Arc<Pdu>> = HashMap::new();
        for e in [&a, &b] {
            events.insert(e.owned_event_id(), Arc::clone(e));
        }
        let fetch = |id: &EventId| events.get(id).cloned().or_else(|| room.get(id));
        let key = (StateEventType::RoomPowerLevels, String::new());
        let mut one = room.state();
        one.insert(key.clone(), a.owned_event_id());
        let mut two = room.state();
        two.insert(key, b.owned_event_id());
        assert!(
            find_auth_cycle([a.owned_event_id()], &fetch).is_some(),
            "v{v}"
        );
        if v == RoomVersion::V2 {
            let err = resolve(v, &[one, two], fetch).unwrap_err();
            assert!(err.0.contains("cycle"), "v{v}: {err}");
        } else {
            // State resolution v1 does not walk auth chains; it still ends.
            resolve(v, &[one, two], fetch).unwrap();
        }
        // The helpers end on the cycle too.
        let conflicted: HashSet<OwnedEventId> = [a.owned_event_id()].into();
        assert!(conflicted_state_subgraph(&conflicted, &fetch).contains(&b.owned_event_id()));
        assert!(auth_chain([a.owned_event_id()], &fetch).contains(&a.owned_event_id()));
        // An event citing itself is refused when parsed (the fuzz target's input: a
        // power-levels event reusing the create event's ID and citing it).
        let mut json = pl.json();
        json.insert(
            "event_id".into(),
            CanonicalJsonValue::String(create.to_string()),
        );
        assert!(matches!(
            Pdu::from_json(json, v),
            Err(crate::pdu::PduError::Format(_))
        ));
    }
    // Hash-named events cannot form cycles; the check finds none in a real room.
    let room = Room::base(RoomVersion::V12);
    assert_eq!(
        find_auth_cycle(room.state().into_values(), &room.fetch()),
        None
    );
}
