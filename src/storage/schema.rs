//! Table definitions for diesel's query builder (kept by hand to match `migrations/`).

diesel::table! {
    users (user_id) {
        user_id -> Text,
        password_hash -> Nullable<Text>,
        is_admin -> Bool,
        displayname -> Nullable<Text>,
        avatar_url -> Nullable<Text>,
        deactivated -> Bool,
        created_ts -> BigInt,
    }
}

diesel::table! {
    devices (user_id, device_id) {
        user_id -> Text,
        device_id -> Text,
        display_name -> Nullable<Text>,
        last_seen_ts -> Nullable<BigInt>,
        created_ts -> BigInt,
    }
}

diesel::table! {
    access_tokens (token_hash) {
        token_hash -> Text,
        user_id -> Text,
        device_id -> Text,
        created_ts -> BigInt,
    }
}

diesel::table! {
    rooms (room_id) {
        room_id -> Text,
        room_version -> Text,
        creator -> Nullable<Text>,
        state_group -> Nullable<BigInt>,
        is_public -> Bool,
        created_ts -> BigInt,
    }
}

diesel::table! {
    events (event_id) {
        event_id -> Text,
        room_id -> Text,
        stream_ordering -> Nullable<BigInt>,
        depth -> BigInt,
        event_type -> Text,
        state_key -> Nullable<Text>,
        sender -> Text,
        origin_server_ts -> BigInt,
        json -> Text,
        state_before -> Nullable<BigInt>,
        outlier -> Bool,
        rejected -> Nullable<Text>,
        soft_failed -> Bool,
        redacted_by -> Nullable<Text>,
    }
}

diesel::table! {
    event_txns (user_id, device_id, scope, txn_id) {
        user_id -> Text,
        device_id -> Text,
        scope -> Text,
        txn_id -> Text,
        event_id -> Text,
    }
}

diesel::table! {
    state_groups (id) {
        id -> BigInt,
        room_id -> Text,
        parent -> Nullable<BigInt>,
        delta_depth -> Integer,
    }
}

diesel::table! {
    state_group_entries (group_id, event_type, state_key) {
        group_id -> BigInt,
        event_type -> Text,
        state_key -> Text,
        event_id -> Nullable<Text>,
    }
}

diesel::table! {
    current_state (room_id, event_type, state_key) {
        room_id -> Text,
        event_type -> Text,
        state_key -> Text,
        event_id -> Text,
    }
}

diesel::table! {
    forward_extremities (room_id, event_id) {
        room_id -> Text,
        event_id -> Text,
    }
}

diesel::table! {
    memberships (room_id, user_id) {
        room_id -> Text,
        user_id -> Text,
        membership -> Text,
        event_id -> Text,
        stream_ordering -> BigInt,
        sender -> Text,
        invite_state -> Nullable<Text>,
        forgotten -> Bool,
    }
}

diesel::table! {
    room_aliases (alias) {
        alias -> Text,
        room_id -> Text,
        creator -> Text,
    }
}

diesel::table! {
    filters (user_id, filter_id) {
        user_id -> Text,
        filter_id -> BigInt,
        json -> Text,
    }
}

diesel::table! {
    account_data (user_id, room_id, data_type) {
        user_id -> Text,
        room_id -> Text,
        data_type -> Text,
        content -> Text,
        stream_id -> BigInt,
    }
}

diesel::table! {
    receipts (room_id, user_id, receipt_type, thread_id) {
        room_id -> Text,
        user_id -> Text,
        receipt_type -> Text,
        thread_id -> Text,
        event_id -> Text,
        ts -> BigInt,
        stream_id -> BigInt,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    events,
    current_state,
    memberships,
    forward_extremities,
    rooms,
    room_aliases
);
