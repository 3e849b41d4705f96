//! Room creation: from a `createRoom` request to the ordered list of initial events (spec:
//! create, creator's join, power levels, canonical alias, preset rules, initial_state, name,
//! topic, invites). Pure: it only computes drafts.

use ruma::OwnedUserId;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use weft_protocol::RoomVersion;
use weft_protocol::builder::EventDraft;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Default, Deserialize)]
pub struct CreateRoomRequest {
    pub visibility: Option<String>,
    pub room_alias_name: Option<String>,
    pub name: Option<String>,
    pub topic: Option<String>,
    #[serde(default)]
    pub invite: Vec<String>,
    pub room_version: Option<String>,
    pub creation_content: Option<Map<String, Value>>,
    #[serde(default)]
    pub initial_state: Vec<InitialState>,
    pub preset: Option<String>,
    pub is_direct: Option<bool>,
    pub power_level_content_override: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct InitialState {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub state_key: String,
    pub content: Value,
}

/// The planned initial events of a room.
pub struct RoomPlan {
    pub create: EventDraft,
    pub rest: Vec<EventDraft>,
    /// Users invited (their invite events are in `rest`).
    pub invites: Vec<OwnedUserId>,
    pub publish: bool,
}

fn preset_of(req: &CreateRoomRequest) -> Result<&str> {
    match req.preset.as_deref() {
        Some(p @ ("private_chat" | "public_chat" | "trusted_private_chat")) => Ok(p),
        Some(other) => Err(Error::invalid_param(format!("unknown preset {other}"))),
        None if req.visibility.as_deref() == Some("public") => Ok("public_chat"),
        None => Ok("private_chat"),
    }
}

/// Plans the events of a new room created by `creator`.
pub fn plan(
    req: &CreateRoomRequest,
    creator: &OwnedUserId,
    version: RoomVersion,
    canonical_alias: Option<&str>,
    creator_profile: (Option<String>, Option<String>),
) -> Result<RoomPlan> {
    let preset = preset_of(req)?;
    let mut invites = Vec::new();
    for u in &req.invite {
        let id = OwnedUserId::try_from(u.as_str())
            .map_err(|_| Error::invalid_param(format!("invalid user ID in invite: {u}")))?;
        if &id != creator && !invites.contains(&id) {
            invites.push(id);
        }
    }

    // 1. m.room.create
    let mut create_content = req.creation_content.clone().unwrap_or_default();
    create_content.insert("room_version".into(), json!(version.as_str()));
    if version.create_uses_sender() {
        create_content.remove("creator");
    } else {
        create_content.insert("creator".into(), json!(creator.as_str()));
    }
    if version.creators_have_infinite_power()
        && preset == "trusted_private_chat"
        && !invites.is_empty()
    {
        create_content.insert(
            "additional_creators".into(),
            Value::Array(invites.iter().map(|u| json!(u.as_str())).collect()),
        );
    } else if !version.creators_have_infinite_power() {
        create_content.remove("additional_creators");
    }
    let create = EventDraft::state(
        "m.room.create",
        "",
        creator.clone(),
        Value::Object(create_content),
    );

    let mut rest = Vec::new();
    // 2. the creator joins
    let mut member = json!({"membership": "join"});
    if let Some(name) = creator_profile.0 {
        member["displayname"] = json!(name);
    }
    if let Some(url) = creator_profile.1 {
        member["avatar_url"] = json!(url);
    }
    rest.push(EventDraft::state(
        "m.room.member",
        creator.as_str(),
        creator.clone(),
        member,
    ));

    // 3. power levels
    let mut users = Map::new();
    if !version.creators_have_infinite_power() {
        users.insert(creator.to_string(), json!(100));
        if preset == "trusted_private_chat" {
            for i in &invites {
                users.insert(i.to_string(), json!(100));
            }
        }
    }
    let mut pl = json!({
        "users": users,
        "users_default": 0,
        "events": {
            "m.room.name": 50,
            "m.room.power_levels": 100,
            "m.room.history_visibility": 100,
            "m.room.canonical_alias": 50,
            "m.room.avatar": 50,
            "m.room.tombstone": 100,
            "m.room.server_acl": 100,
            "m.room.encryption": 100,
        },
        "events_default": 0,
        "state_default": 50,
        "ban": 50,
        "kick": 50,
        "redact": 50,
        "invite": if preset == "public_chat" { 50 } else { 0 },
        "notifications": {"room": 50},
    });
    if let Some(overrides) = &req.power_level_content_override
        && let Some(obj) = pl.as_object_mut()
    {
        for (k, v) in overrides {
            obj.insert(k.clone(), v.clone());
        }
    }
    rest.push(EventDraft::state(
        "m.room.power_levels",
        "",
        creator.clone(),
        pl,
    ));

    // 4. canonical alias
    if let Some(alias) = canonical_alias {
        rest.push(EventDraft::state(
            "m.room.canonical_alias",
            "",
            creator.clone(),
            json!({"alias": alias}),
        ));
    }

    // 5. preset
    let (join_rule, guest) = match preset {
        "public_chat" => ("public", "forbidden"),
        _ => ("invite", "can_join"),
    };
    let overridden = |kind: &str| {
        req.initial_state
            .iter()
            .any(|s| s.kind == kind && s.state_key.is_empty())
    };
    if !overridden("m.room.join_rules") {
        rest.push(EventDraft::state(
            "m.room.join_rules",
            "",
            creator.clone(),
            json!({"join_rule": join_rule}),
        ));
    }
    if !overridden("m.room.history_visibility") {
        rest.push(EventDraft::state(
            "m.room.history_visibility",
            "",
            creator.clone(),
            json!({"history_visibility": "shared"}),
        ));
    }
    if !overridden("m.room.guest_access") {
        rest.push(EventDraft::state(
            "m.room.guest_access",
            "",
            creator.clone(),
            json!({"guest_access": guest}),
        ));
    }

    // 6. initial_state
    for s in &req.initial_state {
        if matches!(
            s.kind.as_str(),
            "m.room.create" | "m.room.member" | "m.room.power_levels"
        ) {
            return Err(Error::invalid_param(format!(
                "{} cannot be set in initial_state",
                s.kind
            )));
        }
        if !s.content.is_object() {
            return Err(Error::bad_json("initial_state content must be an object"));
        }
        rest.push(EventDraft::state(
            s.kind.clone(),
            s.state_key.clone(),
            creator.clone(),
            s.content.clone(),
        ));
    }

    // 7. name and topic
    if let Some(name) = &req.name {
        rest.push(EventDraft::state(
            "m.room.name",
            "",
            creator.clone(),
            json!({"name": name}),
        ));
    }
    if let Some(topic) = &req.topic {
        rest.push(EventDraft::state(
            "m.room.topic",
            "",
            creator.clone(),
            json!({"topic": topic}),
        ));
    }

    // 8. invites
    for i in &invites {
        let mut content = json!({"membership": "invite"});
        if req.is_direct == Some(true) {
            content["is_direct"] = json!(true);
        }
        rest.push(EventDraft::state(
            "m.room.member",
            i.as_str(),
            creator.clone(),
            content,
        ));
    }

    Ok(RoomPlan {
        create,
        rest,
        invites,
        publish: req.visibility.as_deref() == Some("public"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> OwnedUserId {
        OwnedUserId::try_from("@alice:example.org").unwrap()
    }

    #[test]
    fn v12_creator_is_not_in_power_levels() {
        let p = plan(
            &CreateRoomRequest::default(),
            &alice(),
            RoomVersion::V12,
            None,
            (None, None),
        )
        .unwrap();
        let pl = p
            .rest
            .iter()
            .find(|d| d.kind == "m.room.power_levels")
            .unwrap();
        assert!(pl.content["users"].as_object().unwrap().is_empty());
        assert!(p.create.content.get("creator").is_none());
    }

    #[test]
    fn v10_names_the_creator() {
        let p = plan(
            &CreateRoomRequest::default(),
            &alice(),
            RoomVersion::V10,
            None,
            (None, None),
        )
        .unwrap();
        assert_eq!(p.create.content["creator"], "@alice:example.org");
        let pl = p
            .rest
            .iter()
            .find(|d| d.kind == "m.room.power_levels")
            .unwrap();
        assert_eq!(pl.content["users"]["@alice:example.org"], 100);
    }

    #[test]
    fn presets_and_ordering() {
        let req = CreateRoomRequest {
            preset: Some("public_chat".into()),
            name: Some("N".into()),
            topic: Some("T".into()),
            invite: vec!["@bob:example.org".into(), "@bob:example.org".into()],
            ..Default::default()
        };
        let p = plan(
            &req,
            &alice(),
            RoomVersion::V11,
            Some("#a:example.org"),
            (Some("Alice".into()), None),
        )
        .unwrap();
        let kinds: Vec<&str> = p.rest.iter().map(|d| d.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "m.room.member",
                "m.room.power_levels",
                "m.room.canonical_alias",
                "m.room.join_rules",
                "m.room.history_visibility",
                "m.room.guest_access",
                "m.room.name",
                "m.room.topic",
                "m.room.member"
            ]
        );
        assert_eq!(p.rest[0].content["displayname"], "Alice");
        assert_eq!(p.rest[3].content["join_rule"], "public");
        assert_eq!(p.invites.len(), 1);
    }

    #[test]
    fn rejects_bad_requests() {
        let bad_preset = CreateRoomRequest {
            preset: Some("x".into()),
            ..Default::default()
        };
        assert!(plan(&bad_preset, &alice(), RoomVersion::V11, None, (None, None)).is_err());
        let bad_invite = CreateRoomRequest {
            invite: vec!["bob".into()],
            ..Default::default()
        };
        assert!(plan(&bad_invite, &alice(), RoomVersion::V11, None, (None, None)).is_err());
        let bad_state = CreateRoomRequest {
            initial_state: vec![InitialState {
                kind: "m.room.create".into(),
                state_key: String::new(),
                content: json!({}),
            }],
            ..Default::default()
        };
        assert!(plan(&bad_state, &alice(), RoomVersion::V11, None, (None, None)).is_err());
    }
}
