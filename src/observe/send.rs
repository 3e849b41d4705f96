//! Where the time of one federation `/send` goes, stage by stage, inside the server.
//!
//! A `/send` crosses several threads: the HTTP worker that takes it, the blocking read pool
//! (the de-duplication read, the screen of what is already stored), the verify pool (steps
//! 2–3), the room actor's arbiter, the database writer, and the HTTP worker again. Each
//! stamps a [`Point`] into the transaction's [`Stamps`] (one small array, shared by `Arc`);
//! when the handler answers, the stamps become one sample of each stage of
//! `weft_federation_send_stage_seconds`:
//!
//! | stage | from | to |
//! |---|---|---|
//! | `dedup_read` | the handler took the request (after the per-origin slot) | the de-duplication read returned (the hop to a blocking thread included) |
//! | `parse` | the read returned | every PDU's step 1 (parsed on the verify pool) was back in the handler |
//! | `keys` | the PDUs were parsed | the signing keys they need were ready (only when a key had to be fetched) |
//! | `verify_wait` | the keys were ready | the first verify job began (only after a fetch) |
//! | `verify` | the first job's signature checks began | every result was back in the handler |
//! | `screen` | the screen read (step 0) was asked | it returned |
//! | `mailbox` | the PDUs were sent to the room's actor | the actor began handling them |
//! | `actor` | the actor began | it had decided every PDU (auth, state, soft-fail, append) |
//! | `batch_wait` | the actor had decided | the batch holding them went to the writer |
//! | `writer_wait` | the batch went to the writer | the writer began the job |
//! | `commit_writes` | the writer began the job | the job's statements were done |
//! | `commit_sync` | the statements were done | the commit (fsync included) returned |
//! | `reply` | the commit returned | the outcomes were back in the handler |
//! | `answer` | the outcomes were back | the answer body was built |
//! | `total` | the handler took the request | the answer body was built |
//!
//! The room-side stages (`mailbox` to `reply`) are recorded for a transaction whose PDUs
//! are all for one room (the actor then holds the stamps with the transaction's answer
//! record); the others for every `/send` with PDUs.

use std::time::Instant;

use parking_lot::Mutex;

/// A moment in one `/send`'s life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Point {
    Accepted,
    Read,
    Parsed,
    KeysReady,
    VerifyBegan,
    Verified,
    ScreenAsked,
    Screened,
    ToActor,
    ActorBegan,
    ActorDone,
    FlushBegan,
    WriterBegan,
    Written,
    Committed,
    Back,
    Answered,
}

const POINTS: usize = Point::Answered as usize + 1;

/// The stamps of one `/send` (shared by the threads it crosses).
#[derive(Default)]
pub struct Stamps {
    at: Mutex<[Option<Instant>; POINTS]>,
}

impl Stamps {
    /// Stamps `p` now (a later stamp of the same point replaces it).
    pub fn stamp(&self, p: Point) {
        self.at.lock()[p as usize] = Some(Instant::now());
    }

    /// Stamps `p` now unless it is stamped already (the first of several threads wins).
    pub fn stamp_first(&self, p: Point) {
        let mut at = self.at.lock();
        if at[p as usize].is_none() {
            at[p as usize] = Some(Instant::now());
        }
    }

    /// Stamps `p` at `when`, when known.
    pub fn stamp_at(&self, p: Point, when: Option<Instant>) {
        if let Some(w) = when {
            self.at.lock()[p as usize] = Some(w);
        }
    }

    /// Records every stage whose two ends are stamped.
    pub fn record(&self) {
        let at = *self.at.lock();
        for (stage, secs) in stages(&at) {
            super::metrics::federation_send_stage(stage, secs);
        }
    }
}

/// The stages of one `/send` (name, seconds), those with both ends stamped.
fn stages(at: &[Option<Instant>; POINTS]) -> Vec<(&'static str, f64)> {
    use Point::*;
    let pairs: [(&'static str, Point, Point); 15] = [
        ("dedup_read", Accepted, Read),
        ("parse", Read, Parsed),
        ("keys", Parsed, KeysReady),
        ("verify_wait", KeysReady, VerifyBegan),
        ("verify", VerifyBegan, Verified),
        ("screen", ScreenAsked, Screened),
        ("mailbox", ToActor, ActorBegan),
        ("actor", ActorBegan, ActorDone),
        ("batch_wait", ActorDone, FlushBegan),
        ("writer_wait", FlushBegan, WriterBegan),
        ("commit_writes", WriterBegan, Written),
        ("commit_sync", Written, Committed),
        ("reply", Committed, Back),
        ("answer", Back, Answered),
        ("total", Accepted, Answered),
    ];
    pairs
        .iter()
        .filter_map(
            |(name, from, to)| match (at[*from as usize], at[*to as usize]) {
                (Some(a), Some(b)) => Some((*name, b.saturating_duration_since(a).as_secs_f64())),
                _ => None,
            },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_stages_with_both_ends_are_recorded() {
        let s = Stamps::default();
        s.stamp(Point::Accepted);
        s.stamp(Point::Read);
        s.stamp(Point::Answered);
        let at = *s.at.lock();
        let names: Vec<_> = stages(&at).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, vec!["dedup_read", "total"]);
        // Recording with the recorder not installed is a no-op, never a panic.
        s.record();
    }

    #[test]
    fn the_first_stamp_wins_for_stamp_first() {
        let s = Stamps::default();
        s.stamp_first(Point::VerifyBegan);
        let first = s.at.lock()[Point::VerifyBegan as usize];
        std::thread::sleep(std::time::Duration::from_millis(2));
        s.stamp_first(Point::VerifyBegan);
        assert_eq!(s.at.lock()[Point::VerifyBegan as usize], first);
    }
}
