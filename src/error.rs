//! The one error type of the server, and its mapping to Matrix errors (`errcode`, `error`,
//! HTTP status). Handlers return `Result<_, Error>`; nothing else builds error JSON.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::storage::StorageError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // ---- client mistakes (4xx)
    #[error("{0}")]
    BadJson(String),
    #[error("{0}")]
    NotJson(String),
    #[error("{0}")]
    InvalidParam(String),
    #[error("{0}")]
    MissingParam(String),
    #[error("request body too large")]
    TooLarge,
    #[error("{0}")]
    NotFound(String),
    #[error("unrecognized request")]
    Unrecognized,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    Forbidden(String),
    #[error("missing access token")]
    MissingToken,
    #[error("unknown access token")]
    UnknownToken,
    #[error("invalid username or password")]
    InvalidLogin,
    #[error("{0}")]
    UserInUse(String),
    #[error("{0}")]
    InvalidUsername(String),
    #[error("{0}")]
    RoomInUse(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Exclusive(String),
    #[error("registration is disabled")]
    RegistrationDisabled,
    #[error("{0}")]
    UnsupportedRoomVersion(String),
    #[error("{0}")]
    IncompatibleRoomVersion(String),
    #[error("{0}")]
    BadState(String),
    #[error("{0}")]
    GuestAccessForbidden(String),
    #[error("{0}")]
    LimitExceeded(String, u64),
    /// User-interactive authentication: answer 401 with the flows.
    #[error("user-interactive authentication required")]
    UiaRequired(serde_json::Value),
    /// Federation: missing or bad request signature.
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    WrongServer(String),
    /// End-to-end encryption: a key's signature does not verify.
    #[error("{0}")]
    InvalidSignature(String),
    /// Key backup: the upload names a version that is not the current one.
    #[error("wrong backup version")]
    WrongRoomKeysVersion { current_version: Option<String> },
    /// Media: an upload that would take the user over their quota.
    #[error("{0}")]
    QuotaExceeded(String),
    /// Media: content was already uploaded to this media ID.
    #[error("media already uploaded")]
    CannotOverwriteMedia,
    /// Media: the media ID was created but nothing uploaded yet.
    #[error("media not yet uploaded")]
    NotYetUploaded,
    /// Login or use of a deactivated account.
    #[error("this account has been deactivated")]
    UserDeactivated,

    // ---- our side (5xx)
    #[error("unable to reach {0}")]
    Unreachable(String),
    #[error("remote server error: {0}")]
    Remote(String),
    #[error("the server is overloaded; try again")]
    Overloaded,
    #[error("storage error: {0}")]
    Storage(#[from] StorageError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn bad_json(msg: impl std::fmt::Display) -> Self {
        Self::BadJson(msg.to_string())
    }
    pub fn forbidden(msg: impl std::fmt::Display) -> Self {
        Self::Forbidden(msg.to_string())
    }
    pub fn not_found(msg: impl std::fmt::Display) -> Self {
        Self::NotFound(msg.to_string())
    }
    pub fn invalid_param(msg: impl std::fmt::Display) -> Self {
        Self::InvalidParam(msg.to_string())
    }
    pub fn internal(msg: impl std::fmt::Display) -> Self {
        Self::Internal(msg.to_string())
    }

    /// The Matrix error code.
    pub fn errcode(&self) -> &'static str {
        match self {
            Self::BadJson(_) => "M_BAD_JSON",
            Self::NotJson(_) => "M_NOT_JSON",
            Self::InvalidParam(_) => "M_INVALID_PARAM",
            Self::MissingParam(_) => "M_MISSING_PARAM",
            Self::TooLarge => "M_TOO_LARGE",
            Self::NotFound(_) => "M_NOT_FOUND",
            Self::Unrecognized | Self::MethodNotAllowed => "M_UNRECOGNIZED",
            Self::Forbidden(_) | Self::InvalidLogin => "M_FORBIDDEN",
            Self::MissingToken => "M_MISSING_TOKEN",
            Self::UnknownToken => "M_UNKNOWN_TOKEN",
            Self::UserInUse(_) => "M_USER_IN_USE",
            Self::InvalidUsername(_) => "M_INVALID_USERNAME",
            Self::RoomInUse(_) => "M_ROOM_IN_USE",
            Self::Conflict(_) => "M_UNKNOWN",
            Self::Exclusive(_) => "M_EXCLUSIVE",
            Self::RegistrationDisabled => "M_FORBIDDEN",
            Self::UnsupportedRoomVersion(_) => "M_UNSUPPORTED_ROOM_VERSION",
            Self::IncompatibleRoomVersion(_) => "M_INCOMPATIBLE_ROOM_VERSION",
            Self::BadState(_) => "M_BAD_STATE",
            Self::GuestAccessForbidden(_) => "M_GUEST_ACCESS_FORBIDDEN",
            Self::LimitExceeded(..) => "M_LIMIT_EXCEEDED",
            Self::UiaRequired(_) => "M_FORBIDDEN",
            Self::Unauthorized(_) => "M_UNAUTHORIZED",
            Self::WrongServer(_) => "M_WRONG_SERVER",
            Self::InvalidSignature(_) => "M_INVALID_SIGNATURE",
            Self::WrongRoomKeysVersion { .. } => "M_WRONG_ROOM_KEYS_VERSION",
            Self::UserDeactivated => "M_USER_DEACTIVATED",
            Self::QuotaExceeded(_) => "M_TOO_LARGE",
            Self::CannotOverwriteMedia => "M_CANNOT_OVERWRITE_MEDIA",
            Self::NotYetUploaded => "M_NOT_YET_UPLOADED",
            Self::Unreachable(_) | Self::Remote(_) | Self::Storage(_) | Self::Internal(_) => {
                "M_UNKNOWN"
            }
            Self::Overloaded => "M_LIMIT_EXCEEDED",
        }
    }
}

impl ResponseError for Error {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::BadJson(_)
            | Self::NotJson(_)
            | Self::InvalidParam(_)
            | Self::MissingParam(_)
            | Self::UserInUse(_)
            | Self::InvalidUsername(_)
            | Self::RoomInUse(_)
            | Self::Exclusive(_)
            | Self::UnsupportedRoomVersion(_)
            | Self::IncompatibleRoomVersion(_)
            | Self::BadState(_)
            | Self::WrongServer(_)
            | Self::InvalidSignature(_) => StatusCode::BAD_REQUEST,
            Self::TooLarge | Self::QuotaExceeded(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::CannotOverwriteMedia => StatusCode::CONFLICT,
            Self::NotYetUploaded => StatusCode::GATEWAY_TIMEOUT,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::NotFound(_) | Self::Unrecognized => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Forbidden(_)
            | Self::InvalidLogin
            | Self::RegistrationDisabled
            | Self::GuestAccessForbidden(_)
            | Self::WrongRoomKeysVersion { .. }
            | Self::UserDeactivated => StatusCode::FORBIDDEN,
            Self::MissingToken
            | Self::UnknownToken
            | Self::UiaRequired(_)
            | Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::LimitExceeded(..) | Self::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            Self::Unreachable(_) | Self::Remote(_) => StatusCode::BAD_GATEWAY,
            Self::Storage(_) | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        } else {
            tracing::debug!(error = %self, errcode = self.errcode(), "request refused");
        }
        let body = match self {
            Self::UiaRequired(flows) => {
                let mut v = flows.clone();
                if let Some(obj) = v.as_object_mut() {
                    obj.entry("errcode").or_insert(json!("M_FORBIDDEN"));
                    obj.entry("error")
                        .or_insert(json!("authentication required"));
                }
                v
            }
            Self::UnknownToken => json!({
                "errcode": self.errcode(),
                "error": self.to_string(),
                "soft_logout": false,
            }),
            Self::LimitExceeded(msg, retry) => json!({
                "errcode": self.errcode(),
                "error": msg,
                "retry_after_ms": retry,
            }),
            Self::WrongRoomKeysVersion { current_version } => json!({
                "errcode": self.errcode(),
                "error": self.to_string(),
                "current_version": current_version,
            }),
            Self::Overloaded => json!({
                "errcode": self.errcode(),
                "error": self.to_string(),
                "retry_after_ms": 1000,
            }),
            // Internal details stay in the log, not on the wire.
            Self::Storage(_) => json!({"errcode": "M_UNKNOWN", "error": "internal storage error"}),
            _ => json!({"errcode": self.errcode(), "error": self.to_string()}),
        };
        HttpResponse::build(status)
            .insert_header(("Content-Type", "application/json"))
            .body(body.to_string())
    }
}

impl From<actix::MailboxError> for Error {
    fn from(e: actix::MailboxError) -> Self {
        match e {
            actix::MailboxError::Timeout => Self::Overloaded,
            actix::MailboxError::Closed => Self::Internal("room actor stopped".into()),
        }
    }
}

/// Maps actix-web's JSON extractor errors to Matrix errors.
pub fn json_error(err: actix_web::error::JsonPayloadError) -> Error {
    use actix_web::error::JsonPayloadError as J;
    match err {
        J::Overflow { .. } | J::OverflowKnownLength { .. } => Error::TooLarge,
        J::Deserialize(e) => match e.classify() {
            serde_json::error::Category::Data => Error::BadJson(e.to_string()),
            _ => Error::NotJson(e.to_string()),
        },
        J::ContentType => Error::NotJson("expected application/json".into()),
        other => Error::NotJson(other.to_string()),
    }
}

/// Maps query-string errors to Matrix errors.
pub fn query_error(err: actix_web::error::QueryPayloadError) -> Error {
    Error::InvalidParam(err.to_string())
}

/// Maps path errors to Matrix errors.
pub fn path_error(err: actix_web::error::PathError) -> Error {
    Error::InvalidParam(err.to_string())
}
