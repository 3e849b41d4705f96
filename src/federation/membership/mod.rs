//! Membership across servers, both directions.
//!
//! Inbound (we are resident in the room): `make_join`/`send_join`, `make_leave`/
//! `send_leave`, `make_knock`/`send_knock` hand out templates built on our current state and
//! take the signed event back through the room actor like any received PDU, then deliver it
//! to the room's other servers; `invite` counter-signs an invite for one of our users and
//! records it so their `/sync` shows it.
//!
//! Outbound (a local user and a room elsewhere): joining fetches a template from a resident
//! server, signs it, and sends it with `send_join`; the answer's state and auth chain are
//! checked and stored as outliers, and the join enters the room actor with that state as
//! the state before it (creating the room here). Inviting a remote user has the room actor
//! build the invite, has the invitee's server sign it, then appends it. Rejecting a remote
//! invite uses `make_leave`/`send_leave` with the inviting server.

mod invite;
mod join;
mod knock;
mod leave;
mod partial;
mod resident;

use resident::{accept_membership, make_membership};

pub(crate) use invite::record_remote_membership;
pub use invite::{InviteBody, invite_remote, invite_v1, invite_v2};
pub use join::{join_remote, make_join, send_join_v1, send_join_v2};
pub use knock::{knock_remote, make_knock, send_knock};
pub use leave::{forget_remote_invite, leave_remote, make_leave, send_leave_v1, send_leave_v2};
pub use partial::resume_all as resume_partial_state;

use std::collections::HashMap;

use actix_web::{HttpRequest, HttpResponse, web};
use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};
use serde::Deserialize;
use serde_json::{Value, json};
use weft_protocol::builder::{self, EventDraft, Position};
use weft_protocol::{Pdu, RoomVersion, auth, canonical};

use super::auth::Signed;
use super::client::enc;
use super::inbound::verify;
use crate::error::{Error, Result};
use crate::federation::FederationOf;
use crate::rooms::messages::{BuildEvent, GetSnapshot, InboundOutcome, InboundPdus};
use crate::rooms::outliers;
use crate::services::Services;
use crate::storage::events::{self, EventRow};
use crate::storage::{now_ms, rooms, state};

type Data = web::Data<Services>;

fn server_of(user: &str) -> &str {
    user.split_once(':').map(|(_, s)| s).unwrap_or_default()
}

fn vers_of(req: &HttpRequest) -> Vec<String> {
    url::form_urlencoded::parse(req.query_string().as_bytes())
        .filter(|(k, _)| k == "ver")
        .map(|(_, v)| v.into_owned())
        .collect()
}

fn room_id(s: &str) -> Result<OwnedRoomId> {
    OwnedRoomId::try_from(s).map_err(|_| Error::invalid_param("invalid room ID"))
}

/// Supported room versions as `ver=` query parameters.
fn ver_query() -> String {
    // Includes Linearized Matrix (joined through `linearized::participant`).
    super::linearized::participant::make_join_versions()
}

/// The federation client a local user's join or knock in a room held elsewhere goes through.
fn outbound(s: &Services) -> Result<std::sync::Arc<crate::federation::Federation>> {
    s.federation()
        .cloned()
        .ok_or_else(|| Error::not_found("no known servers (federation disabled)"))
}

/// Asks `server` for a `make_join`/`make_knock`/`make_leave` template for `user` (offering
/// our room versions as `ver=` for a join or a knock) and answers the server's answer.
async fn ask_template(
    fed: &crate::federation::Federation,
    server: &str,
    membership: &str,
    room: &OwnedRoomId,
    user: &OwnedUserId,
) -> Result<Value> {
    let mut path = format!(
        "/_matrix/federation/v1/make_{membership}/{}/{}",
        enc(room.as_str()),
        enc(user.as_str())
    );
    if membership != "leave" {
        path.push('?');
        path.push_str(&ver_query());
    }
    fed.client
        .request("GET", server, &path, None)
        .await
        .map_err(|e| {
            tracing::info!(server, membership, error = %e, "asking for a membership template failed");
            e.into()
        })
}

/// Sends our signed membership event to `server` through `endpoint` (`v2/send_join`,
/// `v1/send_knock`, `v2/send_leave`; `query` with its `?` or empty) and answers its answer.
async fn send_signed(
    fed: &crate::federation::Federation,
    server: &str,
    endpoint: &str,
    room: &OwnedRoomId,
    pdu: &Pdu,
    query: &str,
) -> Result<Value> {
    let path = format!(
        "/_matrix/federation/{endpoint}/{}/{}{query}",
        enc(room.as_str()),
        enc(pdu.event_id().as_str())
    );
    Ok(fed
        .client
        .request("PUT", server, &path, Some(&pdu.to_federation_value()))
        .await?)
}

/// Turns a `make_join`/`make_leave`/`make_knock` template into our signed event: drops what
/// the resident server may not choose for us, stamps the time, adds `extra` content, hashes
/// and signs, and checks the result is `membership` for `user`.
fn sign_template(
    s: &Services,
    server: &str,
    template: Value,
    version: RoomVersion,
    user: &OwnedUserId,
    membership: &str,
    extra: &Value,
) -> Result<Pdu> {
    let mut obj = canonical::value_to_object(template).map_err(|e| Error::Remote(e.to_string()))?;
    // `event_id` (v1/v2) is minted anew on our server by `finish_event`.
    for k in ["origin", "event_id", "hashes", "signatures", "unsigned"] {
        obj.remove(k);
    }
    obj.insert(
        "origin_server_ts".into(),
        ruma::CanonicalJsonValue::Integer(ruma::Int::try_from(now_ms()).unwrap_or_default()),
    );
    if let (Some(ruma::CanonicalJsonValue::Object(content)), Some(extra)) =
        (obj.get_mut("content"), extra.as_object())
    {
        for (k, v) in extra {
            if k != "membership"
                && let Ok(cv) = canonical::value_to_canonical(v.clone())
            {
                content.insert(k.clone(), cv);
            }
        }
    }
    let pdu = builder::finish_event(obj, version, s.server_name(), &s.core.key)
        .map_err(|e| Error::Remote(e.to_string()))?;
    if pdu.sender() != user
        || pdu.state_key() != Some(user.as_str())
        || pdu.membership().as_deref() != Some(membership)
    {
        return Err(Error::Remote(format!(
            "{server} sent a bad {membership} template"
        )));
    }
    Ok(pdu)
}
