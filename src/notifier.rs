//! Stream positions and sync wake-ups.
//!
//! Everything a client syncs (room events, account data, receipts, typing, to-device
//! messages, device-list changes) is numbered from ONE in-process counter, so a sync token is
//! a single integer: "everything up to here".
//!
//! Positions are allocated before a write and may commit out of order (two rooms commit on
//! different writers, or in different batches). A reader must never see position 11 and then
//! later find 10 appear, so readers only read up to the **frontier**: the highest position
//! below which every allocated position has completed (committed or abandoned).
//!
//! Waiting `/sync` requests subscribe to their user's channel. When a write completes it names
//! the users it concerns; they are woken once the frontier has passed the write's position
//! (not before, or they would read nothing new and sleep again). Nothing polls the database.
//!
//! **Cluster mode** (`docs/CLUSTER.md`) keeps the same contract across nodes. Positions come
//! from one PostgreSQL sequence ([`Notifier::set_allocator`]), so they are ordered cluster-wide,
//! and the frontier is the minimum of this node's *safe point* and every other live node's
//! (`set_remote_floor`). A node's safe point is the highest position below which it will
//! never complete anything more: one below its lowest position in flight, or below the
//! highest position known when an allocation still waiting on the database began, else the
//! highest position known at all (its own or heard from others: whatever it allocates later
//! comes from the sequence, so it is higher). Each change of the safe point, and every
//! completion with users to wake, goes to the [`Notifier::set_publisher`] hook (NATS); what
//! other nodes publish comes back through [`Notifier::note_remote`]. A single node sets none
//! of these and behaves as before.
//!
//! **Notes.** A write may leave a note on its positions ([`Notifier::complete_noted`]): what
//! it was, in a form the reader knows (the room actors leave the committed events of a
//! plain batch). A woken `/sync` that finds a note on every position it has not read yet
//! can answer from the notes instead of reading the database again; one position without a
//! note (anything else that moved the stream, a position of another cluster node, one too
//! old to be remembered) sends it to the full read. The notifier does not look inside.
//!
//! [`Notifier::park`] counts the `/sync` requests that have read everything and are now
//! waiting for a wake-up (the operator endpoint `/_weft/admin/v1/sync_waiters` shows it; the
//! wake-up tests wait for it before they send, so they test the wake-up, not a plain read).
//!
//! **Followers** (the push worker, the search indexer) read everything below the frontier,
//! woken by [`Notifier::subscribe_all`]; a [`Pacer`] spaces their passes so that under load
//! one pass takes the events of several commits.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use std::sync::OnceLock;

use parking_lot::Mutex;
use tokio::sync::watch;

#[derive(Default)]
struct Positions {
    /// Highest position handed out (in cluster mode: or heard of).
    last: i64,
    /// Allocated but not yet completed.
    in_flight: BTreeSet<i64>,
    /// Cluster mode: allocations waiting on the sequence, with `last` when each began.
    intents: BTreeMap<u64, i64>,
    next_intent: u64,
    /// Cluster mode: the lowest safe point of the other live nodes.
    remote_floor: Option<i64>,
    /// The safe point last given to the publisher.
    published: i64,
    /// Users to wake once the frontier reaches the key.
    pending: BTreeMap<i64, Vec<String>>,
    frontier: i64,
}

impl Positions {
    /// Below this, this node completes nothing more.
    fn safe(&self) -> i64 {
        let mut safe = self.last;
        if let Some(first) = self.in_flight.first() {
            safe = safe.min(first - 1);
        }
        if let Some(known) = self.intents.values().min() {
            safe = safe.min(*known);
        }
        safe
    }
}

/// What a cluster node tells the others (see the module comment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// This node's safe point rose.
    Safe(i64),
    /// These users have something at `pos` (wake them when the frontier passes it).
    Wake { pos: i64, users: Vec<String> },
    /// Wake these users now (changes with their own counter, such as typing).
    WakeNow(Vec<String>),
}

/// What a write says about its positions, for readers that know its type (see the module
/// comment).
pub type Note = Arc<dyn Any + Send + Sync>;

/// Spaces a stream follower's passes: each [`Pacer::pace`] returns at least `interval`
/// after the previous one returned, at once when that is long past (the first event after a
/// quiet spell is not delayed) or when the previous pass stopped short of the frontier at
/// its batch limit ([`Pacer::behind`]): a follower that is behind never waits, so the
/// interval never bounds its throughput.
pub struct Pacer {
    interval: std::time::Duration,
    last: Option<tokio::time::Instant>,
}

impl Pacer {
    pub fn new(interval_ms: u64) -> Self {
        Self {
            interval: std::time::Duration::from_millis(interval_ms),
            last: None,
        }
    }

    /// Waits until a pass may start, and counts it as started.
    pub async fn pace(&mut self) {
        if let Some(at) = self.last {
            tokio::time::sleep_until(at + self.interval).await;
        }
        self.last = Some(tokio::time::Instant::now());
    }

    /// The pass just made stopped at its batch limit: the next one starts at once.
    pub fn behind(&mut self) {
        self.last = None;
    }
}

/// Notes remembered: the newest positions only.
const NOTES_KEPT: usize = 1024;

type Allocator = Box<dyn Fn() -> Option<i64> + Send + Sync>;
type Publisher = Box<dyn Fn(Published) + Send + Sync>;

pub struct Notifier {
    positions: Mutex<Positions>,
    allocator: OnceLock<Allocator>,
    publisher: OnceLock<Publisher>,
    users: Mutex<HashMap<String, watch::Sender<i64>>>,
    /// Woken on every frontier advance (for consumers that follow everything).
    all: watch::Sender<i64>,
    /// `/sync` requests parked on a wake-up right now.
    parked: AtomicUsize,
    notes: Mutex<BTreeMap<i64, Note>>,
}

/// A parked `/sync` request; counted in [`Notifier::parked`] until dropped.
pub struct Parked<'a>(&'a AtomicUsize);

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Notifier {
    /// Starts the counter after the highest position already stored.
    pub fn new(start_after: i64) -> Self {
        Self {
            positions: Mutex::new(Positions {
                last: start_after,
                frontier: start_after,
                published: start_after,
                ..Default::default()
            }),
            allocator: OnceLock::new(),
            publisher: OnceLock::new(),
            users: Mutex::new(HashMap::new()),
            all: watch::Sender::new(start_after),
            parked: AtomicUsize::new(0),
            notes: Mutex::new(BTreeMap::new()),
        }
    }

    /// Marks a `/sync` request as parked (read everything, waiting for a wake-up) while the
    /// guard lives.
    pub fn park(&self) -> Parked<'_> {
        self.parked.fetch_add(1, Ordering::SeqCst);
        Parked(&self.parked)
    }

    /// Number of `/sync` requests parked right now.
    pub fn parked(&self) -> usize {
        self.parked.load(Ordering::SeqCst)
    }

    /// Allocates the next position; it must later be passed to [`Notifier::complete`].
    pub fn allocate(&self) -> i64 {
        let Some(allocator) = self.allocator.get() else {
            let mut p = self.positions.lock();
            p.last += 1;
            let pos = p.last;
            p.in_flight.insert(pos);
            return pos;
        };
        let intent = {
            let mut p = self.positions.lock();
            p.next_intent += 1;
            let id = p.next_intent;
            let last = p.last;
            p.intents.insert(id, last);
            id
        };
        let got = allocator();
        let mut p = self.positions.lock();
        p.intents.remove(&intent);
        // Without the database the write of this position fails too; a local number keeps
        // the counter's contract (the unique index on stream positions refuses a duplicate).
        let pos = got.unwrap_or(p.last + 1);
        p.last = p.last.max(pos);
        p.in_flight.insert(pos);
        pos
    }

    /// Cluster mode: positions come from `allocator` (the shared sequence; `None` when it
    /// cannot be reached).
    pub fn set_allocator(&self, allocator: Allocator) {
        let _ = self.allocator.set(allocator);
    }

    /// Cluster mode: what other nodes must hear goes to `publisher`.
    pub fn set_publisher(&self, publisher: Publisher) {
        let _ = self.publisher.set(publisher);
    }

    /// The highest position this node has allocated or heard of.
    pub fn last_position(&self) -> i64 {
        self.positions.lock().last
    }

    /// Waits (at most `within`) until the frontier reaches `pos`: a cluster node answering a
    /// request another node carried out makes the result readable here first
    /// (read-your-writes on every node). Answers whether it got there.
    pub async fn wait_for(&self, pos: i64, within: std::time::Duration) -> bool {
        let mut rx = self.all.subscribe();
        let wait = async {
            loop {
                if *rx.borrow_and_update() >= pos {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(within, wait).await.is_ok()
    }

    /// This node's safe point now (sent with every heartbeat).
    pub fn safe_point(&self) -> i64 {
        self.positions.lock().safe()
    }

    /// Cluster mode: the lowest safe point of the other live nodes (`None`: no other node).
    pub fn set_remote_floor(&self, floor: Option<i64>) {
        let mut p = self.positions.lock();
        p.remote_floor = floor;
        let (frontier, due, safe) = Self::advance(&mut p);
        drop(p);
        self.finish(frontier, due, safe);
    }

    /// Cluster mode: another node allocated up to `pos` and has `users` to wake there.
    pub fn note_remote(&self, pos: i64, users: Vec<String>) {
        let mut p = self.positions.lock();
        p.last = p.last.max(pos);
        if !users.is_empty() {
            p.pending.entry(pos).or_default().extend(users);
        }
        let (frontier, due, safe) = Self::advance(&mut p);
        drop(p);
        self.finish(frontier, due, safe);
    }

    /// Recomputes the frontier; answers it, the users now due and a safe point to publish.
    fn advance(p: &mut Positions) -> (i64, BTreeMap<i64, Vec<String>>, Option<i64>) {
        let safe = p.safe();
        let frontier = match p.remote_floor {
            Some(floor) => safe.min(floor),
            None => safe,
        }
        .max(p.frontier);
        p.frontier = frontier;
        let later = p.pending.split_off(&(frontier + 1));
        let due = std::mem::replace(&mut p.pending, later);
        let publish = (safe > p.published).then(|| {
            p.published = safe;
            safe
        });
        (frontier, due, publish)
    }

    fn finish(&self, frontier: i64, due: BTreeMap<i64, Vec<String>>, safe: Option<i64>) {
        if let (Some(safe), Some(publish)) = (safe, self.publisher.get()) {
            publish(Published::Safe(safe));
        }
        self.all.send_replace(frontier);
        if due.is_empty() {
            return;
        }
        let positions: Vec<i64> = due.keys().copied().collect();
        {
            let mut users = self.users.lock();
            for user in due.into_values().flatten() {
                if let Some(tx) = users.get(&user) {
                    if tx.receiver_count() == 0 {
                        users.remove(&user);
                    } else {
                        tx.send_replace(frontier);
                    }
                }
            }
        }
        crate::observe::wake::notified(positions);
    }

    /// Completes positions (written or abandoned) and queues wake-ups for `users`.
    pub fn complete(&self, positions: &[i64], users: impl IntoIterator<Item = String>) {
        let users: Vec<String> = users.into_iter().collect();
        let mut p = self.positions.lock();
        for pos in positions {
            p.in_flight.remove(pos);
        }
        let max = positions.iter().max().copied();
        if let Some(max) = max
            && !users.is_empty()
        {
            p.pending
                .entry(max)
                .or_default()
                .extend(users.iter().cloned());
        }
        let (frontier, due, safe) = Self::advance(&mut p);
        drop(p);
        // Other nodes hear of the users before the new safe point, so their wake-up is
        // queued by the time their frontier passes it.
        if let (Some(pos), Some(publish)) = (max, self.publisher.get())
            && !users.is_empty()
        {
            publish(Published::Wake { pos, users });
        }
        self.finish(frontier, due, safe);
    }

    /// [`Notifier::complete`], leaving `note` on the positions first (when the write was
    /// done: a reader woken by it finds the note).
    pub fn complete_noted(
        &self,
        positions: &[i64],
        users: impl IntoIterator<Item = String>,
        note: Option<Note>,
    ) {
        if let Some(note) = note {
            let mut notes = self.notes.lock();
            for pos in positions {
                notes.insert(*pos, Arc::clone(&note));
            }
            while notes.len() > NOTES_KEPT {
                notes.pop_first();
            }
        }
        self.complete(positions, users);
    }

    /// The notes on every position in `(after, upto]`, oldest first, each once; `None` when
    /// one of those positions has none.
    pub fn notes_between(&self, after: i64, upto: i64) -> Option<Vec<Note>> {
        if upto <= after {
            return Some(Vec::new());
        }
        let width = usize::try_from(upto - after).ok()?;
        if width > NOTES_KEPT {
            return None;
        }
        let notes = self.notes.lock();
        let mut out: Vec<Note> = Vec::new();
        let mut seen = 0usize;
        for (_, note) in notes.range(after + 1..=upto) {
            seen += 1;
            if !out.iter().any(|n| Arc::ptr_eq(n, note)) {
                out.push(Arc::clone(note));
            }
        }
        (seen == width).then_some(out)
    }

    /// A position for an ephemeral change that is complete at once (typing), waking `users`.
    pub fn bump(&self, users: impl IntoIterator<Item = String>) -> i64 {
        let pos = self.allocate();
        self.complete(&[pos], users);
        pos
    }

    /// Wakes users without a new position (ephemeral changes with their own counter, such
    /// as typing).
    pub fn wake(&self, users: impl IntoIterator<Item = String>) {
        let users: Vec<String> = users.into_iter().collect();
        if let Some(publish) = self.publisher.get()
            && !users.is_empty()
        {
            publish(Published::WakeNow(users.clone()));
        }
        self.wake_local(users);
    }

    /// Wakes users of this node only (a [`Published::WakeNow`] from another node).
    pub fn wake_local(&self, users: impl IntoIterator<Item = String>) {
        let frontier = self.frontier();
        let mut map = self.users.lock();
        for user in users {
            if let Some(tx) = map.get(&user) {
                if tx.receiver_count() == 0 {
                    map.remove(&user);
                } else {
                    tx.send_replace(frontier);
                }
            }
        }
    }

    /// Everything up to this position is readable.
    pub fn frontier(&self) -> i64 {
        self.positions.lock().frontier
    }

    /// Subscribes to wake-ups for a user. Subscribe *before* reading, then wait on
    /// `changed()`: a write that completes in between is not missed.
    pub fn subscribe(&self, user: &str) -> watch::Receiver<i64> {
        let mut users = self.users.lock();
        users
            .entry(user.to_owned())
            .or_insert_with(|| watch::Sender::new(0))
            .subscribe()
    }

    /// Subscribes to every frontier advance.
    pub fn subscribe_all(&self) -> watch::Receiver<i64> {
        self.all.subscribe()
    }

    /// Number of users with a waiting sync (for the status page).
    pub fn waiting_users(&self) -> usize {
        self.users
            .lock()
            .values()
            .filter(|tx| tx.receiver_count() > 0)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn a_pacer_spaces_passes_under_load_and_delays_none_after_a_quiet_spell() {
        use std::time::{Duration, Instant};
        const GAP: Duration = Duration::from_millis(200);
        let mut p = Pacer::new(200);
        let began = Instant::now();
        p.pace().await;
        assert!(began.elapsed() < GAP, "the first pass starts at once");
        let first = Instant::now();
        p.pace().await;
        assert!(first.elapsed() >= GAP, "a pass right after another waits");
        tokio::time::sleep(GAP + Duration::from_millis(50)).await;
        let quiet = Instant::now();
        p.pace().await;
        assert!(
            quiet.elapsed() < GAP,
            "after a quiet spell the pass starts at once"
        );
        let behind = Instant::now();
        p.behind();
        p.pace().await;
        assert!(behind.elapsed() < GAP, "a follower behind never waits");
        let mut off = Pacer::new(0);
        let now = Instant::now();
        off.pace().await;
        off.pace().await;
        assert!(now.elapsed() < GAP, "an interval of 0 never waits");
    }

    #[test]
    fn frontier_waits_for_the_lowest_in_flight_position() {
        let n = Notifier::new(10);
        let a = n.allocate();
        let b = n.allocate();
        assert_eq!((a, b), (11, 12));
        n.complete(&[b], ["bob".to_owned()]);
        assert_eq!(n.frontier(), 10, "12 is done but 11 is not");
        n.complete(&[a], []);
        assert_eq!(n.frontier(), 12);
    }

    #[test]
    fn wakes_only_when_the_frontier_passes() {
        let n = Notifier::new(0);
        let mut rx = n.subscribe("bob");
        let a = n.allocate();
        let b = n.allocate();
        n.complete(&[b], ["bob".to_owned()]);
        assert!(
            !rx.has_changed().unwrap(),
            "woken before position 1 was readable"
        );
        n.complete(&[a], []);
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), 2);
    }

    #[test]
    fn parked_counts_live_guards() {
        let n = Notifier::new(0);
        assert_eq!(n.parked(), 0);
        let a = n.park();
        let b = n.park();
        assert_eq!(n.parked(), 2);
        drop(a);
        assert_eq!(n.parked(), 1);
        drop(b);
        assert_eq!(n.parked(), 0);
    }

    fn clustered(start: i64, next: std::sync::Arc<std::sync::atomic::AtomicI64>) -> Notifier {
        let n = Notifier::new(start);
        n.set_allocator(Box::new(move || {
            Some(next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1)
        }));
        n
    }

    #[test]
    fn cluster_frontier_waits_for_the_slowest_node() {
        let seq = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(10));
        let a = clustered(10, seq.clone());
        let b = clustered(10, seq);
        b.set_remote_floor(Some(a.safe_point()));
        a.set_remote_floor(Some(b.safe_point()));
        let p11 = a.allocate();
        let p12 = b.allocate();
        assert_eq!((p11, p12), (11, 12));
        b.complete(&[p12], []);
        a.note_remote(12, vec![]);
        a.set_remote_floor(Some(b.safe_point()));
        assert_eq!(b.safe_point(), 12);
        assert_eq!(a.safe_point(), 10, "11 is still in flight on a");
        b.note_remote(12, vec![]);
        b.set_remote_floor(Some(a.safe_point()));
        assert_eq!(
            b.frontier(),
            10,
            "b must not read past a's position in flight"
        );
        a.complete(&[p11], []);
        assert_eq!(a.safe_point(), 12);
        b.set_remote_floor(Some(a.safe_point()));
        assert_eq!(b.frontier(), 12);
    }

    #[test]
    fn cluster_wake_up_waits_for_the_frontier() {
        let seq = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
        let b = clustered(0, seq.clone());
        let mut rx = b.subscribe("bob");
        b.set_remote_floor(Some(0));
        b.note_remote(3, vec!["bob".into()]);
        assert!(
            !rx.has_changed().unwrap(),
            "the writer's node has not passed 3"
        );
        b.set_remote_floor(Some(3));
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), 3);
    }

    #[test]
    fn a_missing_allocator_answer_still_gives_a_new_position() {
        let n = Notifier::new(5);
        n.set_allocator(Box::new(|| None));
        assert_eq!(n.allocate(), 6);
        assert_eq!(n.allocate(), 7);
    }

    #[test]
    fn published_safe_points_only_rise() {
        let got = std::sync::Arc::new(Mutex::new(Vec::new()));
        let seq = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
        let n = clustered(0, seq);
        let sink = got.clone();
        n.set_publisher(Box::new(move |p| sink.lock().push(p)));
        let a = n.allocate();
        let b = n.allocate();
        n.complete(&[b], ["bob".to_owned()]);
        n.complete(&[a], []);
        assert_eq!(
            *got.lock(),
            vec![
                Published::Wake {
                    pos: 2,
                    users: vec!["bob".into()]
                },
                Published::Safe(2)
            ]
        );
    }

    #[test]
    fn notes_cover_a_window_only_when_every_position_has_one() {
        let n = Notifier::new(0);
        let a = n.allocate();
        let b = n.allocate();
        let c = n.allocate();
        let batch: Note = Arc::new("batch");
        n.complete_noted(&[a, b], ["bob".to_owned()], Some(batch.clone()));
        n.complete(&[c], ["bob".to_owned()]);
        let got = n
            .notes_between(0, 2)
            .expect("1 and 2 carry the batch's note");
        assert_eq!(got.len(), 1, "one note, shared by both positions");
        assert!(Arc::ptr_eq(&got[0], &batch));
        assert!(n.notes_between(0, 3).is_none(), "3 has no note");
        assert!(n.notes_between(1, 2).is_some());
        assert_eq!(n.notes_between(3, 3).map(|v| v.len()), Some(0));
        assert!(
            n.notes_between(0, 5_000).is_none(),
            "wider than what is kept"
        );
    }

    #[test]
    fn other_users_are_not_woken() {
        let n = Notifier::new(0);
        let rx = n.subscribe("alice");
        n.bump(["bob".to_owned()]);
        assert!(!rx.has_changed().unwrap());
        assert_eq!(n.frontier(), 1);
    }
}
