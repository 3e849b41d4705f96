//! The `fedpeer` command: `serve` (publish a key, accept what servers send),
//! `bench-send` (PDUs/s through `/send`, one or more servers side by side) and
//! `bench-ingest` (the same from K origin servers at once, into one room or many).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use fedpeer::bench::{self, Target};
use fedpeer::{Error, Peer, PeerOptions};
use fedpeer::{ingest, join_bench};

#[derive(Parser)]
#[command(
    name = "fedpeer",
    version,
    about = "A small Matrix federation peer for tests and benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Listen as `localhost:PORT` (TLS) and serve the key until killed, or for --seconds.
    Serve {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        seconds: Option<u64>,
    },
    /// Join a room on each target and measure signed PDUs/s through /send.
    BenchSend {
        /// The peer's port on 127.0.0.1 (its server name is localhost:PORT).
        #[arg(long)]
        port: u16,
        /// NAME,SERVER_NAME,CLIENT_BASE,TOKEN (repeat; the first is the ratio's numerator).
        #[arg(long = "target", required = true)]
        targets: Vec<String>,
        /// Transactions per run.
        #[arg(long, default_value_t = 20)]
        txns: usize,
        /// PDUs per transaction.
        #[arg(long, default_value_t = 50)]
        pdus: usize,
        /// Measured runs per target and in-flight setting.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Transactions in flight (comma-separated settings).
        #[arg(long, value_delimiter = ',', default_value = "1")]
        inflight: Vec<usize>,
        /// Sending modes (comma-separated): open = next transaction when answered,
        /// closed = next transaction when its PDUs are readable.
        #[arg(long, value_delimiter = ',', default_value = "open,closed")]
        modes: Vec<String>,
        /// Bound on each request and on each wait, in seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// Longest pause between two readability checks, in milliseconds.
        #[arg(long, default_value_t = 50)]
        poll_max_ms: u64,
        /// Also write every sample as JSON to this file.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
    /// K origin servers (ports --port..--port+K), one transaction in flight each, into one
    /// room or many: stored PDUs/s per target.
    BenchIngest {
        /// The first origin's port on 127.0.0.1 (origin i listens on PORT + i).
        #[arg(long)]
        port: u16,
        /// NAME,SERVER_NAME,CLIENT_BASE,TOKEN (repeat; the first is the ratio's numerator).
        #[arg(long = "target", required = true)]
        targets: Vec<String>,
        /// Origin servers.
        #[arg(long, default_value_t = 4)]
        origins: usize,
        /// Rooms per setting (comma-separated settings).
        #[arg(long, value_delimiter = ',', default_value = "1")]
        rooms: Vec<usize>,
        /// Transactions per origin and run.
        #[arg(long, default_value_t = 10)]
        txns: usize,
        /// PDUs per transaction.
        #[arg(long, default_value_t = 50)]
        pdus: usize,
        /// Measured runs per target and setting.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Bound on each request and on each wait, in seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// Longest pause between two readability checks, in milliseconds.
        #[arg(long, default_value_t = 50)]
        poll_max_ms: u64,
        /// Also write every sample as JSON to this file.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
    /// Join a room of --members members hosted here from a local user of each target:
    /// until the join answers, the first send is accepted, the full state is listed.
    BenchJoin {
        /// The peer's port on 127.0.0.1 (its server name is localhost:PORT).
        #[arg(long)]
        port: u16,
        /// NAME,SERVER_NAME,CLIENT_BASE,TOKEN (repeat; the first is the ratio's reference).
        #[arg(long = "target", required = true)]
        targets: Vec<String>,
        /// Joined members of each room.
        #[arg(long, default_value_t = 10_000)]
        members: usize,
        /// Measured runs per target (each into a room of its own).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Bound on each request and on each wait, in seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// Also write every sample as JSON to this file.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fedpeer: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The `--target` arguments, parsed.
fn parse_targets(targets: &[String]) -> Result<Vec<Target>, Error> {
    targets.iter().map(|t| Target::parse(t)).collect()
}

/// After a benchmark: prints its summary and writes its samples to `--json` when given.
fn report<S>(
    run: Result<Vec<S>, Error>,
    to_json: impl Fn(&S) -> serde_json::Value,
    summary: impl FnOnce(&[S]) -> String,
    json: Option<PathBuf>,
) -> Result<(), Error> {
    let samples = run.map_err(|e| Error(format!("benchmark failed: {e}")))?;
    print!("{}", summary(&samples));
    if let Some(path) = json {
        let v = serde_json::Value::Array(samples.iter().map(to_json).collect());
        std::fs::write(&path, v.to_string())
            .map_err(|e| Error(format!("writing {}: {e}", path.display())))?;
    }
    Ok(())
}

fn run(command: Command) -> Result<(), Error> {
    match command {
        Command::Serve { port, seconds } => {
            let peer = Peer::start(port)?;
            println!("{} {}", peer.server_name(), peer.key().key_id());
            match seconds {
                Some(s) => std::thread::sleep(Duration::from_secs(s)),
                None => loop {
                    std::thread::park();
                },
            }
            Ok(())
        }
        Command::BenchJoin {
            port,
            targets,
            members,
            runs,
            timeout,
            json,
        } => {
            let targets = parse_targets(&targets)?;
            let timeout = Duration::from_secs(timeout);
            let peer = Peer::start_with(port, PeerOptions { timeout })?;
            let opts = join_bench::Options {
                members,
                runs,
                timeout,
            };
            report(
                join_bench::run(&peer, &targets, &opts, |l| eprintln!("{l}")),
                |s| s.to_json(),
                |samples| join_bench::summary(samples, &targets, &opts),
                json,
            )
        }
        Command::BenchIngest {
            port,
            targets,
            origins,
            rooms,
            txns,
            pdus,
            runs,
            timeout,
            poll_max_ms,
            json,
        } => {
            let targets = parse_targets(&targets)?;
            let opts = ingest::Options {
                origins,
                base_port: port,
                rooms,
                txns,
                pdus_per_txn: pdus,
                runs,
                timeout: Duration::from_secs(timeout),
                poll_max: Duration::from_millis(poll_max_ms),
            };
            let peers = ingest::start_origins(&opts)?;
            for p in &peers {
                eprintln!(
                    "fedpeer: origin {} with key {}",
                    p.server_name(),
                    p.key().key_id()
                );
            }
            report(
                ingest::run(&peers, &targets, &opts, |l| eprintln!("{l}")),
                |s| s.to_json(),
                |samples| ingest::summary(samples, &targets, &opts),
                json,
            )
        }
        Command::BenchSend {
            port,
            targets,
            txns,
            pdus,
            runs,
            inflight,
            modes,
            timeout,
            poll_max_ms,
            json,
        } => {
            let modes = modes
                .iter()
                .map(|m| bench::Mode::parse(m))
                .collect::<Result<Vec<_>, _>>()?;
            let targets = parse_targets(&targets)?;
            let timeout = Duration::from_secs(timeout);
            let peer = Peer::start_with(port, PeerOptions { timeout })?;
            let opts = bench::Options {
                txns,
                pdus_per_txn: pdus,
                runs,
                inflight,
                modes,
                timeout,
                poll_max: Duration::from_millis(poll_max_ms),
            };
            eprintln!(
                "fedpeer: {} with key {}",
                peer.server_name(),
                peer.key().key_id()
            );
            report(
                bench::run(&peer, &targets, &opts, |l| eprintln!("{l}")),
                |s| s.to_json(),
                |samples| bench::summary(samples, &targets, &opts),
                json,
            )
        }
    }
}
