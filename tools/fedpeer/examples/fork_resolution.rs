//! Which of two conflicting topics wins when they arrive on two forks, in a given order?
//!
//! `cargo run -p fedpeer --example fork_resolution -- PEER_PORT SERVER_NAME CLIENT_BASE TOKEN`
//!
//! The token's user creates a public room with the peer's user at power level 50; the
//! peer joins, then sends two topics on forks of its tip, the later-timestamped one
//! second, then the earlier-timestamped one second, and prints the topic the server reports
//! after each pair (and after a merging message). Run it against Synapse and weft to compare
//! their state resolution on the same input.

use std::time::Duration;

use fedpeer::client::ClientApi;
use fedpeer::peer::{now_ms, pdu_results};
use fedpeer::{Error, Peer, Result};
use serde_json::json;
use weft_protocol::builder::EventDraft;

fn topic_now(client: &mut ClientApi, room: &str) -> Result<String> {
    Ok(client
        .state(room, "m.room.topic", "")?
        .and_then(|t| t["topic"].as_str().map(str::to_owned))
        .unwrap_or_default())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [port, server, base, token] = args.as_slice() else {
        return Err(Error(
            "usage: fork_resolution PEER_PORT SERVER_NAME CLIENT_BASE TOKEN".into(),
        ));
    };
    let peer = Peer::start(port.parse().map_err(|_| Error("bad port".into()))?)?;
    let mut client = ClientApi::new(base, Duration::from_secs(60))?.with_token(token);
    let mut users = serde_json::Map::new();
    users.insert(peer.user("mallory").to_string(), json!(50));
    let room = client.create_room(&json!({
        "preset": "public_chat",
        "power_level_content_override": {"users": users},
    }))?;
    let mut fed = peer.client(server)?;
    peer.join(&mut fed, &room, "mallory")?;
    let now = now_ms();
    for (round, (first, second)) in [
        (("early", now), ("late", now + 1000)),
        (("late", now + 3000), ("early", now + 2000)),
    ]
    .into_iter()
    .enumerate()
    {
        let tip = peer.with_room(&room, |r| r.extremities().to_vec())?;
        let mut pdus = Vec::new();
        for (text, ts) in [first, second] {
            let mut d = EventDraft::state(
                "m.room.topic",
                "",
                peer.user("mallory"),
                json!({"topic": format!("{text} {round}")}),
            );
            d.origin_server_ts = ts;
            let pdu = peer
                .with_room(&room, |r| {
                    r.build(&d, Some(&tip), peer.server_name(), peer.key())
                })?
                .map_err(Error)?;
            pdus.push(pdu);
        }
        for (i, pdu) in pdus.iter().enumerate() {
            let r = fed.send_transaction(
                &format!("fork{now}-{round}-{i}"),
                vec![pdu.to_federation_value()],
                vec![],
            )?;
            let result = pdu_results(&r.json()).remove(&pdu.owned_event_id());
            println!(
                "round {round}: sent {:?} -> {} {:?}",
                pdu.content_value()["topic"],
                r.status,
                result
            );
            peer.append(&room, pdu)?;
        }
        // Synapse processes staged PDUs in the background: give it a moment.
        std::thread::sleep(Duration::from_secs(2));
        println!(
            "round {round}: topic after both forks: {:?}",
            topic_now(&mut client, &room)?
        );
        let merge = peer.message(&room, "mallory", &format!("merge {round}"))?;
        fed.send_transaction(
            &format!("merge{now}-{round}"),
            vec![merge.to_federation_value()],
            vec![],
        )?;
        std::thread::sleep(Duration::from_secs(2));
        println!(
            "round {round}: topic after the merge: {:?}",
            topic_now(&mut client, &room)?
        );
    }
    Ok(())
}
