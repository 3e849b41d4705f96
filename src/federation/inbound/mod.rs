//! Inbound federation endpoints, one module per family. The handlers parse, authenticate
//! (the `Signed` extractor) and hand work to room actors and services.
//!
//! What happens to an incoming PDU, file by file: `send` (transaction limits, grouping by
//! room) → `verify` (format, event ID, signatures, content hash; on all cores) → the room
//! actor (`rooms::actor`, with `rooms::admission::prepare` for history: auth against auth
//! events, against the state before it; then soft-fail against current state and append) →
//! `gaps` (fetch what was missing from the origin, then retry).

pub mod e2ee;
pub mod edus;
pub mod gaps;
pub mod history;
pub mod media;
pub mod query;
pub mod send;
pub mod verify;

use actix_web::web;

use super::{keys, membership};

/// Registers the federation and key endpoints.
pub fn configure(cfg: &mut web::ServiceConfig) {
    use web::{get, post, put};
    // First: the generic scope below would answer 404 for LM paths under it.
    super::linearized::configure(cfg);
    cfg.route("/_matrix/key/v2/server", get().to(keys::server_keys))
        .route(
            "/_matrix/key/v2/server/{key_id}",
            get().to(keys::server_keys),
        )
        .route("/_matrix/key/v2/query", post().to(keys::key_query_post))
        .route(
            "/_matrix/key/v2/query/{server_name}",
            get().to(keys::key_query_get),
        )
        .service(
            web::scope("/_matrix/federation")
                .route("/v1/version", get().to(query::version))
                .route("/v1/media/download/{media_id}", get().to(media::download))
                .route("/v1/media/thumbnail/{media_id}", get().to(media::thumbnail))
                .route("/v1/send/{txn_id}", put().to(send::send_transaction))
                .route("/v1/event/{event_id}", get().to(history::get_event))
                .route("/v1/state/{room_id}", get().to(history::get_state))
                .route("/v1/state_ids/{room_id}", get().to(history::get_state_ids))
                .route(
                    "/v1/event_auth/{room_id}/{event_id}",
                    get().to(history::get_event_auth),
                )
                .route("/v1/backfill/{room_id}", get().to(history::backfill))
                .route(
                    "/v1/get_missing_events/{room_id}",
                    post().to(history::get_missing_events),
                )
                .route(
                    "/v1/make_join/{room_id}/{user_id}",
                    get().to(membership::make_join),
                )
                .route(
                    "/v1/send_join/{room_id}/{event_id}",
                    put().to(membership::send_join_v1),
                )
                .route(
                    "/v2/send_join/{room_id}/{event_id}",
                    put().to(membership::send_join_v2),
                )
                .route(
                    "/v1/make_leave/{room_id}/{user_id}",
                    get().to(membership::make_leave),
                )
                .route(
                    "/v1/send_leave/{room_id}/{event_id}",
                    put().to(membership::send_leave_v1),
                )
                .route(
                    "/v2/send_leave/{room_id}/{event_id}",
                    put().to(membership::send_leave_v2),
                )
                .route(
                    "/v1/make_knock/{room_id}/{user_id}",
                    get().to(membership::make_knock),
                )
                .route(
                    "/v1/send_knock/{room_id}/{event_id}",
                    put().to(membership::send_knock),
                )
                .route(
                    "/v1/invite/{room_id}/{event_id}",
                    put().to(membership::invite_v1),
                )
                .route(
                    "/v2/invite/{room_id}/{event_id}",
                    put().to(membership::invite_v2),
                )
                .route("/v1/query/profile", get().to(query::profile))
                .route("/v1/query/directory", get().to(query::directory))
                .route("/v1/publicRooms", get().to(query::public_rooms))
                .route("/v1/publicRooms", post().to(query::public_rooms_post))
                .route("/v1/user/devices/{user_id}", get().to(e2ee::user_devices))
                .route("/v1/user/keys/query", post().to(e2ee::user_keys_query))
                .route("/v1/user/keys/claim", post().to(e2ee::user_keys_claim)),
        );
}
