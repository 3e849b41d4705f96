//! The messages a room actor accepts.

use actix::Message;
use ruma::OwnedEventId;
use weft_protocol::builder::EventDraft;
use weft_protocol::{Pdu, RoomVersion};

use crate::error::Result;

/// A client's transaction key: `(user_id, device_id, txn_id)`.
pub type TxnKey = (String, String, String);

/// Create, sign, authorize, persist and publish a local event. Answers once it is durable.
#[derive(Message, Clone)]
#[rtype(result = "Result<OwnedEventId>")]
pub struct SendEvent {
    pub draft: EventDraft,
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
    pub max_depth: u64,
}
