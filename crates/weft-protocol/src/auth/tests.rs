//! Tables of authorization cases, good and bad, for every DAG room version.
//!
//! Every case starts from [`Room::base`] (create, Alice joined, power levels, public join
//! rules, Bob and Charlie joined at level 0), applies its setup events (each of which must
//! itself be allowed), builds the candidate event on top with the auth events the selection
//! algorithm picks, and checks it both against the room state and against its own auth
//! events. A denied case names a fragment of the expected reason, so a case denied for the
//! wrong reason fails too.

use std::collections::HashMap;
use std::sync::Arc;

use ruma::{EventId, OwnedEventId};
use serde_json::{Value, json};

use super::*;
use crate::builder::{EventDraft, Position, build_pdu};
use crate::testing::*;

/// What a case expects.
#[derive(Clone, Copy, Debug)]
enum Want {
    Allow,
    /// Denied, with a reason containing this fragment.
    Deny(&'static str),
}
use Want::{Allow, Deny};

struct Case {
    name: &'static str,
    setup: Vec<EventDraft>,
    event: EventDraft,
    want: Want,
}

fn case(name: &'static str, setup: Vec<EventDraft>, event: EventDraft, want: Want) -> Case {
    Case {
        name,
        setup,
        event,
        want,
    }
}

fn matches_want(got: &Result<(), String>, want: Want) -> bool {
    match (got, want) {
        (Ok(()), Allow) => true,
        (Err(e), Deny(fragment)) => e.contains(fragment),
        _ => false,
    }
}

/// Runs every case on a fresh base room and reports all mismatches at once.
fn run(version: RoomVersion, cases: Vec<Case>) {
    let mut failures = Vec::new();
    let count = cases.len();
    for c in cases {
        let mut room = Room::base(version);
        for step in c.setup {
            room.send(step);
        }
        let pdu = room.build_next(&c.event);
        let (against_state, against_auth) = room.verdicts(&pdu);
        if !matches_want(&against_state, c.want) || !matches_want(&against_auth, c.want) {
            failures.push(format!(
                "v{version} {}: want {:?}, against state {:?}, against auth events {:?}",
                c.name, c.want, against_state, against_auth
            ));
        }
    }
    assert!(count > 0);
    assert!(
        failures.is_empty(),
        "{} of {count} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn pl(version: RoomVersion, sender: &str, users: &[(&str, i64)], extra: Value) -> EventDraft {
    power_levels(sender, pl_content(version, users, extra))
}

fn with_field(mut draft: EventDraft, key: &str, value: Value) -> EventDraft {
    draft.content[key] = value;
    draft
}

fn restricted(sender: &str, rule: &str) -> EventDraft {
    state_draft(
        "m.room.join_rules",
        "",
        sender,
        json!({
            "join_rule": rule,
            "allow": [{ "type": "m.room_membership", "room_id": "!space:a.test" }],
        }),
    )
}

fn join_via(user: &str, via: &str) -> EventDraft {
    member_with(
        user,
        user,
        json!({ "membership": "join", "join_authorised_via_users_server": via }),
    )
}

#[test]
fn joins() {
    for v in DAG_VERSIONS {
        run(
            v,
            vec![
                case(
                    "public: newcomer joins",
                    vec![],
                    member(ELLA, ELLA, "join"),
                    Allow,
                ),
                case(
                    "public: member updates their profile",
                    vec![],
                    member_with(BOB, BOB, json!({"membership": "join", "displayname": "B"})),
                    Allow,
                ),
                case(
                    "public: a user who left joins again",
                    vec![member(BOB, BOB, "leave")],
                    member(BOB, BOB, "join"),
                    Allow,
                ),
                case(
                    "public: banned user cannot join",
                    vec![member(ALICE, ELLA, "ban")],
                    member(ELLA, ELLA, "join"),
                    Deny("banned"),
                ),
                case(
                    "public: banned member cannot rejoin",
                    vec![member(ALICE, BOB, "ban")],
                    member(BOB, BOB, "join"),
                    Deny("banned"),
                ),
                case(
                    "public: join sent by someone else",
                    vec![],
                    member(BOB, ELLA, "join"),
                    Deny("must match target"),
                ),
                case(
                    "invite: uninvited user cannot join",
                    vec![join_rules(ALICE, "invite")],
                    member(ELLA, ELLA, "join"),
                    Deny("not `public`"),
                ),
                case(
                    "invite: invited user joins",
                    vec![join_rules(ALICE, "invite"), member(ALICE, ELLA, "invite")],
                    member(ELLA, ELLA, "join"),
                    Allow,
                ),
                case(
                    "invite: joined member updates their profile",
                    vec![join_rules(ALICE, "invite")],
                    member(BOB, BOB, "join"),
                    Allow,
                ),
                case(
                    "invite: member who left cannot come back uninvited",
                    vec![join_rules(ALICE, "invite"), member(BOB, BOB, "leave")],
                    member(BOB, BOB, "join"),
                    Deny("not `public`"),
                ),
                case(
                    "invite: the inviter cannot join on the invitee's behalf",
                    vec![join_rules(ALICE, "invite"), member(ALICE, ELLA, "invite")],
                    member(ALICE, ELLA, "join"),
                    Deny("must match target"),
                ),
                case(
                    "invite: invite revoked by a kick, then join",
                    vec![
                        join_rules(ALICE, "invite"),
                        member(ALICE, ELLA, "invite"),
                        member(ALICE, ELLA, "leave"),
                    ],
                    member(ELLA, ELLA, "join"),
                    Deny("not `public`"),
                ),
                case(
                    "private: nobody joins",
                    vec![join_rules(ALICE, "private")],
                    member(ELLA, ELLA, "join"),
                    Deny("not `public`"),
                ),
                case(
                    "knock: uninvited user cannot join",
                    vec![join_rules(ALICE, "knock")],
                    member(ELLA, ELLA, "join"),
                    Deny("not `public`"),
                ),
                case(
                    "knock: invited user joins",
                    vec![join_rules(ALICE, "knock"), member(ALICE, ELLA, "invite")],
                    member(ELLA, ELLA, "join"),
                    Allow,
                ),
                case(
                    "restricted: join authorised by a joined admin",
                    vec![restricted(ALICE, "restricted")],
                    join_via(ELLA, ALICE),
                    Allow,
                ),
                case(
                    "restricted: join authorised by a member at the invite level",
                    vec![restricted(ALICE, "restricted")],
                    join_via(ELLA, BOB),
                    Allow,
                ),
                case(
                    "restricted: authoriser below the invite level",
                    vec![
                        pl(v, ALICE, &[], json!({"invite": 50})),
                        restricted(ALICE, "restricted"),
                    ],
                    join_via(ELLA, BOB),
                    Deny("does not have enough power"),
                ),
                case(
                    "restricted: authoriser not joined",
                    vec![restricted(ALICE, "restricted")],
                    join_via(ELLA, ZARA),
                    Deny("is not joined"),
                ),
                case(
                    "restricted: no authoriser and not invited",
                    vec![restricted(ALICE, "restricted")],
                    member(ELLA, ELLA, "join"),
                    Deny("without `join_authorised_via_users_server`"),
                ),
                case(
                    "restricted: invited user needs no authoriser",
                    vec![
                        restricted(ALICE, "restricted"),
                        member(ALICE, ELLA, "invite"),
                    ],
                    member(ELLA, ELLA, "join"),
                    Allow,
                ),
                case(
                    "restricted: banned user cannot join even when authorised",
                    vec![restricted(ALICE, "restricted"), member(ALICE, ELLA, "ban")],
                    join_via(ELLA, ALICE),
                    Deny("banned"),
                ),
                case(
                    "knock_restricted: join authorised by a joined admin",
                    vec![restricted(ALICE, "knock_restricted")],
                    join_via(ELLA, ALICE),
                    Allow,
                ),
            ],
        );
    }
}

#[test]
fn knocks() {
    for v in DAG_VERSIONS {
        run(
            v,
            vec![
                case(
                    "knock room: newcomer knocks",
                    vec![join_rules(ALICE, "knock")],
                    member(ELLA, ELLA, "knock"),
                    Allow,
                ),
                case(
                    "knock_restricted room: newcomer knocks",
                    vec![restricted(ALICE, "knock_restricted")],
                    member(ELLA, ELLA, "knock"),
                    Allow,
                ),
                case(
                    "public room: knocking is not allowed",
                    vec![],
                    member(ELLA, ELLA, "knock"),
                    Deny("knocking is not allowed"),
                ),
                case(
                    "knock sent by someone else",
                    vec![join_rules(ALICE, "knock")],
                    member(BOB, ELLA, "knock"),
                    Deny("sender does not match target"),
                ),
                case(
                    "joined member cannot knock",
                    vec![join_rules(ALICE, "knock")],
                    member(BOB, BOB, "knock"),
                    Deny("banned, invited or joined"),
                ),
                case(
                    "banned user cannot knock",
                    vec![join_rules(ALICE, "knock"), member(ALICE, ELLA, "ban")],
                    member(ELLA, ELLA, "knock"),
                    Deny("banned, invited or joined"),
                ),
                case(
                    "knocking user withdraws the knock",
                    vec![join_rules(ALICE, "knock"), member(ELLA, ELLA, "knock")],
                    member(ELLA, ELLA, "leave"),
                    Allow,
                ),
            ],
        );
    }
}

#[test]
fn invites() {
    for v in DAG_VERSIONS {
        run(
            v,
            vec![
                case(
                    "member invites a newcomer",
                    vec![],
                    member(BOB, ELLA, "invite"),
                    Allow,
                ),
                case(
                    "member below the invite level",
                    vec![pl(v, ALICE, &[], json!({"invite": 50}))],
                    member(BOB, ELLA, "invite"),
                    Deny("not have enough power to invite"),
                ),
                case(
                    "moderator at the invite level",
                    vec![pl(v, ALICE, &[(BOB, 50)], json!({"invite": 50}))],
                    member(BOB, ELLA, "invite"),
                    Allow,
                ),
                case(
                    "creator invites despite a high invite level",
                    vec![pl(v, ALICE, &[], json!({"invite": 100}))],
                    member(ALICE, ELLA, "invite"),
                    Allow,
                ),
                case(
                    "target already joined",
                    vec![],
                    member(BOB, CHARLIE, "invite"),
                    Deny("joined or banned"),
                ),
                case(
                    "target banned",
                    vec![member(ALICE, ELLA, "ban")],
                    member(BOB, ELLA, "invite"),
                    Deny("joined or banned"),
                ),
                case(
                    "target already invited is invited again",
                    vec![member(ALICE, ELLA, "invite")],
                    member(BOB, ELLA, "invite"),
                    Allow,
                ),
                case(
                    "target who left is invited back",
                    vec![member(CHARLIE, CHARLIE, "leave")],
                    member(BOB, CHARLIE, "invite"),
                    Allow,
                ),
                case(
                    "sender never joined",
                    vec![],
                    member(ELLA, ZARA, "invite"),
                    Deny("sender is not joined"),
                ),
                case(
                    "sender left",
                    vec![member(BOB, BOB, "leave")],
                    member(BOB, ELLA, "invite"),
                    Deny("sender is not joined"),
                ),
                case(
                    "sender only invited",
                    vec![member(ALICE, ELLA, "invite")],
                    member(ELLA, ZARA, "invite"),
                    Deny("sender is not joined"),
                ),
                case(
                    "third-party invite event at the invite level",
                    vec![],
                    state_draft(
                        "m.room.third_party_invite",
                        "token",
                        BOB,
                        json!({"display_name": "e", "key_validity_url": "https://id.test/v", "public_key": "AAAA"}),
                    ),
                    Allow,
                ),
                case(
                    "third-party invite event below the invite level",
                    vec![pl(v, ALICE, &[], json!({"invite": 50}))],
                    state_draft(
                        "m.room.third_party_invite",
                        "token",
                        BOB,
                        json!({"display_name": "e", "key_validity_url": "https://id.test/v", "public_key": "AAAA"}),
                    ),
                    Deny("not have enough power to send invites"),
                ),
                case(
                    "third-party invite without a matching token",
                    vec![],
                    member_with(
                        BOB,
                        ELLA,
                        json!({
                            "membership": "invite",
                            "third_party_invite": {
                                "display_name": "e",
                                "signed": {"mxid": ELLA, "token": "nope", "signatures": {}},
                            },
                        }),
                    ),
                    Deny("matches the token"),
                ),
            ],
        );
    }
}

#[test]
fn leaves_and_kicks() {
    for v in DAG_VERSIONS {
        run(
            v,
            vec![
                case("member leaves", vec![], member(BOB, BOB, "leave"), Allow),
                case(
                    "creator leaves",
                    vec![],
                    member(ALICE, ALICE, "leave"),
                    Allow,
                ),
                case(
                    "non-member cannot leave",
                    vec![],
                    member(ELLA, ELLA, "leave"),
                    Deny("not joined, invited or knocked"),
                ),
                case(
                    "member who left cannot leave again",
                    vec![member(BOB, BOB, "leave")],
                    member(BOB, BOB, "leave"),
                    Deny("not joined, invited or knocked"),
                ),
                case(
                    "invitee rejects the invite",
                    vec![member(ALICE, ELLA, "invite")],
                    member(ELLA, ELLA, "leave"),
                    Allow,
                ),
                case(
                    "banned user cannot unban themselves by leaving",
                    vec![member(ALICE, BOB, "ban")],
                    member(BOB, BOB, "leave"),
                    Deny("not joined, invited or knocked"),
                ),
                case(
                    "creator kicks a member",
                    vec![],
                    member(ALICE, BOB, "leave"),
                    Allow,
                ),
                case(
                    "member without kick power",
                    vec![],
                    member(BOB, CHARLIE, "leave"),
                    Deny("to kick target user"),
                ),
                case(
                    "moderator kicks a lower member",
                    vec![pl(v, ALICE, &[(BOB, 50)], json!({}))],
                    member(BOB, CHARLIE, "leave"),
                    Allow,
                ),
                case(
                    "moderator kicks a peer at the same level",
                    vec![pl(v, ALICE, &[(BOB, 50), (CHARLIE, 50)], json!({}))],
                    member(BOB, CHARLIE, "leave"),
                    Deny("to kick target user"),
                ),
                case(
                    "moderator kicks someone above them",
                    vec![pl(v, ALICE, &[(BOB, 50), (CHARLIE, 75)], json!({}))],
                    member(BOB, CHARLIE, "leave"),
                    Deny("to kick target user"),
                ),
                case(
                    "moderator kicks the creator",
                    vec![pl(v, ALICE, &[(BOB, 50)], json!({}))],
                    member(BOB, ALICE, "leave"),
                    Deny("to kick target user"),
                ),
                case(
                    "moderator below a raised kick level",
                    vec![pl(v, ALICE, &[(BOB, 50)], json!({"kick": 75}))],
                    member(BOB, CHARLIE, "leave"),
                    Deny("to kick target user"),
                ),
                case(
                    "member kicks with a kick level of 0",
                    vec![pl(v, ALICE, &[(BOB, 1)], json!({"kick": 0}))],
                    member(BOB, CHARLIE, "leave"),
                    Allow,
                ),
                case(
                    "moderator who left cannot kick",
                    vec![
                        pl(v, ALICE, &[(BOB, 50)], json!({})),
                        member(BOB, BOB, "leave"),
                    ],
                    member(BOB, CHARLIE, "leave"),
                    Deny("sender is not joined"),
                ),
                case(
                    "moderator revokes an invite",
                    vec![
                        pl(v, ALICE, &[(BOB, 50)], json!({})),
                        member(ALICE, ELLA, "invite"),
                    ],
                    member(BOB, ELLA, "leave"),
                    Allow,
                ),
            ],
        );
    }
}

#[test]
fn bans_and_unbans() {
    for v in DAG_VERSIONS {
        run(
            v,
            vec![
                case(
                    "creator bans a member",
                    vec![],
                    member(ALICE, BOB, "ban"),
                    Allow,
                ),
                case(
                    "creator bans a non-member pre-emptively",
                    vec![],
                    member(ALICE, ELLA, "ban"),
                    Allow,
                ),
                case(
                    "member without ban power",
                    vec![],
                    member(BOB, CHARLIE, "ban"),
                    Deny("to ban target user"),
                ),
                case(
                    "moderator bans a lower member",
                    vec![pl(v, ALICE, &[(BOB, 50)], json!({}))],
                    member(BOB, CHARLIE, "ban"),
                    Allow,
                ),
                case(
                    "moderator bans a peer",
                    vec![pl(v, ALICE, &[(BOB, 50), (CHARLIE, 50)], json!({}))],
                    member(BOB, CHARLIE, "ban"),
                    Deny("to ban target user"),
                ),
                case(
                    "moderator bans the creator",
                    vec![pl(v, ALICE, &[(BOB, 50)], json!({}))],
                    member(BOB, ALICE, "ban"),
                    Deny("to ban target user"),
                ),
                case(
                    "moderator below a raised ban level",
                    vec![pl(v, ALICE, &[(BOB, 50)], json!({"ban": 100}))],
                    member(BOB, CHARLIE, "ban"),
                    Deny("to ban target user"),
                ),
                case(
                    "non-member cannot ban",
                    vec![],
                    member(ELLA, BOB, "ban"),
                    Deny("sender is not joined"),
                ),
                case(
                    "banning an already banned user",
                    vec![member(ALICE, ELLA, "ban")],
                    member(ALICE, ELLA, "ban"),
                    Allow,
                ),
                case(
                    "creator unbans",
                    vec![member(ALICE, ELLA, "ban")],
                    member(ALICE, ELLA, "leave"),
                    Allow,
                ),
                case(
                    "member without ban power cannot unban",
                    vec![member(ALICE, ELLA, "ban")],
                    member(BOB, ELLA, "leave"),
                    Deny("to unban"),
                ),
                case(
                    "moderator with kick but not ban power cannot unban",
                    vec![
                        pl(v, ALICE, &[(BOB, 50)], json!({"ban": 75})),
                        member(ALICE, ELLA, "ban"),
                    ],
                    member(BOB, ELLA, "leave"),
                    Deny("to unban"),
                ),
                case(
                    "unbanned user joins again",
                    vec![member(ALICE, ELLA, "ban"), member(ALICE, ELLA, "leave")],
                    member(ELLA, ELLA, "join"),
                    Allow,
                ),
            ],
        );
    }
}

#[test]
fn unlisted_creator_power_depends_on_version() {
    // Alice, the creator, drops out of `users` and Bob is put at 100. Before v12 Alice is
    // then at `users_default` (0), so Bob outranks her; from v12 creators have infinite power
    // whatever the power levels say.
    for v in DAG_VERSIONS {
        let infinite = v.creators_have_infinite_power();
        let setup = || vec![power_levels(ALICE, json!({"users": {BOB: 100}}))];
        run(
            v,
            vec![
                case(
                    "bob (100) bans the unlisted creator",
                    setup(),
                    member(BOB, ALICE, "ban"),
                    if infinite {
                        Deny("to ban target user")
                    } else {
                        Allow
                    },
                ),
                case(
                    "bob (100) kicks the unlisted creator",
                    setup(),
                    member(BOB, ALICE, "leave"),
                    if infinite {
                        Deny("to kick target user")
                    } else {
                        Allow
                    },
                ),
                case(
                    "the unlisted creator bans bob (100)",
                    setup(),
                    member(ALICE, BOB, "ban"),
                    if infinite {
                        Allow
                    } else {
                        Deny("to ban target user")
                    },
                ),
                case(
                    "the unlisted creator sets the topic",
                    setup(),
                    topic(ALICE, "t"),
                    if infinite {
                        Allow
                    } else {
                        Deny("to send event of type `m.room.topic`")
                    },
                ),
            ],
        );
    }
}

#[test]
fn other_memberships() {
    for v in DAG_VERSIONS {
        run(
            v,
            vec![
                case(
                    "unknown membership value",
                    vec![],
                    member(BOB, BOB, "dance"),
                    Deny("unknown membership"),
                ),
                case(
                    "state_key that is not a user ID",
                    vec![],
                    member(BOB, "bob", "join"),
                    Deny("invalid `state_key`"),
                ),
            ],
        );
        // No membership at all: the selection refuses it, and so do the rules when the
        // event cites what a join would.
        let mut room = Room::base(v);
        let mut auth = vec![room.id("pl"), room.id("bob"), room.id("jr")];
        if !v.room_id_from_create_event() {
            auth.push(room.id("create"));
        }
        let head = room.head.clone();
        let pdu = room.build_with_auth(
            &member_with(BOB, BOB, json!({"displayname": "B"})),
            &head,
            auth,
        );
        let (s, a) = room.verdicts(&pdu);
        assert!(s.unwrap_err().contains("`membership`"), "v{v}");
        assert!(a.unwrap_err().contains("`membership`"), "v{v}");
    }
}

#[test]
fn power_level_changes() {
    for v in DAG_VERSIONS {
        let infinite = v.creators_have_infinite_power();
        let mod_bob = || pl(v, ALICE, &[(BOB, 50)], json!({}));
        run(
            v,
            vec![
                case(
                    "creator promotes a member to 100",
                    vec![],
                    pl(v, ALICE, &[(BOB, 100)], json!({})),
                    Allow,
                ),
                case(
                    "creator promotes a member above 100",
                    vec![],
                    pl(v, ALICE, &[(BOB, 150)], json!({})),
                    if infinite {
                        Allow
                    } else {
                        Deny("to change `@bob:b.test`")
                    },
                ),
                case(
                    "creator raises a threshold above 100",
                    vec![],
                    pl(v, ALICE, &[], json!({"ban": 1000})),
                    if infinite {
                        Allow
                    } else {
                        Deny("power level of `ban`")
                    },
                ),
                case(
                    "member below state_default cannot send power levels",
                    vec![],
                    pl(v, BOB, &[], json!({"ban": 40})),
                    Deny("to send event of type `m.room.power_levels`"),
                ),
                case(
                    "moderator raises themselves above their level",
                    vec![mod_bob()],
                    pl(v, BOB, &[(BOB, 51)], json!({})),
                    Deny("to change `@bob:b.test`"),
                ),
                case(
                    "moderator promotes another to their own level",
                    vec![mod_bob()],
                    pl(v, BOB, &[(BOB, 50), (CHARLIE, 50)], json!({})),
                    Allow,
                ),
                case(
                    "moderator promotes another above their level",
                    vec![mod_bob()],
                    pl(v, BOB, &[(BOB, 50), (CHARLIE, 51)], json!({})),
                    Deny("to change `@charlie:c.test`"),
                ),
                case(
                    "moderator demotes a peer at the same level",
                    vec![pl(v, ALICE, &[(BOB, 50), (CHARLIE, 50)], json!({}))],
                    pl(v, BOB, &[(BOB, 50), (CHARLIE, 0)], json!({})),
                    Deny("to change `@charlie:c.test`"),
                ),
                case(
                    "moderator removes a peer's entry",
                    vec![pl(v, ALICE, &[(BOB, 50), (CHARLIE, 50)], json!({}))],
                    pl(v, BOB, &[(BOB, 50)], json!({})),
                    Deny("to change `@charlie:c.test`"),
                ),
                case(
                    "moderator demotes a lower member",
                    vec![pl(v, ALICE, &[(BOB, 50), (CHARLIE, 25)], json!({}))],
                    pl(v, BOB, &[(BOB, 50), (CHARLIE, 0)], json!({})),
                    Allow,
                ),
                case(
                    "moderator removes a lower member's entry",
                    vec![pl(v, ALICE, &[(BOB, 50), (CHARLIE, 25)], json!({}))],
                    pl(v, BOB, &[(BOB, 50)], json!({})),
                    Allow,
                ),
                case(
                    "moderator demotes themselves",
                    vec![mod_bob()],
                    pl(v, BOB, &[(BOB, 10)], json!({})),
                    Allow,
                ),
                case(
                    "moderator demotes the creator (listed at 100 before v12)",
                    vec![mod_bob()],
                    pl(v, BOB, &[(BOB, 50), (ALICE, 0)], json!({})),
                    if infinite {
                        Deny("creator user IDs are not allowed")
                    } else {
                        Deny("to change `@alice:a.test`")
                    },
                ),
                case(
                    "moderator lowers a threshold within reach",
                    vec![mod_bob()],
                    pl(v, BOB, &[(BOB, 50)], json!({"ban": 25})),
                    Allow,
                ),
                case(
                    "moderator raises a threshold above their level",
                    vec![mod_bob()],
                    pl(v, BOB, &[(BOB, 50)], json!({"kick": 60})),
                    Deny("power level of `kick`"),
                ),
                case(
                    "moderator changes a threshold that is above them",
                    vec![pl(v, ALICE, &[(BOB, 50)], json!({"redact": 75}))],
                    pl(v, BOB, &[(BOB, 50)], json!({"redact": 50})),
                    Deny("power level of `redact`"),
                ),
                case(
                    "moderator removes a threshold that is above them",
                    vec![pl(v, ALICE, &[(BOB, 50)], json!({"invite": 75}))],
                    pl(v, BOB, &[(BOB, 50)], json!({})),
                    Deny("power level of `invite`"),
                ),
                case(
                    "moderator adds an event level within reach",
                    vec![mod_bob()],
                    pl(v, BOB, &[(BOB, 50)], json!({"events": {"m.room.name": 50}})),
                    Allow,
                ),
                case(
                    "moderator adds an event level above them",
                    vec![mod_bob()],
                    pl(v, BOB, &[(BOB, 50)], json!({"events": {"m.room.name": 75}})),
                    Deny("`m.room.name` event type power level"),
                ),
                case(
                    "moderator changes an event level that is above them",
                    vec![pl(
                        v,
                        ALICE,
                        &[(BOB, 50)],
                        json!({"events": {"m.room.name": 75}}),
                    )],
                    pl(v, BOB, &[(BOB, 50)], json!({"events": {"m.room.name": 50}})),
                    Deny("`m.room.name` event type power level"),
                ),
                case(
                    "moderator adds a notification level above them",
                    vec![mod_bob()],
                    pl(v, BOB, &[(BOB, 50)], json!({"notifications": {"room": 75}})),
                    Deny("`room` notification power level"),
                ),
                case(
                    "power levels event level above the moderator",
                    vec![pl(
                        v,
                        ALICE,
                        &[(BOB, 50)],
                        json!({"events": {"m.room.power_levels": 75}}),
                    )],
                    pl(
                        v,
                        BOB,
                        &[(BOB, 50)],
                        json!({"events": {"m.room.power_levels": 75}, "ban": 40}),
                    ),
                    Deny("to send event of type `m.room.power_levels`"),
                ),
                case(
                    "string threshold (integers only since v10)",
                    vec![],
                    pl(v, ALICE, &[], json!({"ban": "50"})),
                    Deny("`ban` field"),
                ),
                case(
                    "string user level (integers only since v10)",
                    vec![],
                    power_levels(ALICE, json!({"users": {BOB: "50"}})),
                    Deny("`users` field"),
                ),
                case(
                    "users key that is not a user ID",
                    vec![],
                    power_levels(ALICE, json!({"users": {"bob": 5}})),
                    Deny("`users` field"),
                ),
                case(
                    "events map with a non-integer",
                    vec![],
                    pl(v, ALICE, &[], json!({"events": {"m.room.name": true}})),
                    Deny("`events` field"),
                ),
                case(
                    "moderator who left cannot change power levels",
                    vec![mod_bob(), member(BOB, BOB, "leave")],
                    pl(v, BOB, &[(BOB, 0)], json!({})),
                    Deny("membership is not `join`"),
                ),
                case(
                    "creator listed in users",
                    vec![],
                    power_levels(ALICE, json!({"users": {ALICE: 100, BOB: 50}})),
                    if infinite {
                        Deny("creator user IDs are not allowed")
                    } else {
                        Allow
                    },
                ),
                case(
                    "creator listed in users at 0",
                    vec![],
                    power_levels(ALICE, json!({"users": {ALICE: 0}})),
                    if infinite {
                        Deny("creator user IDs are not allowed")
                    } else {
                        Allow
                    },
                ),
                case(
                    "creator removes every user entry",
                    vec![],
                    power_levels(ALICE, json!({"users": {}})),
                    Allow,
                ),
            ],
        );
    }
}

#[test]
fn v12_first_power_levels_listing_the_creator_is_rejected() {
    // The very first power levels event has nothing to compare with, but from v12 it still
    // must not list a creator.
    for v in DAG_VERSIONS {
        let mut room = Room::with_create(v, json!({}));
        room.send(member(ALICE, ALICE, "join"));
        let listing = room.build_next(&power_levels(ALICE, json!({"users": {ALICE: 100}})));
        let (s, a) = room.verdicts(&listing);
        if v.creators_have_infinite_power() {
            assert!(s.unwrap_err().contains("creator user IDs"), "v{v}");
            assert!(a.unwrap_err().contains("creator user IDs"), "v{v}");
        } else {
            assert_eq!((s, a), (Ok(()), Ok(())), "v{v}");
        }
        let clean = room.build_next(&power_levels(ALICE, json!({"users": {BOB: 100}})));
        assert_eq!(room.verdicts(&clean), (Ok(()), Ok(())), "v{v}");
    }
}

#[test]
fn additional_creators() {
    // `additional_creators` makes Bob a creator from v12; before, the field means nothing.
    for v in [RoomVersion::V11, RoomVersion::V12] {
        let v12 = v.creators_have_infinite_power();
        let mut room = Room::with_create(v, json!({"additional_creators": [BOB]}));
        room.send(member(ALICE, ALICE, "join"));
        room.send(power_levels(
            ALICE,
            pl_content(v, &[(CHARLIE, 100)], json!({})),
        ));
        room.send(join_rules(ALICE, "public"));
        room.send(member(BOB, BOB, "join"));
        room.send(member(CHARLIE, CHARLIE, "join"));

        let cases: Vec<(&str, EventDraft, bool)> = vec![
            (
                "bob changes power levels without being listed",
                power_levels(
                    BOB,
                    pl_content(v, &[(CHARLIE, 100), (ELLA, 100)], json!({})),
                ),
                v12,
            ),
            (
                "power levels listing the additional creator",
                power_levels(
                    ALICE,
                    pl_content(v, &[(CHARLIE, 100), (BOB, 50)], json!({})),
                ),
                !v12,
            ),
            (
                "charlie (100) kicks bob",
                member(CHARLIE, BOB, "leave"),
                !v12,
            ),
            ("bob bans charlie (100)", member(BOB, CHARLIE, "ban"), v12),
            (
                "bob bans alice, a fellow creator",
                member(BOB, ALICE, "ban"),
                false,
            ),
        ];
        for (name, draft, allowed) in cases {
            let pdu = room.build_next(&draft);
            let (s, a) = room.verdicts(&pdu);
            assert_eq!(s.is_ok(), allowed, "v{v} {name}: {s:?}");
            assert_eq!(a.is_ok(), allowed, "v{v} {name}: {a:?}");
        }
    }
}

#[test]
fn send_levels() {
    for v in DAG_VERSIONS {
        let custom = |sender: &str, key: &str| {
            state_draft("org.example.state", key, sender, json!({"x": 1}))
        };
        run(
            v,
            vec![
                case("member sends a message", vec![], message(BOB, "hi"), Allow),
                case(
                    "non-member sends a message",
                    vec![],
                    message(ELLA, "hi"),
                    Deny("membership is not `join`"),
                ),
                case(
                    "invited user sends a message",
                    vec![member(ALICE, ELLA, "invite")],
                    message(ELLA, "hi"),
                    Deny("membership is not `join`"),
                ),
                case(
                    "member who left sends a message",
                    vec![member(BOB, BOB, "leave")],
                    message(BOB, "hi"),
                    Deny("membership is not `join`"),
                ),
                case(
                    "banned member sends a message",
                    vec![member(ALICE, BOB, "ban")],
                    message(BOB, "hi"),
                    Deny("membership is not `join`"),
                ),
                case(
                    "events_default above the member",
                    vec![pl(v, ALICE, &[], json!({"events_default": 10}))],
                    message(BOB, "hi"),
                    Deny("to send event of type `m.room.message`"),
                ),
                case(
                    "events_default reached",
                    vec![pl(v, ALICE, &[(BOB, 10)], json!({"events_default": 10}))],
                    message(BOB, "hi"),
                    Allow,
                ),
                case(
                    "per-type level above the member",
                    vec![pl(
                        v,
                        ALICE,
                        &[(BOB, 10)],
                        json!({"events": {"m.room.message": 20}}),
                    )],
                    message(BOB, "hi"),
                    Deny("to send event of type `m.room.message`"),
                ),
                case(
                    "per-type level reached",
                    vec![pl(
                        v,
                        ALICE,
                        &[(BOB, 20)],
                        json!({"events": {"m.room.message": 20}}),
                    )],
                    message(BOB, "hi"),
                    Allow,
                ),
                case(
                    "per-type level below events_default",
                    vec![pl(
                        v,
                        ALICE,
                        &[],
                        json!({"events_default": 50, "events": {"m.reaction": 0}}),
                    )],
                    EventDraft::new("m.reaction", uid(BOB), json!({})),
                    Allow,
                ),
                case(
                    "events_default applies to types not listed",
                    vec![pl(
                        v,
                        ALICE,
                        &[],
                        json!({"events_default": 50, "events": {"m.reaction": 0}}),
                    )],
                    message(BOB, "hi"),
                    Deny("to send event of type `m.room.message`"),
                ),
                case(
                    "state event below state_default",
                    vec![],
                    topic(BOB, "t"),
                    Deny("to send event of type `m.room.topic`"),
                ),
                case(
                    "state event allowed by a per-type level",
                    vec![pl(v, ALICE, &[], json!({"events": {"m.room.topic": 0}}))],
                    topic(BOB, "t"),
                    Allow,
                ),
                case(
                    "state_default lowered to 0",
                    vec![pl(v, ALICE, &[], json!({"state_default": 0}))],
                    custom(BOB, ""),
                    Allow,
                ),
                case(
                    "events_default does not govern state events",
                    vec![pl(
                        v,
                        ALICE,
                        &[],
                        json!({"events_default": 0, "state_default": 10}),
                    )],
                    custom(BOB, ""),
                    Deny("to send event of type `org.example.state`"),
                ),
                case("creator sends state", vec![], topic(ALICE, "t"), Allow),
            ],
        );
    }
}

#[test]
fn state_keys_naming_users() {
    for v in DAG_VERSIONS {
        let open = || pl(v, ALICE, &[], json!({"state_default": 0}));
        let custom = |sender: &str, key: &str| {
            state_draft("org.example.state", key, sender, json!({"x": 1}))
        };
        run(
            v,
            vec![
                case("own user ID", vec![open()], custom(BOB, BOB), Allow),
                case(
                    "another user's ID",
                    vec![open()],
                    custom(BOB, CHARLIE),
                    Deny("matching another user's ID"),
                ),
                case(
                    "creator cannot use another user's ID either",
                    vec![],
                    custom(ALICE, BOB),
                    Deny("matching another user's ID"),
                ),
                case(
                    "starts with @ but is not a user ID",
                    vec![open()],
                    custom(BOB, "@bob"),
                    Deny("matching another user's ID"),
                ),
                case(
                    "own user ID with a suffix",
                    vec![open()],
                    custom(BOB, "@bob:b.test_x"),
                    Deny("matching another user's ID"),
                ),
                case(
                    "no leading @",
                    vec![open()],
                    custom(BOB, "charlie:c.test"),
                    Allow,
                ),
            ],
        );
    }
}

#[test]
fn redaction_events() {
    // Since v3 a redaction is authorised like any event (sender joined, event level); the
    // redact level is enforced when the redaction is applied, not by the auth rules.
    for v in DAG_VERSIONS {
        let redact = |sender: &str| {
            let mut d = EventDraft::new("m.room.redaction", uid(sender), json!({}));
            d.redacts = Some(OwnedEventId::try_from("$someone-elses-event").unwrap());
            d
        };
        run(
            v,
            vec![
                case("member redacts", vec![], redact(BOB), Allow),
                case(
                    "member redacts with a high redact level",
                    vec![pl(v, ALICE, &[], json!({"redact": 100}))],
                    redact(BOB),
                    Allow,
                ),
                case(
                    "redaction event level above the member",
                    vec![pl(
                        v,
                        ALICE,
                        &[],
                        json!({"events": {"m.room.redaction": 50}}),
                    )],
                    redact(BOB),
                    Deny("to send event of type `m.room.redaction`"),
                ),
                case(
                    "non-member redacts",
                    vec![],
                    redact(ELLA),
                    Deny("membership is not `join`"),
                ),
            ],
        );
    }
}

#[test]
fn unfederated_rooms() {
    for v in DAG_VERSIONS {
        let mut room = Room::with_create(v, json!({"m.federate": false}));
        room.send(member(ALICE, ALICE, "join"));
        room.send(power_levels(ALICE, pl_content(v, &[], json!({}))));
        room.send(join_rules(ALICE, "public"));
        let local = room.build_next(&member("@alice2:a.test", "@alice2:a.test", "join"));
        assert_eq!(room.verdicts(&local), (Ok(()), Ok(())), "v{v}");
        let remote = room.build_next(&member(BOB, BOB, "join"));
        let (s, a) = room.verdicts(&remote);
        assert!(s.unwrap_err().contains("not federated"), "v{v}");
        assert!(a.unwrap_err().contains("not federated"), "v{v}");
    }
}

/// Builds a create event directly, to exercise malformed ones.
fn create_event(
    version: RoomVersion,
    room_id: Option<&str>,
    sender: &str,
    content: Value,
    prevs: Vec<OwnedEventId>,
) -> Pdu {
    let room_id = room_id.map(|r| ruma::OwnedRoomId::try_from(r).unwrap());
    let mut draft = state_draft("m.room.create", "", sender, content);
    draft.origin_server_ts = 1;
    let position = Position {
        version,
        room_id: room_id.as_deref(),
        prev_events: prevs,
        auth_events: vec![],
        depth: 1,
    };
    let server = draft.sender.server_name().to_string();
    build_pdu(&draft, &position, &server, &server_key(&server)).unwrap()
}

#[test]
fn create_events() {
    let empty: StateMap<Arc<Pdu>> = HashMap::new();
    let prev = OwnedEventId::try_from("$earlier").unwrap();
    for v in DAG_VERSIONS {
        let v12 = v.room_id_from_create_event();
        let own_room = (!v12).then_some("!room:a.test");
        let version = json!(v.as_str());
        let cases: Vec<(&str, Pdu, Want)> = vec![
            (
                "well-formed",
                create_event(
                    v,
                    own_room,
                    ALICE,
                    json!({"room_version": version, "creator": ALICE}),
                    vec![],
                ),
                Allow,
            ),
            (
                "with prev events",
                create_event(
                    v,
                    own_room,
                    ALICE,
                    json!({"room_version": version, "creator": ALICE}),
                    vec![prev.clone()],
                ),
                Deny("cannot have previous events"),
            ),
            (
                "without `creator`",
                create_event(v, own_room, ALICE, json!({"room_version": version}), vec![]),
                if v.create_uses_sender() {
                    Allow
                } else {
                    Deny("missing `creator`")
                },
            ),
            (
                "room ID on another server than the sender",
                create_event(
                    v,
                    Some("!room:elsewhere.test"),
                    ALICE,
                    json!({"room_version": version, "creator": ALICE}),
                    vec![],
                ),
                if v12 {
                    Deny("cannot have a `room_id`")
                } else {
                    Deny("server name does not match")
                },
            ),
            (
                "room ID on the sender's server",
                create_event(
                    v,
                    Some("!room:a.test"),
                    ALICE,
                    json!({"room_version": version, "creator": ALICE}),
                    vec![],
                ),
                if v12 {
                    Deny("cannot have a `room_id`")
                } else {
                    Allow
                },
            ),
            (
                "additional_creators that are not user IDs",
                create_event(
                    v,
                    own_room,
                    ALICE,
                    json!({"room_version": version, "creator": ALICE, "additional_creators": ["bob"]}),
                    vec![],
                ),
                if v12 {
                    Deny("`additional_creators`")
                } else {
                    Allow
                },
            ),
            (
                "additional_creators that are user IDs",
                create_event(
                    v,
                    own_room,
                    ALICE,
                    json!({"room_version": version, "creator": ALICE, "additional_creators": [BOB]}),
                    vec![],
                ),
                Allow,
            ),
        ];
        for (name, pdu, want) in cases {
            let got = check_against_state(v, &pdu, &empty).map_err(|e| e.0);
            assert!(
                matches_want(&got, want),
                "v{v} create {name}: want {want:?}, got {got:?}"
            );
            let independent = check_state_independent(v, &pdu, |_| None).map_err(|e| e.0);
            assert!(
                matches_want(&independent, want),
                "v{v} create {name} (state-independent): want {want:?}, got {independent:?}"
            );
        }
    }
}

#[test]
fn v12_create_event_exposes_no_room_id_to_the_rules() {
    let room = Room::minimal(RoomVersion::V12);
    let create = room.event("create");
    // The server sees the derived room ID; the rules see no `room_id` field.
    assert_eq!(create.room_id(), room.room_id());
    assert_eq!(ruma::state_res::Event::room_id(&*create), None);
    assert_eq!(
        &create.room_id().as_str()[1..],
        &create.event_id().as_str()[1..]
    );
    // Other events carry it.
    let join = room.event("alice");
    assert_eq!(
        ruma::state_res::Event::room_id(&*join),
        Some(room.room_id())
    );
}

/// A fetch over the room that marks the given events as rejected.
fn fetch_marking_rejected<'a>(
    room: &'a Room,
    rejected: &'a [OwnedEventId],
) -> impl Fn(&EventId) -> Option<Arc<Pdu>> + 'a {
    move |id| {
        let ev = room.get(id)?;
        if rejected.iter().any(|r| r == id) {
            let mut ev = (*ev).clone();
            ev.set_rejected(true);
            Some(Arc::new(ev))
        } else {
            Some(ev)
        }
    }
}

#[test]
fn auth_events_shape() {
    for v in DAG_VERSIONS {
        let v12 = v.room_id_from_create_event();
        let mut room = Room::base(v);
        // A second power levels event, so the first is an outdated one.
        room.send_labeled("pl2", pl(v, ALICE, &[(BOB, 10)], json!({})));
        let mut other = Room::with_create_in(v, json!({"other": true}), "!other:a.test");
        other.send(member(ALICE, ALICE, "join"));
        other.send_labeled("opl", power_levels(ALICE, pl_content(v, &[], json!({}))));

        let ids =
            |labels: &[&str]| -> Vec<OwnedEventId> { labels.iter().map(|l| room.id(l)).collect() };
        let selected = if v12 {
            ids(&["pl2", "bob"])
        } else {
            ids(&["pl2", "bob", "create"])
        };
        let plus = |extra: OwnedEventId| {
            let mut v = selected.clone();
            v.push(extra);
            v
        };
        let head = room.head.clone();
        let msg = message(BOB, "hi");
        let cases: Vec<(&str, Vec<OwnedEventId>, Vec<OwnedEventId>, Want)> = vec![
            ("the selected auth events", selected.clone(), vec![], Allow),
            (
                "selected events in another order",
                selected.iter().rev().cloned().collect(),
                vec![],
                Allow,
            ),
            (
                "without the create event",
                ids(&["pl2", "bob"]),
                vec![],
                if v12 {
                    Allow
                } else {
                    Deny("no `m.room.create` event in auth events")
                },
            ),
            (
                "citing the create event",
                ids(&["pl2", "bob", "create"]),
                vec![],
                if v12 {
                    // The create event has no `room_id` in v12, so it is never in "the same
                    // room" as what cites it.
                    Deny("not in the same room")
                } else {
                    Allow
                },
            ),
            (
                "two power levels events",
                plus(room.id("pl")),
                vec![],
                Deny("duplicate auth event"),
            ),
            (
                "the same event twice",
                plus(room.id("bob")),
                vec![],
                Deny("duplicate auth event"),
            ),
            (
                "join rules for a message",
                plus(room.id("jr")),
                vec![],
                Deny("unexpected auth event"),
            ),
            (
                "another user's membership for a message",
                plus(room.id("charlie")),
                vec![],
                Deny("unexpected auth event"),
            ),
            (
                "an unknown event",
                plus(OwnedEventId::try_from("$unknown").unwrap()),
                vec![],
                Deny("failed to find auth event"),
            ),
            (
                "the power levels event of another room",
                selected
                    .iter()
                    .map(|id| {
                        if *id == room.id("pl2") {
                            other.id("opl")
                        } else {
                            id.clone()
                        }
                    })
                    .collect(),
                vec![],
                Deny("not in the same room"),
            ),
            (
                "a rejected power levels event",
                selected.clone(),
                ids(&["pl2"]),
                Deny("rejected auth event"),
            ),
            (
                "no auth events at all",
                vec![],
                vec![],
                if v12 {
                    Deny("membership is not `join`")
                } else {
                    Deny("no `m.room.create` event in auth events")
                },
            ),
        ];
        for (name, auth_events, rejected, want) in cases {
            let pdu = room.build_with_auth(&msg, &head, auth_events);
            let got = check_against_auth_events(v, &pdu, |id| {
                if let Some(e) = other.get(id) {
                    return Some(e);
                }
                fetch_marking_rejected(&room, &rejected)(id)
            })
            .map_err(|e| e.0);
            assert!(
                matches_want(&got, want),
                "v{v} auth events {name}: want {want:?}, got {got:?}"
            );
        }
    }
}

#[test]
fn v12_room_id_must_name_an_accepted_create_event() {
    let room = Room::base(RoomVersion::V12);
    let mut room = room;
    let head = room.head.clone();
    let msg = room.build(&message(BOB, "hi"), &head);
    let create = room.id("create");
    // Accepted create event: fine.
    assert_eq!(
        check_against_auth_events(RoomVersion::V12, &msg, room.fetch()),
        Ok(())
    );
    // Rejected create event.
    let rejected = [create.clone()];
    let err = check_against_auth_events(
        RoomVersion::V12,
        &msg,
        fetch_marking_rejected(&room, &rejected),
    )
    .unwrap_err();
    assert!(err.0.contains("rejected `m.room.create`"), "{err}");
    // Unknown create event.
    let err = check_against_auth_events(RoomVersion::V12, &msg, |id| {
        (id != create).then(|| room.get(id)).flatten()
    })
    .unwrap_err();
    assert!(err.0.contains("failed to find `m.room.create`"), "{err}");
}

#[test]
fn checks_against_auth_events_and_against_state_can_differ() {
    // Bob's message cites the power levels he saw, which let him speak; the room has since
    // raised events_default. His event is valid against its auth events (so it is accepted
    // into the DAG) but not against the current state (so it would be soft-failed).
    for v in DAG_VERSIONS {
        let mut room = Room::base(v);
        let old_head = room.head.clone();
        let msg = room.build(&message(BOB, "hi"), &old_head);
        room.send(pl(v, ALICE, &[], json!({"events_default": 50})));
        let (against_state, against_auth) = room.verdicts(&msg);
        assert_eq!(against_auth, Ok(()), "v{v}");
        assert!(against_state.is_err(), "v{v}");
        // Rebuilt on the current state it is refused by both.
        let now = room.build_next(&message(BOB, "hi"));
        let (s, a) = room.verdicts(&now);
        assert!(s.unwrap_err().contains("m.room.message"), "v{v}");
        assert!(a.unwrap_err().contains("m.room.message"), "v{v}");
    }
}

#[test]
fn select_auth_events_per_version() {
    for v in DAG_VERSIONS {
        let v12 = v.room_id_from_create_event();
        let mut room = Room::base(v);
        room.send_labeled(
            "tpi",
            state_draft(
                "m.room.third_party_invite",
                "token1",
                ALICE,
                json!({"display_name": "z", "key_validity_url": "https://id.test/v", "public_key": "AAAA"}),
            ),
        );
        room.send_labeled("ella", member(ALICE, ELLA, "invite"));
        let state = room.state();
        let tp_invite = |token: &str| {
            member_with(
                BOB,
                ZARA,
                json!({
                    "membership": "invite",
                    "third_party_invite": {
                        "display_name": "z",
                        "signed": {"mxid": ZARA, "token": token, "signatures": {}},
                    },
                }),
            )
        };
        let cases: Vec<(&str, EventDraft, Vec<&str>)> = vec![
            ("message by a member", message(BOB, "hi"), vec!["pl", "bob"]),
            ("message by a non-member", message(ZARA, "hi"), vec!["pl"]),
            (
                "state by the creator",
                topic(ALICE, "t"),
                vec!["pl", "alice"],
            ),
            (
                "profile update",
                member(BOB, BOB, "join"),
                vec!["pl", "bob", "jr"],
            ),
            (
                "invitee joins",
                member(ELLA, ELLA, "join"),
                vec!["pl", "ella", "jr"],
            ),
            (
                "newcomer joins",
                member(ZARA, ZARA, "join"),
                vec!["pl", "jr"],
            ),
            (
                "restricted join authorised by alice",
                join_via(ZARA, ALICE),
                vec!["pl", "jr", "alice"],
            ),
            (
                "authoriser field ignored on invites",
                with_field(
                    member(BOB, ZARA, "invite"),
                    "join_authorised_via_users_server",
                    json!(ALICE),
                ),
                vec!["pl", "bob", "jr"],
            ),
            (
                "invite of a joined user",
                member(BOB, CHARLIE, "invite"),
                vec!["pl", "bob", "charlie", "jr"],
            ),
            (
                "invite of a newcomer",
                member(BOB, ZARA, "invite"),
                vec!["pl", "bob", "jr"],
            ),
            ("knock", member(ZARA, ZARA, "knock"), vec!["pl", "jr"]),
            (
                "kick: no join rules",
                member(ALICE, BOB, "leave"),
                vec!["pl", "alice", "bob"],
            ),
            ("self-leave", member(BOB, BOB, "leave"), vec!["pl", "bob"]),
            (
                "ban of a non-member",
                member(ALICE, ZARA, "ban"),
                vec!["pl", "alice"],
            ),
            (
                "third-party invite with a known token",
                tp_invite("token1"),
                vec!["pl", "bob", "jr", "tpi"],
            ),
            (
                "third-party invite with an unknown token",
                tp_invite("token2"),
                vec!["pl", "bob", "jr"],
            ),
            (
                "create event",
                state_draft("m.room.create", "", ALICE, json!({})),
                vec![],
            ),
        ];
        for (name, draft, labels) in cases {
            let got = select_auth_events(
                v,
                &draft.kind,
                &draft.sender,
                draft.state_key.as_deref(),
                &draft.content,
                &state,
            )
            .unwrap();
            let mut want: Vec<OwnedEventId> = labels.iter().map(|l| room.id(l)).collect();
            if !v12 && draft.kind != "m.room.create" {
                want.push(room.id("create"));
            }
            let mut got_sorted = got.clone();
            got_sorted.sort();
            want.sort();
            assert_eq!(got_sorted, want, "v{v} {name}");
            assert!(
                !v12 || !got.contains(&room.id("create")),
                "v{v} {name} cites the create event"
            );
            // What is selected is accepted by the shape check.
            if draft.kind != "m.room.create" {
                let pdu = room.build_with_auth(&draft, &room.head.clone(), got);
                let shape = check_state_independent(v, &pdu, room.fetch());
                assert_eq!(shape, Ok(()), "v{v} {name}");
            }
        }

        // Contents the selection cannot read are errors, not guesses.
        for (name, content) in [
            ("no membership", json!({})),
            ("membership not a string", json!({"membership": 1})),
            (
                "third_party_invite without a token",
                json!({"membership": "invite", "third_party_invite": {"signed": {"mxid": ZARA}}}),
            ),
        ] {
            assert!(
                select_auth_events(v, "m.room.member", &uid(BOB), Some(ZARA), &content, &state)
                    .is_err(),
                "v{v} {name}"
            );
        }
        assert!(
            select_auth_events(
                v,
                "m.room.member",
                &uid(BOB),
                None,
                &json!({"membership": "join"}),
                &state
            )
            .is_err(),
            "v{v} member event without a state key"
        );
    }
}

#[test]
fn power_levels_view() {
    let content = json!({
        "users": {BOB: 50, CHARLIE: "25"},
        "users_default": 5,
        "events": {"m.room.name": 75},
        "state_default": 40,
        "events_default": 10,
        "ban": 60,
    });
    // (version, content, creators, user, expected level)
    let levels: &[(RoomVersion, Option<&Value>, &str, i64)] = &[
        (RoomVersion::V11, Some(&content), BOB, 50),
        (RoomVersion::V11, Some(&content), CHARLIE, 25),
        (RoomVersion::V11, Some(&content), ELLA, 5),
        (RoomVersion::V11, Some(&content), ALICE, 5),
        (RoomVersion::V12, Some(&content), ALICE, i64::MAX),
        (RoomVersion::V12, Some(&content), BOB, 50),
        (RoomVersion::V11, None, ALICE, 100),
        (RoomVersion::V11, None, BOB, 0),
        (RoomVersion::V12, None, ALICE, i64::MAX),
        (RoomVersion::V12, None, BOB, 0),
    ];
    for (v, c, user, want) in levels {
        let view = PowerLevels::new(*v, c.cloned(), vec![ALICE.to_owned()]);
        assert_eq!(view.user_level(user), *want, "v{v} {user} with {c:?}");
    }
    let view = PowerLevels::new(RoomVersion::V11, Some(content.clone()), vec![]);
    assert_eq!(view.event_level("m.room.name", true), 75);
    assert_eq!(view.event_level("m.room.topic", true), 40);
    assert_eq!(view.event_level("m.room.message", false), 10);
    assert_eq!(view.ban_level(), 60);
    assert_eq!(view.kick_level(), 50);
    assert_eq!(view.redact_level(), 50);
    assert_eq!(view.invite_level(), 0);
    let empty = PowerLevels::new(RoomVersion::V11, Some(json!({})), vec![]);
    assert_eq!(empty.event_level("m.room.topic", true), 50);
    assert_eq!(empty.event_level("m.room.message", false), 0);
    let none = PowerLevels::new(RoomVersion::V11, None, vec![]);
    assert_eq!(none.event_level("m.room.topic", true), 0);
}
