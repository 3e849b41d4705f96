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

    /// Processes received PDUs one by one (the memory path synchronously, the database
    /// path while the actor holds its mailbox) and answers their outcomes; the caller
    /// waits for the commit of the batch holding them ([`RoomActor::await_commit`]).
    /// `checked`: events the caller checked and stored just before
    /// ([`InboundPdus::checked_events`]), looked up there before the database.
    pub(super) fn process_inbound(
        mut items: VecDeque<(Arc<Pdu>, Option<StateIds>)>,
        mut results: Vec<InboundOutcome>,
        local: bool,
        checked: Arc<Vec<Arc<Pdu>>>,
    ) -> ResponseActFuture<Self, Vec<InboundOutcome>> {
        // The memory path needs no future per PDU: run it in a loop until a PDU needs the
        // database (or none is left).
        Box::pin(actix::fut::ready(()).then(move |(), act: &mut Self, _ctx| {
            let (pdu, hint) = loop {
                let Some((pdu, hint)) = items.pop_front() else {
                    return Box::pin(actix::fut::ready(results))
                        as ResponseActFuture<Self, Vec<InboundOutcome>>;
                };
                if hint.is_none()
                    && let Some(outcome) = act.try_fast(&pdu, local)
                {
                    crate::observe::metrics::admission_path(true);
                    results.push(outcome);
                    continue;
                }
                break (pdu, hint);
            };
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
                        Self::process_inbound(items, results, local, checked)
                    }),
            )
        }))
    }

    /// Hands a received message's outcomes to the batch that will commit its PDUs: the
    /// transaction's answer (when the caller gave its record and every outcome is final)
    /// joins the batch, and the caller is answered from the writer thread once that batch
    /// commits (see `flush.rs`), so messages from several origins that queued up meanwhile
    /// share one commit. With nothing left to commit (every PDU decided before, or missing
    /// events) the caller is answered at once: no flush is in flight while the actor
    /// handles a message (`Flush` holds the mailbox), so nothing it answered is uncommitted.
    pub(super) fn await_commit(
        &mut self,
        results: Vec<InboundOutcome>,
        record: Option<Arc<InboundTxnRecord>>,
        tx: Option<InboundReplyTx>,
        ctx: &mut Context<Self>,
    ) {
        let stamps = record.as_ref().map(|r| Arc::clone(&r.stamps));
        if let Some(s) = &stamps {
            s.stamp(crate::observe::send::Point::ActorDone);
        }
        let record = record.and_then(|r| {
            let body = (r.answer)(&results)?;
            self.batch
                .inbound_txns
                .push((r.origin.clone(), r.txn_id.clone(), body));
            Some(r)
        });
        let waiter = InboundWaiter {
            results,
            record,
            stamps,
            tx,
        };
        if self.nothing_to_flush() {
            waiter.answer(true);
            return;
        }
        self.inbound_waiters.push(waiter);
        self.schedule_flush(ctx);
    }
}

/// Where the outcomes of an `InboundPdus` go (the message's own reply channel).
pub type InboundReplyTx = actix::dev::OneshotSender<Vec<InboundOutcome>>;

/// A received message's outcomes waiting for the commit of the batch holding its PDUs
/// (and its transaction's answer, when `record` is set). Answered by the writer's
/// after-commit hook; dropped unanswered (the actor stopped, the job never ran), it
/// answers errors, never silence: a closed reply channel would make the registry send the
/// message again.
pub(super) struct InboundWaiter {
    results: Vec<InboundOutcome>,
    record: Option<Arc<InboundTxnRecord>>,
    stamps: Option<Arc<crate::observe::send::Stamps>>,
    tx: Option<InboundReplyTx>,
}

impl InboundWaiter {
    /// The batch went to the writer.
    pub(super) fn flushing(&self) {
        if let Some(s) = &self.stamps {
            s.stamp(crate::observe::send::Point::FlushBegan);
        }
    }

    /// The batch committed (`true`) or failed; `writer`: when the writer began the job and
    /// when its statements were done.
    pub(super) fn answer_after(
        mut self,
        committed: bool,
        writer: (Option<Instant>, Option<Instant>),
    ) {
        if let Some(s) = &self.stamps {
            use crate::observe::send::Point;
            s.stamp_at(Point::WriterBegan, writer.0);
            s.stamp_at(Point::Written, writer.1);
            s.stamp(Point::Committed);
        }
        self.send(committed);
    }

    pub(super) fn answer(mut self, committed: bool) {
        self.send(committed);
    }

    fn send(&mut self, committed: bool) {
        let Some(tx) = self.tx.take() else {
            return;
        };
        let results = std::mem::take(&mut self.results);
        if committed {
            if let Some(r) = &self.record {
                r.written.store(true, std::sync::atomic::Ordering::Release);
            }
            let _ = tx.send(results);
        } else {
            let _ = tx.send(
                results
                    .into_iter()
                    .map(|_| InboundOutcome::Error("storage failure".into()))
                    .collect(),
            );
        }
    }
}

impl Drop for InboundWaiter {
    fn drop(&mut self) {
        self.send(false);
    }
}

/// The reply of `InboundPdus`: the outcomes now (refused before any processing), or a
/// processing future after which the caller waits for the commit
/// ([`RoomActor::await_commit`]).
pub enum InboundReply {
    Now(Vec<InboundOutcome>),
    Later {
        process: ResponseActFuture<RoomActor, Vec<InboundOutcome>>,
        record: Option<Arc<InboundTxnRecord>>,
    },
}

impl actix::dev::MessageResponse<RoomActor, InboundPdus> for InboundReply {
    fn handle(self, ctx: &mut Context<RoomActor>, tx: Option<InboundReplyTx>) {
        match self {
            InboundReply::Now(outcomes) => {
                if let Some(tx) = tx {
                    let _ = tx.send(outcomes);
                }
            }
            InboundReply::Later { process, record } => {
                // Processing holds the mailbox (as `AtomicResponse` would); the wait for the
                // commit does not.
                ctx.wait(process.map(move |results, act: &mut RoomActor, ctx| {
                    act.await_commit(results, record, tx, ctx)
                }));
            }
        }
    }
}

impl Handler<InboundPdus> for RoomActor {
    type Result = InboundReply;

    fn handle(&mut self, msg: InboundPdus, _ctx: &mut Self::Context) -> Self::Result {
        self.last_active = Instant::now();
        if let Some(r) = &msg.txn_record {
            r.stamps.stamp(crate::observe::send::Point::ActorBegan);
        }
        let fail_all = |reason: &str, n: usize| {
            InboundReply::Now(vec![InboundOutcome::Error(reason.to_owned()); n])
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
        InboundReply::Later {
            process: Self::process_inbound(
                items,
                Vec::new(),
                msg.local,
                Arc::new(msg.checked_events),
            ),
            record: msg.txn_record,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn waiter(
        record: Option<Arc<InboundTxnRecord>>,
    ) -> (InboundWaiter, oneshot::Receiver<Vec<InboundOutcome>>) {
        let (tx, rx) = oneshot::channel();
        let w = InboundWaiter {
            results: vec![
                InboundOutcome::Accepted,
                InboundOutcome::Rejected("no".into()),
            ],
            record,
            stamps: None,
            tx: Some(tx),
        };
        (w, rx)
    }

    fn record() -> Arc<InboundTxnRecord> {
        Arc::new(InboundTxnRecord {
            origin: "a.example".into(),
            txn_id: "t".into(),
            answer: Box::new(|_| Some("{}".into())),
            written: std::sync::atomic::AtomicBool::new(false),
            stamps: Default::default(),
        })
    }

    #[test]
    fn a_committed_waiter_answers_its_outcomes_and_marks_the_answer_written() {
        let r = record();
        let (w, mut rx) = waiter(Some(Arc::clone(&r)));
        w.answer_after(true, (None, None));
        let got = rx.try_recv().expect("answered");
        assert_eq!(
            got,
            vec![
                InboundOutcome::Accepted,
                InboundOutcome::Rejected("no".into())
            ]
        );
        assert!(r.is_written());
    }

    #[test]
    fn a_failed_or_dropped_waiter_answers_errors_and_leaves_the_answer_unwritten() {
        // A dropped reply channel would make the registry send the PDUs again; an error
        // answer never claims they were stored.
        let r = record();
        let (w, mut rx) = waiter(Some(Arc::clone(&r)));
        w.answer_after(false, (None, None));
        let got = rx.try_recv().expect("answered");
        assert!(
            got.iter().all(|o| matches!(o, InboundOutcome::Error(_))),
            "{got:?}"
        );
        assert!(!r.is_written());
        let (w, mut rx) = waiter(Some(Arc::clone(&r)));
        drop(w);
        let got = rx.try_recv().expect("answered on drop");
        assert_eq!(got.len(), 2);
        assert!(
            got.iter().all(|o| matches!(o, InboundOutcome::Error(_))),
            "{got:?}"
        );
        assert!(!r.is_written());
    }
}
