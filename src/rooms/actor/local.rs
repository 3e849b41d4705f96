//! Local events: building and signing an event on the room's in-memory position
//! (extremities, depth, auth events from current state), checking it against the current
//! state, and the messages that ask for one (`SendEvent`, `InitRoom`, `BuildEvent`).

use super::*;

impl RoomActor {
    /// Builds a local event on top of the current position and checks it.
    pub(super) fn build_local(&self, draft: &EventDraft) -> Result<Pdu> {
        self.kind.may_build_local()?;
        let auth_events = auth::select_auth_events_with(
            self.version,
            &draft.kind,
            &draft.sender,
            draft.state_key.as_deref(),
            &draft.content,
            |key| self.state.as_map().get(key).map(|e| e.owned_event_id()),
        )
        .map_err(|e| Error::BadJson(e.0))?;
        let prev_events: Vec<OwnedEventId> = self
            .extremities
            .iter()
            .rev()
            .take(MAX_PREV_EVENTS)
            .cloned()
            .collect();
        let position = Position {
            version: self.version,
            room_id: Some(&self.room_id),
            prev_events,
            auth_events,
            depth: self.max_depth + 1,
        };
        let mut draft = draft.clone();
        if draft.origin_server_ts == 0 {
            draft.origin_server_ts = storage::now_ms() as u64;
        }
        let index = if self.version.cites_event_hashes() {
            self.state.index()
        } else {
            HashMap::new()
        };
        let hashes = |id: &ruma::EventId| {
            self.extremity_hashes
                .get(id)
                .cloned()
                .or_else(|| index.get(id).and_then(|e| cited_hash(self.version, e)))
        };
        let pdu = builder::build_pdu_citing(
            &draft,
            &position,
            &hashes,
            self.core.server_name(),
            &self.core.key,
        )
        .map_err(|e| match e {
            builder::BuildError::Pdu(weft_protocol::pdu::PduError::TooLarge(_)) => Error::TooLarge,
            e => Error::BadJson(e.to_string()),
        })?;
        auth::check_against_state(self.version, &pdu, self.state.as_map())
            .map_err(|e| Error::Forbidden(format!("event not allowed: {}", e.0)))?;
        Ok(pdu)
    }
}

impl Handler<SendEvent> for RoomActor {
    type Result = ResponseFuture<Result<OwnedEventId>>;

    fn handle(&mut self, msg: SendEvent, ctx: &mut Self::Context) -> Self::Result {
        self.last_active = Instant::now();
        if let Err(e) = self.check_ready() {
            return reply_now(Err(e));
        }
        if let Some(txn) = &msg.txn
            && let Some(id) = self.txns.get(txn).cloned()
        {
            // A retry of a transaction this actor already took: same answer, once durable.
            if let Some(p) = self.pending.iter_mut().find(|p| p.pdu.event_id() == id) {
                let (tx, rx) = oneshot::channel();
                p.replies.push(tx);
                return await_reply(rx);
            }
            return reply_now(Ok(id));
        }
        if let Some(sent_to_hub) = self.lm_send(&msg) {
            return sent_to_hub;
        }
        let pdu = match self.build_local(&msg.draft) {
            Ok(p) => p,
            Err(e) => return reply_now(Err(e)),
        };
        let (tx, rx) = oneshot::channel();
        self.append(AppendPlan {
            pdu: Arc::new(pdu),
            rejected: None,
            soft_failed: false,
            state_before: None,
            new_current: None,
            events: HashMap::new(),
            local: true,
            txn: msg.txn,
            reply: Some(tx),
        });
        if let (Some(at), Some(pos)) = (msg.accepted, self.pending.last().and_then(|p| p.stream)) {
            crate::observe::wake::accepted(pos, at);
        }
        self.schedule_flush(ctx);
        await_reply(rx)
    }
}

impl Handler<InitRoom> for RoomActor {
    type Result = ResponseFuture<Result<Vec<OwnedEventId>>>;

    fn handle(&mut self, msg: InitRoom, ctx: &mut Self::Context) -> Self::Result {
        self.last_active = Instant::now();
        if self.status != Status::New {
            return reply_now(Err(Error::RoomInUse("room already exists".into())));
        }
        if msg.create.room_id() != &*self.room_id {
            return reply_now(Err(Error::internal("create event names another room")));
        }
        self.set_version(msg.version);
        let empty = StateMap::new();
        if let Err(e) = auth::check_against_state(self.version, &msg.create, &empty) {
            return reply_now(Err(Error::BadJson(format!(
                "invalid create event: {}",
                e.0
            ))));
        }
        self.status = Status::Ready;
        self.batch.new_room = Some((
            self.version.as_str().to_owned(),
            Some(msg.create.sender().to_string()),
        ));
        let mut receivers = Vec::new();
        let mut failure = None;
        let mut next = Some(msg.create);
        let mut drafts = msg.drafts.iter();
        loop {
            let pdu = match next.take() {
                Some(p) => p,
                None => match drafts.next() {
                    None => break,
                    Some(d) => match self.build_local(d) {
                        Ok(p) => p,
                        Err(e) => {
                            failure = Some(e);
                            break;
                        }
                    },
                },
            };
            let (tx, rx) = oneshot::channel();
            receivers.push(rx);
            self.append(AppendPlan {
                pdu: Arc::new(pdu),
                rejected: None,
                soft_failed: false,
                state_before: None,
                new_current: None,
                events: HashMap::new(),
                local: true,
                txn: None,
                reply: Some(tx),
            });
        }
        if let Some(e) = failure {
            // Nothing was written yet: drop the whole room.
            let positions: Vec<i64> = self.pending.iter().filter_map(|p| p.stream).collect();
            self.core.notifier.complete(&positions, []);
            self.pending.clear();
            self.status = Status::Broken;
            ctx.stop();
            return reply_now(Err(e));
        }
        self.schedule_flush(ctx);
        Box::pin(async move {
            let mut ids = Vec::with_capacity(receivers.len());
            for rx in receivers {
                ids.push(
                    rx.await
                        .unwrap_or_else(|_| Err(Error::internal("room actor stopped")))?,
                );
            }
            Ok(ids)
        })
    }
}

impl Handler<BuildEvent> for RoomActor {
    type Result = Result<(Pdu, RoomVersion, Vec<serde_json::Value>)>;

    fn handle(&mut self, msg: BuildEvent, _ctx: &mut Self::Context) -> Self::Result {
        self.last_active = Instant::now();
        self.check_ready()?;
        let pdu = self.build_local(&msg.draft)?;
        let inviter = msg.draft.sender.to_string();
        Ok((
            pdu,
            self.version,
            self.state.invite_state_pdus(Some(&inviter)),
        ))
    }
}
