//! Device lifecycle shared by logout, device deletion and password changes: removing a
//! device removes its access tokens, the pushers those tokens set (with their queued
//! pushes; the spec ties a pusher to its access token's device) and, with end-to-end
//! encryption, its keys.
//!
//! Last seen: every authenticated request records its device's time and peer address in
//! memory ([`LastSeen::touch`], one map insert under a mutex); a background task writes
//! what changed in one write job every `devices.last_seen_flush_ms` (and the device
//! listing overlays what is not written yet), so a busy client costs no database write per
//! request. The address is the TCP peer's: `X-Forwarded-For` is not trusted.

use std::collections::HashMap;

use parking_lot::Mutex;

use crate::accounts::TokenCache;
use crate::core::Core;
use crate::e2ee;
use crate::error::Result;
use crate::storage::{push, users};

/// Deletes devices of a user and every token issued to them (dropped from `tokens`, the
/// access-token cache, too). Each deletion is a device-list change, announced to the
/// user's local contacts through the stream and to remote ones through delivery, in the
/// same write.
pub async fn delete_devices(
    core: &Core,
    tokens: &TokenCache,
    user_id: &str,
    devices: Vec<String>,
) -> Result<()> {
    if devices.is_empty() {
        return Ok(());
    }
    let u = user_id.to_owned();
    let our = core.server_name().to_owned();
    // One stream position per device: each deletion is its own device-list change.
    let removed = e2ee::write_at_positions(core, user_id, devices.len(), move |c, positions| {
        let mut hashes = Vec::new();
        let mut wake = Vec::new();
        for (d, pos) in devices.iter().zip(positions) {
            hashes.extend(users::delete_device(c, &u, d)?);
            push::delete_pushers_of_device(c, &u, d)?;
            wake.extend(e2ee::device_lists::forget_device(c, *pos, &u, d, &our)?);
        }
        Ok(e2ee::Written::new(hashes, wake))
    })
    .await?;
    tokens.forget(&removed);
    Ok(())
}

/// `(user, device)` → `(last seen ms, address)`, not written yet.
type Pending = HashMap<(String, String), (i64, String)>;

/// Devices' last-seen times and addresses, batched in memory (see the module comment).
#[derive(Default)]
pub struct LastSeen {
    pending: Mutex<Pending>,
}

impl LastSeen {
    /// Records a request from a device.
    pub fn touch(&self, user_id: &str, device_id: &str, ip: String, now: i64) {
        let mut map = self.pending.lock();
        match map.get_mut(&(user_id.to_owned(), device_id.to_owned())) {
            Some(entry) => *entry = (now, ip),
            None => {
                map.insert((user_id.to_owned(), device_id.to_owned()), (now, ip));
            }
        }
    }

    /// What is not written yet for a device.
    pub fn pending(&self, user_id: &str, device_id: &str) -> Option<(i64, String)> {
        self.pending
            .lock()
            .get(&(user_id.to_owned(), device_id.to_owned()))
            .cloned()
    }

    /// Writes everything pending in one job. Entries that fail to write are dropped (the
    /// next request records them again).
    pub async fn flush(&self, core: &Core) -> Result<usize> {
        let batch: Pending = std::mem::take(&mut *self.pending.lock());
        if batch.is_empty() {
            return Ok(0);
        }
        let n = batch.len();
        core.db
            .write("last_seen", move |c| {
                for ((u, d), (ts, ip)) in &batch {
                    users::set_last_seen(c, u, d, *ts, ip)?;
                }
                Ok(())
            })
            .await?;
        Ok(n)
    }
}
