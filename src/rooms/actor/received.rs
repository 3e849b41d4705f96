//! Received PDUs (signatures and hashes already checked): the memory path
//! (`admission::memory`), the database path through `admission::prepare` on a blocking
//! thread, soft-fail against the current state (`admission::soft_fail`), and the
//! `InboundPdus` and `AppendHistory` messages.

use super::*;

impl RoomActor {
    /// Tries the memory path for a received PDU (`admission::memory`); `None` when history
    /// must be loaded from the database.
    pub(super) fn try_fast(&mut self, pdu: &Arc<Pdu>, local: bool) -> Option<InboundOutcome> {
        if self.status != Status::Ready {
            return None;
        }
        if self.rejected.contains(pdu.event_id()) {
            return Some(InboundOutcome::Rejected("rejected before".into()));
        }
        if self.recent.knows(pdu.event_id())
            || self
                .pending
                .iter()
                .any(|p| p.pdu.event_id() == pdu.event_id())
        {
            // Appended already (the same PDU twice in flight): de-duplicated.
            return Some(InboundOutcome::Accepted);
        }
        let admit = memory::prepare(
            self.version,
            pdu,
            &self.recent,
            &self.state.events,
            &self.extremities,
        );
        let (state_before, new_current, events) = match admit {
            memory::Admit::NotHere => return None,
            memory::Admit::Rejected(reason) => {
                if let Some(deferred) = self.defer(pdu, &reason, local) {
                    return Some(deferred);
                }
                self.append(AppendPlan {
                    pdu: Arc::clone(pdu),
                    rejected: Some(reason.clone()),
                    soft_failed: false,
                    state_before: None,
                    new_current: None,
                    events: HashMap::new(),
                    local,
                    txn: None,
                    reply: None,
                });
                return Some(InboundOutcome::Rejected(reason));
            }
            memory::Admit::Ready {
                state_before,
                new_current,
                events,
            } => (state_before, new_current, events),
        };
        // Step 6 (soft-fail against the current state): the same check as step 5 when the
        // state before the event is the current state.
        let soft = match state_before {
            None => Ok(()),
            Some(_) => soft_fail::check(self.version, pdu, &self.state.events),
        };
        if let Err(reason) = &soft {
            if let Some(deferred) = self.defer(pdu, reason, local) {
                return Some(deferred);
            }
            tracing::info!(room = %self.room_id, event = %pdu.event_id(), reason = %reason, "soft-failed event");
        }
        self.append(AppendPlan {
            pdu: Arc::clone(pdu),
            rejected: None,
            soft_failed: soft.is_err(),
            state_before,
            new_current,
            events,
            local,
            txn: None,
            reply: None,
        });
        Some(match soft {
            Ok(()) => InboundOutcome::Accepted,
            Err(reason) => InboundOutcome::SoftFailed(reason),
        })
    }

    /// Applies the result of `admission::prepare`.
    pub(super) fn apply_prepared(
        &mut self,
        pdu: Arc<Pdu>,
        prepared: StorageResult<Prepared>,
        local: bool,
    ) -> InboundOutcome {
        match prepared {
            Err(e) => InboundOutcome::Error(e.to_string()),
            Ok(Prepared::Known) => InboundOutcome::Accepted,
            Ok(Prepared::Missing { prev, auth }) => {
                if self.cites_deferred(&prev)
                    && let Some(deferred) = self.defer(&pdu, "cites a deferred event", local)
                {
                    return deferred;
                }
                InboundOutcome::Missing { prev, auth }
            }
            Ok(Prepared::Rejected(reason)) => {
                if let Some(deferred) = self.defer(&pdu, &reason, local) {
                    return deferred;
                }
                self.append(AppendPlan {
                    pdu,
                    rejected: Some(reason.clone()),
                    soft_failed: false,
                    state_before: None,
                    new_current: None,
                    events: HashMap::new(),
                    local: false,
                    txn: None,
                    reply: None,
                });
                InboundOutcome::Rejected(reason)
            }
            Ok(Prepared::Ready(ready)) => {
                if self.status == Status::New {
                    // The first event we hold of a room joined over federation.
                    self.status = Status::Ready;
                    self.batch.new_room = Some((self.version.as_str().to_owned(), None));
                }
                let soft = soft_fail::check(self.version, &pdu, &self.state.events);
                let soft_failed = soft.is_err() && !self.state.events.is_empty();
                if soft_failed
                    && let Some(deferred) = self.defer(
                        &pdu,
                        soft.as_ref().err().map(String::as_str).unwrap_or(""),
                        local,
                    )
                {
                    return deferred;
                }
                if let Err(e) = &soft
                    && soft_failed
                {
                    tracing::info!(room = %self.room_id, event = %pdu.event_id(), reason = %e, "soft-failed event");
                }
                let ready = *ready;
                // What the database gave (state and auth chain events) stays for the memory
                // path's later lookups.
                self.recent.cache_events(
                    ready
                        .fetched
                        .iter()
                        .cloned()
                        .chain(ready.events.values().cloned()),
                );
                self.append(AppendPlan {
                    pdu,
                    rejected: None,
                    soft_failed,
                    state_before: Some(ready.state_before),
                    new_current: Some(ready.new_current),
                    events: ready.events,
                    local,
                    txn: None,
                    reply: None,
                });
                if soft_failed {
                    InboundOutcome::SoftFailed(soft.err().unwrap_or_default())
                } else {
                    InboundOutcome::Accepted
                }
            }
        }
    }

    pub(super) fn inbound_input(
        &self,
        pdu: &Arc<Pdu>,
        state_hint: Option<StateIds>,
        checked: &[Arc<Pdu>],
    ) -> InboundInput {
        let mut known: HashMap<String, Arc<Pdu>> = checked
            .iter()
            .chain(self.state.events.values())
            .map(|e| (e.event_id().to_string(), Arc::clone(e)))
            .collect();
        for p in &self.pending {
            known.insert(p.pdu.event_id().to_string(), Arc::clone(&p.pdu));
        }
        InboundInput {
            version: self.version,
            pdu: Arc::clone(pdu),
            extremities: self.extremities.iter().map(|e| e.to_string()).collect(),
            current_ids: self.state.string_ids(),
            known,
            state_hint,
        }
    }

    /// Processes received PDUs one by one, then commits them together.
    /// `checked`: events the caller checked and stored just before
    /// ([`InboundPdus::checked_events`]), looked up there before the database.
    pub(super) fn process_inbound(
        mut items: VecDeque<(Arc<Pdu>, Option<StateIds>)>,
        mut results: Vec<InboundOutcome>,
        local: bool,
        checked: Arc<Vec<Arc<Pdu>>>,
        record: Option<Arc<InboundTxnRecord>>,
    ) -> ResponseActFuture<Self, Vec<InboundOutcome>> {
        Box::pin(actix::fut::ready(()).then(move |(), act: &mut Self, _ctx| {
            let Some((pdu, hint)) = items.pop_front() else {
                // The transaction's answer goes into the same commit as its PDUs.
                let record = record.and_then(|r| {
                    let body = (r.answer)(&results)?;
                    act.batch
                        .inbound_txns
                        .push((r.origin.clone(), r.txn_id.clone(), body));
                    Some(r)
                });
                return Box::pin(act.flush_fut().map(move |ok, _, _| {
                    if ok {
                        if let Some(r) = record {
                            r.written.store(true, std::sync::atomic::Ordering::Release);
                        }
                        results
                    } else {
                        results
                            .into_iter()
                            .map(|_| InboundOutcome::Error("storage failure".into()))
                            .collect()
                    }
                })) as ResponseActFuture<Self, Vec<InboundOutcome>>;
            };
            if hint.is_none()
                && let Some(outcome) = act.try_fast(&pdu, local)
            {
                crate::observe::metrics::admission_path(true);
                results.push(outcome);
                return Self::process_inbound(items, results, local, checked, record);
            }
            let for_input = Arc::clone(&checked);
            Box::pin(
                act.flush_fut()
                    .then(move |_, act: &mut Self, _| {
                        let input = act.inbound_input(&pdu, hint, &for_input);
                        let db = act.core.db.clone();
                        crate::observe::metrics::admission_path(false);
                        let timer = crate::observe::metrics::SlowPath::start("inbound_prepare");
                        async move {
                            (
                                pdu,
                                timer.finish(db.read(move |c| inbound::prepare(c, input)).await),
                            )
                        }
                        .into_actor(act)
                    })
                    .then(move |(pdu, prepared), act: &mut Self, _| {
                        let outcome = act.apply_prepared(pdu, prepared, local);
                        results.push(outcome);
                        Self::process_inbound(items, results, local, checked, record)
                    }),
            )
        }))
    }
}

impl Handler<InboundPdus> for RoomActor {
    type Result = AtomicResponse<Self, Vec<InboundOutcome>>;

    fn handle(&mut self, msg: InboundPdus, _ctx: &mut Self::Context) -> Self::Result {
        self.last_active = Instant::now();
        let fail_all = |reason: &str, n: usize| {
            AtomicResponse::new(Box::pin(actix::fut::ready(vec![
                InboundOutcome::Error(
                    reason.to_owned()
                );
                n
            ])))
        };
        if !self.kind.takes_dag_input() || msg.version.is_some_and(|v| v.is_linearized()) {
            // LM rooms take PDUs in line order only (`ParticipantReceive`, `HubAppend`).
            return fail_all(
                "a Linearized Matrix room takes no DAG input",
                msg.pdus.len(),
            );
        }
        match self.status {
            Status::Ready => {}
            Status::New if msg.version.is_some() => {
                if let Some(v) = msg.version {
                    self.version = v;
                }
            }
            Status::Missing if msg.version.is_some() => {
                // A room we have no copy of yet, being joined now.
                self.status = Status::New;
                if let Some(v) = msg.version {
                    self.version = v;
                }
            }
            Status::Missing | Status::New => return fail_all("unknown room", msg.pdus.len()),
            Status::Loading | Status::Broken => {
                return fail_all("room unavailable", msg.pdus.len());
            }
        }
        let items: VecDeque<(Arc<Pdu>, Option<StateIds>)> = msg.pdus.into_iter().collect();
        AtomicResponse::new(Self::process_inbound(
            items,
            Vec::new(),
            msg.local,
            Arc::new(msg.checked_events),
            msg.txn_record,
        ))
    }
}

impl Handler<AppendHistory> for RoomActor {
    type Result = AtomicResponse<Self, Result<()>>;

    fn handle(&mut self, msg: AppendHistory, _ctx: &mut Self::Context) -> Self::Result {
        self.last_active = Instant::now();
        if let Err(e) = self.check_ready() {
            return AtomicResponse::new(Box::pin(actix::fut::ready(Err(e))));
        }
        if !self.kind.takes_dag_input() {
            return AtomicResponse::new(Box::pin(actix::fut::ready(Err(Error::forbidden(
                "a Linearized Matrix room takes no DAG history",
            )))));
        }
        self.batch.groups.extend(msg.groups);
        for (pdu, row) in msg.events {
            if row.rejected.is_some() {
                self.rejected.insert(pdu.owned_event_id());
            }
            self.pending.push(Pending {
                pdu,
                persist: PersistEvent {
                    row,
                    txn: None,
                    redaction: None,
                },
                // Backfill positions are not the notifier's: nothing to complete.
                stream: None,
                replies: Vec::new(),
            });
        }
        AtomicResponse::new(Box::pin(self.flush_fut().map(|ok, _, _| {
            if ok {
                Ok(())
            } else {
                Err(Error::internal("could not store backfilled history"))
            }
        })))
    }
}
