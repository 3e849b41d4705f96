//! Appending an accepted (or rejected) event: the one conversion from a checked PDU to a
//! stored row (`row_for`), state groups by difference, forward extremities, current state,
//! the membership index and the outbound queue rows, all into the pending batch.

use super::*;

impl RoomActor {
    pub(super) fn row_for(&self, pdu: &Pdu, stream: Option<i64>) -> NewEvent {
        super::super::persist::event_row(pdu, self.room_id.as_str(), stream)
    }

    /// Lands an event: groups, extremities, current state, memberships, outbound queue.
    pub(super) fn append(&mut self, plan: AppendPlan) {
        let pdu = plan.pdu;
        if let Some(reason) = plan.rejected {
            if self.rejected.len() >= MAX_REMEMBERED_REJECTIONS {
                self.rejected.clear();
            }
            self.rejected.insert(pdu.owned_event_id());
            let mut row = self.row_for(&pdu, None);
            row.rejected = Some(reason);
            self.pending.push(Pending {
                pdu,
                persist: PersistEvent {
                    row,
                    txn: None,
                    redaction: None,
                },
                stream: None,
                replies: plan.reply.into_iter().collect(),
            });
            return;
        }
        let stream = self.core.notifier.allocate();
        let cur_group = self.state.group;
        let simple = plan.state_before.is_none() && plan.new_current.is_none();

        // The state after the event when it is not the current state (`None`: it is).
        let mut after_other: Option<StateIds> = None;
        let (before_group, after_group) = if simple {
            // The common case (local sends, received events extending our extremities): the
            // state before is the current state; only a state event changes it, by one entry.
            let mut after_group = cur_group;
            if !plan.soft_failed
                && let Some(k) = pdu.state_key()
            {
                let key = (pdu.kind_str(), k.to_owned());
                let group = match cur_group {
                    Some((g, d)) if d < MAX_DELTA_DEPTH => NewGroup {
                        id: self.core.next_state_group(),
                        parent: Some((g, d)),
                        entries: vec![(key.clone(), Some(pdu.event_id().to_string()))],
                    },
                    _ => {
                        let mut full = self.state.string_ids();
                        full.insert(key.clone(), pdu.event_id().to_string());
                        NewGroup {
                            id: self.core.next_state_group(),
                            parent: None,
                            entries: full.into_iter().map(|(k, v)| (k, Some(v))).collect(),
                        }
                    }
                };
                after_group = Some((group.id, depth_of(&group)));
                self.batch.groups.push(group);
                let old = self
                    .state
                    .get(&key.0, &key.1)
                    .map(|e| e.event_id().to_string());
                let here = self.core.server_name();
                self.recent
                    .current_changing(&self.state.events, || forks_possible(&self.state, here));
                self.state.events.insert(
                    (StateEventType::from(key.0.as_str()), key.1.clone()),
                    Arc::clone(&pdu),
                );
                self.state.group = after_group;
                self.record_state_change(key, old, &pdu, stream);
            }
            (cur_group, after_group)
        } else {
            let (b, a, after_ids) = self.append_with_state(
                &pdu,
                stream,
                plan.state_before,
                plan.new_current,
                &plan.events,
                plan.soft_failed,
            );
            after_other = after_ids;
            (b, a)
        };
        self.remember_after(&pdu, after_other, &plan.events);
        let mut row = self.row_for(&pdu, Some(stream));
        row.state_before = before_group.map(|g| g.0);
        row.state_after = after_group.map(|g| g.0);
        row.soft_failed = plan.soft_failed;
        let redaction = pdu.redacts().map(|target| {
            let pl = self.state.power_levels(self.version);
            Redaction {
                target: target.to_string(),
                sender: pdu.sender().to_string(),
                has_power: pl.user_level(pdu.sender().as_str()) >= pl.redact_level(),
            }
        });
        if let Some(t) = &plan.txn {
            self.txns.insert(t.clone(), pdu.owned_event_id());
        }

        if !plan.soft_failed {
            // Forward extremities.
            let prevs: HashSet<&OwnedEventId> = pdu.prev_events().iter().collect();
            self.extremities.retain(|e| !prevs.contains(e));
            self.extremities.push(pdu.owned_event_id());
            if let Some(hash) = cited_hash(self.version, &pdu) {
                self.extremity_hashes.insert(pdu.owned_event_id(), hash);
                let exts = &self.extremities;
                self.extremity_hashes.retain(|id, _| exts.contains(id));
            }
            self.max_depth = self.max_depth.max(pdu.depth());
            self.batch.state_group = self.state.group.map(|g| g.0);
            self.batch.extremities = Some(self.extremities.iter().map(|e| e.to_string()).collect());

            // Deliveries to the other servers of the room.
            if plan.local && self.core.delivery.is_on() {
                for d in self.destinations(&pdu) {
                    if !self.core.is_local(&d) && !d.is_empty() {
                        self.batch.queue.push((d, pdu.event_id().to_string()));
                    }
                }
            }
        }
        self.pending.push(Pending {
            pdu,
            persist: PersistEvent {
                row,
                txn: plan.txn,
                redaction,
            },
            stream: Some(stream),
            replies: plan.reply.into_iter().collect(),
        });
    }

    /// The servers a local event goes to: those with a joined user, and a membership event's
    /// target's (Linearized Matrix rooms: what the room's role says).
    pub(super) fn destinations(&mut self, pdu: &Pdu) -> BTreeSet<String> {
        let mut joined = self.state.joined_servers();
        if let Some(p) = &self.partial {
            // Partial state: the servers the host named, until the members are known.
            joined.extend(p.servers.iter().cloned());
        }
        self.kind.destinations(pdu, joined, self.core.server_name())
    }

    /// Records one changed current-state entry (stored state, membership index).
    pub(super) fn record_state_change(
        &mut self,
        key: (String, String),
        old: Option<String>,
        ev: &Arc<Pdu>,
        stream: i64,
    ) {
        if old.as_deref() == Some(ev.event_id().as_str()) {
            return;
        }
        if key.0 == "m.room.member"
            && let Some(m) = ev.membership()
        {
            let invite_state = (m == "invite").then(|| {
                let stripped = self.state.stripped_for_invite(Some(ev.sender().as_str()));
                serde_json::Value::Array(stripped).to_string()
            });
            self.batch.memberships.push(MembershipChange {
                user_id: key.1.clone(),
                membership: m,
                sender: ev.sender().to_string(),
                event_id: ev.event_id().to_string(),
                stream,
                invite_state,
            });
        }
        self.batch
            .current_state_delta
            .push((key, Some(ev.event_id().to_string())));
    }

    /// Lands an event whose state before it (or the room's state after it) is not simply the
    /// current state: state groups by difference, and the new current state from `new_current`.
    pub(super) fn append_with_state(
        &mut self,
        pdu: &Arc<Pdu>,
        stream: i64,
        state_before: Option<StateIds>,
        new_current: Option<StateIds>,
        events: &HashMap<String, Arc<Pdu>>,
        soft_failed: bool,
    ) -> (GroupRef, GroupRef, Option<StateIds>) {
        let cur_ids = self.state.string_ids();
        let cur_group = self.state.group;
        let (before_ids, before_group) = match state_before {
            None => (cur_ids.clone(), cur_group),
            Some(ids) => {
                match make_group(|| self.core.next_state_group(), cur_group, &cur_ids, &ids) {
                    None => (ids, cur_group),
                    Some(g) => {
                        let r = Some((g.id, depth_of(&g)));
                        self.batch.groups.push(g);
                        (ids, r)
                    }
                }
            }
        };
        let mut after_ids = before_ids.clone();
        let mut after_group = before_group;
        if let Some(k) = pdu.state_key() {
            after_ids.insert((pdu.kind_str(), k.to_owned()), pdu.event_id().to_string());
            if let Some(g) = make_group(
                || self.core.next_state_group(),
                before_group,
                &before_ids,
                &after_ids,
            ) {
                after_group = Some((g.id, depth_of(&g)));
                self.batch.groups.push(g);
            }
        }
        if soft_failed {
            return (before_group, after_group, Some(after_ids));
        }
        {
            let after_is_new = new_current.as_ref().is_none_or(|ids| *ids == after_ids);
            let kept_after = (!after_is_new).then(|| after_ids.clone());
            let (new_ids, new_group) = match new_current {
                None => (after_ids, after_group),
                Some(ids) if ids == after_ids => (ids, after_group),
                Some(ids) => {
                    match make_group(|| self.core.next_state_group(), cur_group, &cur_ids, &ids) {
                        None => (ids, cur_group),
                        Some(g) => {
                            let r = Some((g.id, depth_of(&g)));
                            self.batch.groups.push(g);
                            (ids, r)
                        }
                    }
                }
            };
            self.set_current_state(&cur_ids, new_ids, new_group, events, pdu, stream);
            (before_group, after_group, kept_after)
        }
    }

    /// Remembers the state after an appended event for the memory path: the current state
    /// (`after == None`), or a snapshot of `after` built from events in memory (forgotten
    /// when one is missing or the state is too big to copy).
    fn remember_after(
        &mut self,
        pdu: &Arc<Pdu>,
        after: Option<StateIds>,
        events: &HashMap<String, Arc<Pdu>>,
    ) {
        let Some(ids) = after else {
            let now = self.recent.current();
            self.recent.record(pdu.owned_event_id(), now);
            return;
        };
        if ids.len() > memory::MAX_SNAPSHOT_STATE {
            return;
        }
        let mut map: StateMap<Arc<Pdu>> = StateMap::new();
        for ((t, k), id) in &ids {
            let key = (StateEventType::from(t.as_str()), k.clone());
            let ev = if pdu.event_id().as_str() == id {
                Some(Arc::clone(pdu))
            } else {
                events.get(id).cloned().or_else(|| {
                    self.state
                        .events
                        .get(&key)
                        .filter(|e| e.event_id().as_str() == id)
                        .cloned()
                })
            };
            match ev {
                Some(e) => {
                    map.insert(key, e);
                }
                None => return,
            }
        }
        self.recent.record(
            pdu.owned_event_id(),
            After::Snap(Arc::new(Snapshot::new(map))),
        );
    }

    /// Replaces the in-memory current state and records what changed.
    pub(super) fn set_current_state(
        &mut self,
        old_ids: &StateIds,
        new_ids: StateIds,
        group: Option<(i64, i32)>,
        extra: &HashMap<String, Arc<Pdu>>,
        pdu: &Arc<Pdu>,
        stream: i64,
    ) {
        let by_id: HashMap<String, Arc<Pdu>> = self
            .state
            .events
            .values()
            .map(|e| (e.event_id().to_string(), Arc::clone(e)))
            .chain(extra.iter().map(|(k, v)| (k.clone(), Arc::clone(v))))
            .chain(std::iter::once((
                pdu.event_id().to_string(),
                Arc::clone(pdu),
            )))
            .collect();
        let mut events: StateMap<Arc<Pdu>> = StateMap::new();
        for ((t, k), id) in &new_ids {
            match by_id.get(id) {
                Some(e) => {
                    events.insert((StateEventType::from(t.as_str()), k.clone()), Arc::clone(e));
                }
                None => {
                    tracing::warn!(room = %self.room_id, event = %id, "state event not in memory; state may be incomplete")
                }
            }
        }
        // What changed, for the stored current state and the membership index.
        for (key, id) in &new_ids {
            if old_ids.get(key) == Some(id) {
                continue;
            }
            if let Some(ev) = by_id.get(id).cloned() {
                self.record_state_change(key.clone(), old_ids.get(key).cloned(), &ev, stream);
            }
        }
        for key in old_ids.keys() {
            if !new_ids.contains_key(key) {
                self.batch.current_state_delta.push((key.clone(), None));
            }
        }
        if *old_ids != new_ids {
            let here = self.core.server_name();
            self.recent
                .current_changing(&self.state.events, || forks_possible(&self.state, here));
        }
        self.state.events = events;
        self.state.group = group;
    }
}

/// Whether another server can send this room an event built on an older state than the
/// current one: some member (of any membership) is of another server. Only then are past
/// states kept as snapshots (`Recent::current_changing`).
fn forks_possible(state: &CurrentState, here: &str) -> bool {
    state.events.keys().any(|(t, k)| {
        *t == StateEventType::RoomMember
            && k.split_once(':').is_some_and(|(_, server)| server != here)
    })
}
