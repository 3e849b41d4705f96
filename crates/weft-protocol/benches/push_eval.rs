//! `cargo bench -p weft-protocol --bench push_eval`: what the push worker pays per event per
//! local member: one call of ruma's evaluator (`Ruleset::get_actions`, which flattens the
//! event and walks the rules) with the spec's default rules plus one keyword rule, in a room
//! of 50 members with power levels. Two ways: `get_actions` (flattens the event on every
//! call) and what `src/push/worker.rs` does (flatten once per event, walk the rules per
//! member with `applies`). Prints the median of 5 runs of 20,000 evaluations per kind of
//! event, and the flattening alone.
//!
//! On a loaded machine, count instructions instead: `PUSH_EVAL_ONLY=<way>:<case>` (way
//! `get_actions` or `walk`, case 0-3) with `PUSH_EVAL_N=<calls>` runs one loop and prints
//! nothing else; `tools/push_eval_callgrind.sh` runs it under callgrind at two loop lengths
//! and prints instructions per evaluation (the difference, so start-up cancels out).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use ruma::push::{
    Action, FlattenedJson, NewPatternedPushRule, NewPushRule, PushConditionPowerLevelsCtx,
    PushConditionRoomCtx, Ruleset,
};
use ruma::room_version_rules::{AuthorizationRules, RoomPowerLevelsRules};
use ruma::serde::Raw;
use ruma::{Int, OwnedUserId, UInt, owned_room_id, owned_user_id};
use serde_json::{Value, json};

/// Polls a future that never waits (the evaluator without thread subscriptions) to its end.
fn run<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

/// The worker's way: the first rule that applies gives the actions.
fn walk<'a>(rules: &'a Ruleset, flat: &FlattenedJson, ctx: &PushConditionRoomCtx) -> &'a [Action] {
    for rule in rules {
        if run(rule.applies(flat, ctx)) {
            return rule.actions();
        }
    }
    &[]
}

fn raw(v: Value) -> Raw<Value> {
    Raw::from_json(serde_json::value::to_raw_value(&v).expect("raw"))
}

fn main() {
    let bob: OwnedUserId = owned_user_id!("@bob:weft.test");
    let mut rules = Ruleset::server_default(&bob);
    let kw = NewPatternedPushRule::new("cheese".into(), "cheese".into(), vec![Action::Notify]);
    rules
        .insert(NewPushRule::Content(kw), None, None)
        .expect("keyword rule");
    let mut users = BTreeMap::new();
    users.insert(owned_user_id!("@alice:weft.test"), Int::from(100u32));
    let pl = PushConditionPowerLevelsCtx::new(
        users,
        Int::from(0u32),
        Default::default(),
        RoomPowerLevelsRules::new(&AuthorizationRules::V11, None),
    );
    let ctx = PushConditionRoomCtx::new(
        owned_room_id!("!room:weft.test"),
        UInt::from(50u32),
        bob.clone(),
        "Bob".into(),
    )
    .with_power_levels(pl);
    let base = |content: Value, kind: &str| {
        json!({
            "type": kind, "room_id": "!room:weft.test", "sender": "@alice:weft.test",
            "origin_server_ts": 1_700_000_000_000u64, "depth": 12,
            "prev_events": ["$prev"], "auth_events": ["$a", "$b", "$c"],
            "hashes": {"sha256": "x"}, "signatures": {"weft.test": {"ed25519:a": "sig"}},
            "content": content,
        })
    };
    let cases = [
        (
            "plain message (matches .m.rule.message)",
            base(
                json!({"msgtype": "m.text", "body": "good morning, how is everyone doing today?"}),
                "m.room.message",
            ),
        ),
        (
            "keyword (content rule)",
            base(
                json!({"msgtype": "m.text", "body": "who ate the cheese?"}),
                "m.room.message",
            ),
        ),
        (
            "mention (m.mentions, override)",
            base(
                json!({"msgtype": "m.text", "body": "Bob: look", "m.mentions": {"user_ids": ["@bob:weft.test"]}}),
                "m.room.message",
            ),
        ),
        (
            "reaction (no rule notifies)",
            base(
                json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": "$e", "key": "👍"}}),
                "m.reaction",
            ),
        ),
    ];
    if let Ok(only) = std::env::var("PUSH_EVAL_ONLY") {
        let n: u32 = std::env::var("PUSH_EVAL_N")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        let (way, case) = only.split_once(':').expect("way:case");
        let case: usize = case.parse().expect("case number");
        let raw = raw(cases[case].1.clone());
        match way {
            "get_actions" => {
                for _ in 0..n {
                    std::hint::black_box(run(rules.get_actions(&raw, &ctx)));
                }
            }
            "walk" => {
                let flat = FlattenedJson::from_raw(&raw);
                for _ in 0..n {
                    std::hint::black_box(walk(&rules, &flat, &ctx));
                }
            }
            "flatten" => {
                for _ in 0..n {
                    std::hint::black_box(FlattenedJson::from_raw(&raw));
                }
            }
            other => panic!("unknown way {other}"),
        }
        return;
    }
    const N: u32 = 20_000;
    let median = |f: &mut dyn FnMut()| {
        let mut runs = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            for _ in 0..N {
                f();
            }
            runs.push(t.elapsed().as_nanos() as f64 / f64::from(N));
        }
        runs.sort_by(f64::total_cmp);
        runs[2]
    };
    println!("push evaluation, ns per event per member, {N} calls per run, median of 5 runs:");
    println!(
        "  {:<40} {:>12} {:>14} {:>10}  notifies",
        "event", "get_actions", "flat + walk", "flatten"
    );
    for (name, ev) in cases {
        let raw = raw(ev);
        let mut notified = false;
        let a = median(&mut || {
            let actions = run(rules.get_actions(&raw, &ctx));
            notified = actions.iter().any(Action::should_notify);
            std::hint::black_box(actions);
        });
        let flat = FlattenedJson::from_raw(&raw);
        let mut walked = false;
        let b = median(&mut || {
            let found = walk(&rules, &flat, &ctx);
            walked = found.iter().any(Action::should_notify);
            std::hint::black_box(found);
        });
        assert_eq!(notified, walked, "both ways agree");
        let f = median(&mut || {
            std::hint::black_box(FlattenedJson::from_raw(&raw));
        });
        println!("  {name:<40} {a:>12.0} {b:>14.0} {f:>10.0}  {notified}");
    }
}
