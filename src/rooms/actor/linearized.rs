//! The room actor in a Linearized Matrix room: the messages only such rooms take (`HubAppend`
//! for a hub, `ParticipantReceive` for a participant) and a participant's local send
//! (`lm_send`: the LPDU goes to the hub, the reply waits for its echo). What differs between
//! the kinds elsewhere in the actor (destinations, building local events, DAG input) is
//! asked of the room's kind (`rooms::kind::RoomKind`). See `rooms::linearized` for the
//! design.
use ruma::{CanonicalJsonObject, OwnedUserId};
use weft_protocol::lm;
use weft_protocol::lm::auth::Subject;

use super::*;
use crate::rooms::kind::RoomKind;
use crate::rooms::linearized::{Appended, HubAppend, HubInput, ParticipantReceive, Received};

/// How long a participant's send waits for the hub's echo.
const ECHO_TIMEOUT: Duration = Duration::from_secs(30);

impl RoomActor {
    /// The one tip of the line.
    fn lm_tip(&self) -> Option<&OwnedEventId> {
        match self.extremities.as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }

    /// A local user's send in a room hubbed elsewhere: build and check the LPDU, register the
    /// wait for its echo, and hand back the future that sends it to the hub. `None` when the
    /// room is not a participant room.
    pub(super) fn lm_send(
        &mut self,
        msg: &SendEvent,
    ) -> Option<ResponseFuture<Result<OwnedEventId>>> {
        let ours = self.core.server_name().to_owned();
        let state = &self.state;
        let RoomKind::Participant(p) = &mut self.kind else {
            return None;
        };
        let hub = p.hub().to_owned();
        let known = msg.txn.as_ref().and_then(|t| p.lpdu_for_txn(t));
        let (lpdu_id, lpdu) = match known {
            Some(x) => x,
            None => {
                let mut draft = msg.draft.clone();
                if draft.origin_server_ts == 0 {
                    draft.origin_server_ts = storage::now_ms() as u64;
                }
                let lpdu = match lm::build::lpdu(&draft, &self.room_id, &hub, &ours, &self.core.key)
                {
                    Ok(l) => l,
                    Err(e) => return Some(reply_now(Err(Error::BadJson(e.to_string())))),
                };
                // The hub decides, but a refusal we can foresee needs no round trip.
                let lookup = |t: &str, k: &str| state.get(t, k).cloned();
                let verdict = Subject::of_json(&lpdu).and_then(|s| lm::auth::check(&s, &lookup));
                if let Err(e) = verdict {
                    return Some(reply_now(Err(Error::Forbidden(format!(
                        "event not allowed: {}",
                        e.0
                    )))));
                }
                (lm::event_id(&lpdu), lpdu)
            }
        };
        let rx = p.wait(&lpdu_id, &lpdu, msg.txn.clone());
        let link = self.core.delivery.hub_link();
        Some(Box::pin(async move {
            let link = link.ok_or_else(|| Error::forbidden("federation is disabled"))?;
            link.send_lpdu(hub.to_string(), lpdu, lpdu_id.to_string())
                .await?;
            match tokio::time::timeout(ECHO_TIMEOUT, rx).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err(Error::internal("room actor stopped before the echo")),
                Err(_) => Err(Error::Remote(format!(
                    "{hub} accepted the event but has not sent it back yet; \
                     retry with the same transaction ID"
                ))),
            }
        }))
    }

    /// Completes a participant's LPDU on the tip and checks it against the current state.
    fn lm_complete(&self, lpdu: &CanonicalJsonObject) -> Result<Pdu> {
        let subject = Subject::of_json(lpdu).map_err(|e| Error::BadJson(e.0))?;
        if subject.room_id != self.room_id.as_str() {
            return Err(Error::bad_json("the LPDU is for another room"));
        }
        let sender = OwnedUserId::try_from(subject.sender.as_str())
            .map_err(|_| Error::bad_json("the LPDU's sender is not a user ID"))?;
        let auth_events = auth::select_auth_events(
            self.version,
            &subject.kind,
            &sender,
            subject.state_key.as_deref(),
            &subject.content,
            &self.state.ids(),
        )
        .map_err(|e| Error::BadJson(e.0))?;
        let tip = self
            .lm_tip()
            .ok_or_else(|| Error::internal("the room's line has no single tip"))?;
        let pdu = lm::build::complete(
            lpdu,
            tip,
            &auth_events,
            self.core.server_name(),
            &self.core.key,
        )
        .map_err(|e| Error::BadJson(e.to_string()))?;
        auth::check_against_state(self.version, &pdu, self.state.as_map())
            .map_err(|e| Error::Forbidden(format!("event not allowed: {}", e.0)))?;
        Ok(pdu)
    }

    fn plain_plan(pdu: Arc<Pdu>, local: bool) -> AppendPlan {
        AppendPlan {
            pdu,
            rejected: None,
            soft_failed: false,
            state_before: None,
            new_current: None,
            events: HashMap::new(),
            local,
            txn: None,
            reply: None,
        }
    }
}

fn server_of_user(user: &str) -> &str {
    user.split_once(':').map(|(_, s)| s).unwrap_or_default()
}

impl Handler<HubAppend> for RoomActor {
    type Result = ResponseFuture<Result<Appended>>;

    fn handle(&mut self, msg: HubAppend, ctx: &mut Self::Context) -> Self::Result {
        self.last_active = Instant::now();
        if let Err(e) = self.check_ready() {
            return reply_now(Err(e));
        }
        let RoomKind::Hub(hub) = &self.kind else {
            return reply_now(Err(Error::WrongServer(
                "this server is not the hub of this room".into(),
            )));
        };
        let lpdu_id = match &msg.input {
            HubInput::Lpdu(l) => Some(lm::event_id(l)),
            HubInput::Local(_) => None,
        };
        // An LPDU completed before: answer with the event it became, once durable.
        if let Some(done) = lpdu_id.as_deref().and_then(|id| hub.completed(id)) {
            let (tx, rx) = oneshot::channel();
            let appended = Appended {
                pdu: (*done).clone(),
                invite_target: None,
                invite_state: Vec::new(),
                already: true,
            };
            match self
                .pending
                .iter_mut()
                .find(|p| p.pdu.event_id() == done.event_id())
            {
                Some(p) => p.replies.push(tx),
                None => {
                    let _ = tx.send(Ok(done.owned_event_id()));
                }
            }
            return Box::pin(async move {
                rx.await
                    .unwrap_or_else(|_| Err(Error::internal("room actor stopped")))?;
                Ok(appended)
            });
        }
        let built = match &msg.input {
            HubInput::Local(draft) => self.build_local(draft),
            HubInput::Lpdu(l) => self.lm_complete(l),
        };
        let mut pdu = match built {
            Ok(p) => p,
            Err(e) => return reply_now(Err(e)),
        };
        let ours = self.core.server_name().to_owned();
        let (invite_target, invite_state) = match (pdu.membership().as_deref(), pdu.state_key()) {
            (Some("invite"), Some(target)) => {
                let server = server_of_user(target).to_owned();
                let needs = server != ours && !self.state.joined_servers().contains(&server);
                (
                    needs.then_some(server),
                    self.state.stripped_for_invite(Some(pdu.sender().as_str())),
                )
            }
            _ => (None, Vec::new()),
        };
        if msg.dry_run {
            return reply_now(Ok(Appended {
                pdu,
                invite_target,
                invite_state,
                already: false,
            }));
        }
        if let Some(target) = &invite_target {
            match &msg.countersigned {
                // Placed on the same tip as the copy the invitee's server signed: keep its
                // signature (placed elsewhere, the event differs and nobody checks it).
                Some(c) if lm::event_id(c) == pdu.event_id().as_str() => {
                    let mut obj = pdu.json();
                    if let (
                        Some(ruma::CanonicalJsonValue::Object(theirs)),
                        Some(ruma::CanonicalJsonValue::Object(mine)),
                    ) = (c.get("signatures"), obj.get_mut("signatures"))
                        && let Some(sig) = theirs.get(target)
                    {
                        mine.insert(target.clone(), sig.clone());
                    }
                    match Pdu::from_json_with_id(pdu.owned_event_id(), obj, self.version) {
                        Ok(p) => pdu = p,
                        Err(e) => return reply_now(Err(Error::internal(e.to_string()))),
                    }
                }
                Some(_) => {}
                None if msg.fanout.add.as_deref() == Some(target.as_str()) => {}
                None => {
                    return reply_now(Err(Error::BadState(format!(
                        "{target} must sign this invite first"
                    ))));
                }
            }
        }
        let pdu = Arc::new(pdu);
        if let RoomKind::Hub(hub) = &mut self.kind {
            if msg.fanout.skip.is_some() || msg.fanout.add.is_some() {
                hub.change_fanout(pdu.owned_event_id(), msg.fanout.clone());
            }
            if let Some(id) = &lpdu_id {
                hub.remember(id.clone(), Arc::clone(&pdu));
                self.batch
                    .lpdus
                    .push((id.clone(), pdu.event_id().to_string()));
            }
        }
        let (tx, rx) = oneshot::channel();
        let mut plan = Self::plain_plan(Arc::clone(&pdu), true);
        plan.reply = Some(tx);
        self.append(plan);
        self.schedule_flush(ctx);
        Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err(Error::internal("room actor stopped")))?;
            Ok(Appended {
                pdu: (*pdu).clone(),
                invite_target,
                invite_state,
                already: false,
            })
        })
    }
}

impl Handler<ParticipantReceive> for RoomActor {
    type Result = AtomicResponse<Self, Vec<Received>>;

    fn handle(&mut self, msg: ParticipantReceive, _ctx: &mut Self::Context) -> Self::Result {
        self.last_active = Instant::now();
        let refuse_all = |why: &str, n: usize| {
            AtomicResponse::new(Box::pin(actix::fut::ready(vec![
                Received::Refused(
                    why.to_owned()
                );
                n
            ])))
        };
        let n = msg.pdus.len();
        match self.status {
            Status::Ready => {}
            Status::New | Status::Missing if msg.joining => {
                self.status = Status::New;
                self.set_version(RoomVersion::Linearized);
            }
            Status::New | Status::Missing => return refuse_all("unknown room", n),
            Status::Loading | Status::Broken => return refuse_all("room unavailable", n),
        }
        let hub = match &self.kind {
            RoomKind::Participant(p) => p.hub().to_owned(),
            RoomKind::Dag => return refuse_all("not a Linearized Matrix room", n),
            RoomKind::Hub(_) => return refuse_all("this server is the hub of this room", n),
        };
        let mut state_before = msg.state_before_first;
        let mut out = Vec::with_capacity(n);
        for pdu in msg.pdus {
            let pdu = Arc::new(pdu);
            let id = pdu.owned_event_id();
            if self.lm_tip() == Some(&id) || self.pending.iter().any(|p| p.pdu.event_id() == id) {
                out.push(Received::Known);
                continue;
            }
            // Provenance: the hub made it (completed an LPDU naming it, or its own user's).
            let json = pdu.json();
            let named_hub = json.get("hub_server").and_then(|h| match h {
                ruma::CanonicalJsonValue::String(s) => Some(s.as_str()),
                _ => None,
            });
            let by_hub = match named_hub {
                Some(h) => h == hub,
                None => pdu.sender().server_name().as_str() == hub,
            };
            if !by_hub {
                out.push(Received::Refused(format!(
                    "not an event of the room's hub {hub}"
                )));
                continue;
            }
            let mut plan = Self::plain_plan(Arc::clone(&pdu), false);
            if self.status == Status::New {
                if let Some(state) = state_before.take() {
                    // A state-only send_join answer: the join starts our copy of the line.
                    let mut ids = StateIds::new();
                    for e in &state {
                        if let Some(k) = e.state_key() {
                            ids.insert((e.kind_str(), k.to_owned()), e.event_id().to_string());
                            plan.events
                                .insert(e.event_id().to_string(), Arc::new(e.clone()));
                        }
                    }
                    plan.state_before = Some(ids);
                } else if pdu.kind_str() != "m.room.create" || !pdu.prev_events().is_empty() {
                    out.push(Received::Refused(
                        "our copy of the line must start with the create event".into(),
                    ));
                    continue;
                }
                self.status = Status::Ready;
                self.batch.new_room = Some((self.version.as_str().to_owned(), None));
            } else {
                let Some(prev) = pdu.prev_events().first() else {
                    out.push(Received::Refused("a second create event".into()));
                    continue;
                };
                if self.lm_tip() != Some(prev) {
                    out.push(Received::Gap(prev.clone()));
                    continue;
                }
                // Police the hub (§7): the hub's word stands, but say when it breaks a rule.
                let lookup = |t: &str, k: &str| self.state.get(t, k).cloned();
                let index = self.state.index();
                let verdict = lm::auth::check(&Subject::of_pdu(&pdu), &lookup)
                    .and_then(|()| lm::auth::check_auth_events(&pdu, &|id| index.get(id).cloned()));
                if let Err(e) = verdict {
                    tracing::warn!(room = %self.room_id, event = %id, hub = %hub, reason = %e.0, "the hub appended an event that fails the auth rules here");
                }
            }
            // Our own send coming back: answer whoever waits for it.
            let waiter = lm::lpdu_event_id(&pdu.json()).and_then(|l| match &mut self.kind {
                RoomKind::Participant(p) => p.take_waiter(&l),
                _ => None,
            });
            if let Some(w) = &waiter {
                plan.txn = w.txn.clone();
            }
            self.append(plan);
            if let Some(w) = waiter
                && let Some(last) = self.pending.last_mut()
            {
                last.replies.extend(w.replies);
            }
            out.push(Received::Appended);
        }
        AtomicResponse::new(Box::pin(self.flush_fut().map(move |ok, _, _| {
            if ok {
                out
            } else {
                vec![Received::Refused("storage failure".into()); n]
            }
        })))
    }
}
