//! Where the time of a `/sync` wake-up goes, stage by stage, inside the server.
//!
//! A wake-up spans four threads: the HTTP worker that takes the `PUT /send`, the room actor,
//! the database writer that commits (and fsyncs) it, and the HTTP worker of the waiting
//! `/sync`. Each stamps the moment it is done with the event, keyed by the event's stream
//! position, into one small table (the last [`KEEP`] positions); when a woken `/sync`
//! answers, the stamps of the newest position it carries become one sample of each stage of
//! `weft_sync_wake_stage_seconds`:
//!
//! | stage | from | to |
//! |---|---|---|
//! | `queue` | the send handler accepted the request | the writer began the batch's job |
//! | `commit` | the writer began the job | the commit (fsync included) returned |
//! | `commit_writes` | the writer began the job | the job's statements were done |
//! | `commit_sync` | the job's statements were done | the commit returned (the rest of the batch, `COMMIT` and its fsync) |
//! | `notify` | the commit returned | the notifier woke the waiting users |
//! | `wake` | the users were woken | the `/sync` handler ran again |
//! | `respond` | the `/sync` handler ran again | its response body was built |
//! | `read_wait` | the `/sync` handler ran again | its read began on a blocking thread with a pooled connection |
//! | `read` | the read began | the read returned |
//! | `reply` | the read returned | the response body was built (the hop back to the HTTP worker included) |
//! | `total` | the send handler accepted the request | the response body was built |
//!
//! So the figure splits into disk (`commit`), thread hops (`queue` includes the hop to the
//! room actor and the writer's queue, `wake` the hop back to an HTTP worker) and compute
//! (`respond`), whatever the machine's load does to the end-to-end latency a client sees.
//! Only events sent by a local client through `PUT /send` carry the `queue` and `total`
//! stages; every woken answer records the others.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Instant;

use parking_lot::Mutex;

/// Positions remembered (a wake-up answers within a few of the newest).
pub const KEEP: usize = 512;

#[derive(Default, Clone, Copy)]
struct Stamps {
    accepted: Option<Instant>,
    began: Option<Instant>,
    written: Option<Instant>,
    committed: Option<Instant>,
    notified: Option<Instant>,
}

fn table() -> &'static Mutex<BTreeMap<i64, Stamps>> {
    static T: OnceLock<Mutex<BTreeMap<i64, Stamps>>> = OnceLock::new();
    T.get_or_init(Default::default)
}

fn with(pos: i64, f: impl FnOnce(&mut Stamps)) {
    let mut t = table().lock();
    f(t.entry(pos).or_default());
    while t.len() > KEEP {
        t.pop_first();
    }
}

/// A local client's send of the event at `pos` was accepted at `at`.
pub fn accepted(pos: i64, at: Instant) {
    with(pos, |s| s.accepted = Some(at));
}

/// The writer began the job holding `positions` at `began`, its statements were done at
/// `written`, and its commit returned now.
pub fn committed(positions: &[i64], (began, written): (Option<Instant>, Option<Instant>)) {
    let now = Instant::now();
    let mut t = table().lock();
    for pos in positions {
        let s = t.entry(*pos).or_default();
        s.began = began;
        s.written = written;
        s.committed = Some(now);
    }
    while t.len() > KEEP {
        t.pop_first();
    }
}

/// The notifier woke the users due at `positions` (only those with a stamp are noted).
pub fn notified(positions: impl IntoIterator<Item = i64>) {
    let now = Instant::now();
    let mut t = table().lock();
    for pos in positions {
        if let Some(s) = t.get_mut(&pos)
            && s.notified.is_none()
        {
            s.notified = Some(now);
        }
    }
}

/// When a woken `/sync`'s database read began and returned (the first read's start and the
/// last read's end, when the incremental answer fell back to the full read).
#[derive(Default, Clone, Copy, Debug)]
pub struct ReadSpan {
    pub began: Option<Instant>,
    pub done: Option<Instant>,
}

impl ReadSpan {
    /// Notes a read that ran from `began` to `done`.
    pub fn add(&mut self, (began, done): (Instant, Instant)) {
        self.began.get_or_insert(began);
        self.done = Some(done);
    }
}

/// A woken `/sync` (woken at `woken`, reading during `read`) answered with everything in
/// `(after, upto]`: records the stages of the newest stamped position there.
pub fn answered(after: i64, upto: i64, woken: Instant, read: ReadSpan) {
    let done = Instant::now();
    if upto <= after {
        // Woken by something without a position (typing): no stage to record.
        return;
    }
    let stamps = {
        let t = table().lock();
        t.range(after.saturating_add(1)..=upto)
            .rev()
            .find(|(_, s)| s.committed.is_some())
            .map(|(_, s)| *s)
    };
    let Some(s) = stamps else {
        return;
    };
    let span = |from: Option<Instant>, to: Option<Instant>| match (from, to) {
        (Some(a), Some(b)) => Some(b.saturating_duration_since(a).as_secs_f64()),
        _ => None,
    };
    let stages = [
        ("queue", span(s.accepted, s.began)),
        ("commit", span(s.began, s.committed)),
        ("commit_writes", span(s.began, s.written)),
        ("commit_sync", span(s.written, s.committed)),
        ("notify", span(s.committed, s.notified)),
        ("wake", span(s.notified.or(s.committed), Some(woken))),
        ("respond", span(Some(woken), Some(done))),
        ("read_wait", span(Some(woken), read.began)),
        ("read", span(read.began, read.done)),
        ("reply", span(read.done, Some(done))),
        ("total", span(s.accepted, Some(done))),
    ];
    for (stage, secs) in stages {
        if let Some(secs) = secs {
            super::metrics::sync_wake_stage(stage, secs);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_window_records_nothing_and_does_not_panic() {
        answered(7, 7, Instant::now(), ReadSpan::default());
        answered(i64::MAX, 3, Instant::now(), ReadSpan::default());
    }

    #[test]
    fn the_table_keeps_only_the_newest_positions() {
        // Far from the positions other tests in this process use.
        let base = 1_000_000_000;
        for i in 0..(KEEP as i64 + 10) {
            accepted(base + i, Instant::now());
        }
        let t = table().lock();
        assert!(t.len() <= KEEP);
        assert!(t.contains_key(&(base + KEEP as i64 + 9)));
        assert!(!t.contains_key(&base));
    }
}
