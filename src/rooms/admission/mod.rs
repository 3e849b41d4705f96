//! Admission: the one way a received event gets into a room.
//!
//! Every PDU another server gives us — pushed on `/send`, fetched to fill a gap
//! (`get_missing_events`, `/event`, `/state` answers), fetched by backfill, answered by
//! `send_join`, brought by an invite or a knock — passes the spec's checks on receipt of a
//! PDU ("Checks performed on receipt of a PDU", server-server API) in this order, each step
//! in one place:
//!
//! | spec step | where |
//! |---|---|
//! | 0. already decided (permanent rejection, de-duplication) | [`known`] |
//! | 1. valid event (format, size), event ID | `federation::inbound::verify::parse` |
//! | 2–3. signatures, content hash (redact on mismatch) — before any actor, on all cores | `federation::inbound::verify::check_many` |
//! | 4. auth rules against its auth events | `rooms::inbound::prepare` (and `rooms::outliers` for outliers) |
//! | 5. auth rules against the state before it | `rooms::inbound::prepare`, the actor's fast path |
//! | 6. soft-fail against the current state | the room actor (`apply_prepared`) |
//! | history: reachable from the point asked about, state derived from it | [`backfill`] |
//!
//! Steps 4–6 run in the room actor, the only writer of a room's events and state; steps 1–3
//! run before it, step 0 on the way in ([`crate::rooms::RoomRegistry::admit`]).

pub mod backfill;
pub mod known;
