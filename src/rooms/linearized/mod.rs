//! Linearized Matrix rooms (room version `org.matrix.i-d.ralston-mimi-linearized-matrix.02`):
//! the two roles this server plays in them, as types, and the messages their room actors
//! take.
//!
//! # Design
//!
//! * **The role is fixed by the room ID.** The hub is the server of the create event's
//!   sender, and the LM auth rules require that server to be the room ID's: a room whose ID
//!   names this server is hubbed here ([`Role::Hub`]); any other is hubbed elsewhere and this
//!   server is a participant ([`Role::Participant`]). The room actor holds its role from the
//!   moment it knows the room's version; everything that differs between the roles asks the
//!   role, not a flag. The role types are in [`hub`] and [`participant`]; the actor glue (the
//!   handlers below, and the three places where the generic actor defers to the role) is in
//!   `rooms::actor::linearized`.
//! * **Hub: the actor is the single orderer.** Every event — a local user's, built here
//!   (§3.3), or a participant's LPDU, completed here (§9.1) — is placed on the one tip of the
//!   line, checked against the current state with the LM rules and appended, all inside one
//!   actor message with no I/O: the room's line is the order of the actor's mailbox. The
//!   accepted event goes into the persisted per-destination outbound queue in the same batch
//!   as the event itself (so a participant that is down misses nothing), for every server
//!   with a joined user — the originator included, which is how it learns the final event ID
//!   — plus the target of a kick or ban.
//! * **Participant: local events go through the hub.** A local user's event becomes a signed
//!   LPDU (§3.2), checked here against the current state first (so clients get the refusal
//!   at once), and the caller waits for the hub's echo — the completed PDU, recognised by its
//!   LPDU event ID — to answer the client with the final event ID. Received PDUs are appended
//!   only when they extend the tip; anything else is a gap that the caller fills with
//!   `backfill` from the hub before submitting again.
//! * **No actor ever waits on a peer.** Whatever needs the network — the hub's `/invite` to a
//!   target server before appending an invite, the participant's `/send` to the hub, backfill
//!   — runs in `federation::linearized`, outside the actor, between two actor messages. The
//!   participant's send is a future the actor hands back to its caller; the actor keeps
//!   taking messages meanwhile, so the hub's echo (which the reference hub sends *before* it
//!   answers the `/send`) is appended while the `/send` is still open.

pub mod hub;
pub mod participant;

use actix::Message;
use ruma::{CanonicalJsonObject, OwnedEventId, RoomId};
use serde_json::Value;
use weft_protocol::Pdu;
use weft_protocol::builder::EventDraft;

use crate::error::Result;

/// What this server is in a Linearized Matrix room.
pub enum Role {
    Hub(hub::Hub),
    Participant(participant::Participant),
}

impl Role {
    /// The role in `room_id` for the server `ours`.
    pub fn of(room_id: &RoomId, ours: &str) -> Self {
        match hub_of(room_id) {
            Some(hub) if hub != ours => Self::Participant(participant::Participant::new(hub)),
            _ => Self::Hub(hub::Hub::default()),
        }
    }
}

/// The hub of an LM room: the server of its room ID (which the create event's sender must
/// share, rule 3).
pub fn hub_of(room_id: &RoomId) -> Option<String> {
    room_id.as_str().split_once(':').map(|(_, s)| s.to_owned())
}

/// What a hub appends: a local user's event, or a participant's verified LPDU.
#[derive(Clone, Debug)]
pub enum HubInput {
    /// Built here; `origin_server_ts` must be set, so that building it twice (before and
    /// after an `/invite` round trip) gives the same event.
    Local(EventDraft),
    Lpdu(CanonicalJsonObject),
}

/// Who, besides the joined servers, gets (or does not get) the next appended event.
#[derive(Clone, Debug, Default)]
pub struct FanoutChange {
    /// This server learns the event from our answer (`send_join`, `send_leave`, `send_knock`).
    pub skip: Option<String>,
    /// This server is not joined but must get it (an invitee's server that already holds the
    /// room and asked for `/send` instead of `/invite`).
    pub add: Option<String>,
}

/// Hub: place an event on the tip of the line, check it, and (unless `dry_run`) append it.
#[derive(Message, Clone)]
#[rtype(result = "Result<Appended>")]
pub struct HubAppend {
    pub input: HubInput,
    /// The invitee's server's copy of this invite, signed by it.
    pub countersigned: Option<CanonicalJsonObject>,
    /// Build and check only (to send an invite to its target's server first).
    pub dry_run: bool,
    pub fanout: FanoutChange,
}

/// What became of a [`HubAppend`].
#[derive(Clone, Debug)]
pub struct Appended {
    pub pdu: Pdu,
    /// An invite whose target's server has no joined user: that server must sign it first.
    pub invite_target: Option<String>,
    /// Stripped state for the invitee.
    pub invite_state: Vec<Value>,
    /// The LPDU was completed before: `pdu` is the event already in the line.
    pub already: bool,
}

/// Participant: PDUs from the hub (checked on receipt), in line order.
#[derive(Message, Clone)]
#[rtype(result = "Vec<Received>")]
pub struct ParticipantReceive {
    pub pdus: Vec<Pdu>,
    /// Joining: the room is new here, and the first PDU starts our copy of the line.
    pub joining: bool,
    /// Joining with a state-only `send_join` answer: the state before the first PDU.
    pub state_before_first: Option<Vec<Pdu>>,
}

/// What became of one received PDU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Received {
    Appended,
    Known,
    /// Its previous event is not our tip: fetch the line up to this event first.
    Gap(OwnedEventId),
    Refused(String),
}
