//! Room messages crossing cluster nodes (`docs/CLUSTER.md`): the wire form of the messages
//! the room registry forwards to a room's owner, and the owner's side that answers them.
//!
//! A message is forwarded only after its order-free work is done where it arrived (a client's
//! request parsed and authorized, a PDU's signatures and hashes checked); what crosses is the
//! message itself, as JSON, and its answer. Errors cross as `(errcode, message)` and come back
//! as the matching [`Error`]. A node that is asked about a room it does not own (the two
//! nodes' views of the live set differ for a moment) answers [`Reply::NotOwner`], and the
//! sender routes again. Every message that writes a room crosses, so the owner's actor makes
//! the write under its lease: besides events and inbound PDUs, outliers (`StoreOutliers`),
//! backfilled history (`AppendHistory`, rows and state groups as the sender built them) and
//! the room's writes that are not DAG events (an out-of-band membership, a declined
//! out-of-band invite, Linearized join staging), a partial-state join's mark and completion
//! (`MarkPartial`, `ClearPartial`, `CompletePartial`: the join and the resync run where the
//! joining user's request arrived, the room's actor is the owner's), and the two Linearized
//! Matrix messages (`HubAppend`: a hub places an event or a participant's LPDU on the line;
//! and `ParticipantReceive`: a participant takes PDUs from the hub). The one message without a
//! wire form ([`Forward::encode`] answers `None`: building an invite, which writes nothing)
//! runs where it arrives, on an actor loaded from the database.

use std::collections::HashMap;
use std::sync::Arc;

use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use weft_protocol::builder::EventDraft;
use weft_protocol::{Pdu, RoomVersion};

use super::messages::{
    AppendHistory, DeclineOutOfBand, GetSnapshot, InboundOutcome, InboundPdus, InitRoom,
    PurgeHistory, PurgePoint, RecordOutOfBand, RoomSnapshot, SendEvent, StageJoinPdus,
    StoreOutliers, TxnKey, UnstageJoinPdus,
};
use super::partial_state::{ClearPartial, CompletePartial, MarkPartial};
use super::state::CurrentState;
use crate::error::{Error, Result};

/// A message the registry may forward to another node.
pub trait Forward: actix::Message + Sized {
    /// The request's wire form (`None`: run it where it arrived).
    fn encode(&self) -> Option<Request>;
    /// The answer's wire form.
    fn reply_to_wire(r: &Self::Result) -> Value;
    /// The answer from its wire form.
    fn reply_from_wire(v: Value) -> Result<Self::Result>;
    /// A room created by this message (its actor starts empty, not from the database).
    fn creates(&self) -> Option<RoomVersion> {
        None
    }
    /// Whoever sent this message reads what it wrote next (a local client's event, a new
    /// room): answer only once the stream frontier has passed it. Positions commit out of
    /// order, so without the wait a write that completed while a lower position was still in
    /// flight (another room's batch, the push worker's counts) would be unreadable for a
    /// moment to the very client it was acknowledged to.
    const READ_YOUR_WRITES: bool = false;
}

/// What crosses to the owner.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub room_id: String,
    pub body: Body,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Body {
    Send {
        draft: DraftWire,
        txn: Option<TxnWire>,
    },
    Init {
        version: String,
        create: PduWire,
        drafts: Vec<DraftWire>,
    },
    Inbound {
        version: Option<String>,
        local: bool,
        pdus: Vec<(PduWire, Option<Vec<StateEntry>>)>,
    },
    Snapshot,
    OutOfBand {
        version: String,
        pdu: PduWire,
        stripped: Vec<Value>,
    },
    Decline {
        user_id: String,
    },
    Stage {
        origin: String,
        first_seq: i64,
        pdus: Vec<String>,
    },
    Unstage {
        upto_seq: i64,
    },
    Purge {
        before_event: Option<String>,
        before_ts: Option<i64>,
    },
    Outliers {
        groups: Vec<super::persist::NewGroup>,
        rows: Vec<crate::storage::events::NewEvent>,
    },
    History {
        groups: Vec<super::persist::NewGroup>,
        events: Vec<(PduWire, crate::storage::events::NewEvent)>,
    },
    HubAppend {
        /// A local user's event (`draft`) or a participant's LPDU (`lpdu`): exactly one.
        draft: Option<DraftWire>,
        lpdu: Option<Value>,
        countersigned: Option<Value>,
        dry_run: bool,
        skip: Option<String>,
        add: Option<String>,
    },
    ParticipantReceive {
        pdus: Vec<PduWire>,
        joining: bool,
        state_before_first: Option<Vec<PduWire>>,
    },
    /// A partial-state join's mark (`rooms::partial_state`), set before the join lands.
    MarkPartial {
        join_event_id: String,
        servers: Vec<String>,
    },
    /// The mark dropped (our join failed, or never landed).
    ClearPartial,
    /// The full state before our join, checked and stored where the resync ran.
    CompletePartial {
        version: String,
        state: Vec<StateEntry>,
        events: Vec<PduWire>,
        stream: i64,
    },
}

/// One entry of the state before a PDU: `(type, state key, event ID)`.
pub type StateEntry = (String, String, String);

/// What comes back.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reply {
    /// `upto`: the owner's highest stream position when it answered (the requester waits for
    /// its own frontier to pass it before answering its client).
    Done {
        value: Value,
        #[serde(default)]
        upto: i64,
    },
    NotOwner,
    Failed {
        errcode: String,
        error: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DraftWire {
    kind: String,
    state_key: Option<String>,
    sender: String,
    content: Value,
    redacts: Option<String>,
    origin_server_ts: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TxnWire {
    user_id: String,
    device_id: String,
    scope: String,
    txn_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PduWire {
    event_id: String,
    json: Value,
    #[serde(default)]
    rejected: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SnapshotWire {
    version: String,
    state: Vec<PduWire>,
    group: Option<(i64, i32)>,
    extremities: Vec<String>,
    extremity_hashes: HashMap<String, String>,
    max_depth: u64,
}

fn bad(what: impl std::fmt::Display) -> Error {
    Error::Internal(format!("cluster wire: {what}"))
}

fn draft_to_wire(d: &EventDraft) -> DraftWire {
    DraftWire {
        kind: d.kind.clone(),
        state_key: d.state_key.clone(),
        sender: d.sender.to_string(),
        content: d.content.clone(),
        redacts: d.redacts.as_ref().map(|r| r.to_string()),
        origin_server_ts: d.origin_server_ts,
    }
}

fn draft_from_wire(d: DraftWire) -> Result<EventDraft> {
    Ok(EventDraft {
        kind: d.kind,
        state_key: d.state_key,
        sender: OwnedUserId::try_from(d.sender).map_err(bad)?,
        content: d.content,
        redacts: d
            .redacts
            .map(OwnedEventId::try_from)
            .transpose()
            .map_err(bad)?,
        origin_server_ts: d.origin_server_ts,
    })
}

fn pdu_to_wire(p: &Pdu) -> PduWire {
    PduWire {
        event_id: p.event_id().to_string(),
        json: p.to_federation_value(),
        rejected: p.is_rejected(),
    }
}

fn pdu_from_wire(p: PduWire, version: RoomVersion) -> Result<Pdu> {
    let obj = weft_protocol::canonical::value_to_object(p.json).map_err(bad)?;
    let id = OwnedEventId::try_from(p.event_id).map_err(bad)?;
    let mut pdu = Pdu::from_json_with_id(id, obj, version).map_err(bad)?;
    pdu.set_rejected(p.rejected);
    Ok(pdu)
}

fn version_from(s: &str) -> Result<RoomVersion> {
    RoomVersion::parse(s).ok_or_else(|| bad(format!("room version {s:?}")))
}

fn ids_from(v: Value) -> Result<Vec<OwnedEventId>> {
    let ids: Vec<String> = serde_json::from_value(v).map_err(bad)?;
    ids.into_iter()
        .map(|i| OwnedEventId::try_from(i).map_err(bad))
        .collect()
}

/// An error as it crosses.
fn error_to_wire(e: &Error) -> Value {
    serde_json::to_value(Reply::Failed {
        errcode: e.errcode().to_owned(),
        error: e.to_string(),
    })
    .unwrap_or(Value::Null)
}

/// An error as it arrives, mapped back to the variant with that errcode.
fn error_from_wire(errcode: &str, error: String) -> Error {
    match errcode {
        "M_FORBIDDEN" => Error::Forbidden(error),
        "M_NOT_FOUND" => Error::NotFound(error),
        "M_BAD_JSON" => Error::BadJson(error),
        "M_INVALID_PARAM" => Error::InvalidParam(error),
        "M_BAD_STATE" => Error::BadState(error),
        "M_LIMIT_EXCEEDED" => Error::Overloaded,
        "M_TOO_LARGE" => Error::TooLarge,
        _ => Error::Internal(error),
    }
}

/// `Result<T>` answers: `{"ok": T}` or an error.
fn result_to_wire<T>(r: &Result<T>, f: impl FnOnce(&T) -> Value) -> Value {
    match r {
        Ok(v) => serde_json::json!({ "ok": f(v) }),
        Err(e) => error_to_wire(e),
    }
}

fn result_from_wire<T>(v: Value, f: impl FnOnce(Value) -> Result<T>) -> Result<Result<T>> {
    if let Some(ok) = v.get("ok") {
        return Ok(f(ok.clone()));
    }
    match serde_json::from_value::<Reply>(v) {
        Ok(Reply::Failed { errcode, error }) => Ok(Err(error_from_wire(&errcode, error))),
        Ok(_) | Err(_) => Err(bad("unexpected answer")),
    }
}

impl Forward for SendEvent {
    const READ_YOUR_WRITES: bool = true;
    fn encode(&self) -> Option<Request> {
        Some(Request {
            room_id: String::new(),
            body: Body::Send {
                draft: draft_to_wire(&self.draft),
                txn: self.txn.as_ref().map(|t| TxnWire {
                    user_id: t.user_id.clone(),
                    device_id: t.device_id.clone(),
                    scope: t.scope.clone(),
                    txn_id: t.txn_id.clone(),
                }),
            },
        })
    }
    fn reply_to_wire(r: &Self::Result) -> Value {
        result_to_wire(r, |id| Value::from(id.to_string()))
    }
    fn reply_from_wire(v: Value) -> Result<Self::Result> {
        result_from_wire(v, |ok| {
            let id: String = serde_json::from_value(ok).map_err(bad)?;
            OwnedEventId::try_from(id).map_err(bad)
        })
    }
}

impl Forward for InitRoom {
    const READ_YOUR_WRITES: bool = true;
    fn encode(&self) -> Option<Request> {
        Some(Request {
            room_id: String::new(),
            body: Body::Init {
                version: self.version.as_str().to_owned(),
                create: pdu_to_wire(&self.create),
                drafts: self.drafts.iter().map(draft_to_wire).collect(),
            },
        })
    }
    fn reply_to_wire(r: &Self::Result) -> Value {
        result_to_wire(r, |ids| {
            Value::from(ids.iter().map(|i| i.to_string()).collect::<Vec<_>>())
        })
    }
    fn reply_from_wire(v: Value) -> Result<Self::Result> {
        result_from_wire(v, ids_from)
    }
    fn creates(&self) -> Option<RoomVersion> {
        Some(self.version)
    }
}

fn outcome_to_wire(o: &InboundOutcome) -> Value {
    match o {
        InboundOutcome::Accepted => serde_json::json!({"accepted": true}),
        InboundOutcome::SoftFailed(m) => serde_json::json!({"soft_failed": m}),
        InboundOutcome::Rejected(m) => serde_json::json!({"rejected": m}),
        InboundOutcome::Missing { prev, auth } => {
            serde_json::json!({"missing": {"prev": prev, "auth": auth}})
        }
        InboundOutcome::Error(m) => serde_json::json!({"error": m}),
        InboundOutcome::Deferred(m) => serde_json::json!({"deferred": m}),
    }
}

fn outcome_from_wire(v: &Value) -> InboundOutcome {
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let list = |m: &Value, k: &str| -> Vec<String> {
        m.get(k)
            .and_then(|l| serde_json::from_value(l.clone()).ok())
            .unwrap_or_default()
    };
    if v.get("accepted").is_some() {
        InboundOutcome::Accepted
    } else if let Some(m) = text("soft_failed") {
        InboundOutcome::SoftFailed(m)
    } else if let Some(m) = text("deferred") {
        InboundOutcome::Deferred(m)
    } else if let Some(m) = text("rejected") {
        InboundOutcome::Rejected(m)
    } else if let Some(m) = v.get("missing") {
        InboundOutcome::Missing {
            prev: list(m, "prev"),
            auth: list(m, "auth"),
        }
    } else {
        InboundOutcome::Error(text("error").unwrap_or_else(|| "unreadable outcome".into()))
    }
}

impl Forward for InboundPdus {
    fn encode(&self) -> Option<Request> {
        Some(Request {
            room_id: String::new(),
            body: Body::Inbound {
                version: self.version.map(|v| v.as_str().to_owned()),
                local: self.local,
                pdus: self
                    .pdus
                    .iter()
                    .map(|(p, state)| {
                        let state = state.as_ref().map(|s| {
                            s.iter()
                                .map(|((k, sk), id)| (k.clone(), sk.clone(), id.clone()))
                                .collect()
                        });
                        (pdu_to_wire(p), state)
                    })
                    .collect(),
            },
        })
    }
    fn reply_to_wire(r: &Self::Result) -> Value {
        Value::from(r.iter().map(outcome_to_wire).collect::<Vec<_>>())
    }
    fn reply_from_wire(v: Value) -> Result<Self::Result> {
        match v {
            Value::Array(items) => Ok(items.iter().map(outcome_from_wire).collect()),
            _ => Err(bad("inbound outcomes are not a list")),
        }
    }
}

impl Forward for GetSnapshot {
    fn encode(&self) -> Option<Request> {
        Some(Request {
            room_id: String::new(),
            body: Body::Snapshot,
        })
    }
    fn reply_to_wire(r: &Self::Result) -> Value {
        result_to_wire(r, |s| {
            serde_json::to_value(SnapshotWire {
                version: s.version.as_str().to_owned(),
                state: s.state.events.values().map(|p| pdu_to_wire(p)).collect(),
                group: s.state.group,
                extremities: s.extremities.iter().map(|e| e.to_string()).collect(),
                extremity_hashes: s
                    .extremity_hashes
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect(),
                max_depth: s.max_depth,
            })
            .unwrap_or(Value::Null)
        })
    }
    fn reply_from_wire(v: Value) -> Result<Self::Result> {
        result_from_wire(v, |ok| {
            let w: SnapshotWire = serde_json::from_value(ok).map_err(bad)?;
            let version = version_from(&w.version)?;
            let mut state = CurrentState {
                group: w.group,
                ..Default::default()
            };
            for p in w.state {
                let pdu = pdu_from_wire(p, version)?;
                let key = (
                    ruma::events::StateEventType::from(pdu.kind_str()),
                    pdu.state_key().unwrap_or_default().to_owned(),
                );
                state.events.insert(key, Arc::new(pdu));
            }
            let mut hashes = HashMap::new();
            for (k, v) in w.extremity_hashes {
                hashes.insert(OwnedEventId::try_from(k).map_err(bad)?, v);
            }
            Ok(RoomSnapshot {
                version,
                state,
                extremities: ids_from(Value::from(w.extremities))?,
                extremity_hashes: hashes,
                max_depth: w.max_depth,
            })
        })
    }
}

impl Forward for PurgeHistory {
    fn encode(&self) -> Option<Request> {
        let (before_event, before_ts) = match &self.point {
            PurgePoint::Event(e) => (Some(e.clone()), None),
            PurgePoint::Ts(ts) => (None, Some(*ts)),
        };
        Some(Request {
            room_id: String::new(),
            body: Body::Purge {
                before_event,
                before_ts,
            },
        })
    }
    fn reply_to_wire(r: &Self::Result) -> Value {
        result_to_wire(r, |n| serde_json::json!(n))
    }
    fn reply_from_wire(v: Value) -> Result<Self::Result> {
        result_from_wire(v, |ok| serde_json::from_value(ok).map_err(bad))
    }
}

/// Messages answering `Result<()>`, forwarded as `body`.
macro_rules! forwarded_unit {
    ($($t:ty => |$m:ident| $body:expr),* $(,)?) => {$(
        impl Forward for $t {
            fn encode(&self) -> Option<Request> {
                let $m = self;
                Some(Request {
                    room_id: String::new(),
                    body: $body,
                })
            }
            fn reply_to_wire(r: &Self::Result) -> Value {
                result_to_wire(r, |()| Value::Null)
            }
            fn reply_from_wire(v: Value) -> Result<Self::Result> {
                result_from_wire(v, |_| Ok(()))
            }
        }
    )*};
}

forwarded_unit!(
    RecordOutOfBand => |m| Body::OutOfBand {
        version: m.version.as_str().to_owned(),
        pdu: pdu_to_wire(&m.pdu),
        stripped: m.stripped.clone(),
    },
    DeclineOutOfBand => |m| Body::Decline {
        user_id: m.user_id.clone(),
    },
    StageJoinPdus => |m| Body::Stage {
        origin: m.origin.clone(),
        first_seq: m.first_seq,
        pdus: m.pdus.clone(),
    },
    UnstageJoinPdus => |m| Body::Unstage {
        upto_seq: m.upto_seq,
    },
    MarkPartial => |m| Body::MarkPartial {
        join_event_id: m.join_event_id.clone(),
        servers: m.servers.clone(),
    },
    ClearPartial => |_m| Body::ClearPartial,
    StoreOutliers => |m| Body::Outliers {
        groups: m.groups.clone(),
        rows: m.rows.clone(),
    },
    AppendHistory => |m| Body::History {
        groups: m.groups.clone(),
        events: m
            .events
            .iter()
            .map(|(p, row)| (pdu_to_wire(p), row.clone()))
            .collect(),
    },
);

fn object_from_wire(v: Value) -> Result<ruma::CanonicalJsonObject> {
    weft_protocol::canonical::value_to_object(v).map_err(bad)
}

fn object_to_wire(o: &ruma::CanonicalJsonObject) -> Value {
    serde_json::to_value(o).unwrap_or(Value::Null)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct AppendedWire {
    pdu: PduWire,
    invite_target: Option<String>,
    invite_state: Vec<Value>,
    already: bool,
}

impl Forward for super::linearized::HubAppend {
    /// A hub's local user reads the event next, as after a `SendEvent`.
    const READ_YOUR_WRITES: bool = true;
    fn encode(&self) -> Option<Request> {
        use super::linearized::HubInput;
        let (draft, lpdu) = match &self.input {
            HubInput::Local(d) => (Some(draft_to_wire(d)), None),
            HubInput::Lpdu(l) => (None, Some(object_to_wire(l))),
        };
        Some(Request {
            room_id: String::new(),
            body: Body::HubAppend {
                draft,
                lpdu,
                countersigned: self.countersigned.as_ref().map(object_to_wire),
                dry_run: self.dry_run,
                skip: self.fanout.skip.clone(),
                add: self.fanout.add.clone(),
            },
        })
    }
    fn reply_to_wire(r: &Self::Result) -> Value {
        result_to_wire(r, |a| {
            serde_json::to_value(AppendedWire {
                pdu: pdu_to_wire(&a.pdu),
                invite_target: a.invite_target.clone(),
                invite_state: a.invite_state.clone(),
                already: a.already,
            })
            .unwrap_or(Value::Null)
        })
    }
    fn reply_from_wire(v: Value) -> Result<Self::Result> {
        result_from_wire(v, |ok| {
            let w: AppendedWire = serde_json::from_value(ok).map_err(bad)?;
            Ok(super::linearized::Appended {
                pdu: pdu_from_wire(w.pdu, RoomVersion::Linearized)?,
                invite_target: w.invite_target,
                invite_state: w.invite_state,
                already: w.already,
            })
        })
    }
}

fn received_to_wire(r: &super::linearized::Received) -> Value {
    use super::linearized::Received;
    match r {
        Received::Appended => serde_json::json!({"appended": true}),
        Received::Known => serde_json::json!({"known": true}),
        Received::Gap(id) => serde_json::json!({"gap": id.as_str()}),
        Received::Refused(m) => serde_json::json!({"refused": m}),
    }
}

fn received_from_wire(v: &Value) -> super::linearized::Received {
    use super::linearized::Received;
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    if v.get("appended").is_some() {
        Received::Appended
    } else if v.get("known").is_some() {
        Received::Known
    } else if let Some(id) = text("gap").and_then(|g| OwnedEventId::try_from(g).ok()) {
        Received::Gap(id)
    } else {
        Received::Refused(text("refused").unwrap_or_else(|| "unreadable outcome".into()))
    }
}

impl Forward for super::linearized::ParticipantReceive {
    fn encode(&self) -> Option<Request> {
        Some(Request {
            room_id: String::new(),
            body: Body::ParticipantReceive {
                pdus: self.pdus.iter().map(pdu_to_wire).collect(),
                joining: self.joining,
                state_before_first: self
                    .state_before_first
                    .as_ref()
                    .map(|s| s.iter().map(pdu_to_wire).collect()),
            },
        })
    }
    fn reply_to_wire(r: &Self::Result) -> Value {
        Value::from(r.iter().map(received_to_wire).collect::<Vec<_>>())
    }
    fn reply_from_wire(v: Value) -> Result<Self::Result> {
        match v {
            Value::Array(items) => Ok(items.iter().map(received_from_wire).collect()),
            _ => Err(bad("participant outcomes are not a list")),
        }
    }
}

macro_rules! runs_where_it_arrives {
    ($($t:ty),* $(,)?) => {$(
        impl Forward for $t {
            fn encode(&self) -> Option<Request> {
                None
            }
            fn reply_to_wire(_: &Self::Result) -> Value {
                Value::Null
            }
            fn reply_from_wire(_: Value) -> Result<Self::Result> {
                Err(bad("this message is never forwarded"))
            }
        }
    )*};
}

runs_where_it_arrives!(super::messages::BuildEvent);

impl Forward for CompletePartial {
    fn encode(&self) -> Option<Request> {
        Some(Request {
            room_id: String::new(),
            body: Body::CompletePartial {
                version: self.version.as_str().to_owned(),
                state: self
                    .state
                    .iter()
                    .map(|((k, sk), id)| (k.clone(), sk.clone(), id.clone()))
                    .collect(),
                events: self.events.iter().map(|p| pdu_to_wire(p)).collect(),
                stream: self.stream,
            },
        })
    }
    fn reply_to_wire(r: &Self::Result) -> Value {
        result_to_wire(r, |deferred| serde_json::json!(deferred))
    }
    fn reply_from_wire(v: Value) -> Result<Self::Result> {
        result_from_wire(v, |ok| serde_json::from_value(ok).map_err(bad))
    }
}

/// The owner's side: decodes a forwarded request, runs it here if this node owns the room,
/// and encodes the answer.
pub async fn handle(rooms: &super::RoomRegistry, bytes: &[u8]) -> Vec<u8> {
    let reply = match serde_json::from_slice::<Request>(bytes) {
        Ok(req) => match run(rooms, req).await {
            Ok(Some(value)) => Reply::Done {
                value,
                upto: rooms.core.notifier.last_position(),
            },
            Ok(None) => Reply::NotOwner,
            Err(e) => Reply::Failed {
                errcode: e.errcode().to_owned(),
                error: e.to_string(),
            },
        },
        Err(e) => {
            tracing::warn!(error = %e, "cluster: unreadable forwarded request");
            Reply::Failed {
                errcode: "M_BAD_JSON".into(),
                error: format!("unreadable forwarded request: {e}"),
            }
        }
    };
    serde_json::to_vec(&reply).unwrap_or_default()
}

async fn run(rooms: &super::RoomRegistry, req: Request) -> Result<Option<Value>> {
    let room_id = OwnedRoomId::try_from(req.room_id).map_err(bad)?;
    macro_rules! here {
        ($msg:expr, $t:ty) => {
            match rooms.send_here(&room_id, $msg).await? {
                Some(r) => Ok(Some(<$t as Forward>::reply_to_wire(&r))),
                None => Ok(None),
            }
        };
    }
    match req.body {
        Body::Send { draft, txn } => {
            let msg = SendEvent {
                draft: draft_from_wire(draft)?,
                txn: txn.map(|t| TxnKey {
                    user_id: t.user_id,
                    device_id: t.device_id,
                    scope: t.scope,
                    txn_id: t.txn_id,
                }),
                accepted: None,
            };
            here!(msg, SendEvent)
        }
        Body::Init {
            version,
            create,
            drafts,
        } => {
            let version = version_from(&version)?;
            let msg = InitRoom {
                version,
                create: pdu_from_wire(create, version)?,
                drafts: drafts
                    .into_iter()
                    .map(draft_from_wire)
                    .collect::<Result<_>>()?,
            };
            here!(msg, InitRoom)
        }
        Body::Inbound {
            version,
            local,
            pdus,
        } => {
            let known = match &version {
                Some(v) => Some(version_from(v)?),
                None => None,
            };
            let room_version = match known {
                Some(v) => v,
                None => {
                    let r = room_id.to_string();
                    let stored = rooms
                        .core
                        .db
                        .read(move |c| crate::storage::rooms::room_version(c, &r))
                        .await?;
                    stored
                        .as_deref()
                        .and_then(RoomVersion::parse)
                        .ok_or_else(|| Error::not_found("unknown room"))?
                }
            };
            let mut list = Vec::with_capacity(pdus.len());
            for (p, state) in pdus {
                let state = state.map(|s| s.into_iter().map(|(k, sk, id)| ((k, sk), id)).collect());
                list.push((std::sync::Arc::new(pdu_from_wire(p, room_version)?), state));
            }
            let msg = InboundPdus {
                pdus: list,
                local,
                version: known,
                checked_events: Vec::new(),
                txn_record: None,
            };
            here!(msg, InboundPdus)
        }
        Body::Snapshot => here!(GetSnapshot, GetSnapshot),
        Body::OutOfBand {
            version,
            pdu,
            stripped,
        } => {
            let version = version_from(&version)?;
            let msg = RecordOutOfBand {
                pdu: Arc::new(pdu_from_wire(pdu, version)?),
                version,
                stripped,
            };
            here!(msg, RecordOutOfBand)
        }
        Body::Decline { user_id } => here!(DeclineOutOfBand { user_id }, DeclineOutOfBand),
        Body::Stage {
            origin,
            first_seq,
            pdus,
        } => {
            let msg = StageJoinPdus {
                origin,
                first_seq,
                pdus,
            };
            here!(msg, StageJoinPdus)
        }
        Body::Unstage { upto_seq } => here!(UnstageJoinPdus { upto_seq }, UnstageJoinPdus),
        Body::Purge {
            before_event,
            before_ts,
        } => {
            let point = match (before_event, before_ts) {
                (Some(e), None) => PurgePoint::Event(e),
                (None, Some(ts)) => PurgePoint::Ts(ts),
                _ => return Err(Error::internal("a purge names exactly one point")),
            };
            here!(PurgeHistory { point }, PurgeHistory)
        }
        Body::Outliers { groups, rows } => here!(StoreOutliers { groups, rows }, StoreOutliers),
        Body::History { groups, events } => {
            let events = if events.is_empty() {
                Vec::new()
            } else {
                // Backfill is for rooms we hold: their version is stored.
                let r = room_id.to_string();
                let stored = rooms
                    .core
                    .db
                    .read(move |c| crate::storage::rooms::room_version(c, &r))
                    .await?;
                let version = stored
                    .as_deref()
                    .and_then(RoomVersion::parse)
                    .ok_or_else(|| Error::not_found("unknown room"))?;
                events
                    .into_iter()
                    .map(|(p, row)| Ok((Arc::new(pdu_from_wire(p, version)?), row)))
                    .collect::<Result<_>>()?
            };
            here!(AppendHistory { groups, events }, AppendHistory)
        }
        Body::HubAppend {
            draft,
            lpdu,
            countersigned,
            dry_run,
            skip,
            add,
        } => {
            use super::linearized::{FanoutChange, HubAppend, HubInput};
            let input = match (draft, lpdu) {
                (Some(d), None) => HubInput::Local(draft_from_wire(d)?),
                (None, Some(l)) => HubInput::Lpdu(object_from_wire(l)?),
                _ => return Err(bad("a hub append names exactly one event")),
            };
            let msg = HubAppend {
                input,
                countersigned: countersigned.map(object_from_wire).transpose()?,
                dry_run,
                fanout: FanoutChange { skip, add },
            };
            here!(msg, HubAppend)
        }
        Body::ParticipantReceive {
            pdus,
            joining,
            state_before_first,
        } => {
            use super::linearized::ParticipantReceive;
            let lm = RoomVersion::Linearized;
            let msg = ParticipantReceive {
                pdus: pdus
                    .into_iter()
                    .map(|p| pdu_from_wire(p, lm))
                    .collect::<Result<_>>()?,
                joining,
                state_before_first: state_before_first
                    .map(|s| {
                        s.into_iter()
                            .map(|p| pdu_from_wire(p, lm))
                            .collect::<Result<Vec<_>>>()
                    })
                    .transpose()?,
            };
            here!(msg, ParticipantReceive)
        }
        Body::MarkPartial {
            join_event_id,
            servers,
        } => here!(
            MarkPartial {
                join_event_id,
                servers
            },
            MarkPartial
        ),
        Body::ClearPartial => here!(ClearPartial, ClearPartial),
        Body::CompletePartial {
            version,
            state,
            events,
            stream,
        } => {
            let version = version_from(&version)?;
            let msg = CompletePartial {
                state: state.into_iter().map(|(k, sk, id)| ((k, sk), id)).collect(),
                events: events
                    .into_iter()
                    .map(|p| Ok(Arc::new(pdu_from_wire(p, version)?)))
                    .collect::<Result<_>>()?,
                stream,
                version,
            };
            here!(msg, CompletePartial)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_cross_with_their_errcode() {
        let r: Result<OwnedEventId> = Err(Error::forbidden("not in the room"));
        let back = SendEvent::reply_from_wire(SendEvent::reply_to_wire(&r)).unwrap();
        let e = back.unwrap_err();
        assert_eq!(e.errcode(), "M_FORBIDDEN");
        assert!(e.to_string().contains("not in the room"));
    }

    #[test]
    fn event_ids_cross() {
        let id = OwnedEventId::try_from("$abc:example.org").unwrap();
        let r: Result<OwnedEventId> = Ok(id.clone());
        let back = SendEvent::reply_from_wire(SendEvent::reply_to_wire(&r)).unwrap();
        assert_eq!(back.unwrap(), id);
    }

    #[test]
    fn outcomes_cross() {
        let all = vec![
            InboundOutcome::Accepted,
            InboundOutcome::SoftFailed("s".into()),
            InboundOutcome::Rejected("r".into()),
            InboundOutcome::Missing {
                prev: vec!["$p".into()],
                auth: vec!["$a".into()],
            },
            InboundOutcome::Error("e".into()),
        ];
        let back = InboundPdus::reply_from_wire(InboundPdus::reply_to_wire(&all)).unwrap();
        assert_eq!(back, all);
    }

    #[test]
    fn a_garbled_answer_is_an_error_not_a_panic() {
        assert!(SendEvent::reply_from_wire(serde_json::json!({"what": 1})).is_err());
        assert!(InboundPdus::reply_from_wire(serde_json::json!("x")).is_err());
    }

    #[test]
    fn the_room_writes_that_are_not_dag_events_cross() {
        let json = serde_json::json!({
            "event_id": "$inv:remote.test", "type": "m.room.member",
            "state_key": "@alice:local.test", "room_id": "!r:remote.test",
            "sender": "@eve:remote.test", "content": {"membership": "invite"},
            "origin_server_ts": 1, "depth": 5, "prev_events": [], "auth_events": [],
            "hashes": {"sha256": "h"}, "signatures": {},
        });
        let pdu = Pdu::from_received(json, RoomVersion::V1).unwrap();
        let msg = RecordOutOfBand {
            pdu: Arc::new(pdu),
            version: RoomVersion::V1,
            stripped: vec![serde_json::json!({"type": "m.room.name"})],
        };
        let wire = serde_json::to_vec(&msg.encode().unwrap()).unwrap();
        let back: Request = serde_json::from_slice(&wire).unwrap();
        let Body::OutOfBand {
            version,
            pdu,
            stripped,
        } = back.body
        else {
            panic!("not an out-of-band membership: {:?}", back.body);
        };
        assert_eq!(version, "1");
        assert_eq!(
            pdu_from_wire(pdu, RoomVersion::V1)
                .unwrap()
                .event_id()
                .as_str(),
            "$inv:remote.test"
        );
        assert_eq!(stripped, msg.stripped);
        let stage = StageJoinPdus {
            origin: "hub.test".into(),
            first_seq: 7,
            pdus: vec!["{}".into()],
        };
        let wire = serde_json::to_vec(&stage.encode().unwrap()).unwrap();
        match serde_json::from_slice::<Request>(&wire).unwrap().body {
            Body::Stage {
                origin,
                first_seq,
                pdus,
            } => assert_eq!(
                (origin.as_str(), first_seq, pdus),
                ("hub.test", 7, stage.pdus)
            ),
            other => panic!("not staging: {other:?}"),
        }
        assert!(
            DeclineOutOfBand {
                user_id: "@a:b".into()
            }
            .encode()
            .is_some()
        );
        assert!(UnstageJoinPdus { upto_seq: 1 }.encode().is_some());
        // A refusal crosses as the same 403.
        let refused: Result<()> = Err(Error::forbidden("decided by the room's state"));
        let back =
            RecordOutOfBand::reply_from_wire(RecordOutOfBand::reply_to_wire(&refused)).unwrap();
        assert_eq!(back.unwrap_err().errcode(), "M_FORBIDDEN");
        let done: Result<()> = Ok(());
        assert!(
            StageJoinPdus::reply_from_wire(StageJoinPdus::reply_to_wire(&done))
                .unwrap()
                .is_ok()
        );
    }

    #[test]
    fn the_operators_purge_crosses_with_its_point_and_count() {
        let cases = [
            (PurgePoint::Event("$cut:x".into()), Ok(Some(5))),
            (PurgePoint::Ts(1_767_225_600_000), Ok(None)),
            (PurgePoint::Ts(0), Err(Error::not_found("no such room"))),
        ];
        for (point, answer) in cases {
            let msg = PurgeHistory {
                point: point.clone(),
            };
            let wire = serde_json::to_vec(&msg.encode().unwrap()).unwrap();
            let back: Request = serde_json::from_slice(&wire).unwrap();
            let Body::Purge {
                before_event,
                before_ts,
            } = back.body
            else {
                panic!("not a purge: {:?}", back.body);
            };
            let again = match (before_event, before_ts) {
                (Some(e), None) => PurgePoint::Event(e),
                (None, Some(ts)) => PurgePoint::Ts(ts),
                other => panic!("a purge names one point: {other:?}"),
            };
            assert_eq!(again, point);
            let got = PurgeHistory::reply_from_wire(PurgeHistory::reply_to_wire(&answer)).unwrap();
            match (got, answer) {
                (Ok(a), Ok(b)) => assert_eq!(a, b),
                (Err(a), Err(b)) => assert_eq!(a.errcode(), b.errcode()),
                (a, b) => panic!("{a:?} crossed as {b:?}"),
            }
        }
    }

    #[test]
    fn outliers_and_history_cross_with_their_rows_and_groups() {
        let json = serde_json::json!({
            "event_id": "$o:remote.test", "type": "m.room.topic", "state_key": "",
            "room_id": "!r:remote.test", "sender": "@eve:remote.test",
            "content": {"topic": "t"}, "origin_server_ts": 1, "depth": 3,
            "prev_events": [], "auth_events": [], "hashes": {"sha256": "h"}, "signatures": {},
        });
        let pdu = Pdu::from_received(json, RoomVersion::V1).unwrap();
        let group = super::super::persist::NewGroup {
            id: 41,
            parent: Some((40, 2)),
            entries: vec![
                (
                    ("m.room.topic".into(), "".into()),
                    Some("$o:remote.test".into()),
                ),
                (("m.room.name".into(), "".into()), None),
            ],
        };
        let row = crate::storage::events::NewEvent {
            rejected: Some("auth".into()),
            state_before: Some(41),
            ..super::super::persist::event_row(&pdu, "!r:remote.test", None)
        };
        let msg = StoreOutliers {
            groups: vec![group.clone()],
            rows: vec![row.clone()],
        };
        let wire = serde_json::to_vec(&msg.encode().unwrap()).unwrap();
        match serde_json::from_slice::<Request>(&wire).unwrap().body {
            Body::Outliers { groups, rows } => {
                assert_eq!(groups.len(), 1);
                assert_eq!((groups[0].id, groups[0].parent), (41, Some((40, 2))));
                assert_eq!(groups[0].entries, group.entries);
                assert_eq!(rows.len(), 1);
                assert_eq!(rows[0].event_id, "$o:remote.test");
                assert_eq!(rows[0].rejected.as_deref(), Some("auth"));
                assert_eq!(rows[0].state_before, Some(41));
                assert!(rows[0].outlier);
                assert_eq!(rows[0].json, row.json);
            }
            other => panic!("not outliers: {other:?}"),
        }
        let msg = AppendHistory {
            groups: vec![group],
            events: vec![(Arc::new(pdu), row)],
        };
        let wire = serde_json::to_vec(&msg.encode().unwrap()).unwrap();
        match serde_json::from_slice::<Request>(&wire).unwrap().body {
            Body::History { groups, events } => {
                assert_eq!(groups.len(), 1);
                assert_eq!(events.len(), 1);
                let back = pdu_from_wire(events[0].0.clone(), RoomVersion::V1).unwrap();
                assert_eq!(back.event_id().as_str(), "$o:remote.test");
                assert_eq!(events[0].1.event_id, "$o:remote.test");
            }
            other => panic!("not history: {other:?}"),
        }
    }

    #[test]
    fn linearized_messages_cross_with_their_inputs_and_outcomes() {
        use super::super::linearized::{
            FanoutChange, HubAppend, HubInput, ParticipantReceive, Received,
        };
        let lpdu = weft_protocol::canonical::value_to_object(serde_json::json!({
            "type": "m.room.message", "room_id": "!r:hub.test", "sender": "@p:part.test",
            "hub_server": "hub.test", "content": {"body": "hi"}, "origin_server_ts": 1,
        }))
        .unwrap();
        let msg = HubAppend {
            input: HubInput::Lpdu(lpdu.clone()),
            countersigned: Some(lpdu.clone()),
            dry_run: true,
            fanout: FanoutChange {
                skip: Some("part.test".into()),
                add: None,
            },
        };
        let wire = serde_json::to_vec(&msg.encode().unwrap()).unwrap();
        match serde_json::from_slice::<Request>(&wire).unwrap().body {
            Body::HubAppend {
                draft: None,
                lpdu: Some(l),
                countersigned: Some(c),
                dry_run: true,
                skip,
                add: None,
            } => {
                assert_eq!(object_from_wire(l).unwrap(), lpdu);
                assert_eq!(object_from_wire(c).unwrap(), lpdu);
                assert_eq!(skip.as_deref(), Some("part.test"));
            }
            other => panic!("not a hub append of an LPDU: {other:?}"),
        }
        let local = HubAppend {
            input: HubInput::Local(EventDraft::state(
                "m.room.topic",
                "",
                OwnedUserId::try_from("@a:hub.test").unwrap(),
                serde_json::json!({"topic": "t"}),
            )),
            countersigned: None,
            dry_run: false,
            fanout: FanoutChange::default(),
        };
        let wire = serde_json::to_vec(&local.encode().unwrap()).unwrap();
        match serde_json::from_slice::<Request>(&wire).unwrap().body {
            Body::HubAppend {
                draft: Some(d),
                lpdu: None,
                ..
            } => assert_eq!(draft_from_wire(d).unwrap().kind, "m.room.topic"),
            other => panic!("not a local hub append: {other:?}"),
        }
        let refused: Result<super::super::linearized::Appended> = Err(Error::BadState(
            "part.test must sign this invite first".into(),
        ));
        let back = HubAppend::reply_from_wire(HubAppend::reply_to_wire(&refused)).unwrap();
        assert_eq!(back.unwrap_err().errcode(), "M_BAD_STATE");

        let outcomes = vec![
            Received::Appended,
            Received::Known,
            Received::Gap(OwnedEventId::try_from("$gap").unwrap()),
            Received::Refused("not from the hub".into()),
        ];
        let back =
            ParticipantReceive::reply_from_wire(ParticipantReceive::reply_to_wire(&outcomes))
                .unwrap();
        assert_eq!(back, outcomes);
        let recv = ParticipantReceive {
            pdus: Vec::new(),
            joining: true,
            state_before_first: Some(Vec::new()),
        };
        let wire = serde_json::to_vec(&recv.encode().unwrap()).unwrap();
        match serde_json::from_slice::<Request>(&wire).unwrap().body {
            Body::ParticipantReceive {
                pdus,
                joining: true,
                state_before_first: Some(s),
            } => assert!(pdus.is_empty() && s.is_empty()),
            other => panic!("not a participant receive: {other:?}"),
        }
        assert!(ParticipantReceive::reply_from_wire(serde_json::json!({"x": 1})).is_err());
    }

    #[test]
    fn drafts_cross() {
        let d = EventDraft::state(
            "m.room.topic",
            "",
            OwnedUserId::try_from("@a:example.org").unwrap(),
            serde_json::json!({"topic": "t"}),
        );
        let back = draft_from_wire(draft_to_wire(&d)).unwrap();
        assert_eq!(back.kind, "m.room.topic");
        assert_eq!(back.state_key.as_deref(), Some(""));
        assert_eq!(back.content, d.content);
    }
}
