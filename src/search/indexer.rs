//! The search indexer: writes the full-text index (`event_search`) and the user directory's
//! join profiles from the event stream, off the room actors' commits.
//!
//! It follows the stream the way the push worker does, behind the notifier's frontier (every
//! event at or below it is committed), woken by every frontier advance
//! (`Notifier::subscribe_all`). A pass reads the next batch of timeline events after its
//! position (`storage::search::events_to_index`: not outliers, rejected or soft-failed;
//! messages, names, topics, joins and redactions), computes the rows on the read pool
//! (`prepare`: the JSON is parsed there, not on the writer thread), and writes them in ONE
//! *deferred* write job together with its new position (`search_progress`). A deferred job
//! committed alone takes no fsync of its own (`storage::writer`); the next durable commit
//! makes it durable, and a crash before that loses the rows and the position together, so
//! the indexer starts again from the stored position and writes the same rows again (every
//! write is idempotent: a text row replaces its event's, a profile never moves back).
//!
//! What stays where it was: backfilled history (negative positions, which the forward stream
//! never passes) is indexed in its own transaction by `storage::events`; a redaction still
//! deletes its target's row in the redaction's transaction, and the indexer's write drops
//! again the rows of events redacted (or purged) between its read and its write, and checks
//! a redaction's target again when the redaction's own position comes by
//! (`storage::search::store_index`).
//!
//! Passes start at least `search.pass_interval_ms` apart ([`crate::notifier::Pacer`]), so
//! under load one pass indexes several commits' events; after a quiet spell the first pass
//! starts at once, and a pass cut short by its batch limit is followed at once.
//!
//! **Read-your-writes.** `/search` and the user directory first wait, bounded
//! ([`READ_YOUR_WRITES`]), for the indexer to reach the highest stream position the node
//! knows at the request ([`SearchIndex::wait_for`]): a message the user's own client sent
//! (answered, so allocated before the request) is then in the index. When the wait runs out
//! (the indexer far behind, a stalled node in a cluster) the search answers from what is
//! indexed.
//!
//! **Its own follower, not a part of the push worker's pass.** The push worker's pass is
//! the slow one (every local member's rules, per event) and writes only when something
//! notifies; a search that waits for the index must not wait for push evaluation, and a
//! failure in either must not stall the other. Both read the same committed stream, so
//! their positions are independent and each is stored with its own rows. When their jobs
//! reach the writer together, group commit puts them in one transaction anyway.
//!
//! In a cluster every node runs one over the same stream: the position moves by
//! compare-and-set (`storage::search::advance_indexed`), so a node whose batch another
//! node stored first writes nothing and goes on from the stored position.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::core::Core;
use crate::storage::search as index;

/// The writer shard of index jobs.
const SHARD: &str = "search";
/// Events read per pass.
const BATCH: i64 = 500;
/// How long a search waits for the index to catch up with the stream.
pub const READ_YOUR_WRITES: Duration = Duration::from_secs(3);

/// The indexer's committed position, for searches to wait on.
pub struct SearchIndex {
    indexed: watch::Sender<i64>,
}

impl Default for SearchIndex {
    fn default() -> Self {
        Self {
            // Nothing is known to be indexed until the indexer has read its position.
            indexed: watch::Sender::new(i64::MIN),
        }
    }
}

impl SearchIndex {
    /// The position up to which every searchable event is in the index.
    pub fn indexed(&self) -> i64 {
        *self.indexed.borrow()
    }

    /// Waits (at most `within`) until the index holds everything up to `pos`; answers
    /// whether it got there.
    pub async fn wait_for(&self, pos: i64, within: Duration) -> bool {
        let mut rx = self.indexed.subscribe();
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

    fn publish(&self, pos: i64) {
        self.indexed.send_if_modified(|p| {
            if pos > *p {
                *p = pos;
                true
            } else {
                false
            }
        });
    }
}

/// Starts the indexer (on the current actix system).
pub fn start(core: Arc<Core>, index: Arc<SearchIndex>) {
    actix_rt::spawn(run(core, index));
}

/// One pass's result.
enum Pass {
    /// Indexed up to this position; `true` when the position was stored with rows.
    Done(i64, bool),
    /// Another node stored a position past this pass's start: go on from the stored one.
    Taken,
}

/// Indexes `(after, frontier]` (or its first [`BATCH`] events): reads, prepares, writes.
async fn pass(core: &Core, after: i64, frontier: i64) -> crate::storage::StorageResult<Pass> {
    let (batch, upto) = core
        .db
        .read(move |c| {
            let events = index::events_to_index(c, after, frontier, BATCH)?;
            let upto = match events.last() {
                Some(last) if events.len() as i64 >= BATCH => {
                    last.stream_ordering.unwrap_or(frontier)
                }
                _ => frontier,
            };
            Ok((index::prepare(events), upto))
        })
        .await?;
    if batch.is_empty() {
        // Nothing to write: the position moves in memory (saved with the next batch, or by
        // the idle save; indexing nothing again changes nothing).
        return Ok(Pass::Done(upto, false));
    }
    let stored = core
        .db
        .write_deferred(SHARD, move |c| {
            if !index::advance_indexed(c, after, upto)? {
                return Ok(false);
            }
            index::store_index(c, &batch)?;
            Ok(true)
        })
        .await?;
    Ok(if stored {
        Pass::Done(upto, true)
    } else {
        Pass::Taken
    })
}

/// Runs the indexer until the process ends.
pub async fn run(core: Arc<Core>, index: Arc<SearchIndex>) {
    let mut rx = core.notifier.subscribe_all();
    let mut cursor = loop {
        match core.db.read(index::indexed_upto).await {
            // No position: a new database (or one never indexed here): from the start.
            Ok(p) => break p.unwrap_or(0),
            Err(e) => {
                tracing::warn!(error = %e, "search indexer: cannot read its position; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    index.publish(cursor);
    let mut unsaved = false;
    let mut last_save = Instant::now();
    let mut pacer = crate::notifier::Pacer::new(core.config.search.pass_interval_ms);
    loop {
        if core.notifier.frontier() > cursor {
            pacer.pace().await;
            // Whatever committed during the wait joins this pass.
            let frontier = core.notifier.frontier();
            match pass(&core, cursor, frontier).await {
                Ok(Pass::Done(upto, stored)) => {
                    if upto < frontier {
                        pacer.behind();
                    }
                    cursor = upto;
                    index.publish(cursor);
                    if stored {
                        unsaved = false;
                        last_save = Instant::now();
                    } else {
                        unsaved = true;
                    }
                }
                Ok(Pass::Taken) => match core.db.read(index::indexed_upto).await {
                    Ok(Some(p)) => {
                        cursor = cursor.max(p);
                        index.publish(cursor);
                        unsaved = false;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "search indexer: cannot read its position");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "search indexer: cannot index; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            continue;
        }
        if unsaved && last_save.elapsed() >= Duration::from_secs(1) {
            let at = cursor;
            // Never moves the stored position back (another node may be past it).
            match core
                .db
                .write_deferred(SHARD, move |c| {
                    index::advance_indexed(c, at, at).map(|_| ())
                })
                .await
            {
                Ok(()) => unsaved = false,
                Err(e) => tracing::warn!(error = %e, "search indexer: cannot save its position"),
            }
            last_save = Instant::now();
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
