//! Loading a room from storage when its actor starts: version, current state events, state
//! group, forward extremities (and their reference hashes in v1/v2 rooms), depth.

use super::*;

/// What loading a room from storage yields.
pub(super) struct Loaded {
    pub(super) version: RoomVersion,
    pub(super) state: CurrentState,
    pub(super) extremities: Vec<OwnedEventId>,
    pub(super) extremity_hashes: HashMap<OwnedEventId, String>,
    pub(super) max_depth: u64,
    pub(super) partial: Option<super::partial::Partial>,
}

impl RoomActor {
    pub(super) fn load(core: &Core, room_id: &str) -> StorageResult<Option<Loaded>> {
        let room_id = room_id.to_owned();
        core.db.read_blocking(move |conn| {
            let Some(room) = storage::rooms::get_room(conn, &room_id)? else {
                return Ok(None);
            };
            let Some(version) = RoomVersion::parse(&room.room_version) else {
                return Err(storage::StorageError::Corrupt(format!(
                    "room {room_id} has unsupported version {}",
                    room.room_version
                )));
            };
            let ids = storage::state::current_state(conn, &room_id)?;
            let wanted: Vec<String> = ids.values().cloned().collect();
            let rows = storage::events::get_events(conn, &wanted)?;
            let mut events: StateMap<Arc<Pdu>> = StateMap::new();
            for row in rows {
                let pdu = parse_row(&row.event_id, &row.json, version)?;
                if let Some(k) = pdu.state_key() {
                    events.insert(
                        (StateEventType::from(pdu.kind_str()), k.to_owned()),
                        Arc::new(pdu),
                    );
                }
            }
            let group = match room.state_group {
                Some(g) => Some((g, storage::state::group_depth(conn, g)?)),
                None => None,
            };
            let ext_ids = storage::state::extremities(conn, &room_id)?;
            let ext_rows = storage::events::get_events(conn, &ext_ids)?;
            let max_depth = ext_rows
                .iter()
                .map(|r| r.depth.max(0) as u64)
                .max()
                .unwrap_or(0);
            let extremities = ext_ids
                .iter()
                .filter_map(|e| OwnedEventId::try_from(e.as_str()).ok())
                .collect();
            let mut extremity_hashes = HashMap::new();
            if version.cites_event_hashes() {
                for row in &ext_rows {
                    let pdu = parse_row(&row.event_id, &row.json, version)?;
                    if let Some(hash) = cited_hash(version, &pdu) {
                        extremity_hashes.insert(pdu.owned_event_id(), hash);
                    }
                }
            }
            let partial = match storage::partial_state::get(conn, &room_id)? {
                Some(p) => {
                    let deferred = storage::partial_state::deferred(conn, &room_id)?
                        .into_iter()
                        .map(|(id, _)| id)
                        .collect();
                    Some(super::partial::Partial::from_stored(p, deferred))
                }
                None => None,
            };
            Ok(Some(Loaded {
                version,
                state: CurrentState { events, group },
                extremities,
                extremity_hashes,
                max_depth,
                partial,
            }))
        })
    }
}

/// Parses a stored event row back into a PDU.
pub fn parse_row(event_id: &str, json: &str, version: RoomVersion) -> StorageResult<Pdu> {
    let obj = weft_protocol::canonical::parse_object(json.as_bytes())
        .map_err(|e| storage::StorageError::Corrupt(format!("{event_id}: {e}")))?;
    let id = OwnedEventId::try_from(event_id)
        .map_err(|e| storage::StorageError::Corrupt(format!("{event_id}: {e}")))?;
    Pdu::from_json_with_id(id, obj, version)
        .map_err(|e| storage::StorageError::Corrupt(format!("{event_id}: {e}")))
}
