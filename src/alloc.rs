//! How the process gives memory back to the system (glibc's malloc, Linux).
//!
//! weft runs many threads (HTTP workers, room arbiters, database writer, blocking pool,
//! password and verify pools), and glibc's malloc gives threads arenas of their own. Two of
//! its defaults kept memory resident that nothing used (measured in docs/BENCHMARKS.md
//! section 10):
//!
//! - **The sliding mmap threshold.** A block above the threshold (128 KiB at start) is
//!   mmap'd and unmapped when freed, but freeing one raises the threshold to its size. The
//!   first argon2 hash (a 19 MiB buffer) raised it to 19 MiB, and from then on every block
//!   below that came from the arenas, and stayed there after it was freed. [`configure`]
//!   fixes the threshold (which turns the sliding off): large blocks always go back.
//! - **Freed memory inside an arena** is returned only from the arena's top. When room
//!   actors stop for idleness, their state is freed in the middle of the arenas; a server
//!   whose rooms went idle kept its peak resident. [`release_soon`] (called when a room
//!   actor stops) asks a background thread to run `malloc_trim(0)` within a few seconds,
//!   once for however many actors stopped meanwhile, which hands those free pages back.
//!
//! Other platforms and allocators: both are no-ops.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Blocks of this size and more are mmap'd, and unmapped when freed.
pub const MMAP_THRESHOLD: usize = 128 * 1024;

/// How often the trimming thread looks for work.
const TRIM_EVERY: Duration = Duration::from_secs(5);

static TRIM_WANTED: AtomicBool = AtomicBool::new(false);

/// Sets the allocator's thresholds and starts the trimming thread. Call once, first thing
/// in `main`, before other threads start.
pub fn configure() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt takes two integers and only changes malloc's parameters.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
            libc::mallopt(libc::M_TRIM_THRESHOLD, (2 * MMAP_THRESHOLD) as libc::c_int);
        }
        let started = std::thread::Builder::new()
            .name("weft-malloc-trim".into())
            .spawn(|| {
                loop {
                    std::thread::sleep(TRIM_EVERY);
                    if TRIM_WANTED.swap(false, Ordering::Relaxed) {
                        // SAFETY: malloc_trim takes an integer and only releases free pages.
                        unsafe {
                            libc::malloc_trim(0);
                        }
                    }
                }
            });
        if let Err(e) = started {
            tracing::warn!(error = %e, "could not start the malloc-trim thread");
        }
    }
}

/// Asks for freed memory to be handed back to the system soon (see the module comment).
pub fn release_soon() {
    TRIM_WANTED.store(true, Ordering::Relaxed);
}
