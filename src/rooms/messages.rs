//! The messages a room actor accepts.

use actix::Message;
use ruma::OwnedEventId;
use weft_protocol::builder::EventDraft;
use weft_protocol::{Pdu, RoomVersion};

use crate::storage::events::NewEvent;
use crate::storage::state::StateIds;

use crate::error::Result;

/// A client's transaction key. A request is a retransmission when it has the same
/// transaction ID *and* the same request path (spec, "Transaction identifiers"), so the key
/// carries the path's scope: reusing a transaction ID in another room or for another event
/// type is a new request, not a retry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TxnKey {
    pub user_id: String,
    pub device_id: String,
    /// What the path names besides the transaction ID (JSON array, unambiguous).
    pub scope: String,
    pub txn_id: String,
}

impl TxnKey {
    /// `PUT /rooms/{room_id}/send/{event_type}/{txn_id}`
    pub fn send(user_id: &str, device_id: &str, room_id: &str, kind: &str, txn_id: String) -> Self {
        Self::new(user_id, device_id, &["send", room_id, kind], txn_id)
    }

    /// `PUT /rooms/{room_id}/redact/{event_id}/{txn_id}`
    pub fn redact(
        user_id: &str,
        device_id: &str,
        room_id: &str,
        event_id: &str,
        txn_id: String,
    ) -> Self {
        Self::new(user_id, device_id, &["redact", room_id, event_id], txn_id)
    }

    fn new(user_id: &str, device_id: &str, scope: &[&str], txn_id: String) -> Self {
        Self {
            user_id: user_id.to_owned(),
            device_id: device_id.to_owned(),
            scope: serde_json::Value::from(scope.to_vec()).to_string(),
            txn_id,
        }
    }
}

/// Create, sign, authorize, persist and publish a local event. Answers once it is durable.
#[derive(Message, Clone)]
#[rtype(result = "Result<OwnedEventId>")]
pub struct SendEvent {
    pub draft: EventDraft,
    pub txn: Option<TxnKey>,
    /// When the client's request was accepted (the wake-up stages of `observe::wake`).
    pub accepted: Option<std::time::Instant>,
}

impl SendEvent {
    /// An event the server sends on a user's behalf with no transaction ID and no client
    /// request to time (a membership change, a profile update, an alias clean-up).
    pub fn draft(draft: EventDraft) -> Self {
        Self {
            draft,
            txn: None,
            accepted: None,
        }
    }
}

/// The note a room actor leaves on the stream positions of a committed batch that holds
/// nothing but timeline events (no membership change, redaction or soft-failed event; see
/// `notifier` "Notes"): a woken `/sync` answers from it.
#[derive(Debug)]
pub struct CommittedEvents {
    pub room_id: String,
    pub version: RoomVersion,
    /// The room's local members joined after the batch (the users it woke).
    pub joined_local: Vec<String>,
    /// In stream order.
    pub events: Vec<CommittedEvent>,
}

#[derive(Debug)]
pub struct CommittedEvent {
    pub pdu: std::sync::Arc<Pdu>,
    pub stream: i64,
    /// The client transaction that sent it, if a local client did.
    pub txn: Option<TxnKey>,
}

/// Create a new room: the create event (built by the caller, since in v12 it names the room)
/// followed by the initial events, committed as one batch.
#[derive(Message, Clone)]
#[rtype(result = "Result<Vec<OwnedEventId>>")]
pub struct InitRoom {
    pub version: RoomVersion,
    pub create: Pdu,
    pub drafts: Vec<EventDraft>,
}

/// A copy of what the actor knows about the room, for callers that need a consistent view
/// (make_join templates, invite stripped state, status).
#[derive(Message, Clone)]
#[rtype(result = "Result<RoomSnapshot>")]
pub struct GetSnapshot;

#[derive(Debug, Clone)]
pub struct RoomSnapshot {
    pub version: RoomVersion,
    pub state: crate::rooms::state::CurrentState,
    pub extremities: Vec<OwnedEventId>,
    /// v1/v2 rooms: the reference hashes of the extremities (to cite them).
    pub extremity_hashes: std::collections::HashMap<OwnedEventId, String>,
    pub max_depth: u64,
}

/// PDUs from another server (signatures and hashes already checked), processed in order
/// and committed together. Each may carry the state before it when its prev events are not
/// known here (a join's state from `send_join`, a gap filled with `/state_ids`).
#[derive(Message, Clone)]
#[rtype(result = "Vec<InboundOutcome>")]
pub struct InboundPdus {
    /// Parsed once and shared: the registry may send the message again, the actor keeps
    /// them, neither copies a PDU.
    pub pdus: Vec<(std::sync::Arc<Pdu>, Option<StateIds>)>,
    /// Created by this server (deliver to the room's other servers once accepted).
    pub local: bool,
    /// The room version, when the room may be new here (joining it).
    pub version: Option<RoomVersion>,
    /// Events the caller checked and had the actor store just before (a joined room's state
    /// and auth chain, as outliers): the actor's lookups take them from here rather than
    /// load thousands of rows back from the database. Not sent to another cluster node
    /// (the owner reads them from the database there).
    pub checked_events: Vec<std::sync::Arc<Pdu>>,
    /// A federation `/send` transaction whose answer is written in the same commit as these
    /// PDUs (one fsync per `/send`, and the answer is durable exactly when the PDUs are).
    /// `None` for every other caller. Not sent to another cluster node: there the caller
    /// writes the answer itself, as it does whenever [`InboundTxnRecord::written`] is unset.
    pub txn_record: Option<std::sync::Arc<InboundTxnRecord>>,
}

/// The answer to one received federation transaction, for the room actor to store with the
/// batch that holds the transaction's PDUs ([`InboundPdus::txn_record`]).
pub struct InboundTxnRecord {
    pub origin: String,
    pub txn_id: String,
    /// The stored answer, given the actor's outcomes for the message's PDUs (in their
    /// order); `None` when the caller has more to do before it can answer (a gap to fill),
    /// and then the actor stores nothing.
    #[allow(clippy::type_complexity)]
    pub answer: Box<dyn Fn(&[InboundOutcome]) -> Option<String> + Send + Sync>,
    /// Set once the answer is committed (with the PDUs); the caller writes it otherwise.
    pub written: std::sync::atomic::AtomicBool,
    /// The transaction's stage stamps (`observe::send`): the actor and the writer stamp
    /// theirs here.
    pub stamps: std::sync::Arc<crate::observe::send::Stamps>,
}

impl InboundTxnRecord {
    pub fn is_written(&self) -> bool {
        self.written.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// What became of one received PDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundOutcome {
    Accepted,
    SoftFailed(String),
    Rejected(String),
    /// These prev/auth events must be fetched first.
    Missing {
        prev: Vec<String>,
        auth: Vec<String>,
    },
    Error(String),
    /// Failed against a partial state (`rooms::partial_state`): kept, and decided once the
    /// room's full state is in.
    Deferred(String),
}

/// Build and check a local event without appending it (an invite the invitee's server must
/// sign first). Answers the event, the room version and the invite's stripped state.
#[derive(Message, Clone)]
#[rtype(result = "Result<(Pdu, RoomVersion, Vec<serde_json::Value>)>")]
pub struct BuildEvent {
    pub draft: EventDraft,
}

/// History fetched by backfill and admitted by [`crate::rooms::admission::backfill`]: rows
/// (negative stream positions, or rejected outliers) and the state groups before them. The
/// room's current state, extremities and memberships are not touched.
#[derive(Message, Clone)]
#[rtype(result = "Result<()>")]
pub struct AppendHistory {
    pub groups: Vec<crate::rooms::persist::NewGroup>,
    pub events: Vec<(std::sync::Arc<Pdu>, crate::storage::events::NewEvent)>,
}

/// Outliers to store (rows from [`super::persist::event_row`], checked against their own
/// auth events by the caller), with the state groups they name: the room actor writes them
/// in its own batch, so only the actor writes a room's events. Taken in any state but a
/// broken one (a room being joined has outliers before it has a timeline).
#[derive(Message, Clone)]
#[rtype(result = "Result<()>")]
pub struct StoreOutliers {
    pub groups: Vec<super::persist::NewGroup>,
    pub rows: Vec<NewEvent>,
}

/// An out-of-band membership of a local user (an invite or knock for a room we may hold no
/// copy of, kept apart from the room's events; or our leave a remote server took): the event
/// stored as an outlier and the user's membership row, written by the room's actor. Refused
/// with 403 `M_FORBIDDEN` when the room is one we hold and the user is joined or banned in it
/// (see [`super::persist::OutOfBandMembership`]). Taken in any state but a broken one.
#[derive(Message, Clone)]
#[rtype(result = "Result<()>")]
pub struct RecordOutOfBand {
    /// Signatures checked by the caller; a membership event whose `state_key` is local.
    pub pdu: std::sync::Arc<Pdu>,
    pub version: RoomVersion,
    /// Stripped state shown with an invite or knock.
    pub stripped: Vec<serde_json::Value>,
}

/// A local user declines an out-of-band invite (or withdraws a knock) nobody could be told
/// about: the membership becomes `leave`. Only an invite or knock is replaced; anything else
/// is left alone (and answers `Ok`).
#[derive(Message, Clone)]
#[rtype(result = "Result<()>")]
pub struct DeclineOutOfBand {
    pub user_id: String,
}

/// Where an operator's history purge stops: before an event, or before a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PurgePoint {
    Event(String),
    Ts(i64),
}

/// The operator's history purge: the room's non-state events before the point go (state,
/// extremities and memberships stay). Answers how many went, or `None` when the point names
/// no event of the room.
#[derive(Message, Clone)]
#[rtype(result = "Result<Option<usize>>")]
pub struct PurgeHistory {
    pub point: PurgePoint,
}

/// Linearized Matrix: PDUs a hub sent for a room we are joining, staged durably before the
/// `/send` that carried them is answered (a 200 means stored).
#[derive(Message, Clone)]
#[rtype(result = "Result<()>")]
pub struct StageJoinPdus {
    pub origin: String,
    /// The order of the first PDU (the rest follow it).
    pub first_seq: i64,
    /// The PDUs' JSON, as received.
    pub pdus: Vec<String>,
}

/// Linearized Matrix: removes the staged PDUs up to `upto_seq` (taken, or dropped with a join
/// that did not complete).
#[derive(Message, Clone)]
#[rtype(result = "Result<()>")]
pub struct UnstageJoinPdus {
    pub upto_seq: i64,
}
