//! Observability: what an operator sees of a running weft.
//!
//! * [`metrics`]: Prometheus metrics through the `metrics` facade and
//!   `metrics-exporter-prometheus` (a well-kept exporter: text format, histograms with fixed
//!   buckets, idle series dropped). Counters and histograms are recorded where things happen
//!   (one-line calls); gauges describing *current* state (mailbox depths, destination
//!   backlogs, writer queues, the read pool) are refreshed from the live structures when
//!   `/metrics` is scraped, so nothing polls in the background and stopped rooms vanish.
//! * [`request`]: a middleware giving every HTTP request a request ID (the `X-Request-Id`
//!   header, echoed back), a tracing span carrying it, one log line per request (method,
//!   route pattern, path and query with credentials blanked, status, time — never headers
//!   or bodies) and the HTTP metrics.
//! * [`rooms`]: per-room actor statistics (messages waiting, high-water mark, messages
//!   handled, events appended, last activity) kept by the room registry for the status page
//!   and the per-room gauges.
//! * [`wake`]: the stages of a send -> `/sync` wake-up (send accepted, commit done, waiters
//!   woken, response built), stamped by stream position.
//! * [`send`]: the stages of a federation `/send` (read, parse, keys, verify, screen, the
//!   room actor, the writer, the answer), stamped per transaction.
//!
//! This module is a leaf: it knows no rooms, federation or HTTP faces; they call into it.

pub mod metrics;
pub mod request;
pub mod rooms;
pub mod send;
pub mod wake;
