//! weft-login-flood: what a flood of password work does to a homeserver's memory and to
//! everyone else's requests.
//!
//! Against a running server (loopback only, registration open), it:
//! 1. registers a target user and a bystander with a room, then reads the server's resident
//!    memory (`VmRSS` of `--pid`): the idle figure;
//! 2. releases `--logins` wrong-password logins for the target user and `--registrations`
//!    registrations of fresh users at once, each on its own connection and thread;
//! 3. before the flood (`--baseline-secs`) and during it, the bystander issues `GET /_matrix/client/versions` and a message send
//!    back to back, timing each answer (the baseline shows what the machine gives without
//!    the flood);
//! 4. reports the answers by status (a 500, or a login answered anything but 403/429, or a
//!    registration anything but 200/429, is a failure), the server's peak memory during the
//!    run (`VmHWM`), the bystander's latencies (p50/p99/max), and the resident memory again
//!    after `--settle-secs`.
//!
//! Exit status 1 if any answer is outside the allowed statuses, a flood request failed at
//! the transport level or a bystander request failed; the memory and latency verdicts are printed, not enforced, so a noisy
//! machine does not turn a measurement into a flaky check. `tools/login_flood.sh` builds a
//! release weft, starts it, and runs this.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{Value, json};

#[derive(Parser, Debug)]
#[command(about = "Concurrent wrong-password logins and registrations against a homeserver")]
struct Args {
    /// Homeserver base URL (loopback only), e.g. http://127.0.0.1:38008
    #[arg(long)]
    hs: String,
    /// PID of the server process (for its memory figures, read from /proc).
    #[arg(long)]
    pid: u32,
    /// Concurrent wrong-password logins.
    #[arg(long, default_value_t = 500)]
    logins: usize,
    /// Concurrent registrations of fresh users.
    #[arg(long, default_value_t = 500)]
    registrations: usize,
    /// Seconds to wait after the flood before reading memory again.
    #[arg(long, default_value_t = 5)]
    settle_secs: u64,
    /// Seconds the bystander runs alone before the flood (its baseline latencies).
    #[arg(long, default_value_t = 3)]
    baseline_secs: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

type Res<T> = Result<T, String>;

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(120)))
        .http_status_as_error(false)
        .build()
        .into()
}

fn call(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    token: &str,
    body: Option<&Value>,
) -> Res<(u16, Value)> {
    let mut req = ureq::http::Request::builder().method(method).uri(url);
    if !token.is_empty() {
        req = req.header("Authorization", format!("Bearer {token}"));
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = req
        .header("Content-Type", "application/json")
        .body(body)
        .map_err(|e| e.to_string())?;
    let mut resp = agent.run(req).map_err(|e| format!("{method} {url}: {e}"))?;
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("{method} {url}: body: {e}"))?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

fn register(agent: &ureq::Agent, hs: &str, user: &str, password: &str) -> Res<(u16, Value)> {
    call(
        agent,
        "POST",
        &format!("{hs}/_matrix/client/v3/register"),
        "",
        Some(&json!({"username": user, "password": password, "auth": {"type": "m.login.dummy"}})),
    )
}

/// A `/proc/PID/status` figure in KiB (`VmRSS`, `VmHWM`).
fn proc_kib(pid: u32, field: &str) -> Res<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("reading /proc/{pid}/status: {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no {field} in /proc/{pid}/status"))
}

/// What the bystander saw during the flood: latencies of answered requests, and the
/// requests that failed (a non-200 answer or a broken connection), with the first reasons.
#[derive(Default)]
struct Bystander {
    versions: Vec<f64>,
    sends: Vec<f64>,
    failures: Vec<String>,
}

impl Bystander {
    fn run(over: &AtomicBool, hs: &str, token: &str, room: &str, first_txn: u64) -> Self {
        let mut me = Self::default();
        let mut a = agent();
        let room = room.replace('!', "%21").replace(':', "%3A");
        let mut n = first_txn;
        while !over.load(Ordering::Relaxed) {
            n += 1;
            let t = Instant::now();
            let r = call(
                &a,
                "GET",
                &format!("{hs}/_matrix/client/versions"),
                "",
                None,
            );
            me.record(r, t, true, &mut a);
            let url = format!("{hs}/_matrix/client/v3/rooms/{room}/send/m.room.message/b{n}");
            let body = json!({"msgtype": "m.text", "body": format!("during {n}")});
            let t = Instant::now();
            let r = call(&a, "PUT", &url, token, Some(&body));
            me.record(r, t, false, &mut a);
            std::thread::sleep(Duration::from_millis(10));
        }
        me
    }

    fn record(&mut self, r: Res<(u16, Value)>, t: Instant, versions: bool, a: &mut ureq::Agent) {
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        match r {
            Ok((200, _)) if versions => self.versions.push(ms),
            Ok((200, _)) => self.sends.push(ms),
            Ok((s, v)) => self.failures.push(format!("{s} after {ms:.0} ms: {v}")),
            Err(e) => {
                self.failures.push(format!("after {ms:.0} ms: {e}"));
                // A fresh connection for the next request.
                *a = agent();
            }
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let args = Args::parse();
    match run(&args) {
        Ok(ok) => std::process::exit(if ok { 0 } else { 1 }),
        Err(e) => {
            eprintln!("weft-login-flood: {e}");
            std::process::exit(2);
        }
    }
}

fn run(args: &Args) -> Res<bool> {
    let host = args
        .hs
        .strip_prefix("http://")
        .ok_or("--hs must be an http:// URL")?;
    if !(host.starts_with("127.") || host.starts_with("localhost") || host.starts_with("[::1]")) {
        return Err("refusing a non-loopback homeserver".into());
    }
    let hs = args.hs.trim_end_matches('/').to_owned();
    let a = agent();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let target = format!("target{stamp}");
    let (s, v) = register(&a, &hs, &target, "the right password")?;
    if s != 200 {
        return Err(format!("registering the target user: {s} {v}"));
    }
    let (s, v) = register(&a, &hs, &format!("bystander{stamp}"), "pw")?;
    if s != 200 {
        return Err(format!("registering the bystander: {s} {v}"));
    }
    let token = v["access_token"].as_str().unwrap_or_default().to_owned();
    let (s, v) = call(
        &a,
        "POST",
        &format!("{hs}/_matrix/client/v3/createRoom"),
        &token,
        Some(&json!({})),
    )?;
    let room = v["room_id"]
        .as_str()
        .filter(|_| s == 200)
        .ok_or_else(|| format!("createRoom: {s} {v}"))?
        .to_owned();
    // Let start-up and the registrations above settle before the idle figure.
    std::thread::sleep(Duration::from_secs(1));
    let idle_kib = proc_kib(args.pid, "VmRSS")?;

    // The bystander alone first: what this machine gives without the flood.
    let baseline = {
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, hs, token, room) = (stop.clone(), hs.clone(), token.clone(), room.clone());
        let h = std::thread::spawn(move || Bystander::run(&s2, &hs, &token, &room, 0));
        std::thread::sleep(Duration::from_secs(args.baseline_secs));
        stop.store(true, Ordering::Relaxed);
        h.join().map_err(|_| "the bystander thread panicked")?
    };

    // The bystander: /versions and a send, back to back, until the flood is over.
    let over = Arc::new(AtomicBool::new(false));
    let bystander = {
        let (over, hs, token, room) = (over.clone(), hs.clone(), token.clone(), room.clone());
        std::thread::spawn(move || Bystander::run(&over, &hs, &token, &room, 1_000_000))
    };

    let total = args.logins + args.registrations;
    let barrier = Arc::new(Barrier::new(total + 1));
    let transport_errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let handles: Vec<_> = (0..total)
        .map(|i| {
            let (barrier, hs, target) = (barrier.clone(), hs.clone(), target.clone());
            let errors = transport_errors.clone();
            let is_login = i < args.logins;
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    let a = agent();
                    barrier.wait();
                    let r = if is_login {
                        call(
                            &a,
                            "POST",
                            &format!("{hs}/_matrix/client/v3/login"),
                            "",
                            Some(&json!({"type": "m.login.password",
                                         "identifier": {"type": "m.id.user", "user": target},
                                         "password": "a wrong password"})),
                        )
                    } else {
                        register(&a, &hs, &format!("flood{stamp}x{i}"), "pw")
                    };
                    match r {
                        Ok((status, _)) => Some((is_login, status)),
                        Err(e) => {
                            eprintln!("{e}");
                            errors.fetch_add(1, Ordering::Relaxed);
                            None
                        }
                    }
                })
                .map_err(|e| format!("spawning a flood thread: {e}"))
        })
        .collect::<Res<_>>()?;
    barrier.wait();
    let mut counts: BTreeMap<(&str, u16), usize> = BTreeMap::new();
    for h in handles {
        if let Some((is_login, status)) = h.join().map_err(|_| "a flood thread panicked")? {
            *counts
                .entry((if is_login { "login" } else { "register" }, status))
                .or_default() += 1;
        }
    }
    let flood_secs = started.elapsed().as_secs_f64();
    over.store(true, Ordering::Relaxed);
    let Bystander {
        mut versions,
        mut sends,
        failures,
    } = bystander
        .join()
        .map_err(|_| "the bystander thread panicked")?;
    let peak_kib = proc_kib(args.pid, "VmHWM")?;
    std::thread::sleep(Duration::from_secs(args.settle_secs));
    let after_kib = proc_kib(args.pid, "VmRSS")?;

    versions.sort_by(f64::total_cmp);
    sends.sort_by(f64::total_cmp);
    let (mut base_versions, mut base_sends) = (baseline.versions, baseline.sends);
    let mut failures = failures;
    failures.extend(baseline.failures);
    base_versions.sort_by(f64::total_cmp);
    base_sends.sort_by(f64::total_cmp);
    let bad: usize = counts
        .iter()
        .filter(|((kind, status), _)| match *kind {
            "login" => !matches!(status, 403 | 429),
            _ => !matches!(status, 200 | 429),
        })
        .map(|(_, n)| n)
        .sum();
    let errors = transport_errors.load(Ordering::Relaxed);
    let mb = |kib: u64| kib as f64 / 1024.0;
    let by_status: Vec<String> = counts
        .iter()
        .map(|((k, s), n)| format!("{k} {s}: {n}"))
        .collect();
    if args.json {
        println!(
            "{}",
            json!({
                "logins": args.logins, "registrations": args.registrations,
                "answers": by_status, "unexpected": bad, "transport_errors": errors,
                "flood_s": flood_secs,
                "rss_idle_mb": mb(idle_kib), "rss_peak_mb": mb(peak_kib),
                "rss_after_mb": mb(after_kib),
                "bystander_failures": failures.len(),
                "versions_ms": {"n": versions.len(), "p50": percentile(&versions, 0.5),
                                "p99": percentile(&versions, 0.99),
                                "max": versions.last().copied().unwrap_or(f64::NAN)},
                "send_ms": {"n": sends.len(), "p50": percentile(&sends, 0.5),
                            "p99": percentile(&sends, 0.99),
                            "max": sends.last().copied().unwrap_or(f64::NAN)},
                "baseline_versions_ms": {"n": base_versions.len(),
                    "p50": percentile(&base_versions, 0.5),
                    "max": base_versions.last().copied().unwrap_or(f64::NAN)},
                "baseline_send_ms": {"n": base_sends.len(),
                    "p50": percentile(&base_sends, 0.5),
                    "max": base_sends.last().copied().unwrap_or(f64::NAN)},
            })
        );
    } else {
        println!(
            "flood: {} wrong-password logins + {} registrations, all answered in {flood_secs:.2} s",
            args.logins, args.registrations
        );
        println!("answers: {}", by_status.join(", "));
        println!("unexpected statuses: {bad}, transport errors: {errors}");
        println!(
            "server RSS: idle {:.1} MB, peak {:.1} MB (+{:.1}), {} s after {:.1} MB (+{:.1})",
            mb(idle_kib),
            mb(peak_kib),
            mb(peak_kib.saturating_sub(idle_kib)),
            args.settle_secs,
            mb(after_kib),
            mb(after_kib.saturating_sub(idle_kib)),
        );
        println!(
            "bystander requests that failed: {}{}",
            failures.len(),
            failures
                .first()
                .map(|f| format!(" (first: {f})"))
                .unwrap_or_default()
        );
        for (name, when, v) in [
            ("GET /versions", "before", &base_versions),
            ("GET /versions", "during", &versions),
            ("PUT send", "before", &base_sends),
            ("PUT send", "during", &sends),
        ] {
            println!(
                "{name} {when} the flood: n={} p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                v.len(),
                percentile(v, 0.5),
                percentile(v, 0.99),
                v.last().copied().unwrap_or(f64::NAN)
            );
        }
    }
    Ok(bad == 0 && errors == 0 && failures.is_empty())
}
