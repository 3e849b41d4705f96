//! Per-user data: sync filters, account data (global and per room) and read receipts.

use diesel::prelude::*;

use super::schema::{account_data, filters, receipts};
use super::{AnyConnection, StorageResult};

/// Stores a filter and returns its ID (per-user counter).
pub fn create_filter(conn: &mut AnyConnection, user_id: &str, json: &str) -> StorageResult<i64> {
    let max: Option<i64> = filters::table
        .filter(filters::user_id.eq(user_id))
        .select(diesel::dsl::max(filters::filter_id))
        .first(conn)?;
    let id = max.unwrap_or(-1) + 1;
    diesel::insert_into(filters::table)
        .values((
            filters::user_id.eq(user_id),
            filters::filter_id.eq(id),
            filters::json.eq(json),
        ))
        .execute(conn)?;
    Ok(id)
}

pub fn get_filter(
    conn: &mut AnyConnection,
    user_id: &str,
    filter_id: i64,
) -> StorageResult<Option<String>> {
    Ok(filters::table
        .filter(filters::user_id.eq(user_id))
        .filter(filters::filter_id.eq(filter_id))
        .select(filters::json)
        .first(conn)
        .optional()?)
}

/// Sets account data (`room_id` empty for global data).
pub fn set_account_data(
    conn: &mut AnyConnection,
    user_id: &str,
    room_id: &str,
    data_type: &str,
    content: &str,
    stream_id: i64,
) -> StorageResult<()> {
    diesel::delete(
        account_data::table
            .filter(account_data::user_id.eq(user_id))
            .filter(account_data::room_id.eq(room_id))
            .filter(account_data::data_type.eq(data_type)),
    )
    .execute(conn)?;
    diesel::insert_into(account_data::table)
        .values((
            account_data::user_id.eq(user_id),
            account_data::room_id.eq(room_id),
            account_data::data_type.eq(data_type),
            account_data::content.eq(content),
            account_data::stream_id.eq(stream_id),
        ))
        .execute(conn)?;
    Ok(())
}

pub fn get_account_data(
    conn: &mut AnyConnection,
    user_id: &str,
    room_id: &str,
    data_type: &str,
) -> StorageResult<Option<String>> {
    Ok(account_data::table
        .filter(account_data::user_id.eq(user_id))
        .filter(account_data::room_id.eq(room_id))
        .filter(account_data::data_type.eq(data_type))
        .select(account_data::content)
        .first(conn)
        .optional()?)
}

/// Account data changed in `(after, upto]`: `(room_id, type, content)`.
pub fn account_data_since(
    conn: &mut AnyConnection,
    user_id: &str,
    after: i64,
    upto: i64,
) -> StorageResult<Vec<(String, String, String)>> {
    Ok(account_data::table
        .filter(account_data::user_id.eq(user_id))
        .filter(account_data::stream_id.gt(after))
        .filter(account_data::stream_id.le(upto))
        .order(account_data::stream_id.asc())
        .select((
            account_data::room_id,
            account_data::data_type,
            account_data::content,
        ))
        .load(conn)?)
}

pub fn max_account_data_stream(conn: &mut AnyConnection) -> StorageResult<i64> {
    let a: Option<i64> = account_data::table
        .select(diesel::dsl::max(account_data::stream_id))
        .first(conn)?;
    let r: Option<i64> = receipts::table
        .select(diesel::dsl::max(receipts::stream_id))
        .first(conn)?;
    Ok(a.unwrap_or(0).max(r.unwrap_or(0)))
}

/// A read receipt.
#[derive(Debug, Clone, Queryable)]
pub struct ReceiptRow {
    pub room_id: String,
    pub user_id: String,
    pub receipt_type: String,
    pub thread_id: String,
    pub event_id: String,
    pub ts: i64,
    pub stream_id: i64,
}

#[allow(clippy::too_many_arguments)]
pub fn set_receipt(
    conn: &mut AnyConnection,
    room_id: &str,
    user_id: &str,
    receipt_type: &str,
    thread_id: &str,
    event_id: &str,
    ts: i64,
    stream_id: i64,
) -> StorageResult<()> {
    diesel::delete(
        receipts::table
            .filter(receipts::room_id.eq(room_id))
            .filter(receipts::user_id.eq(user_id))
            .filter(receipts::receipt_type.eq(receipt_type))
            .filter(receipts::thread_id.eq(thread_id)),
    )
    .execute(conn)?;
    diesel::insert_into(receipts::table)
        .values((
            receipts::room_id.eq(room_id),
            receipts::user_id.eq(user_id),
            receipts::receipt_type.eq(receipt_type),
            receipts::thread_id.eq(thread_id),
            receipts::event_id.eq(event_id),
            receipts::ts.eq(ts),
            receipts::stream_id.eq(stream_id),
        ))
        .execute(conn)?;
    Ok(())
}

/// Receipts in a room changed in `(after, upto]`.
pub fn receipts_since(
    conn: &mut AnyConnection,
    room_id: &str,
    after: i64,
    upto: i64,
) -> StorageResult<Vec<ReceiptRow>> {
    Ok(receipts::table
        .filter(receipts::room_id.eq(room_id))
        .filter(receipts::stream_id.gt(after))
        .filter(receipts::stream_id.le(upto))
        .load::<ReceiptRow>(conn)?)
}
