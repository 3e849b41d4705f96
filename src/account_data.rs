//! Account data writes (global and per room), shared by the client API, push rules and
//! receipts: each change is one read-modify-write job on the user's writer, numbered on the
//! stream so the user's syncs wake for it.

use serde_json::Value;

use crate::error::Result;
use crate::services::Services;
use crate::storage::account;

/// Writes account data and wakes the user's syncs.
pub async fn set_account_data(
    s: &Services,
    user_id: &str,
    room_id: &str,
    kind: &str,
    content: &Value,
) -> Result<()> {
    let content = content.clone();
    modify_account_data(s, user_id, room_id, kind, move |_| Ok(content)).await
}

/// Reads, changes and writes one piece of account data in one write job (so concurrent
/// changes to, say, a room's tags do not lose each other), and wakes the user's syncs.
/// `change` gets the current content (if any) and returns the new one.
pub async fn modify_account_data<F>(
    s: &Services,
    user_id: &str,
    room_id: &str,
    kind: &str,
    change: F,
) -> Result<()>
where
    F: FnOnce(Option<Value>) -> Result<Value> + Send + 'static,
{
    let pos = s.core.notifier.allocate();
    let (u, r, t) = (user_id.to_owned(), room_id.to_owned(), kind.to_owned());
    let res = s
        .core
        .db
        .write(user_id, move |conn| {
            let current = account::get_account_data(conn, &u, &r, &t)?
                .and_then(|c| serde_json::from_str::<Value>(&c).ok());
            let new = match change(current) {
                Ok(v) => v,
                Err(e) => return Ok(Err(e)),
            };
            account::set_account_data(conn, &u, &r, &t, &new.to_string(), pos)?;
            Ok(Ok(()))
        })
        .await;
    match res {
        Ok(Ok(())) => {
            s.core.notifier.complete(&[pos], [user_id.to_owned()]);
            Ok(())
        }
        Ok(Err(e)) => {
            s.core.notifier.complete(&[pos], []);
            Err(e)
        }
        Err(e) => {
            s.core.notifier.complete(&[pos], []);
            Err(e.into())
        }
    }
}
