//! Device lifecycle shared by logout, device deletion and password changes: removing a
//! device removes its access tokens (and, with end-to-end encryption, its keys).

use crate::error::Result;
use crate::services::Services;
use crate::storage::users;

/// Deletes devices of a user and every token issued to them.
pub async fn delete_devices(s: &Services, user_id: &str, devices: Vec<String>) -> Result<()> {
    if devices.is_empty() {
        return Ok(());
    }
    let u = user_id.to_owned();
    let removed = s
        .core
        .db
        .write(user_id, move |c| {
            let mut hashes = Vec::new();
            for d in &devices {
                hashes.extend(users::delete_device(c, &u, d)?);
            }
            Ok(hashes)
        })
        .await?;
    s.tokens.forget(&removed);
    Ok(())
}
