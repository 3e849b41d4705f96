//! The room versions weft speaks, and the ruma rule sets behind them.
//!
//! weft supports the versions current Synapse uses (10, 11 and 12; 12 is the default for new
//! rooms) and the Linearized Matrix version `org.matrix.i-d.ralston-mimi-linearized-matrix.02`.
//! Everything version-dependent asks this module rather than matching on strings.

use std::sync::LazyLock;

use ruma::room_version_rules::RoomVersionRules;

/// The unstable identifier of the Linearized Matrix room version (draft -02 of the I-D).
pub const LINEARIZED_ID: &str = "org.matrix.i-d.ralston-mimi-linearized-matrix.02";

/// A room version weft can participate in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RoomVersion {
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
    pub const ALL: [RoomVersion; 4] = [Self::V10, Self::V11, Self::V12, Self::Linearized];

    /// Parses a room version identifier; `None` for versions weft does not support.
    pub fn parse(id: &str) -> Option<Self> {
        match id {
            "10" => Some(Self::V10),
            "11" => Some(Self::V11),
            "12" => Some(Self::V12),
            LINEARIZED_ID => Some(Self::Linearized),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::V10 => "10",
            Self::V11 => "11",
            Self::V12 => "12",
            Self::Linearized => LINEARIZED_ID,
        }
    }

    /// ruma's rule set for this version.
    pub fn rules(self) -> &'static RoomVersionRules {
        match self {
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
            ("9", None),
            ("1", None),
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
}
