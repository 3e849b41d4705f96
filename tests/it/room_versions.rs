//! Rooms of every older room version (1 to 9), created on real Synapse and joined from weft:
//! messages, a state change and a redaction in each direction, and both servers ending with
//! the same room state. One Synapse and one weft serve all nine rooms, and every step runs
//! across all rooms before waiting, so the test costs about as much as one room would.
//! Then the other way round for the two event formats weft must also build from scratch
//! (v1 and v3): rooms created on weft, joined from Synapse through weft's `make_join`.

use serde_json::{Value, json};

use crate::client::{Client, enc};
use crate::federation::{
    WAIT, join_via, raise_power, set_state, state_content, wait, wait_bodies, wait_invite,
    wait_membership, wait_state_equal, weft,
};
use crate::harness::Backend;
use crate::synapse::Synapse;

const VERSIONS: [&str; 9] = ["1", "2", "3", "4", "5", "6", "7", "8", "9"];

fn event(c: &Client, room: &str, id: &str) -> Option<Value> {
    let r = c.get(&format!("/rooms/{}/event/{}", enc(room), enc(id)));
    (r.status == 200).then_some(r.body)
}

fn redact(c: &Client, room: &str, id: &str) -> String {
    let r = c.put(
        &format!(
            "/rooms/{}/redact/{}/{}",
            enc(room),
            enc(id),
            enc(&c.next_txn())
        ),
        &json!({"reason": "test"}),
    );
    assert_eq!(r.status, 200, "{} redacting {id}: {}", c.user_id, r.text);
    r.body["event_id"].as_str().unwrap_or_default().to_owned()
}

#[track_caller]
fn wait_redacted(c: &Client, room: &str, id: &str) {
    wait(&format!("{} to see {id} redacted", c.user_id), WAIT, || {
        let ev = event(c, room, id)?;
        (ev["content"].as_object().is_some_and(|o| o.is_empty())
            && !ev["unsigned"]["redacted_because"].is_null())
        .then_some(())
    });
}

#[test]
fn synapse_rooms_of_versions_1_to_9() {
    let syn = Synapse::start();
    let w = weft(Backend::Sqlite);
    let alice = syn.register("alice");
    let bob = w.register("bob");

    // Synapse creates a room of each version and invites Bob; Bob joins them all from weft.
    let rooms: Vec<(String, &str)> = VERSIONS
        .iter()
        .map(|v| {
            let room = alice.create_room(&json!({
                "room_version": v,
                "preset": "private_chat",
                "invite": [bob.user_id],
            }));
            (room, *v)
        })
        .collect();
    for (room, v) in &rooms {
        let create = state_content(&alice, room, "m.room.create", "").expect("create event");
        assert_eq!(create["room_version"], *v, "Synapse made a v{v} room");
        wait_invite(&bob, room);
        join_via(&bob, room, &syn.server_name());
    }
    for (room, v) in &rooms {
        wait_membership(&alice, room, &bob.user_id, "join");
        let create = state_content(&bob, room, "m.room.create", "").expect("weft has the room");
        assert_eq!(create["room_version"], *v);
    }

    // Messages both ways.
    let mut from_synapse = Vec::new();
    let mut from_weft = Vec::new();
    for (room, v) in &rooms {
        from_synapse.push(alice.send_text(room, &format!("from synapse in v{v}")));
        from_weft.push(bob.send_text(room, &format!("from weft in v{v}")));
    }
    for (room, v) in &rooms {
        let both = [
            format!("from synapse in v{v}"),
            format!("from weft in v{v}"),
        ];
        let both: Vec<&str> = both.iter().map(String::as_str).collect();
        wait_bodies(&bob, room, &both);
        wait_bodies(&alice, room, &both);
    }
    // weft's own events have the version's event ID format.
    for ((_, v), id) in rooms.iter().zip(&from_weft) {
        let local = id.strip_prefix('$').expect("event ID sigil");
        match *v {
            "1" | "2" => assert!(
                local.ends_with(&format!(":{}", w.server_name)),
                "v{v}: {id}"
            ),
            "3" => assert!(
                !local.contains(':') && !local.contains(['-', '_']),
                "v{v}: {id}"
            ),
            _ => assert!(
                !local.contains(':') && !local.contains(['+', '/']),
                "v{v}: {id}"
            ),
        }
    }

    // State changes both ways: Synapse raises Bob's power and names the room; weft sets the
    // topic with the new power.
    for (room, _) in &rooms {
        raise_power(&alice, room, &bob.user_id, 100);
        set_state(
            &alice,
            room,
            "m.room.name",
            "",
            json!({"name": "named on synapse"}),
        );
    }
    for (room, v) in &rooms {
        wait(&format!("weft to see Bob at 100 in v{v}"), WAIT, || {
            (state_content(&bob, room, "m.room.power_levels", "")?["users"][&bob.user_id] == 100)
                .then_some(())
        });
        set_state(
            &bob,
            room,
            "m.room.topic",
            "",
            json!({"topic": format!("set on weft in v{v}")}),
        );
    }
    for (room, v) in &rooms {
        wait(
            &format!("Synapse to see weft's topic in v{v}"),
            WAIT,
            || {
                (state_content(&alice, room, "m.room.topic", "")?["topic"]
                    == format!("set on weft in v{v}"))
                .then_some(())
            },
        );
        wait(&format!("weft to see Synapse's name in v{v}"), WAIT, || {
            (state_content(&bob, room, "m.room.name", "")?["name"] == "named on synapse")
                .then_some(())
        });
    }

    // Redactions both ways: each side redacts the other's message.
    for (i, (room, _)) in rooms.iter().enumerate() {
        redact(&alice, room, &from_weft[i]);
        redact(&bob, room, &from_synapse[i]);
    }
    for (i, (room, _)) in rooms.iter().enumerate() {
        wait_redacted(&bob, room, &from_weft[i]);
        wait_redacted(&bob, room, &from_synapse[i]);
        wait_redacted(&alice, room, &from_weft[i]);
        wait_redacted(&alice, room, &from_synapse[i]);
    }

    for (room, _) in &rooms {
        wait_state_equal(&alice, &bob, room);
    }

    // Rooms of the old formats created on weft: Synapse joins through weft's templates.
    let ours: Vec<(String, &str)> = ["1", "3"]
        .iter()
        .map(|v| {
            let room = bob.create_room(&json!({
                "room_version": v,
                "preset": "private_chat",
                "invite": [alice.user_id],
            }));
            (room, *v)
        })
        .collect();
    for (room, v) in &ours {
        wait_invite(&alice, room);
        join_via(&alice, room, &w.server_name);
        wait_membership(&bob, room, &alice.user_id, "join");
        let create = state_content(&alice, room, "m.room.create", "").expect("create event");
        assert_eq!(create["room_version"], *v);
    }
    for (room, v) in &ours {
        let mine = bob.send_text(room, &format!("weft's v{v} room, from weft"));
        alice.send_text(room, &format!("weft's v{v} room, from synapse"));
        let both = [
            format!("weft's v{v} room, from weft"),
            format!("weft's v{v} room, from synapse"),
        ];
        let both: Vec<&str> = both.iter().map(String::as_str).collect();
        wait_bodies(&alice, room, &both);
        wait_bodies(&bob, room, &both);
        redact(&bob, room, &mine);
        wait_redacted(&alice, room, &mine);
        wait_state_equal(&alice, &bob, room);
    }
    w.assert_no_panics();
}
