//! Device lifecycle shared by logout, device deletion and password changes: removing a
//! device removes its access tokens (and, with end-to-end encryption, its keys).

use crate::e2ee;
use crate::error::Result;
use crate::services::Services;
use crate::storage::users;

/// Deletes devices of a user and every token issued to them.
pub async fn delete_devices(s: &Services, user_id: &str, devices: Vec<String>) -> Result<()> {
    if devices.is_empty() {
        return Ok(());
    }
    let u = user_id.to_owned();
    let our = s.server_name().to_owned();
    // One stream position per device: each deletion is its own device-list change.
    let removed = e2ee::write_at_positions(&s.core, user_id, devices.len(), move |c, positions| {
        let mut hashes = Vec::new();
        let mut wake = Vec::new();
        for (d, pos) in devices.iter().zip(positions) {
            hashes.extend(users::delete_device(c, &u, d)?);
            wake.extend(e2ee::device_lists::forget_device(c, *pos, &u, d, &our)?);
        }
        Ok(e2ee::Written::new(hashes, wake))
    })
    .await?;
    s.tokens.forget(&removed);
    Ok(())
}
