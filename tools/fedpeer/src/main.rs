//! The `fedpeer` command: `serve` (publish a key, accept what servers send),
//! `bench-send` (PDUs/s through `/send`, one or more servers side by side) and
//! `bench-ingest` (the same from K origin servers at once, into one room or many).

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use fedpeer::bench::{self, Target};
use fedpeer::{Peer, PeerOptions};
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
    match Cli::parse().command {
        Command::Serve { port, seconds } => {
            let peer = match Peer::start(port) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("fedpeer: {e}");
                    return ExitCode::FAILURE;
                }
            };
            println!("{} {}", peer.server_name(), peer.key().key_id());
            match seconds {
                Some(s) => std::thread::sleep(Duration::from_secs(s)),
                None => loop {
                    std::thread::park();
                },
            }
            ExitCode::SUCCESS
        }
        Command::BenchJoin {
            port,
            targets,
            members,
            runs,
            timeout,
            json,
        } => {
            let targets: Vec<Target> = match targets.iter().map(|t| Target::parse(t)).collect() {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("fedpeer: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let timeout = Duration::from_secs(timeout);
            let peer = match Peer::start_with(port, PeerOptions { timeout }) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("fedpeer: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let opts = join_bench::Options {
                members,
                runs,
                timeout,
            };
            match join_bench::run(&peer, &targets, &opts, |l| eprintln!("{l}")) {
                Ok(samples) => {
                    print!("{}", join_bench::summary(&samples, &targets, &opts));
                    if let Some(path) = json {
                        let v =
                            serde_json::Value::Array(samples.iter().map(|s| s.to_json()).collect());
                        if let Err(e) = std::fs::write(&path, v.to_string()) {
                            eprintln!("fedpeer: writing {}: {e}", path.display());
                            return ExitCode::FAILURE;
                        }
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("fedpeer: benchmark failed: {e}");
                    ExitCode::FAILURE
                }
            }
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
            let targets: Vec<Target> = match targets.iter().map(|t| Target::parse(t)).collect() {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("fedpeer: {e}");
                    return ExitCode::FAILURE;
                }
            };
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
            let peers = match ingest::start_origins(&opts) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("fedpeer: {e}");
                    return ExitCode::FAILURE;
                }
            };
            for p in &peers {
                eprintln!(
                    "fedpeer: origin {} with key {}",
                    p.server_name(),
                    p.key().key_id()
                );
            }
            match ingest::run(&peers, &targets, &opts, |l| eprintln!("{l}")) {
                Ok(samples) => {
                    print!("{}", ingest::summary(&samples, &targets, &opts));
                    if let Some(path) = json {
                        let v =
                            serde_json::Value::Array(samples.iter().map(|s| s.to_json()).collect());
                        if let Err(e) = std::fs::write(&path, v.to_string()) {
                            eprintln!("fedpeer: writing {}: {e}", path.display());
                            return ExitCode::FAILURE;
                        }
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("fedpeer: benchmark failed: {e}");
                    ExitCode::FAILURE
                }
            }
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
            let modes: Vec<bench::Mode> =
                match modes.iter().map(|m| bench::Mode::parse(m)).collect() {
                    Ok(m) => m,
                    Err(e) => {
                        eprintln!("fedpeer: {e}");
                        return ExitCode::FAILURE;
                    }
                };
            let targets: Vec<Target> = match targets.iter().map(|t| Target::parse(t)).collect() {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("fedpeer: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let timeout = Duration::from_secs(timeout);
            let peer = match Peer::start_with(port, PeerOptions { timeout }) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("fedpeer: {e}");
                    return ExitCode::FAILURE;
                }
            };
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
            match bench::run(&peer, &targets, &opts, |l| eprintln!("{l}")) {
                Ok(samples) => {
                    print!("{}", bench::summary(&samples, &targets, &opts));
                    if let Some(path) = json {
                        let v =
                            serde_json::Value::Array(samples.iter().map(|s| s.to_json()).collect());
                        if let Err(e) = std::fs::write(&path, v.to_string()) {
                            eprintln!("fedpeer: writing {}: {e}", path.display());
                            return ExitCode::FAILURE;
                        }
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("fedpeer: benchmark failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
