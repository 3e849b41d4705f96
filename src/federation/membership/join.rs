//! Joins across servers: `make_join`/`send_join` served to a joining server (the state and
//! auth chain before its join), and a local user joining a room held elsewhere (template,
//! sign, `send_join`, the answer's state and auth chain checked and stored as outliers, the
//! join entering the room actor with that state as the state before it).
//!
//! A big room's answer is thousands of events, so nothing in that path is per event and
//! serial where it need not be: each event is parsed once (format, event ID) and checked
//! (signatures, content hash) on the verify pool, on every core; the auth checks of the
//! chain run in memory in auth order (`rooms::outliers`); the outliers go to storage in one
//! batch of multi-row INSERTs; and the checked events go to the room actor with the join
//! (`InboundPdus::checked_events`), so it does not load the state back from the database.
//! The phases' times are logged with the join (`answered_ms`, `checked_ms`, `stored_ms`,
//! `admitted_ms`). Measured with `tools/bench_join.sh` (docs/BENCHMARKS.md).

use super::*;

pub async fn make_join(
    s: Data,
    signed: Signed,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (room, user) = path.into_inner();
    if crate::rooms::partial_state::is_partial(&s.core, &room).await? {
        // Our copy lacks members: a join through us would get a partial state.
        return Err(Error::not_found(
            "this server is still joining the room; ask another server",
        ));
    }
    let v = make_membership(
        &s,
        &signed.origin,
        &room,
        &user,
        "join",
        Some(vers_of(&req)),
    )
    .await?;
    Ok(HttpResponse::Ok().json(v))
}

pub(super) fn pdu_value(row: &EventRow) -> Value {
    serde_json::from_str(&row.json).unwrap_or(Value::Null)
}

/// The state before an event and the auth chain of that state and the event.
pub(super) async fn state_and_chain(
    s: &Services,
    event_id: &str,
) -> Result<(Vec<Value>, Vec<Value>)> {
    let e = event_id.to_owned();
    let (st, chain) = s
        .core
        .db
        .read(move |c| {
            let Some(row) = events::get_event(c, &e)? else {
                return Ok((Vec::new(), Vec::new()));
            };
            let ids: Vec<String> = match row.state_before {
                Some(g) => state::load_group(c, g)?.into_values().collect(),
                None => Vec::new(),
            };
            let st = events::get_events(c, &ids)?;
            let mut roots = ids.clone();
            roots.push(e.clone());
            let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
            let mut stack: Vec<String> = Vec::new();
            for r in events::get_events(c, &roots)? {
                stack.extend(auth_of(&r));
            }
            let mut chain = Vec::new();
            while let Some(id) = stack.pop() {
                if !seen.insert(id.clone()) {
                    continue;
                }
                if let Some(r) = events::get_event(c, &id)? {
                    stack.extend(auth_of(&r));
                    chain.push(r);
                }
            }
            chain.sort_by_key(|r| r.depth);
            Ok((st, chain))
        })
        .await?;
    Ok((
        st.iter().map(pdu_value).collect(),
        chain.iter().map(pdu_value).collect(),
    ))
}

pub(super) fn auth_of(row: &EventRow) -> Vec<String> {
    serde_json::from_str::<Value>(&row.json)
        .ok()
        .and_then(|v| v.get("auth_events").cloned())
        .and_then(|a| serde_json::from_value::<Vec<String>>(a).ok())
        .unwrap_or_default()
}

pub(super) async fn send_join_body(
    s: &Services,
    signed: &Signed,
    room: &str,
    event_id: &str,
) -> Result<Value> {
    let (pdu, _version) = accept_membership(s, signed, room, event_id, "join").await?;
    let (st, chain) = state_and_chain(s, event_id).await?;
    let r = room.to_owned();
    let members = s
        .core
        .db
        .read(move |c| rooms::members_with(c, &r, "join"))
        .await?;
    let mut servers: Vec<String> = members.iter().map(|m| server_of(m).to_owned()).collect();
    servers.sort();
    servers.dedup();
    Ok(json!({
        "origin": s.server_name(),
        "state": st,
        "auth_chain": chain,
        "event": pdu.to_federation_value(),
        "members_omitted": false,
        "servers_in_room": servers,
    }))
}

pub async fn send_join_v2(
    s: Data,
    signed: Signed,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (room, event_id) = path.into_inner();
    Ok(HttpResponse::Ok().json(send_join_body(&s, &signed, &room, &event_id).await?))
}

pub async fn send_join_v1(
    s: Data,
    signed: Signed,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (room, event_id) = path.into_inner();
    Ok(HttpResponse::Ok().json(json!([
        200,
        send_join_body(&s, &signed, &room, &event_id).await?
    ])))
}

/// Joins a local user to a room held by other servers.
pub async fn join_remote(
    s: &Services,
    user: &OwnedUserId,
    room: &OwnedRoomId,
    servers: &[String],
    content_extra: Value,
) -> Result<OwnedEventId> {
    let fed = outbound(s)?;
    let mut last_err = Error::not_found("no server in the room could be reached");
    for server in servers.iter().filter(|srv| !s.core.is_local(srv)) {
        let resp = match ask_template(&fed, server, "join", room, user).await {
            Ok(r) => r,
            Err(e) => {
                last_err = e;
                continue;
            }
        };
        let version_id = resp
            .get("room_version")
            .and_then(|v| v.as_str())
            .unwrap_or("1");
        if RoomVersion::parse(version_id).is_some_and(|v| v.is_linearized()) {
            match crate::federation::linearized::participant::join_via(
                s,
                server,
                room,
                user,
                &resp,
                content_extra.clone(),
            )
            .await
            {
                Ok(id) => return Ok(id),
                Err(e) => {
                    tracing::info!(server, error = %e, "LM join failed");
                    last_err = e;
                    continue;
                }
            }
        }
        let Some(version) = RoomVersion::parse(version_id).filter(|v| !v.is_linearized()) else {
            last_err = Error::IncompatibleRoomVersion(format!(
                "room version {version_id} is not supported"
            ));
            continue;
        };
        let Some(template) = resp.get("event").cloned() else {
            last_err = Error::Remote(format!("{server} sent no join template"));
            continue;
        };
        match complete_join(
            s,
            &fed,
            server,
            room,
            user,
            version,
            template,
            content_extra.clone(),
        )
        .await
        {
            Ok(id) => return Ok(id),
            Err(e) => {
                tracing::info!(server, error = %e, "send_join failed");
                last_err = e;
            }
        }
    }
    Err(last_err)
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn complete_join(
    s: &Services,
    fed: &std::sync::Arc<crate::federation::Federation>,
    server: &str,
    room: &OwnedRoomId,
    user: &OwnedUserId,
    version: RoomVersion,
    template: Value,
    content_extra: Value,
) -> Result<OwnedEventId> {
    let join = sign_template(s, server, template, version, user, "join", &content_extra)?;
    let ask_partial = s.core.config.federation.partial_state_joins;
    let started = std::time::Instant::now();
    let query = if ask_partial {
        "?omit_members=true"
    } else {
        ""
    };
    let mut resp = send_signed(fed, server, "v2/send_join", room, &join, query).await?;
    let answered = started.elapsed();
    // A host may answer in full even when asked for partial state: then it is a full join.
    let partial_servers = (ask_partial
        && resp.get("members_omitted").and_then(Value::as_bool) == Some(true))
    .then(|| servers_in_room(&resp, server, s));

    // The room's state and auth chain: parse and check on every core, store as outliers.
    let (pdus, state_event_ids) = checked_answer(fed, &mut resp, version, room.as_str()).await;
    let checked = started.elapsed();
    let mut state_ids: HashMap<(String, String), String> = HashMap::new();
    for p in &pdus {
        if state_event_ids.contains(p.event_id())
            && let Some(k) = p.state_key()
        {
            state_ids.insert((p.kind_str(), k.to_owned()), p.event_id().to_string());
        }
    }
    if !state_ids.contains_key(&("m.room.create".to_owned(), String::new())) {
        return Err(Error::Remote(format!(
            "{server} sent no create event in the room state"
        )));
    }
    let (rejected, checked_events) =
        outliers::store_checked(&s.core, &s.rooms, room.as_str(), version, pdus).await?;
    if !rejected.is_empty() {
        // Rejected events are never state: the join's state is what remains.
        tracing::warn!(room = %room, count = rejected.len(), "some of the room's state failed its auth checks; left out");
        let bad: std::collections::HashSet<&String> = rejected.iter().collect();
        state_ids.retain(|_, id| !bad.contains(id));
    }
    // A resident server may have countersigned the join (restricted rooms).
    let join = match resp.get("event") {
        Some(ev) => match verify::parse(ev, version) {
            Ok(p) if p.event_id() == join.event_id() => p,
            _ => join,
        },
        None => join,
    };
    let stored = started.elapsed();
    let state_count = state_ids.len();
    let id = join.owned_event_id();
    if let Some(servers) = &partial_servers {
        // Marked before the join lands, so a restart at any point resumes the resync.
        s.rooms
            .send(
                room,
                crate::rooms::partial_state::MarkPartial {
                    join_event_id: id.to_string(),
                    servers: servers.clone(),
                },
            )
            .await??;
    }
    let outcome = s
        .rooms
        .admit(
            room,
            InboundPdus {
                pdus: vec![(std::sync::Arc::new(join), Some(state_ids))],
                local: false,
                version: Some(version),
                checked_events,
                txn_record: None,
            },
        )
        .await?
        .pop();
    match outcome {
        Some(InboundOutcome::Accepted) | Some(InboundOutcome::SoftFailed(_)) => {
            if let Some(servers) = partial_servers {
                crate::observe::metrics::partial_state("joined");
                super::partial::start(room, id.to_string(), servers);
            }
            tracing::info!(
                room = %room, user = %user, via = server, state = state_count,
                partial = ask_partial && answered_partial(&resp),
                answered_ms = answered.as_millis() as u64,
                checked_ms = checked.as_millis() as u64,
                stored_ms = stored.as_millis() as u64,
                admitted_ms = started.elapsed().as_millis() as u64,
                "joined a room over federation"
            );
            Ok(id)
        }
        other => {
            if partial_servers.is_some()
                && let Err(e) = s
                    .rooms
                    .send(room, crate::rooms::partial_state::ClearPartial)
                    .await
            {
                tracing::warn!(room = %room, error = %e, "partial state: could not drop the mark");
            }
            Err(Error::Remote(format!(
                "our join could not be applied: {other:?}"
            )))
        }
    }
}

fn answered_partial(resp: &Value) -> bool {
    resp.get("members_omitted").and_then(Value::as_bool) == Some(true)
}

/// Most servers taken from a `servers_in_room` (our events go to each while partial).
const MAX_SERVERS_IN_ROOM: usize = 1_000;

/// The servers a partial `send_join` answer names (valid names only, at most
/// [`MAX_SERVERS_IN_ROOM`], ours left out), the host first.
fn servers_in_room(resp: &Value, host: &str, s: &Services) -> Vec<String> {
    let mut out = vec![host.to_owned()];
    let named = resp
        .get("servers_in_room")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|n| ruma::ServerName::parse(n).is_ok())
        .filter(|n| !s.core.is_local(n));
    for n in named {
        if out.len() >= MAX_SERVERS_IN_ROOM {
            tracing::warn!(
                host,
                "servers_in_room names too many servers; the rest left out"
            );
            break;
        }
        if !out.iter().any(|o| o == n) {
            out.push(n.to_owned());
        }
    }
    out
}

/// The events of a `send_join` answer (`state` and `auth_chain`), each parsed once on the
/// verify pool (format and event ID: step 1) and then checked there (signatures and hashes:
/// steps 2–3); the bad ones are dropped and logged. Returns the events that passed and the
/// IDs of those the answer lists as state (an event in both lists is state).
pub(super) async fn checked_answer(
    fed: &std::sync::Arc<crate::federation::Federation>,
    resp: &mut Value,
    version: RoomVersion,
    room_id: &str,
) -> (Vec<Pdu>, std::collections::HashSet<OwnedEventId>) {
    let mut take = |k: &str| match resp.get_mut(k).map(Value::take) {
        Some(Value::Array(a)) => a,
        _ => Vec::new(),
    };
    let state = take("state");
    let chain = take("auth_chain");
    let items: Vec<(Value, bool)> = state
        .into_iter()
        .map(|r| (r, true))
        .chain(chain.into_iter().map(|r| (r, false)))
        .collect();
    let parsed = crate::rooms::admission::pool::map(items, move |(raw, in_state)| {
        (
            crate::rooms::admission::format::parse(raw, version),
            in_state,
        )
    })
    .await;
    let mut state_ids = std::collections::HashSet::new();
    let mut seen = std::collections::HashSet::new();
    let mut unique = Vec::with_capacity(parsed.len());
    for item in parsed {
        match item {
            Some((Ok(p), in_state)) => {
                if p.room_id().as_str() != room_id {
                    tracing::warn!(event = %p.event_id(), "send_join answer carried an event of another room");
                    continue;
                }
                if in_state {
                    state_ids.insert(p.owned_event_id());
                }
                if seen.insert(p.owned_event_id()) {
                    unique.push((p, version));
                }
            }
            Some((Err(e), _)) => {
                tracing::warn!(error = %e, "send_join answer carried a malformed event")
            }
            None => tracing::error!("a parse job did not answer"),
        }
    }
    let pdus = verify::check_many(fed, unique)
        .await
        .into_iter()
        .filter_map(|r| {
            r.map_err(|e| tracing::warn!(error = %e, "send_join answer: event failed checks"))
                .ok()
        })
        .map(|c| c.pdu)
        .collect();
    (pdus, state_ids)
}
