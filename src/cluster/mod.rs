//! weft cluster: several nodes sharing one server name, one signing key and one PostgreSQL
//! database, coordinated over NATS (design, failure cases and how to run it:
//! `docs/CLUSTER.md`). Off by default; a single node never builds any of this.
//!
//! * **Liveness**: every node publishes a heartbeat on `<prefix>.node` every `lease_ttl / 5`
//!   carrying its name and its stream *safe point* (see `notifier.rs`); a node not heard for
//!   `lease_ttl` is dead. The live set is this node plus the nodes heard recently.
//! * **Ownership**: a room's actor runs on the node holding the room's lease (a PostgreSQL row
//!   with an epoch, `storage/cluster.rs`). With no valid lease, the room goes to its
//!   rendezvous-hash owner among the live nodes ([`placement`]), which acquires it. Leases are
//!   renewed every `lease_ttl / 3`; a lease found taken over is dropped at once. Every write
//!   of a room's events is fenced by the lease row inside its transaction.
//! * **Routing**: [`Cluster::route`] answers whether a room's messages run here (and at which
//!   epoch) or on another node; the room registry forwards those to the owner by NATS
//!   request/reply on `<prefix>.rooms.<node>` ([`Cluster::forward`], served by the handler
//!   the server installs with [`Cluster::serve_rooms`]).
//! * **Streams**: positions and state group IDs come from PostgreSQL sequences; safe points
//!   and wake-ups go out on `<prefix>.node` / `<prefix>.wake`, so `/sync` tokens mean the
//!   same on every node and a write on one node wakes a `/sync` parked on another.
//! * **Typing** changes are replayed on every node (`<prefix>.typing`).
//! * **Outbound delivery** is sharded over destinations with the same leases, under keys that
//!   cannot be room IDs (`federation/outbound/shard.rs` uses them); [`Cluster::notify`] and
//!   [`Cluster::on_notice`] carry its wake-ups to a destination's owner
//!   (`<prefix>.notice.<node>`), and queue row IDs come from a PostgreSQL sequence.

pub mod placement;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::config::ClusterConfig;
use crate::core::Core;
use crate::error::{Error, Result};
use crate::notifier::Published;
use crate::storage::cluster as rows;

/// Where a room's messages are handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Here, under the lease of this epoch.
    Local { epoch: i64 },
    /// On this other node.
    Remote(String),
}

/// A request another node forwarded, answered with bytes.
pub type RoomHandler = Arc<dyn Fn(Vec<u8>) -> BoxFuture<'static, Vec<u8>> + Send + Sync>;
/// A typing change replayed from another node.
pub type TypingHandler = Arc<dyn Fn(TypingChange) + Send + Sync>;
/// A one-way notice another node addressed to this one (no answer).
pub type NoticeHandler = Arc<dyn Fn(Vec<u8>) + Send + Sync>;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Heartbeat {
    node: String,
    safe: i64,
    #[serde(default)]
    advertise: String,
    /// Sent once by a node shutting down cleanly.
    #[serde(default)]
    leaving: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Wake {
    node: String,
    pos: Option<i64>,
    users: Vec<String>,
}

/// A typing change, as replayed on the other nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TypingChange {
    pub node: String,
    pub room_id: String,
    pub user_id: String,
    pub typing: bool,
    pub timeout_ms: u64,
    pub audience: Vec<String>,
}

struct Peer {
    seen: Instant,
    safe: i64,
    advertise: String,
}

struct Held {
    epoch: i64,
    /// This node treats the lease as its own until then (a margin before the database's end).
    until: Instant,
}

enum Outgoing {
    Node(Heartbeat),
    Wake(Wake),
    Typing(TypingChange),
}

pub struct Cluster {
    core: Arc<Core>,
    pub node_id: String,
    prefix: String,
    ttl: Duration,
    advertise: String,
    nats: async_nats::Client,
    peers: Mutex<HashMap<String, Peer>>,
    held: Mutex<HashMap<String, Held>>,
    /// One acquisition at a time on this node (two callers must not bump the epoch twice).
    acquiring: tokio::sync::Mutex<()>,
    out: tokio::sync::mpsc::UnboundedSender<Outgoing>,
    typing: std::sync::OnceLock<TypingHandler>,
    /// When this node last heard its own heartbeat back from NATS (see `check_nats`).
    echo: Mutex<Instant>,
    /// This node has given up its leases for want of NATS, and not yet heard itself again.
    isolated: std::sync::atomic::AtomicBool,
}

impl rows::FenceSource for Cluster {
    fn node(&self) -> &str {
        &self.node_id
    }
    fn epoch(&self, room_id: &str) -> Option<i64> {
        self.held.lock().get(room_id).map(|h| h.epoch)
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Cluster {
    /// Connects to NATS, moves the shared sequences past what is stored, hooks the notifier
    /// (positions, safe points, wake-ups), the state group IDs and the write fence, and starts
    /// the heartbeat, lease and subscription tasks (on the calling actix arbiter).
    pub async fn start(core: Arc<Core>) -> std::result::Result<Arc<Self>, String> {
        let cfg: &ClusterConfig = &core.config.cluster;
        let nats = async_nats::ConnectOptions::new()
            .name(format!("weft-{}", cfg.node_id))
            .request_timeout(Some(Duration::from_millis(cfg.request_timeout_ms)))
            .connect(cfg.nats_url.as_str())
            .await
            .map_err(|e| format!("cluster: cannot connect to NATS at {}: {e}", cfg.nats_url))?;

        let start = core.notifier.frontier();
        // Queue IDs name transactions, which receivers de-duplicate forever: past every ID a
        // single node may have used (its counter starts at the clock in microseconds).
        let queue_floor = crate::storage::now_ms().saturating_mul(1000);
        let (max_group, last) = core
            .db
            .read(move |c| {
                let g = crate::storage::state::max_group_id(c)?;
                let q = crate::storage::federation::max_queue_id(c)?.max(queue_floor);
                let (_, lowest) = crate::storage::events::stream_bounds(c)?;
                let b = lowest.min(0).saturating_neg();
                rows::init_sequences_with_queue(c, start, g, q, b)?;
                let last = rows::next_stream_position(c)?;
                Ok((g, last))
            })
            .await
            .map_err(|e| format!("cluster: cannot set up the shared sequences: {e}"))?;
        tracing::info!(max_group, last, "cluster: sequences ready");

        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let cluster = Arc::new(Self {
            node_id: cfg.node_id.clone(),
            prefix: cfg.prefix.clone(),
            ttl: Duration::from_millis(cfg.lease_ttl_ms),
            advertise: cfg.advertise.clone(),
            nats,
            peers: Mutex::new(HashMap::new()),
            held: Mutex::new(HashMap::new()),
            acquiring: tokio::sync::Mutex::new(()),
            out: tx,
            typing: std::sync::OnceLock::new(),
            echo: Mutex::new(Instant::now()),
            isolated: std::sync::atomic::AtomicBool::new(false),
            core: Arc::clone(&core),
        });

        // Everything this node allocates from now on comes from the sequence; the position
        // just taken (`last`) was skipped on purpose, so it is known-allocated.
        core.notifier.note_remote(last, Vec::new());
        core.notifier.complete(&[], []);
        let db = core.db.clone();
        core.notifier.set_allocator(Box::new(move || {
            match db.read_blocking(rows::next_stream_position) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::error!(error = %e, "cluster: no stream position from the database");
                    None
                }
            }
        }));
        let db = core.db.clone();
        core.set_state_group_allocator(Box::new(move || {
            db.read_blocking(rows::next_state_group).ok()
        }));
        let db = core.db.clone();
        core.set_backfill_allocator(Box::new(move || db.read_blocking(rows::next_backfill).ok()));
        {
            let c = Arc::downgrade(&cluster);
            core.notifier.set_publisher(Box::new(move |p| {
                if let Some(c) = c.upgrade() {
                    c.publish_stream(p);
                }
            }));
        }
        rows::install_fence(cluster.clone() as Arc<dyn rows::FenceSource>);
        crate::delivery::use_shared_queue_ids();

        cluster.spawn_sender(rx);
        cluster.spawn_subscriptions().await?;
        cluster.spawn_heartbeats();
        cluster.spawn_renewals();
        tracing::info!(node = %cluster.node_id, prefix = %cluster.prefix, "cluster: node started");
        Ok(cluster)
    }

    fn subject(&self, tail: &str) -> String {
        format!("{}.{tail}", self.prefix)
    }

    fn publish_stream(&self, p: Published) {
        let msg = match p {
            Published::Safe(safe) => Outgoing::Node(self.heartbeat(safe, false)),
            Published::Wake { pos, users } => Outgoing::Wake(Wake {
                node: self.node_id.clone(),
                pos: Some(pos),
                users,
            }),
            Published::WakeNow(users) => Outgoing::Wake(Wake {
                node: self.node_id.clone(),
                pos: None,
                users,
            }),
        };
        let _ = self.out.send(msg);
    }

    fn heartbeat(&self, safe: i64, leaving: bool) -> Heartbeat {
        Heartbeat {
            node: self.node_id.clone(),
            safe,
            advertise: self.advertise.clone(),
            leaving,
        }
    }

    /// Replays a typing change on the other nodes.
    pub fn publish_typing(&self, change: TypingChange) {
        let _ = self.out.send(Outgoing::Typing(change));
    }

    /// Installs what applies other nodes' typing changes here.
    pub fn on_typing(&self, handler: TypingHandler) {
        let _ = self.typing.set(handler);
    }

    /// One task publishes everything, in the order it was queued (a wake-up before the safe
    /// point that makes it due).
    fn spawn_sender(self: &Arc<Self>, mut rx: tokio::sync::mpsc::UnboundedReceiver<Outgoing>) {
        let nats = self.nats.clone();
        let (node, wake, typing) = (
            self.subject("node"),
            self.subject("wake"),
            self.subject("typing"),
        );
        actix_rt::spawn(async move {
            while let Some(msg) = rx.recv().await {
                let (subject, body, kind) = match &msg {
                    Outgoing::Node(h) => (&node, serde_json::to_vec(h), "node"),
                    Outgoing::Wake(w) => (&wake, serde_json::to_vec(w), "wake"),
                    Outgoing::Typing(t) => (&typing, serde_json::to_vec(t), "typing"),
                };
                crate::observe::metrics::cluster_published(kind);
                let Ok(body) = body else { continue };
                if let Err(e) = nats.publish(subject.clone(), body.into()).await {
                    tracing::warn!(error = %e, "cluster: publish failed");
                }
            }
        });
    }

    async fn spawn_subscriptions(self: &Arc<Self>) -> std::result::Result<(), String> {
        let sub = |s: String| {
            let nats = self.nats.clone();
            async move {
                nats.subscribe(s.clone())
                    .await
                    .map_err(|e| format!("cluster: cannot subscribe to {s}: {e}"))
            }
        };
        let mut nodes = sub(self.subject("node")).await?;
        let mut wakes = sub(self.subject("wake")).await?;
        let mut typing = sub(self.subject("typing")).await?;
        let weak = Arc::downgrade(self);
        actix_rt::spawn(async move {
            while let Some(m) = nodes.next().await {
                let Some(c) = weak.upgrade() else { break };
                match serde_json::from_slice::<Heartbeat>(&m.payload) {
                    Ok(h) => c.on_heartbeat(h),
                    Err(e) => tracing::warn!(error = %e, "cluster: bad heartbeat"),
                }
            }
        });
        let weak = Arc::downgrade(self);
        actix_rt::spawn(async move {
            while let Some(m) = wakes.next().await {
                let Some(c) = weak.upgrade() else { break };
                match serde_json::from_slice::<Wake>(&m.payload) {
                    Ok(w) if w.node == c.node_id => {}
                    Ok(Wake {
                        pos: Some(pos),
                        users,
                        ..
                    }) => c.core.notifier.note_remote(pos, users),
                    Ok(Wake {
                        pos: None, users, ..
                    }) => c.core.notifier.wake_local(users),
                    Err(e) => tracing::warn!(error = %e, "cluster: bad wake-up"),
                }
            }
        });
        let weak = Arc::downgrade(self);
        actix_rt::spawn(async move {
            while let Some(m) = typing.next().await {
                let Some(c) = weak.upgrade() else { break };
                match serde_json::from_slice::<TypingChange>(&m.payload) {
                    Ok(t) if t.node == c.node_id => {}
                    Ok(t) => {
                        if let Some(h) = c.typing.get() {
                            h(t)
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cluster: bad typing change"),
                }
            }
        });
        Ok(())
    }

    fn on_heartbeat(&self, h: Heartbeat) {
        if h.node == self.node_id {
            *self.echo.lock() = Instant::now();
            if self
                .isolated
                .swap(false, std::sync::atomic::Ordering::Relaxed)
            {
                tracing::info!(node = %self.node_id, "cluster: NATS reached again; taking rooms again");
            }
            return;
        }
        {
            let mut peers = self.peers.lock();
            if h.leaving {
                peers.remove(&h.node);
                tracing::info!(peer = %h.node, "cluster: peer left");
            } else {
                if peers
                    .get(&h.node)
                    .is_none_or(|p| p.seen.elapsed() >= self.ttl)
                {
                    tracing::info!(peer = %h.node, advertise = %h.advertise, "cluster: peer joined");
                }
                let p = peers.entry(h.node.clone()).or_insert_with(|| Peer {
                    seen: Instant::now(),
                    safe: h.safe,
                    advertise: h.advertise.clone(),
                });
                p.seen = Instant::now();
                p.safe = p.safe.max(h.safe);
                p.advertise = h.advertise;
            }
        }
        if !h.leaving {
            self.core.notifier.note_remote(h.safe, Vec::new());
        }
        self.update_floor();
    }

    /// The other live nodes' lowest safe point goes to the notifier.
    fn update_floor(&self) {
        let floor = {
            let mut peers = self.peers.lock();
            let ttl = self.ttl;
            peers.retain(|_, p| p.seen.elapsed() < ttl);
            peers.values().map(|p| p.safe).min()
        };
        self.core.notifier.set_remote_floor(floor);
    }

    /// This node and every node heard within the lease TTL, sorted.
    pub fn live_nodes(&self) -> Vec<String> {
        let ttl = self.ttl;
        let mut nodes: Vec<String> = self
            .peers
            .lock()
            .iter()
            .filter(|(_, p)| p.seen.elapsed() < ttl)
            .map(|(n, _)| n.clone())
            .collect();
        nodes.push(self.node_id.clone());
        nodes.sort();
        nodes
    }

    /// The live nodes with what they advertise (status page and tests).
    pub fn peers(&self) -> Vec<(String, String)> {
        let ttl = self.ttl;
        let mut v: Vec<(String, String)> = self
            .peers
            .lock()
            .iter()
            .filter(|(_, p)| p.seen.elapsed() < ttl)
            .map(|(n, p)| (n.clone(), p.advertise.clone()))
            .collect();
        v.sort();
        v
    }

    /// The lease TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The epoch at which this node holds `key`'s lease now (within its local term), if it
    /// does. No database call: what the renewals keep up to date.
    pub fn holds(&self, key: &str) -> Option<i64> {
        self.held
            .lock()
            .get(key)
            .filter(|h| h.until > Instant::now())
            .map(|h| h.epoch)
    }

    /// The rendezvous owner of `key` among the live nodes (where an unleased key goes).
    pub fn placed_on(&self, key: &str) -> String {
        let live = self.live_nodes();
        placement::owner(key, live.iter().map(String::as_str))
            .unwrap_or(self.node_id.as_str())
            .to_owned()
    }

    /// The live node other than this one that holds a valid lease on `key`, if any (one
    /// database read; never acquires).
    pub async fn lease_holder(&self, key: &str) -> Result<Option<String>> {
        let k = key.to_owned();
        let lease = self.core.db.read(move |c| rows::lease(c, &k)).await?;
        Ok(lease
            .filter(|l| l.remaining_ms > 0 && l.owner != self.node_id && self.is_live(&l.owner))
            .map(|l| l.owner))
    }

    /// Gives up this node's lease on `key` at `epoch` (its work there is done): dropped from
    /// the held set at once, and ended in the database (the row stays, so the next owner gets
    /// a higher epoch). A lease re-acquired meanwhile under another epoch is kept.
    pub async fn release(&self, key: &str, epoch: i64) {
        {
            let mut held = self.held.lock();
            if held.get(key).is_none_or(|h| h.epoch != epoch) {
                return;
            }
            held.remove(key);
        }
        crate::observe::metrics::cluster_releases(1);
        let (k, node) = (key.to_owned(), self.node_id.clone());
        if let Err(e) = self
            .core
            .db
            .read(move |c| rows::expire(c, &node, &k, epoch))
            .await
        {
            tracing::warn!(key, error = %e, "cluster: could not release a lease");
        }
    }

    /// Sends a one-way notice to `node` (`<prefix>.notice.<node>`); lost if `node` is not
    /// listening (the receiver's periodic sweep must not depend on it).
    pub fn notify(&self, node: &str, body: Vec<u8>) {
        let (nats, subject) = (self.nats.clone(), self.subject(&format!("notice.{node}")));
        crate::observe::metrics::cluster_published("notice");
        actix_rt::spawn(async move {
            if let Err(e) = nats.publish(subject, body.into()).await {
                tracing::warn!(error = %e, "cluster: could not send a notice");
            }
        });
    }

    /// Serves the notices other nodes send to this one.
    pub async fn on_notice(&self, handler: NoticeHandler) -> std::result::Result<(), String> {
        let subject = self.subject(&format!("notice.{}", self.node_id));
        let mut sub = self
            .nats
            .subscribe(subject.clone())
            .await
            .map_err(|e| format!("cluster: cannot subscribe to {subject}: {e}"))?;
        actix_rt::spawn(async move {
            while let Some(m) = sub.next().await {
                handler(m.payload.to_vec());
            }
        });
        Ok(())
    }

    /// Rooms whose lease this node holds now, with their epochs.
    pub fn held_rooms(&self) -> Vec<(String, i64)> {
        let mut v: Vec<(String, i64)> = self
            .held
            .lock()
            .iter()
            .map(|(r, h)| (r.clone(), h.epoch))
            .collect();
        v.sort();
        v
    }

    fn spawn_heartbeats(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let every = self.ttl / 5;
        actix_rt::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Some(c) = weak.upgrade() else { break };
                let safe = c.core.notifier.safe_point();
                let _ = c.out.send(Outgoing::Node(c.heartbeat(safe, false)));
                c.update_floor();
            }
        });
    }

    fn spawn_renewals(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let every = self.ttl / 3;
        actix_rt::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Some(c) = weak.upgrade() else { break };
                c.renew().await;
                c.rebalance().await;
            }
        });
    }

    /// Whether this node has not heard its own heartbeat come back from NATS for three
    /// quarters of the TTL (what the others need within a TTL to call it live).
    fn cut_off(&self) -> bool {
        self.echo.lock().elapsed() > self.local_term()
    }

    /// Whether this node has given up its leases because it alone is cut off from NATS: it
    /// takes no rooms until it hears itself again.
    pub fn isolated(&self) -> bool {
        self.isolated.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Writes when this node last heard NATS (`cluster_nodes`); cut off while another node
    /// heard NATS within a TTL, it is the one the others cannot reach: it gives every lease
    /// back (so its rooms and destinations move at once instead of staying pinned to a node
    /// nobody can forward to) and takes none until it hears itself again. Cut off with every
    /// other node silent too, NATS is down for all: it keeps what it holds and serves it
    /// locally, as before. `true`: the leases were given up, do not renew.
    async fn check_nats(&self) -> bool {
        let echo_age = ms(self.echo.lock().elapsed());
        let (node, ttl) = (self.node_id.clone(), ms(self.ttl));
        let others = match self
            .core
            .db
            .read(move |c| rows::note_nats_seen(c, &node, echo_age, ttl))
            .await
        {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "cluster: could not record NATS liveness");
                return false;
            }
        };
        if !self.cut_off() || others == 0 {
            return false;
        }
        let keys: Vec<String> = self.held.lock().drain().map(|(k, _)| k).collect();
        let was = self
            .isolated
            .swap(true, std::sync::atomic::Ordering::Relaxed);
        if !was || !keys.is_empty() {
            tracing::warn!(
                node = %self.node_id,
                leases = keys.len(),
                others_with_nats = others,
                "cluster: cut off from NATS while other nodes are not; giving up every lease until it is reached again"
            );
        }
        if !keys.is_empty() {
            crate::observe::metrics::cluster_releases(keys.len());
            let node = self.node_id.clone();
            if let Err(e) = self
                .core
                .db
                .read(move |c| rows::expire_all(c, &node, &keys))
                .await
            {
                tracing::warn!(error = %e, "cluster: could not give up leases (they run out by themselves)");
            }
        }
        true
    }

    /// Extends every held lease; drops the ones another node took over.
    async fn renew(&self) {
        if self.check_nats().await {
            return;
        }
        let rooms: Vec<String> = self.held.lock().keys().cloned().collect();
        if rooms.is_empty() {
            return;
        }
        let began = Instant::now();
        let node = self.node_id.clone();
        let ttl = ms(self.ttl);
        let asked = rooms.clone();
        match self
            .core
            .db
            .read(move |c| rows::renew(c, &node, &asked, ttl))
            .await
        {
            Ok(still) => {
                crate::observe::metrics::cluster_renewal(still.len());
                let until = began + self.local_term();
                let mut held = self.held.lock();
                for room in rooms {
                    match (held.get_mut(&room), still.get(&room)) {
                        (Some(h), Some(epoch)) if h.epoch == *epoch => h.until = until,
                        (Some(_), _) => {
                            tracing::warn!(room_id = %room, "cluster: lease lost");
                            held.remove(&room);
                        }
                        (None, _) => {}
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cluster: lease renewal failed"),
        }
    }

    /// Gives back the rooms held here whose rendezvous owner is now another live node (a node
    /// joined, or came back after a failover) once they have been idle for a lease TTL: their
    /// next message goes to that node, which acquires them. Busy rooms stay (moving one costs
    /// its actor's warm state and a load from the database), so load spreads as rooms go
    /// quiet. Destinations need none of this: an idle destination actor gives its lease
    /// back by itself.
    async fn rebalance(&self) {
        let live = self.live_nodes();
        if live.len() < 2 {
            return;
        }
        let idle_ms = ms(self.ttl);
        let stats = crate::observe::rooms::global();
        let elsewhere: Vec<(String, i64, String)> = self
            .held_rooms()
            .into_iter()
            .filter(|(k, _)| k.starts_with('!'))
            .filter_map(|(k, epoch)| {
                let to = placement::owner(&k, live.iter().map(String::as_str))?.to_owned();
                (to != self.node_id).then_some((k, epoch, to))
            })
            .collect();
        for (room, epoch, to) in elsewhere {
            // Checked again right before: `release` drops the lease from the held set at once,
            // so from then on `route` sends the room's messages elsewhere.
            if stats.idle_ms(&room) < idle_ms {
                continue;
            }
            tracing::info!(room_id = %room, epoch, to, "cluster: giving an idle room back to its rendezvous owner");
            self.release(&room, epoch).await;
        }
    }

    /// How long after a renewal began this node still calls the lease its own: a quarter of
    /// the TTL short of the database's end.
    fn local_term(&self) -> Duration {
        self.ttl - self.ttl / 4
    }

    /// Where `room_id`'s messages are handled: here under a held (or just acquired) lease, or
    /// on the node holding it, or on the room's rendezvous owner, which acquires it. A lease
    /// held by a node that has gone silent is waited out (at most one TTL).
    pub async fn route(&self, room_id: &str) -> Result<Route> {
        let deadline = Instant::now() + self.ttl * 2;
        loop {
            if self.isolated() {
                return Err(Error::Unreachable(format!(
                    "cluster node {} is cut off from NATS and takes no rooms",
                    self.node_id
                )));
            }
            let held = self
                .held
                .lock()
                .get(room_id)
                .filter(|h| h.until > Instant::now())
                .map(|h| h.epoch);
            if let Some(epoch) = held {
                if room_id.starts_with('!') {
                    // On its way to the actor: not idle (see `rebalance`).
                    crate::observe::rooms::global().touch(room_id);
                }
                return Ok(Route::Local { epoch });
            }
            let room = room_id.to_owned();
            let lease = self.core.db.read(move |c| rows::lease(c, &room)).await?;
            let live = self.live_nodes();
            if let Some(l) = &lease
                && l.remaining_ms > 0
                && l.owner != self.node_id
            {
                if self.is_live(&l.owner) {
                    return Ok(Route::Remote(l.owner.clone()));
                }
                if Instant::now() > deadline {
                    return Err(Error::Unreachable(format!(
                        "the owner of {room_id} ({}) is not answering",
                        l.owner
                    )));
                }
                let wait = u64::try_from(l.remaining_ms).unwrap_or(0).clamp(20, 200);
                tokio::time::sleep(Duration::from_millis(wait)).await;
                continue;
            }
            let target = placement::owner(room_id, live.iter().map(String::as_str))
                .unwrap_or(self.node_id.as_str())
                .to_owned();
            let ours = lease
                .as_ref()
                .is_some_and(|l| l.owner == self.node_id && l.remaining_ms > 0);
            if target != self.node_id && !ours {
                return Ok(Route::Remote(target));
            }
            if let Some(epoch) = self.acquire(room_id).await? {
                return Ok(Route::Local { epoch });
            }
            if Instant::now() > deadline {
                return Err(Error::Unreachable(format!("no node could take {room_id}")));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn acquire(&self, room_id: &str) -> Result<Option<i64>> {
        let _one = self.acquiring.lock().await;
        if let Some(h) = self.held.lock().get(room_id)
            && h.until > Instant::now()
        {
            return Ok(Some(h.epoch));
        }
        let began = Instant::now();
        let (room, node, ttl) = (room_id.to_owned(), self.node_id.clone(), ms(self.ttl));
        let got = self
            .core
            .db
            .read(move |c| rows::acquire(c, &room, &node, ttl))
            .await?;
        if let Some(epoch) = got {
            crate::observe::metrics::cluster_acquisition();
            if room_id.starts_with('!') {
                tracing::info!(room_id, epoch, node = %self.node_id, "cluster: room acquired");
            } else {
                tracing::info!(key = room_id, epoch, node = %self.node_id, "cluster: lease acquired");
            }
            self.held.lock().insert(
                room_id.to_owned(),
                Held {
                    epoch,
                    until: began + self.local_term(),
                },
            );
        }
        Ok(got)
    }

    /// Sends a request to `node`'s room handler and waits for its answer: at most the request
    /// timeout, and no longer than `node` stays live (a request a node took with it when it
    /// died is given up as soon as the node is missed, so the room can move).
    pub async fn forward(&self, node: &str, body: Vec<u8>) -> Result<Vec<u8>> {
        let subject = self.subject(&format!("rooms.{node}"));
        let request = self.nats.request(subject, body.into());
        tokio::pin!(request);
        loop {
            match tokio::time::timeout(Duration::from_millis(100), &mut request).await {
                Ok(Ok(m)) => {
                    crate::observe::metrics::cluster_forward(true);
                    return Ok(m.payload.to_vec());
                }
                Ok(Err(e)) => {
                    crate::observe::metrics::cluster_forward(false);
                    return Err(Error::Unreachable(format!("cluster node {node}: {e}")));
                }
                Err(_) if !self.is_live(node) => {
                    crate::observe::metrics::cluster_forward(false);
                    return Err(Error::Unreachable(format!(
                        "cluster node {node} went silent before answering"
                    )));
                }
                Err(_) => {}
            }
        }
    }

    fn is_live(&self, node: &str) -> bool {
        node == self.node_id
            || self
                .peers
                .lock()
                .get(node)
                .is_some_and(|p| p.seen.elapsed() < self.ttl)
    }

    /// Serves the requests other nodes forward to this one.
    pub async fn serve_rooms(&self, handler: RoomHandler) -> std::result::Result<(), String> {
        let subject = self.subject(&format!("rooms.{}", self.node_id));
        let mut sub = self
            .nats
            .subscribe(subject.clone())
            .await
            .map_err(|e| format!("cluster: cannot subscribe to {subject}: {e}"))?;
        let nats = self.nats.clone();
        actix_rt::spawn(async move {
            while let Some(m) = sub.next().await {
                let Some(reply) = m.reply.clone() else {
                    continue;
                };
                let (h, nats) = (Arc::clone(&handler), nats.clone());
                actix_rt::spawn(async move {
                    let answer = h(m.payload.to_vec()).await;
                    crate::observe::metrics::cluster_served();
                    if let Err(e) = nats.publish(reply, answer.into()).await {
                        tracing::warn!(error = %e, "cluster: could not answer a forwarded request");
                    }
                });
            }
        });
        Ok(())
    }

    /// A clean stop: leases given up and the others told, so rooms move at once.
    pub async fn leave(&self) {
        let rooms: Vec<String> = self.held.lock().drain().map(|(r, _)| r).collect();
        let node = self.node_id.clone();
        if let Err(e) = self
            .core
            .db
            .read(move |c| rows::release(c, &node, &rooms))
            .await
        {
            tracing::warn!(error = %e, "cluster: could not release leases");
        }
        let body = serde_json::to_vec(&self.heartbeat(self.core.notifier.safe_point(), true));
        if let Ok(body) = body {
            let _ = self.nats.publish(self.subject("node"), body.into()).await;
            let _ = self.nats.flush().await;
        }
    }
}
