//! Admission: the one way a received event gets into a room.
//!
//! Every PDU another server gives us — pushed on `/send`, fetched to fill a gap
//! (`get_missing_events`, `/event`, `/state` answers), fetched by backfill, answered by
//! `send_join`, brought by an invite or a knock — passes the spec's checks on receipt of a
//! PDU ("Checks performed on receipt of a PDU", server-server API) in this order, one file
//! per step:
//!
//! | spec step | file | where it runs |
//! |---|---|---|
//! | 0. already decided (permanent rejection, de-duplication) | [`known`] | on the way in ([`crate::rooms::RoomRegistry::admit`]; `/send` reads it once per transaction, beside steps 2–3, for [`crate::rooms::RoomRegistry::admit_screened`]) |
//! | 1. valid event (format, size), event ID | [`format`] | the receiving handler |
//! | 2. signatures of every required server | [`signatures`] | the verify pool ([`pool`]), every core, before any actor |
//! | 3. content hash (redact on mismatch) | [`content_hash`] | the verify pool, with step 2 |
//! | 4. auth rules against its auth events | [`auth_events`] | the room actor (memory), or [`prepare`] (database); `rooms::outliers` for outliers |
//! | 5. auth rules against the state before it | [`state_before`] | the room actor (memory), or [`prepare`] |
//! | 6. soft-fail against the current state; the new current state | [`soft_fail`] | the room actor |
//! | history: reachable from the point asked about, state derived from it | [`backfill`] | before the actor; the actor writes |
//!
//! Steps 4–6 run in the room actor, the only writer of a room's events and state: in memory
//! when it holds the states the event needs, else through [`prepare`], which loads them
//! from the database. Steps 1–3 need no room state and run before it; federation fetches
//! the keys step 2 needs first (`federation::inbound::verify`), so no verifying core ever
//! waits on the network.

pub mod auth_events;
pub mod backfill;
pub mod content_hash;
pub mod format;
pub mod known;
pub mod memory;
pub mod pool;
pub mod prepare;
pub mod signatures;
pub mod soft_fail;
pub mod state_before;
