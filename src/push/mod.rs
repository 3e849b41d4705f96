//! Push rules: each user's ruleset, kept as the global account data `m.push_rules`
//! (`{"global": ruleset}`, which is what `/sync` shows clients), starting from the spec's
//! defaults as ruma builds them (`Ruleset::server_default`). Changes go through ruma's
//! `Ruleset` (insert with `before`/`after`, remove, enable, set actions), which refuses
//! what the spec forbids (creating or removing server-default rules, unknown neighbours),
//! and each change is one read-modify-write job on the user's writer.
//!
//! Evaluation, counts and delivery:
//! * `worker` — evaluates every new timeline event for the room's local members behind the
//!   notifier's frontier (never on a room actor), storing notification rows and queueing
//!   pushes in one write;
//! * `gateway` — delivers queued pushes to HTTP push gateways through the address policy,
//!   with persisted retries and backoff;
//! * `pushers` — `/pushers`, `/pushers/set` and `/notifications`.
//!
//! Counts are computed from the notification rows and the read receipts
//! (`storage::push`), so a receipt clears them without a write of its own.

pub mod gateway;
pub mod pushers;
pub mod worker;

use std::sync::Arc;

use ruma::push::{
    Action, InsertPushRuleError, NewConditionalPushRule, NewPatternedPushRule, NewPushRule,
    NewSimplePushRule, RemovePushRuleError, RuleKind, Ruleset,
};
use ruma::{OwnedRoomId, OwnedUserId, UserId};
use serde_json::{Value, json};

use crate::account_data::modify_account_data;
use crate::error::{Error, Result};
use crate::services::Services;
use crate::storage::account;

/// The account data type holding a user's rules.
pub const ACCOUNT_DATA_TYPE: &str = "m.push_rules";

pub(crate) fn parse_ruleset(user_id: &UserId, stored: Option<Value>) -> Ruleset {
    stored
        .and_then(|v| v.get("global").cloned())
        .and_then(|g| serde_json::from_value::<Ruleset>(g).ok())
        .unwrap_or_else(|| Ruleset::server_default(user_id))
}

/// A ruleset as clients see it: every kind present, as an array even when empty (ruma leaves
/// empty kinds out; Synapse always lists all five, and clients index them directly).
pub fn ruleset_json(rules: &Ruleset) -> Result<Value> {
    let mut v = serde_json::to_value(rules).map_err(|e| Error::internal(e.to_string()))?;
    if let Some(map) = v.as_object_mut() {
        for kind in ["override", "content", "room", "sender", "underride"] {
            map.entry(kind).or_insert_with(|| json!([]));
        }
    }
    Ok(v)
}

/// What push shares between its tasks and its handlers.
pub struct PushState {
    /// The outbound network context for gateways (the address policy).
    pub net: Arc<crate::net::NetContext>,
    /// Wakes delivery when the worker queued pushes.
    pub deliveries: Arc<tokio::sync::Notify>,
}

impl PushState {
    pub fn new(config: &crate::config::Config) -> Self {
        let net = crate::net::context_from_config(config).unwrap_or_else(|e| {
            // The configuration was checked at load; fall back to refusing special ranges.
            tracing::error!(error = %e, "push: bad outbound settings; gateways unreachable");
            crate::net::NetContext::new(crate::net::AddressPolicy::default(), Default::default())
        });
        Self {
            net,
            deliveries: Arc::new(tokio::sync::Notify::new()),
        }
    }
}

/// Starts the push worker and gateway delivery (on the current actix system).
pub fn start(s: &Arc<Services>) {
    let core = Arc::clone(&s.core);
    let wake = Arc::clone(&s.push.deliveries);
    actix_rt::spawn(worker::run(Arc::clone(&core), Arc::clone(&wake)));
    actix_rt::spawn(gateway::run(core, Arc::clone(&s.push.net), wake));
}

/// A user's rules (the defaults until they change one).
pub async fn ruleset(s: &Services, user_id: &UserId) -> Result<Ruleset> {
    let u = user_id.to_string();
    let stored = s
        .core
        .db
        .read(move |c| account::get_account_data(c, &u, "", ACCOUNT_DATA_TYPE))
        .await?
        .and_then(|t| serde_json::from_str::<Value>(&t).ok());
    Ok(parse_ruleset(user_id, stored))
}

/// Applies a change to the user's rules and stores the result.
async fn change<F>(s: &Services, user_id: &UserId, f: F) -> Result<()>
where
    F: FnOnce(&mut Ruleset) -> Result<()> + Send + 'static,
{
    let uid = user_id.to_owned();
    modify_account_data(s, user_id.as_str(), "", ACCOUNT_DATA_TYPE, move |stored| {
        let mut rules = parse_ruleset(&uid, stored);
        f(&mut rules)?;
        Ok(json!({"global": ruleset_json(&rules)?}))
    })
    .await
}

/// Parses a rule kind from the path.
pub fn kind(s: &str) -> Result<RuleKind> {
    match s {
        "override" => Ok(RuleKind::Override),
        "underride" => Ok(RuleKind::Underride),
        "sender" => Ok(RuleKind::Sender),
        "room" => Ok(RuleKind::Room),
        "content" => Ok(RuleKind::Content),
        _ => Err(Error::invalid_param(format!("unknown rule kind {s}"))),
    }
}

/// Checks the scope in the path (only `global` exists).
pub fn scope(s: &str) -> Result<()> {
    if s == "global" {
        Ok(())
    } else {
        Err(Error::invalid_param(format!("unknown scope {s}")))
    }
}

fn kind_key(kind: &RuleKind) -> &'static str {
    match kind {
        RuleKind::Override => "override",
        RuleKind::Underride => "underride",
        RuleKind::Sender => "sender",
        RuleKind::Room => "room",
        _ => "content",
    }
}

/// One rule, as JSON.
pub fn rule_json(rules: &Ruleset, kind: &RuleKind, rule_id: &str) -> Result<Value> {
    let v = serde_json::to_value(rules).map_err(|e| Error::internal(e.to_string()))?;
    v.get(kind_key(kind))
        .and_then(Value::as_array)
        .and_then(|list| list.iter().find(|r| r["rule_id"] == rule_id))
        .cloned()
        .ok_or_else(|| Error::not_found("no such push rule"))
}

fn parse_actions(v: &Value) -> Result<Vec<Action>> {
    let list = v
        .as_array()
        .ok_or_else(|| Error::bad_json("actions must be an array"))?;
    list.iter()
        .map(|a| {
            serde_json::from_value::<Action>(a.clone())
                .map_err(|e| Error::bad_json(format!("invalid action {a}: {e}")))
        })
        .collect()
}

/// Builds the rule a `PUT` describes.
fn new_rule(kind: &RuleKind, rule_id: &str, body: &Value) -> Result<NewPushRule> {
    let actions = parse_actions(body.get("actions").unwrap_or(&Value::Null))?;
    let bad = |e: serde_json::Error| Error::bad_json(format!("invalid push rule: {e}"));
    let mut v = json!({"rule_id": rule_id, "actions": actions});
    match kind {
        RuleKind::Override | RuleKind::Underride => {
            v["conditions"] = body.get("conditions").cloned().unwrap_or(json!([]));
            let r: NewConditionalPushRule = serde_json::from_value(v).map_err(bad)?;
            Ok(if matches!(kind, RuleKind::Override) {
                NewPushRule::Override(r)
            } else {
                NewPushRule::Underride(r)
            })
        }
        RuleKind::Content => {
            let pattern = body
                .get("pattern")
                .and_then(Value::as_str)
                .ok_or_else(|| Error::bad_json("content rules need a pattern"))?;
            v["pattern"] = json!(pattern);
            let r: NewPatternedPushRule = serde_json::from_value(v).map_err(bad)?;
            Ok(NewPushRule::Content(r))
        }
        RuleKind::Room => {
            OwnedRoomId::try_from(rule_id)
                .map_err(|_| Error::invalid_param("a room rule's ID is a room ID"))?;
            let r: NewSimplePushRule<OwnedRoomId> = serde_json::from_value(v).map_err(bad)?;
            Ok(NewPushRule::Room(r))
        }
        RuleKind::Sender => {
            OwnedUserId::try_from(rule_id)
                .map_err(|_| Error::invalid_param("a sender rule's ID is a user ID"))?;
            let r: NewSimplePushRule<OwnedUserId> = serde_json::from_value(v).map_err(bad)?;
            Ok(NewPushRule::Sender(r))
        }
        _ => Err(Error::invalid_param("unknown rule kind")),
    }
}

/// `PUT /pushrules/global/{kind}/{ruleId}`.
pub async fn put_rule(
    s: &Services,
    user_id: &UserId,
    kind: RuleKind,
    rule_id: String,
    body: Value,
    before: Option<String>,
    after: Option<String>,
) -> Result<()> {
    let rule = new_rule(&kind, &rule_id, &body)?;
    change(s, user_id, move |rules| {
        rules
            .insert(rule, after.as_deref(), before.as_deref())
            .map_err(|e| match e {
                InsertPushRuleError::UnknownRuleId => {
                    Error::not_found("the before or after rule does not exist")
                }
                other => Error::invalid_param(other.to_string()),
            })
    })
    .await
}

/// `DELETE /pushrules/global/{kind}/{ruleId}`.
pub async fn delete_rule(
    s: &Services,
    user_id: &UserId,
    kind: RuleKind,
    rule_id: String,
) -> Result<()> {
    change(s, user_id, move |rules| {
        rules.remove(kind, &rule_id).map_err(|e| match e {
            RemovePushRuleError::NotFound => Error::not_found("no such push rule"),
            other => Error::invalid_param(other.to_string()),
        })
    })
    .await
}

/// `PUT .../enabled`.
pub async fn set_enabled(
    s: &Services,
    user_id: &UserId,
    kind: RuleKind,
    rule_id: String,
    enabled: bool,
) -> Result<()> {
    change(s, user_id, move |rules| {
        rules
            .set_enabled(kind, &rule_id, enabled)
            .map_err(|_| Error::not_found("no such push rule"))
    })
    .await
}

/// `PUT .../actions`.
pub async fn set_actions(
    s: &Services,
    user_id: &UserId,
    kind: RuleKind,
    rule_id: String,
    actions: &Value,
) -> Result<()> {
    let actions = parse_actions(actions)?;
    change(s, user_id, move |rules| {
        rules
            .set_actions(kind, &rule_id, actions)
            .map_err(|_| Error::not_found("no such push rule"))
    })
    .await
}
