//! The room versions weft speaks, and the ruma rule sets behind them.
//!
//! weft supports every stable version Synapse supports (1 to 12; 12 is the default for new
//! rooms) and the Linearized Matrix version `org.matrix.i-d.ralston-mimi-linearized-matrix.02`.
//! Everything version-dependent asks this module rather than matching on strings; the answers
//! come from ruma's `RoomVersionRules` wherever ruma has a switch for the difference.
//!
//! What changes across the versions, and where it is handled:
//!
//! | versions | difference | handled in |
//! |---|---|---|
//! | 1, 2 | event ID `$local:server` chosen by the sender, carried in the event | [`crate::pdu`], [`crate::builder`] |
//! | 1, 2 | `prev_events`/`auth_events` as `[id, {"sha256": reference hash}]` pairs | [`crate::pdu`], [`crate::builder`] |
//! | 1, 2 | the event ID's server must sign the event too | ruma (signature rules) |
//! | 1 | state resolution v1 | [`crate::state_res::v1`] |
//! | 2–11 | state resolution v2; 12: v2.1 | ruma via [`crate::state_res`] |
//! | 3 | event ID = standard base64 reference hash; 4+: URL-safe base64 | ruma (`reference_hash`) |
//! | 1, 2 | `m.room.redaction` is authorized by the redacts' domain | ruma (authorization rules) |
//! | 1–5 | `m.room.aliases` has special auth and redaction rules | ruma |
//! | 5+ | signing keys must be valid at the event's `origin_server_ts` | [`crate::signatures`] |
//! | 6+ | strict canonical JSON, `notifications` power levels | ruma |
//! | 7+ knock, 8+ restricted joins, 10+ integer power levels, 11+ create sender, 12 creators | | ruma |

use std::sync::LazyLock;

use ruma::room_version_rules::RoomVersionRules;

/// The unstable identifier of the Linearized Matrix room version (draft -02 of the I-D).
pub const LINEARIZED_ID: &str = "org.matrix.i-d.ralston-mimi-linearized-matrix.02";

/// A room version weft can participate in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RoomVersion {
    V1,
    V2,
    V3,
    V4,
    V5,
    V6,
    V7,
    V8,
    V9,
    V10,
    V11,
    V12,
    /// Linearized Matrix: a hub orders events into one line (see [`crate::lm`]).
    Linearized,
}

/// ruma's switches for the Linearized version: those of v11 (the create event's sender is the
/// creator, `redacts` in the content). Redaction, hashes, signatures and the authorization
/// rules differ in ways ruma cannot express; they are written in [`crate::lm`], and every
/// function of this crate hands LM rooms to it.
static LINEARIZED_RULES: LazyLock<RoomVersionRules> = LazyLock::new(|| RoomVersionRules::V11);

impl RoomVersion {
    /// Every version weft supports, stable ones first.
    pub const ALL: [RoomVersion; 13] = [
        Self::V1,
        Self::V2,
        Self::V3,
        Self::V4,
        Self::V5,
        Self::V6,
        Self::V7,
        Self::V8,
        Self::V9,
        Self::V10,
        Self::V11,
        Self::V12,
        Self::Linearized,
    ];

    /// Parses a room version identifier; `None` for versions weft does not support.
    pub fn parse(id: &str) -> Option<Self> {
        match id {
            "1" => Some(Self::V1),
            "2" => Some(Self::V2),
            "3" => Some(Self::V3),
            "4" => Some(Self::V4),
            "5" => Some(Self::V5),
            "6" => Some(Self::V6),
            "7" => Some(Self::V7),
            "8" => Some(Self::V8),
            "9" => Some(Self::V9),
            "10" => Some(Self::V10),
            "11" => Some(Self::V11),
            "12" => Some(Self::V12),
            LINEARIZED_ID => Some(Self::Linearized),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1 => "1",
            Self::V2 => "2",
            Self::V3 => "3",
            Self::V4 => "4",
            Self::V5 => "5",
            Self::V6 => "6",
            Self::V7 => "7",
            Self::V8 => "8",
            Self::V9 => "9",
            Self::V10 => "10",
            Self::V11 => "11",
            Self::V12 => "12",
            Self::Linearized => LINEARIZED_ID,
        }
    }

    /// ruma's rule set for this version.
    pub fn rules(self) -> &'static RoomVersionRules {
        match self {
            Self::V1 => &RoomVersionRules::V1,
            Self::V2 => &RoomVersionRules::V2,
            Self::V3 => &RoomVersionRules::V3,
            Self::V4 => &RoomVersionRules::V4,
            Self::V5 => &RoomVersionRules::V5,
            Self::V6 => &RoomVersionRules::V6,
            Self::V7 => &RoomVersionRules::V7,
            Self::V8 => &RoomVersionRules::V8,
            Self::V9 => &RoomVersionRules::V9,
            Self::V10 => &RoomVersionRules::V10,
            Self::V11 => &RoomVersionRules::V11,
            Self::V12 => &RoomVersionRules::V12,
            Self::Linearized => &LINEARIZED_RULES,
        }
    }

    /// Whether the version is marked stable (advertised as such in `/capabilities`).
    pub fn is_stable(self) -> bool {
        !matches!(self, Self::Linearized)
    }

    /// v12 and later: the room ID is derived from the create event's reference hash and the
    /// create event carries no `room_id`.
    pub fn room_id_from_create_event(self) -> bool {
        self.rules().authorization.room_create_event_id_as_room_id
    }

    /// v11 and later: the creator is the create event's sender (no `creator` in content).
    pub fn create_uses_sender(self) -> bool {
        self.rules().authorization.use_room_create_sender
    }

    /// v11 and later: `redacts` lives in the content of `m.room.redaction`.
    pub fn redacts_in_content(self) -> bool {
        self.rules().redaction.content_field_redacts
    }

    /// v12: room creators have unbeatable power and must not be listed in power levels.
    pub fn creators_have_infinite_power(self) -> bool {
        self.rules()
            .authorization
            .explicitly_privilege_room_creators
    }

    /// Versions 1 and 2: the event ID is chosen by the sending server (`$local:server`) and
    /// travels in the event's `event_id` field instead of being its reference hash.
    pub fn event_id_in_event(self) -> bool {
        matches!(
            self.rules().event_id_format,
            ruma::room_version_rules::EventIdFormatVersion::V1
        ) && !self.is_linearized()
    }

    /// Versions 1 and 2: `prev_events` and `auth_events` cite `[event_id, {"sha256": hash}]`
    /// pairs instead of bare event IDs.
    pub fn cites_event_hashes(self) -> bool {
        matches!(
            self.rules().events_reference_format,
            ruma::room_version_rules::EventsReferenceFormatVersion::V1
        ) && !self.is_linearized()
    }

    /// Version 1 resolves state with the original algorithm (state resolution v1).
    pub fn uses_state_res_v1(self) -> bool {
        matches!(
            self.rules().state_res,
            ruma::room_version_rules::StateResolutionVersion::V1
        ) && !self.is_linearized()
    }

    /// Version 5 and later: a signing key only verifies events sent before it expired.
    pub fn enforces_key_validity(self) -> bool {
        self.rules().enforce_key_validity
    }

    /// Linearized Matrix rooms are ordered by a hub instead of a DAG.
    pub fn is_linearized(self) -> bool {
        matches!(self, Self::Linearized)
    }
}

impl std::fmt::Display for RoomVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_supported_versions_only() {
        let cases = [
            ("10", Some(RoomVersion::V10)),
            ("11", Some(RoomVersion::V11)),
            ("12", Some(RoomVersion::V12)),
            (LINEARIZED_ID, Some(RoomVersion::Linearized)),
            ("1", Some(RoomVersion::V1)),
            ("2", Some(RoomVersion::V2)),
            ("3", Some(RoomVersion::V3)),
            ("4", Some(RoomVersion::V4)),
            ("5", Some(RoomVersion::V5)),
            ("6", Some(RoomVersion::V6)),
            ("7", Some(RoomVersion::V7)),
            ("8", Some(RoomVersion::V8)),
            ("9", Some(RoomVersion::V9)),
            ("0", None),
            ("13", None),
            ("01", None),
            (" 1", None),
            ("org.matrix.msc2176", None),
            ("org.matrix.i-d.ralston-mimi-linearized-matrix.00", None),
            ("", None),
        ];
        for (id, want) in cases {
            assert_eq!(RoomVersion::parse(id), want, "{id}");
        }
    }

    #[test]
    fn version_switches() {
        assert!(!RoomVersion::V10.create_uses_sender());
        assert!(RoomVersion::V11.create_uses_sender());
        assert!(!RoomVersion::V11.room_id_from_create_event());
        assert!(RoomVersion::V12.room_id_from_create_event());
        assert!(RoomVersion::V12.creators_have_infinite_power());
        assert!(!RoomVersion::V10.redacts_in_content());
        assert!(RoomVersion::V11.redacts_in_content());
        for v in RoomVersion::ALL {
            assert_eq!(RoomVersion::parse(v.as_str()), Some(v));
        }
    }

    #[test]
    fn format_switches_per_version() {
        // (version, event ID in the event, hash pairs, state res v1, key validity)
        use RoomVersion::*;
        let cases = [
            (V1, true, true, true, false),
            (V2, true, true, false, false),
            (V3, false, false, false, false),
            (V4, false, false, false, false),
            (V5, false, false, false, true),
            (V6, false, false, false, true),
            (V7, false, false, false, true),
            (V8, false, false, false, true),
            (V9, false, false, false, true),
            (V10, false, false, false, true),
            (V11, false, false, false, true),
            (V12, false, false, false, true),
            (Linearized, false, false, false, true),
        ];
        for (v, id_in_event, pairs, v1, validity) in cases {
            assert_eq!(v.event_id_in_event(), id_in_event, "v{v}");
            assert_eq!(v.cites_event_hashes(), pairs, "v{v}");
            assert_eq!(v.uses_state_res_v1(), v1, "v{v}");
            assert_eq!(v.enforces_key_validity(), validity, "v{v}");
        }
        assert_eq!(RoomVersion::ALL.len(), 13);
    }
}
