//! End-to-end encryption relay.
//!
//! # What the server does
//!
//! The server stores and relays opaque keys and ciphertext; it never decrypts anything and
//! never holds a private key. Clients upload signed JSON (device identity keys, one-time
//! keys, fallback keys, cross-signing keys, signatures) and the server hands it out again,
//! unchanged except for the signatures others added later and an `unsigned` display name.
//! Encrypted room events are ordinary `m.room.encrypted` events to the room code.
//!
//! # Storage (`storage::e2ee`, migration `2026-11-24-000003_e2ee`)
//!
//! * `e2e_device_keys`: one row per device, the JSON as uploaded. Remote users' devices are
//!   cached in the same table (with their display name), so `/keys/query` reads both alike.
//! * `e2e_one_time_keys`: unclaimed keys. Claiming = deleting, inside the single writer, and
//!   a claim checks that its `DELETE` removed the row: a key is never handed out twice.
//! * `e2e_fallback_keys`: one per device and algorithm, `used` once handed out (then listed
//!   no more in `/sync`'s `device_unused_fallback_key_types`, so the client replaces it).
//! * `e2e_cross_signing_keys`: master / self_signing / user_signing per user.
//! * `e2e_signatures`: signatures from `/keys/signatures/upload`, kept apart from the key
//!   JSON and merged into it when read ([`json::merge_signatures`]). Two reasons: a device
//!   that re-uploads its identical keys must not drop the self-signing signature on them, and
//!   a signature made with someone's user-signing key is shown to that signer only (the
//!   spec's "signatures the requesting user is allowed to see").
//! * `to_device_inbox`: pending messages per device, each at a stream position.
//! * `device_list_changes`: "user U's devices or keys changed at position P", optionally
//!   visible to one observer only (their own signature on someone else's key).
//! * `remote_device_lists`: for each remote user whose devices we cache, the last
//!   `m.device_list_update` `stream_id` applied and whether an update may have been missed.
//! * EDUs for remote servers go into the federation `outbound_queue`, written in the same
//!   transaction as the change they announce (see "Federation" below).
//!
//! # Streams and wake-ups
//!
//! To-device messages and device-list changes are numbered from the one global stream
//! ([`crate::notifier`]): a change allocates a position, writes its rows at that position
//! through the single writer, and completes the position naming the users to wake
//! ([`write_at_position`]): the recipient of a to-device message; everyone sharing a room
//! with a user whose keys changed. A waiting `/sync` is woken by the notifier, never by
//! polling.
//!
//! `/sync` ([`sync`]) reads, for `(since, upto]`:
//! * `to_device.events`: the device's pending messages, at most [`sync::TO_DEVICE_LIMIT`].
//!   When the limit cuts the list, the whole response is computed up to the position of the
//!   last message delivered, so `next_batch` acknowledges exactly what was sent. A later
//!   `since` deletes the messages at or below it ([`to_device::acknowledge`]); until then a
//!   retried `/sync` delivers them again, as the spec asks.
//! * `device_lists.changed` / `left` ([`device_lists::changes`]): users sharing a joined
//!   room whose devices or keys changed, users who newly share a room (someone joined one of
//!   our rooms, or we joined theirs), and users we no longer share any room with.
//! * `device_one_time_keys_count` (always with `signed_curve25519`, 0 included, because
//!   clients top up on that number) and `device_unused_fallback_key_types`.
//!
//! # Federation
//!
//! The server-server side is a set of service functions in [`federation`], mounted by
//! `crate::federation::inbound::e2ee`:
//! * answers for `GET /user/devices/{userId}`, `POST /user/keys/query`,
//!   `POST /user/keys/claim`;
//! * outbound EDUs (`m.device_list_update` with `stream_id`/`prev_id` taken from the global
//!   stream, `m.signing_key_update`, `m.direct_to_device` with a `message_id`) are built by
//!   pure functions and queued in the federation outbound queue for every server that has a
//!   user sharing a joined room with the changed user (or, for to-device, the recipient's
//!   server); the per-destination actors deliver them like any EDU, through outages;
//! * inbound EDUs are applied by [`federation::apply_edu`]: remote device lists and
//!   cross-signing keys are cached (and a gap in `prev_id` marks the list stale, to be
//!   refreshed with `GET /user/devices` and [`federation::apply_device_list_snapshot`]);
//!   `m.direct_to_device` is delivered to local devices once per `message_id`.
//!
//! `/keys/query` and `/keys/claim` naming remote users ask the remote server through the
//! [`federation::RemoteKeys`] trait (implemented over the federation client; without
//! federation, [`federation::NotFederated`] reports those servers in `failures`). A remote
//! user whose device list we cache and which is not stale is answered from the cache.

pub mod cross_signing;
pub mod device_lists;
pub mod federation;
pub mod json;
pub mod keys;
pub mod sync;
pub mod to_device;

use serde_json::Value;

use crate::core::Core;
use crate::error::{Error, Result};
use crate::storage::{AnyConnection, StorageResult};

/// An EDU for a remote server.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundEdu {
    pub destination: String,
    pub edu_type: String,
    pub content: Value,
}

impl OutboundEdu {
    /// The EDU as it goes into a federation transaction.
    pub fn to_json(&self) -> Value {
        serde_json::json!({"edu_type": self.edu_type, "content": self.content})
    }
}

/// The server name of a user ID (`None` if it is not a user ID).
pub fn server_of(user_id: &str) -> Option<&str> {
    let rest = user_id.strip_prefix('@')?;
    let (_, server) = rest.split_once(':')?;
    (!server.is_empty()).then_some(server)
}

/// Checks a user ID named in a request.
pub fn parse_user_id(user_id: &str) -> Result<ruma::OwnedUserId> {
    ruma::UserId::parse(user_id)
        .map_err(|_| Error::invalid_param(format!("invalid user ID: {user_id}")))
}

/// What a write job tells its caller besides its value: which local users to wake.
pub struct Written<T> {
    pub value: T,
    pub wake: Vec<String>,
}

impl<T> Written<T> {
    pub fn new(value: T, wake: Vec<String>) -> Self {
        Self { value, wake }
    }
}

/// Runs a write job at freshly allocated stream positions (`count` of them, consecutive in
/// allocation order) and completes them, waking the users the job names once the frontier
/// passes. The positions are completed (abandoned) on failure too.
pub async fn write_at_positions<T, F>(core: &Core, shard: &str, count: usize, job: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(&mut AnyConnection, &[i64]) -> StorageResult<Written<T>> + Send + 'static,
{
    let positions: Vec<i64> = (0..count.max(1))
        .map(|_| core.notifier.allocate())
        .collect();
    let p = positions.clone();
    let res = core
        .db
        .write(shard, move |c| {
            // EDUs the job queues for other servers are noted on this writer thread.
            crate::delivery::take_noted();
            let w = job(c, &p)?;
            Ok((w, crate::delivery::take_noted()))
        })
        .await;
    match res {
        Ok((w, destinations)) => {
            core.notifier.complete(&positions, w.wake);
            for d in destinations {
                core.delivery.wake(&d);
            }
            Ok(w.value)
        }
        Err(e) => {
            core.notifier.complete(&positions, []);
            Err(e.into())
        }
    }
}

/// [`write_at_positions`] with one position.
pub async fn write_at_position<T, F>(core: &Core, shard: &str, job: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(&mut AnyConnection, i64) -> StorageResult<Written<T>> + Send + 'static,
{
    write_at_positions(core, shard, 1, move |c, p| job(c, p[0])).await
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn server_names() {
        assert_eq!(server_of("@a:example.org"), Some("example.org"));
        assert_eq!(server_of("@a:example.org:8448"), Some("example.org:8448"));
        assert_eq!(server_of("@a:"), None);
        assert_eq!(server_of("a:example.org"), None);
        assert_eq!(server_of("@nocolon"), None);
    }
}
