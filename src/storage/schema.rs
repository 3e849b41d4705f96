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
        last_seen_ip -> Nullable<Text>,
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
        state_after -> Nullable<BigInt>,
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
        seen_ts -> BigInt,
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

diesel::table! {
    server_key_responses (server_name) {
        server_name -> Text,
        response -> Text,
        valid_until_ts -> BigInt,
        fetched_ts -> BigInt,
    }
}

diesel::table! {
    server_keys (server_name, key_id) {
        server_name -> Text,
        key_id -> Text,
        public_key -> Text,
        valid_until_ts -> BigInt,
    }
}

diesel::table! {
    inbound_txns (origin, txn_id) {
        origin -> Text,
        txn_id -> Text,
        response -> Text,
        received_ts -> BigInt,
    }
}

diesel::table! {
    outbound_queue (id) {
        id -> BigInt,
        destination -> Text,
        kind -> Text,
        payload -> Text,
        created_ts -> BigInt,
    }
}

diesel::table! {
    destinations (server_name) {
        server_name -> Text,
        failures -> Integer,
        retry_at -> BigInt,
        last_success_ts -> Nullable<BigInt>,
        last_error -> Nullable<Text>,
    }
}

diesel::table! {
    room_versions (room_id) {
        room_id -> Text,
        room_version -> Text,
    }
}

// ---- end-to-end encryption (migration 2026-11-24-000003_e2ee)

diesel::table! {
    e2e_device_keys (user_id, device_id) {
        user_id -> Text,
        device_id -> Text,
        key_json -> Text,
        display_name -> Nullable<Text>,
    }
}

diesel::table! {
    e2e_one_time_keys (user_id, device_id, algorithm, key_id) {
        user_id -> Text,
        device_id -> Text,
        algorithm -> Text,
        key_id -> Text,
        key_json -> Text,
        seq -> BigInt,
    }
}

diesel::table! {
    e2e_fallback_keys (user_id, device_id, algorithm) {
        user_id -> Text,
        device_id -> Text,
        algorithm -> Text,
        key_id -> Text,
        key_json -> Text,
        used -> Bool,
    }
}

diesel::table! {
    e2e_cross_signing_keys (user_id, key_type) {
        user_id -> Text,
        key_type -> Text,
        key_id -> Text,
        key_json -> Text,
    }
}

diesel::table! {
    e2e_signatures (target_user_id, target_key_id, signer_user_id, signer_key_id) {
        target_user_id -> Text,
        target_key_id -> Text,
        signer_user_id -> Text,
        signer_key_id -> Text,
        signature -> Text,
    }
}

diesel::table! {
    to_device_inbox (user_id, device_id, stream_id) {
        user_id -> Text,
        device_id -> Text,
        stream_id -> BigInt,
        sender -> Text,
        event_type -> Text,
        content -> Text,
    }
}

diesel::table! {
    to_device_txns (user_id, device_id, txn_id) {
        user_id -> Text,
        device_id -> Text,
        txn_id -> Text,
        seen_ts -> BigInt,
    }
}

diesel::table! {
    to_device_inbound_ids (origin, message_id) {
        origin -> Text,
        message_id -> Text,
        received_ts -> BigInt,
    }
}

diesel::table! {
    device_list_changes (stream_id, user_id, observer) {
        stream_id -> BigInt,
        user_id -> Text,
        observer -> Text,
        seen_ts -> BigInt,
    }
}

diesel::table! {
    remote_device_lists (user_id) {
        user_id -> Text,
        stream_id -> BigInt,
        stale -> Bool,
    }
}

diesel::table! {
    lm_join_staging (room_id, seq) {
        room_id -> Text,
        seq -> BigInt,
        origin -> Text,
        pdu -> Text,
        received_ts -> BigInt,
    }
}

diesel::table! {
    backup_versions (user_id, version) {
        user_id -> Text,
        version -> BigInt,
        algorithm -> Text,
        auth_data -> Text,
        etag -> BigInt,
        deleted -> Bool,
    }
}

diesel::table! {
    backup_keys (user_id, version, room_id, session_id) {
        user_id -> Text,
        version -> BigInt,
        room_id -> Text,
        session_id -> Text,
        first_message_index -> BigInt,
        forwarded_count -> BigInt,
        is_verified -> Bool,
        session_data -> Text,
    }
}

diesel::table! {
    media (server_name, media_id) {
        server_name -> Text,
        media_id -> Text,
        sha256 -> Nullable<Text>,
        content_type -> Nullable<Text>,
        filename -> Nullable<Text>,
        size -> BigInt,
        uploader -> Nullable<Text>,
        created_ts -> BigInt,
        unused_expires_ts -> Nullable<BigInt>,
    }
}

diesel::table! {
    media_thumbnails (sha256, width, height, method) {
        sha256 -> Text,
        width -> Integer,
        height -> Integer,
        method -> Text,
        thumb_sha256 -> Text,
        content_type -> Text,
        size -> BigInt,
    }
}

diesel::table! {
    event_relations (event_id) {
        event_id -> Text,
        room_id -> Text,
        relates_to -> Text,
        rel_type -> Text,
        event_type -> Text,
        sender -> Text,
        origin_server_ts -> BigInt,
        stream_ordering -> BigInt,
    }
}

diesel::table! {
    // SQLite also has an `id INTEGER PRIMARY KEY` (the FTS5 index's rowid), never named here.
    event_search (stream_ordering) {
        event_id -> Text,
        room_id -> Text,
        event_type -> Text,
        sender -> Text,
        key -> Text,
        stream_ordering -> BigInt,
        value -> Text,
    }
}

diesel::table! {
    user_directory (user_id) {
        user_id -> Text,
        display_name -> Nullable<Text>,
        avatar_url -> Nullable<Text>,
        stream_ordering -> BigInt,
    }
}

diesel::table! {
    push_notifications (user_id, stream_ordering) {
        user_id -> Text,
        event_id -> Text,
        room_id -> Text,
        thread_id -> Text,
        stream_ordering -> BigInt,
        stream_id -> BigInt,
        ts -> BigInt,
        actions -> Text,
        highlight -> Bool,
    }
}

diesel::table! {
    push_progress (id) {
        id -> Integer,
        stream -> BigInt,
    }
}

diesel::table! {
    search_progress (id) {
        id -> Integer,
        stream -> BigInt,
    }
}

diesel::allow_tables_to_appear_in_same_query!(events, event_search);

diesel::table! {
    pushers (user_id, app_id, pushkey) {
        user_id -> Text,
        app_id -> Text,
        pushkey -> Text,
        kind -> Text,
        app_display_name -> Text,
        device_display_name -> Text,
        profile_tag -> Nullable<Text>,
        lang -> Text,
        data -> Text,
        created_ts -> BigInt,
        device_id -> Nullable<Text>,
    }
}

diesel::table! {
    push_outbox (user_id, app_id, pushkey, event_id) {
        user_id -> Text,
        app_id -> Text,
        pushkey -> Text,
        event_id -> Text,
        url -> Text,
        body -> Text,
        attempts -> Integer,
        next_attempt_ts -> BigInt,
        created_ts -> BigInt,
    }
}

diesel::table! {
    partial_state_rooms (room_id) {
        room_id -> Text,
        join_event_id -> Text,
        servers -> Text,
        since_ts -> BigInt,
    }
}

diesel::table! {
    partial_state_completed (room_id) {
        room_id -> Text,
        stream_ordering -> BigInt,
    }
}

diesel::table! {
    partial_state_deferred (room_id, event_id) {
        room_id -> Text,
        event_id -> Text,
        depth -> BigInt,
        pdu -> Text,
        received_ts -> BigInt,
    }
}
