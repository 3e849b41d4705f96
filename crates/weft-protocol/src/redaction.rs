//! Redaction: what is left of an event once it is redacted (by an `m.room.redaction`, or
//! because its content hash did not match on receipt).

use ruma::CanonicalJsonObject;

use crate::room_version::RoomVersion;

/// Why an event could not be redacted.
#[derive(Debug, thiserror::Error)]
#[error("cannot redact event: {0}")]
pub struct RedactError(pub String);

/// The redacted form of a PDU, per its room version's redaction algorithm. Signatures and
/// hashes are kept (they still verify: signatures cover the redacted form).
pub fn redact(
    json: &CanonicalJsonObject,
    version: RoomVersion,
) -> Result<CanonicalJsonObject, RedactError> {
    if version.is_linearized() {
        return Ok(crate::lm::redact(json));
    }
    ruma::canonical_json::redact(json.clone(), &version.rules().redaction, None)
        .map_err(|e| RedactError(e.to_string()))
}

/// The redacted content of an event of `kind` (for serving a redacted event to clients).
pub fn redact_content(
    kind: &str,
    content: &CanonicalJsonObject,
    version: RoomVersion,
) -> CanonicalJsonObject {
    let mut content = content.clone();
    if version.is_linearized() {
        let mut wrapper = CanonicalJsonObject::new();
        wrapper.insert(
            "type".into(),
            ruma::CanonicalJsonValue::String(kind.to_owned()),
        );
        wrapper.insert("content".into(), ruma::CanonicalJsonValue::Object(content));
        return match crate::lm::redact(&wrapper).remove("content") {
            Some(ruma::CanonicalJsonValue::Object(c)) => c,
            _ => CanonicalJsonObject::new(),
        };
    }
    ruma::canonical_json::redact_content_in_place(&mut content, &version.rules().redaction, kind);
    content
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::parse_object;

    #[test]
    fn table_of_kept_content() {
        // (version, type, content, content kept)
        let cases: &[(RoomVersion, &str, &str, &str)] = &[
            (
                RoomVersion::V11,
                "m.room.message",
                r#"{"body":"x","msgtype":"m.text"}"#,
                "{}",
            ),
            (
                RoomVersion::V11,
                "m.room.member",
                r#"{"membership":"join","displayname":"A"}"#,
                r#"{"membership":"join"}"#,
            ),
            (
                RoomVersion::V11,
                "m.room.create",
                r#"{"room_version":"11","x":1}"#,
                r#"{"room_version":"11","x":1}"#,
            ),
            (
                RoomVersion::V10,
                "m.room.create",
                r#"{"creator":"@a:b","x":1}"#,
                r#"{"creator":"@a:b"}"#,
            ),
            (
                RoomVersion::V11,
                "m.room.redaction",
                r#"{"redacts":"$e","reason":"r"}"#,
                r#"{"redacts":"$e"}"#,
            ),
            (
                RoomVersion::V10,
                "m.room.redaction",
                r#"{"redacts":"$e","reason":"r"}"#,
                "{}",
            ),
            (
                RoomVersion::V11,
                "m.room.power_levels",
                r#"{"invite":5,"ban":50,"notifications":{"room":1}}"#,
                r#"{"ban":50,"invite":5}"#,
            ),
            (
                RoomVersion::V10,
                "m.room.power_levels",
                r#"{"invite":5,"ban":50}"#,
                r#"{"ban":50}"#,
            ),
            (
                RoomVersion::V11,
                "m.room.join_rules",
                r#"{"join_rule":"restricted","allow":[],"x":1}"#,
                r#"{"allow":[],"join_rule":"restricted"}"#,
            ),
            (
                RoomVersion::V11,
                "m.room.history_visibility",
                r#"{"history_visibility":"shared","x":1}"#,
                r#"{"history_visibility":"shared"}"#,
            ),
            (
                RoomVersion::V12,
                "m.room.create",
                r#"{"room_version":"12","additional_creators":["@b:c"],"x":1}"#,
                r#"{"additional_creators":["@b:c"],"room_version":"12","x":1}"#,
            ),
            (
                RoomVersion::V12,
                "m.room.power_levels",
                r#"{"invite":5,"users":{"@b:c":50},"notifications":{"room":1}}"#,
                r#"{"invite":5,"users":{"@b:c":50}}"#,
            ),
            (
                RoomVersion::V12,
                "m.room.redaction",
                r#"{"redacts":"$e","reason":"r"}"#,
                r#"{"redacts":"$e"}"#,
            ),
            (
                RoomVersion::V12,
                "m.room.message",
                r#"{"body":"x","msgtype":"m.text"}"#,
                "{}",
            ),
            (
                RoomVersion::V12,
                "m.room.server_acl",
                r#"{"allow":["*"],"deny":[],"allow_ip_literals":false}"#,
                "{}",
            ),
            (
                RoomVersion::V10,
                "m.room.member",
                r#"{"membership":"join","join_authorised_via_users_server":"@a:b","displayname":"A"}"#,
                r#"{"join_authorised_via_users_server":"@a:b","membership":"join"}"#,
            ),
            (
                RoomVersion::V12,
                "m.room.member",
                r#"{"membership":"join","join_authorised_via_users_server":"@a:b","avatar_url":"mxc://a/b"}"#,
                r#"{"join_authorised_via_users_server":"@a:b","membership":"join"}"#,
            ),
            (
                RoomVersion::V10,
                "m.room.member",
                r#"{"membership":"invite","third_party_invite":{"display_name":"d","signed":{"mxid":"@a:b","token":"t","signatures":{}}}}"#,
                r#"{"membership":"invite"}"#,
            ),
            (
                RoomVersion::V11,
                "m.room.member",
                r#"{"membership":"invite","third_party_invite":{"display_name":"d","signed":{"mxid":"@a:b","token":"t","signatures":{}}}}"#,
                r#"{"membership":"invite","third_party_invite":{"signed":{"mxid":"@a:b","signatures":{},"token":"t"}}}"#,
            ),
            (
                RoomVersion::V12,
                "m.room.member",
                r#"{"membership":"invite","third_party_invite":{"display_name":"d","signed":{"mxid":"@a:b","token":"t","signatures":{}}}}"#,
                r#"{"membership":"invite","third_party_invite":{"signed":{"mxid":"@a:b","signatures":{},"token":"t"}}}"#,
            ),
            (
                RoomVersion::V10,
                "m.room.join_rules",
                r#"{"join_rule":"restricted","allow":[{"type":"m.room_membership","room_id":"!s:a"}],"x":1}"#,
                r#"{"allow":[{"room_id":"!s:a","type":"m.room_membership"}],"join_rule":"restricted"}"#,
            ),
            (
                RoomVersion::V12,
                "m.room.history_visibility",
                r#"{"history_visibility":"joined","x":1}"#,
                r#"{"history_visibility":"joined"}"#,
            ),
            (
                RoomVersion::V12,
                "org.example.custom",
                r#"{"anything":1}"#,
                "{}",
            ),
            (
                RoomVersion::Linearized,
                "m.room.join_rules",
                r#"{"join_rule":"public","allow":[],"x":1}"#,
                r#"{"allow":[],"join_rule":"public"}"#,
            ),
            (
                RoomVersion::Linearized,
                "m.room.redaction",
                r#"{"redacts":"$e"}"#,
                "{}",
            ),
        ];
        for (version, kind, content, want) in cases {
            let got = redact_content(kind, &parse_object(content.as_bytes()).unwrap(), *version);
            assert_eq!(
                crate::canonical::write_object(&got),
                *want,
                "{version} {kind}"
            );
        }
    }

    #[test]
    fn redacting_a_pdu_keeps_the_envelope() {
        let ev = parse_object(br#"{"type":"m.room.message","room_id":"!r:a","sender":"@u:a","content":{"body":"x"},"depth":3,"origin_server_ts":1,"hashes":{"sha256":"h"},"signatures":{},"prev_events":[],"auth_events":[],"unsigned":{"age":1},"extra":1}"#).unwrap();
        let r = redact(&ev, RoomVersion::V11).unwrap();
        assert!(!r.contains_key("extra"));
        assert!(!r.contains_key("unsigned"));
        assert!(r.contains_key("depth"));
        assert_eq!(
            crate::canonical::write_object(match &r["content"] {
                ruma::CanonicalJsonValue::Object(o) => o,
                _ => panic!(),
            }),
            "{}"
        );
    }

    #[test]
    fn top_level_keys_kept_per_version() {
        // v11 stopped keeping `origin`, `membership` and `prev_state` at the top level.
        let ev = parse_object(br#"{"type":"m.room.member","state_key":"@u:a","room_id":"!r:a","sender":"@u:a","content":{"membership":"join"},"depth":3,"origin_server_ts":1,"hashes":{"sha256":"h"},"signatures":{"a":{}},"prev_events":["$p"],"auth_events":["$a"],"origin":"a","membership":"join","prev_state":[],"unsigned":{"age":1},"event_id":"$e","extra":1}"#).unwrap();
        let always = [
            "auth_events",
            "content",
            "depth",
            "hashes",
            "origin_server_ts",
            "prev_events",
            "room_id",
            "sender",
            "signatures",
            "state_key",
            "type",
        ];
        for (version, old_keys) in [
            (RoomVersion::V10, true),
            (RoomVersion::V11, false),
            (RoomVersion::V12, false),
        ] {
            let r = redact(&ev, version).unwrap();
            for key in always {
                assert!(r.contains_key(key), "v{version} lost {key}");
            }
            for key in ["origin", "membership", "prev_state"] {
                assert_eq!(r.contains_key(key), old_keys, "v{version} {key}");
            }
            for key in ["unsigned", "extra"] {
                assert!(!r.contains_key(key), "v{version} kept {key}");
            }
        }
    }

    #[test]
    fn v12_create_event_redacts_without_room_id() {
        let ev = parse_object(br#"{"type":"m.room.create","state_key":"","sender":"@u:a","content":{"room_version":"12","x":1},"depth":1,"origin_server_ts":1,"hashes":{"sha256":"h"},"signatures":{},"prev_events":[],"auth_events":[],"unsigned":{"age":1}}"#).unwrap();
        let r = redact(&ev, RoomVersion::V12).unwrap();
        assert!(!r.contains_key("room_id"));
        assert!(!r.contains_key("unsigned"));
        assert_eq!(
            crate::canonical::write_object(match &r["content"] {
                ruma::CanonicalJsonValue::Object(o) => o,
                _ => panic!(),
            }),
            r#"{"room_version":"12","x":1}"#
        );
    }
}
