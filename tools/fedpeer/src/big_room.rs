//! Big rooms hosted by the peer: a room of N joined members, every event a real signed PDU
//! (create, the creator's join, power levels, join rules, history visibility, a name, then
//! one `m.room.member` join per member, each citing the create, power levels and join rules
//! events as its auth events and the previous event as its only prev event), as a
//! well-populated public room looks on the federation.
//!
//! The members are users of the peer's own server name (`@m0:localhost:PORT`, ...), so the
//! peer signs every event with its one key. A room is built once, before any timing: the
//! events form one chain (each event's ID is the hash of the event, which cites the one
//! before), so one room is built on one thread; several rooms are built in parallel.

use serde_json::json;
use weft_protocol::RoomVersion;
use weft_protocol::builder::EventDraft;
use weft_protocol::keys::ServerSigningKey;

use ruma::{OwnedRoomId, OwnedUserId};

use crate::peer::now_ms;
use crate::room::Room;
use crate::{Error, Result};

/// The user ID of member `i` of a big room on `server_name`.
pub fn member(server_name: &str, i: usize) -> Result<OwnedUserId> {
    OwnedUserId::try_from(format!("@m{i}:{server_name}")).map_err(|e| Error(e.to_string()))
}

/// Builds a room `room_id` of `members` joined members plus its creator `@creator`, signed
/// by `server_name` with `key`.
pub fn build(
    room_id: OwnedRoomId,
    server_name: &str,
    key: &ServerSigningKey,
    members: usize,
) -> Result<Room> {
    let version = RoomVersion::V11;
    let mut room = Room::new(room_id, version);
    let creator = OwnedUserId::try_from(format!("@creator:{server_name}"))
        .map_err(|e| Error(e.to_string()))?;
    let head = [
        EventDraft::state(
            "m.room.create",
            "",
            creator.clone(),
            json!({"room_version": version.as_str()}),
        ),
        EventDraft::state(
            "m.room.member",
            creator.as_str(),
            creator.clone(),
            json!({"membership": "join", "displayname": "Creator"}),
        ),
        EventDraft::state(
            "m.room.power_levels",
            "",
            creator.clone(),
            json!({"users": {creator.as_str(): 100}, "users_default": 0,
                   "events_default": 0, "state_default": 50}),
        ),
        EventDraft::state(
            "m.room.join_rules",
            "",
            creator.clone(),
            json!({"join_rule": "public"}),
        ),
        EventDraft::state(
            "m.room.history_visibility",
            "",
            creator.clone(),
            json!({"history_visibility": "shared"}),
        ),
        EventDraft::state(
            "m.room.name",
            "",
            creator.clone(),
            json!({"name": format!("A room of {members} members")}),
        ),
    ];
    let ts = now_ms();
    for d in head {
        let d = EventDraft {
            origin_server_ts: ts,
            ..d
        };
        let pdu = room.build(&d, None, server_name, key).map_err(Error)?;
        // The head is recorded (its state is small), so `/state` works at each of them.
        room.append(pdu);
    }
    for i in 0..members {
        let user = member(server_name, i)?;
        let d = EventDraft {
            origin_server_ts: ts + 1 + i as u64,
            ..EventDraft::state(
                "m.room.member",
                user.as_str(),
                user.clone(),
                json!({"membership": "join", "displayname": format!("Member {i}")}),
            )
        };
        let pdu = room.build(&d, None, server_name, key).map_err(Error)?;
        if i + 1 == members {
            // The tip: a joining server may ask for the state at the join's prev event
            // (Synapse's partial-state resync does).
            room.append(pdu);
        } else {
            room.append_unrecorded(pdu);
        }
    }
    Ok(room)
}

/// Builds `count` rooms of `members` members each, on all cores (one room per thread at a
/// time).
pub fn build_many(
    room_ids: Vec<OwnedRoomId>,
    server_name: &str,
    key: &ServerSigningKey,
    members: usize,
) -> Result<Vec<Room>> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(1, room_ids.len().max(1));
    let chunks: Vec<Vec<OwnedRoomId>> = (0..threads)
        .map(|t| room_ids.iter().skip(t).step_by(threads).cloned().collect())
        .collect();
    let built: Vec<Result<Vec<Room>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|ids| {
                scope.spawn(move || {
                    ids.into_iter()
                        .map(|id| build(id, server_name, key, members))
                        .collect::<Result<Vec<Room>>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error("a room builder panicked".into())))
            })
            .collect()
    });
    let mut out = Vec::new();
    for b in built {
        out.extend(b?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use ruma::CanonicalJsonValue;
    use serde_json::Value;

    use crate::Peer;
    use crate::peer::{enc, now_ms, parse_pdu};

    /// Another peer joins a big room hosted here with and without `omit_members`: the full
    /// answer has every member; the partial one none, with the auth chain the remaining
    /// state needs (the creator's join, cited by the power levels) and the servers in the
    /// room.
    #[test]
    fn send_join_with_and_without_omit_members() {
        let host = Peer::start(0).expect("host");
        let guest = Peer::start(0).expect("guest");
        let rooms = host.create_big_rooms(2, 25).expect("rooms");
        for (room, omit) in rooms.iter().zip([false, true]) {
            let mut fed = guest.client(host.server_name()).expect("client");
            let user = guest.user("joiner");
            let r = fed
                .request(
                    "GET",
                    &format!(
                        "/_matrix/federation/v1/make_join/{}/{}?ver=11",
                        enc(room),
                        enc(user.as_str())
                    ),
                    None,
                )
                .expect("make_join");
            assert_eq!(r.status, 200, "{}", r.text());
            let mut template = weft_protocol::canonical::value_to_object(
                r.json().get("event").cloned().unwrap_or_default(),
            )
            .expect("template");
            template.insert(
                "origin_server_ts".into(),
                CanonicalJsonValue::Integer(ruma::Int::try_from(now_ms()).expect("ts")),
            );
            let join = guest
                .sign(template, weft_protocol::RoomVersion::V11)
                .expect("sign");
            let r = fed
                .request(
                    "PUT",
                    &format!(
                        "/_matrix/federation/v2/send_join/{}/{}?omit_members={omit}",
                        enc(room),
                        enc(join.event_id().as_str())
                    ),
                    Some(&join.to_federation_value()),
                )
                .expect("send_join");
            assert_eq!(r.status, 200, "{}", r.text());
            let answer = r.json();
            let list = |k: &str| -> Vec<weft_protocol::Pdu> {
                answer[k]
                    .as_array()
                    .expect(k)
                    .iter()
                    .map(|v| parse_pdu(v, weft_protocol::RoomVersion::V11).expect("pdu"))
                    .collect()
            };
            let state = list("state");
            let chain = list("auth_chain");
            let members = state
                .iter()
                .filter(|p| p.kind_str() == "m.room.member")
                .count();
            assert_eq!(answer["members_omitted"], Value::Bool(omit));
            if omit {
                assert_eq!(members, 0);
                assert_eq!(
                    state.len(),
                    5,
                    "create, power levels, rules, visibility, name"
                );
                let state_ids: HashSet<_> = state.iter().map(|p| p.owned_event_id()).collect();
                let chain_ids: HashSet<_> = chain.iter().map(|p| p.owned_event_id()).collect();
                assert!(state_ids.is_disjoint(&chain_ids), "no event twice");
                // Every auth event of the state and of the join is in one list or the other.
                for p in state.iter().chain(std::iter::once(&join)) {
                    for a in p.auth_events() {
                        assert!(
                            state_ids.contains(a) || chain_ids.contains(a),
                            "{a} missing"
                        );
                    }
                }
                let servers = answer["servers_in_room"].as_array().expect("servers");
                assert!(servers.contains(&Value::from(host.server_name())));
            } else {
                assert_eq!(members, 26, "the creator and 25 members");
            }
        }
    }
}
