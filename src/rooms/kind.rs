//! What kind of room a room actor runs, chosen once, at one seam: when the actor learns the
//! room's version ([`RoomKind::of`], called only from the actor's `set_version`, on load, on
//! `InitRoom` and when a Linearized join starts the room here).
//!
//! * [`RoomKind::Dag`] — every room version but Linearized Matrix: events form a DAG, come
//!   in through `InboundPdus`/`AppendHistory`, and a local event goes to every server with
//!   a joined user (and a membership event's target).
//! * [`RoomKind::Hub`] — a Linearized Matrix room hubbed here: this server orders the line
//!   and fans each event out as its hub role says.
//! * [`RoomKind::Participant`] — a Linearized Matrix room hubbed elsewhere: local users'
//!   events are LPDUs sent to the hub, never built here; nothing is fanned out.
//!
//! The actor asks the kind (what a local event's destinations are, whether it may build a
//! local event, whether it takes DAG input) instead of testing the version.

use std::collections::BTreeSet;

use ruma::RoomId;
use weft_protocol::{Pdu, RoomVersion};

use super::linearized::{Role, hub::Hub, participant::Participant};
use crate::error::{Error, Result};

pub enum RoomKind {
    Dag,
    Hub(Hub),
    Participant(Participant),
}

impl RoomKind {
    /// The kind of `room_id` in `version`, for the server `ours`.
    pub fn of(version: RoomVersion, room_id: &RoomId, ours: &str) -> Self {
        if !version.is_linearized() {
            return Self::Dag;
        }
        match Role::of(room_id, ours) {
            Role::Hub(h) => Self::Hub(h),
            Role::Participant(p) => Self::Participant(p),
        }
    }

    /// Takes generic DAG input (`InboundPdus`, `AppendHistory`): Linearized Matrix rooms
    /// take PDUs in line order only (`ParticipantReceive`, `HubAppend`).
    pub fn takes_dag_input(&self) -> bool {
        matches!(self, Self::Dag)
    }

    /// Whether local events are built here: not in a participant room, whose local events
    /// are LPDUs the hub completes.
    pub fn may_build_local(&self) -> Result<()> {
        match self {
            Self::Participant(p) => Err(Error::WrongServer(format!(
                "{} orders this room's events; this server sends it LPDUs",
                p.hub()
            ))),
            Self::Dag | Self::Hub(_) => Ok(()),
        }
    }

    /// The servers a local event goes to, given the servers with a joined user.
    pub fn destinations(
        &mut self,
        pdu: &Pdu,
        joined: BTreeSet<String>,
        ours: &str,
    ) -> BTreeSet<String> {
        match self {
            Self::Dag => {
                let mut dests = joined;
                if let Some(target) = pdu.state_key().filter(|_| pdu.membership().is_some())
                    && let Some((_, server)) = target.split_once(':')
                {
                    dests.insert(server.to_owned());
                }
                dests
            }
            Self::Hub(h) => h.destinations(pdu, joined, ours),
            Self::Participant(_) => BTreeSet::new(),
        }
    }
}
