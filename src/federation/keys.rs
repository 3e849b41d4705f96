//! Our signing key as other servers see it: `GET /_matrix/key/v2/server`.

use actix_web::{HttpResponse, web};
use ruma::{CanonicalJsonObject, CanonicalJsonValue};

use crate::error::{Error, Result};
use crate::services::Services;

/// How long others may cache our key response.
pub const KEY_VALIDITY_MS: i64 = 24 * 60 * 60 * 1000;

/// The signed key response for our server.
pub fn server_keys_object(s: &Services) -> Result<CanonicalJsonObject> {
    let key = &s.core.key;
    let mut verify_key = CanonicalJsonObject::new();
    verify_key.insert(
        "key".into(),
        CanonicalJsonValue::String(key.public_key_b64()),
    );
    let mut verify_keys = CanonicalJsonObject::new();
    verify_keys.insert(
        key.key_id().to_owned(),
        CanonicalJsonValue::Object(verify_key),
    );
    let mut obj = CanonicalJsonObject::new();
    obj.insert(
        "server_name".into(),
        CanonicalJsonValue::String(s.server_name().to_owned()),
    );
    obj.insert(
        "valid_until_ts".into(),
        CanonicalJsonValue::Integer(
            ruma::Int::try_from(crate::storage::now_ms() + KEY_VALIDITY_MS)
                .unwrap_or(ruma::Int::MAX),
        ),
    );
    obj.insert(
        "verify_keys".into(),
        CanonicalJsonValue::Object(verify_keys),
    );
    obj.insert(
        "old_verify_keys".into(),
        CanonicalJsonValue::Object(CanonicalJsonObject::new()),
    );
    ruma::signatures::sign_json(s.server_name(), key, &mut obj)
        .map_err(|e| Error::internal(e.to_string()))?;
    Ok(obj)
}

pub async fn server_keys(s: web::Data<Services>) -> Result<HttpResponse> {
    let obj = server_keys_object(&s)?;
    Ok(HttpResponse::Ok()
        .insert_header(("content-type", "application/json"))
        .body(weft_protocol::canonical::write_object(&obj)))
}
