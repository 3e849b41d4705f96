//! The Client-Server API. Every `/_matrix/client/v3/...` route is also served under `r0`
//! (web clients still use it; [`r0_as_v3`] rewrites those paths before routing). Handlers parse and authenticate, then call room actors and
//! services; errors are `crate::error::Error`.

pub mod account;
pub mod destinations_admin;
pub mod directory;
pub mod events;
pub mod keys;
pub mod linearized_admin;
pub mod media;
pub mod misc;
pub mod profile;
pub mod push;
pub mod relations;
pub mod room_keys;
pub mod rooms;
pub mod search;
pub mod sliding_sync;
pub mod sync;
pub mod tokens;

use actix_web::web;

/// Routes shared by the `v3` and `r0` prefixes.
fn routes(cfg: &mut web::ServiceConfig) {
    use web::{delete, get, post, put};
    cfg
        // accounts
        .route("/register", post().to(account::register))
        .route("/register/available", get().to(account::register_available))
        .route("/login", get().to(account::login_flows))
        .route("/login", post().to(account::login))
        .route("/logout", post().to(account::logout))
        .route("/logout/all", post().to(account::logout_all))
        .route("/account/whoami", get().to(account::whoami))
        .route("/account/password", post().to(account::change_password))
        .route("/account/deactivate", post().to(account::deactivate))
        .route("/account/3pid", get().to(account::threepids))
        .route("/devices", get().to(account::devices))
        .route("/devices/{device_id}", get().to(account::get_device))
        .route("/devices/{device_id}", put().to(account::put_device))
        .route("/devices/{device_id}", delete().to(account::delete_device))
        .route("/delete_devices", post().to(account::delete_devices))
        .route("/capabilities", get().to(misc::capabilities))
        // rooms and membership
        .route("/createRoom", post().to(rooms::create_room))
        .route(
            "/join/{room_id_or_alias}",
            post().to(rooms::join_by_id_or_alias),
        )
        .route("/knock/{room_id_or_alias}", post().to(rooms::knock))
        .route("/joined_rooms", get().to(rooms::joined_rooms))
        .route("/rooms/{room_id}/join", post().to(rooms::join))
        .route("/rooms/{room_id}/invite", post().to(rooms::invite))
        .route("/rooms/{room_id}/leave", post().to(rooms::leave))
        .route("/rooms/{room_id}/forget", post().to(rooms::forget))
        .route("/rooms/{room_id}/kick", post().to(rooms::kick))
        .route("/rooms/{room_id}/ban", post().to(rooms::ban))
        .route("/rooms/{room_id}/unban", post().to(rooms::unban))
        // events
        .route(
            "/rooms/{room_id}/send/{event_type}/{txn_id}",
            put().to(events::send),
        )
        .route("/rooms/{room_id}/state", get().to(events::get_state))
        .route(
            "/rooms/{room_id}/state/{event_type}",
            get().to(events::get_state_event_empty_key),
        )
        .route(
            "/rooms/{room_id}/state/{event_type}",
            put().to(events::put_state_empty_key),
        )
        .route(
            "/rooms/{room_id}/state/{event_type}/{state_key:.*}",
            get().to(events::get_state_event),
        )
        .route(
            "/rooms/{room_id}/state/{event_type}/{state_key:.*}",
            put().to(events::put_state),
        )
        .route(
            "/rooms/{room_id}/redact/{event_id}/{txn_id}",
            put().to(events::redact),
        )
        .route("/rooms/{room_id}/messages", get().to(events::messages))
        .route(
            "/rooms/{room_id}/event/{event_id}",
            get().to(events::get_event),
        )
        .route(
            "/rooms/{room_id}/context/{event_id}",
            get().to(events::context),
        )
        .route("/rooms/{room_id}/members", get().to(events::members))
        .route(
            "/rooms/{room_id}/joined_members",
            get().to(events::joined_members),
        )
        .route(
            "/rooms/{room_id}/aliases",
            get().to(directory::room_aliases),
        )
        .route("/rooms/{room_id}/typing/{user_id}", put().to(misc::typing))
        .route(
            "/rooms/{room_id}/receipt/{receipt_type}/{event_id}",
            post().to(misc::receipt),
        )
        .route(
            "/rooms/{room_id}/read_markers",
            post().to(misc::read_markers),
        )
        // sync and filters
        .route("/sync", get().to(sync::sync))
        .route("/user/{user_id}/filter", post().to(sync::create_filter))
        .route(
            "/user/{user_id}/filter/{filter_id}",
            get().to(sync::get_filter),
        )
        // account data
        .route(
            "/user/{user_id}/account_data/{type}",
            get().to(misc::get_account_data),
        )
        .route(
            "/user/{user_id}/account_data/{type}",
            put().to(misc::put_account_data),
        )
        .route(
            "/user/{user_id}/account_data/{type}",
            delete().to(misc::delete_account_data),
        )
        .route(
            "/user/{user_id}/rooms/{room_id}/account_data/{type}",
            delete().to(misc::delete_room_account_data),
        )
        .route(
            "/user/{user_id}/rooms/{room_id}/tags",
            get().to(misc::get_tags),
        )
        .route(
            "/user/{user_id}/rooms/{room_id}/tags/{tag}",
            put().to(misc::put_tag),
        )
        .route(
            "/user/{user_id}/rooms/{room_id}/tags/{tag}",
            delete().to(misc::delete_tag),
        )
        .route(
            "/user/{user_id}/rooms/{room_id}/account_data/{type}",
            get().to(misc::get_room_account_data),
        )
        .route(
            "/user/{user_id}/rooms/{room_id}/account_data/{type}",
            put().to(misc::put_room_account_data),
        )
        // profile
        .route("/profile/{user_id}", get().to(profile::get_profile))
        .route(
            "/profile/{user_id}/displayname",
            get().to(profile::get_displayname),
        )
        .route(
            "/profile/{user_id}/displayname",
            put().to(profile::set_displayname),
        )
        .route(
            "/profile/{user_id}/avatar_url",
            get().to(profile::get_avatar_url),
        )
        .route(
            "/profile/{user_id}/avatar_url",
            put().to(profile::set_avatar_url),
        )
        // directory
        .route("/directory/room/{alias}", get().to(directory::get_alias))
        .route("/directory/room/{alias}", put().to(directory::put_alias))
        .route(
            "/directory/room/{alias}",
            delete().to(directory::delete_alias),
        )
        .route(
            "/directory/list/room/{room_id}",
            get().to(directory::get_visibility),
        )
        .route(
            "/directory/list/room/{room_id}",
            put().to(directory::set_visibility),
        )
        .route("/publicRooms", get().to(directory::public_rooms))
        .route("/publicRooms", post().to(directory::public_rooms_post))
        // search
        .route("/search", post().to(search::search))
        .route("/user_directory/search", post().to(search::user_directory))
        // push rules, presence
        .route("/pushrules/", get().to(push::all))
        .route("/pushrules", get().to(push::all))
        .route("/pushrules/global/", get().to(push::global))
        .route("/pushrules/global", get().to(push::global))
        .route(
            "/pushrules/{scope}/{kind}/{rule_id}",
            get().to(push::get_rule),
        )
        .route(
            "/pushrules/{scope}/{kind}/{rule_id}",
            put().to(push::put_rule),
        )
        .route(
            "/pushrules/{scope}/{kind}/{rule_id}",
            delete().to(push::delete_rule),
        )
        .route(
            "/pushrules/{scope}/{kind}/{rule_id}/enabled",
            get().to(push::get_enabled),
        )
        .route(
            "/pushrules/{scope}/{kind}/{rule_id}/enabled",
            put().to(push::put_enabled),
        )
        .route(
            "/pushrules/{scope}/{kind}/{rule_id}/actions",
            get().to(push::get_actions),
        )
        .route(
            "/pushrules/{scope}/{kind}/{rule_id}/actions",
            put().to(push::put_actions),
        )
        .route("/pushers", get().to(push::get_pushers))
        .route("/pushers/set", post().to(push::set_pusher))
        .route("/notifications", get().to(push::notifications))
        .route("/presence/{user_id}/status", get().to(misc::get_presence))
        .route("/presence/{user_id}/status", put().to(misc::set_presence))
        // end-to-end encryption
        .route("/keys/upload", post().to(keys::upload))
        .route("/keys/query", post().to(keys::query))
        .route("/keys/claim", post().to(keys::claim))
        .route("/keys/changes", get().to(keys::changes))
        .route(
            "/keys/device_signing/upload",
            post().to(keys::device_signing_upload),
        )
        .route(
            "/keys/signatures/upload",
            post().to(keys::signatures_upload),
        )
        .route(
            "/sendToDevice/{event_type}/{txn_id}",
            put().to(keys::send_to_device),
        )
        // server-side key backup
        .route("/room_keys/version", post().to(room_keys::create_version))
        .route("/room_keys/version", get().to(room_keys::current_version))
        .route(
            "/room_keys/version/{version}",
            get().to(room_keys::get_version),
        )
        .route(
            "/room_keys/version/{version}",
            put().to(room_keys::update_version),
        )
        .route(
            "/room_keys/version/{version}",
            delete().to(room_keys::delete_version),
        )
        .route("/room_keys/keys", put().to(room_keys::put_all))
        .route("/room_keys/keys", get().to(room_keys::get_all))
        .route("/room_keys/keys", delete().to(room_keys::delete_all))
        .route("/room_keys/keys/{room_id}", put().to(room_keys::put_room))
        .route("/room_keys/keys/{room_id}", get().to(room_keys::get_room))
        .route(
            "/room_keys/keys/{room_id}",
            delete().to(room_keys::delete_room),
        )
        .route(
            "/room_keys/keys/{room_id}/{session_id}",
            put().to(room_keys::put_session),
        )
        .route(
            "/room_keys/keys/{room_id}/{session_id}",
            get().to(room_keys::get_session),
        )
        .route(
            "/room_keys/keys/{room_id}/{session_id}",
            delete().to(room_keys::delete_session),
        );
}

/// Registers the client API on an app.
pub fn configure(cfg: &mut web::ServiceConfig) {
    // Full paths before any scope: a scope owns its whole prefix.
    cfg.route("/_matrix/client/versions", web::get().to(misc::versions))
        .route(
            "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync",
            web::post().to(sliding_sync::sync),
        )
        .route(
            "/_matrix/client/v1/room_summary/{room_id_or_alias}",
            web::get().to(directory::summary),
        )
        .route(
            "/_matrix/client/unstable/im.nheko.summary/summary/{room_id_or_alias}",
            web::get().to(directory::summary),
        )
        .route(
            "/_matrix/client/unstable/im.nheko.summary/rooms/{room_id_or_alias}/summary",
            web::get().to(directory::summary),
        )
        .route(
            "/_weft/admin/v1/linearized",
            web::get().to(linearized_admin::linearized),
        )
        .route(
            "/_weft/admin/v1/destinations",
            web::get().to(destinations_admin::list),
        )
        .route(
            "/_weft/admin/v1/destinations/{server}/reset",
            web::post().to(destinations_admin::reset),
        )
        .route(
            "/_weft/admin/v1/sync_waiters",
            web::get().to(linearized_admin::sync_waiters),
        )
        .configure(media::configure)
        .configure(relations::configure)
        .service(
            web::scope("/_matrix/client/unstable/org.matrix.msc3391")
                .route(
                    "/user/{user_id}/account_data/{type}",
                    web::delete().to(misc::delete_account_data),
                )
                .route(
                    "/user/{user_id}/rooms/{room_id}/account_data/{type}",
                    web::delete().to(misc::delete_room_account_data),
                ),
        )
        .service(web::scope("/_matrix/client/v3").configure(routes));
}

/// `r0` requests are served by the `v3` routes: the path is rewritten before routing
/// (install with `wrap_fn` on the app). Registering every route under both prefixes
/// doubled the router's compiled patterns, about 28 KB each, in every HTTP worker.
pub fn r0_as_v3(req: &mut actix_web::dev::ServiceRequest) {
    const R0: &str = "/_matrix/client/r0/";
    let Some(rest) = req.path().strip_prefix(R0) else {
        return;
    };
    let path_and_query = match req.uri().query() {
        Some(q) => format!("/_matrix/client/v3/{rest}?{q}"),
        None => format!("/_matrix/client/v3/{rest}"),
    };
    let mut parts = req.head().uri.clone().into_parts();
    let Ok(pq) = path_and_query.parse() else {
        return;
    };
    parts.path_and_query = Some(pq);
    if let Ok(uri) = actix_web::http::Uri::from_parts(parts) {
        req.match_info_mut().get_mut().update(&uri);
        req.head_mut().uri = uri;
    }
}
