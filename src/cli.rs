//! The `weft` command line.
//!
//! `serve` runs the server; the admin commands (`user`, `room`, `keys`, `db`,
//! `check-config`) open the configuration's database and key directly, so they work whether
//! or not the server runs (SQLite: the server and a command take turns at the single write
//! lock; WAL keeps readers going). They call the same functions as the admin API
//! ([`crate::admin`]). Passwords are read from a prompt, or from standard input when it is
//! not a terminal — never from the command line, where `ps` and shell history see them.
//!
//! Changes that need a room actor are left to the server: a deactivated user is made to
//! leave their rooms by the running server within seconds, or at its next start.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;

#[derive(Parser)]
#[command(
    name = "weft",
    version,
    about = "A Matrix homeserver for interoperable messaging"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct ConfigArg {
    /// Configuration file (the embedded default when absent).
    #[arg(long, short, env = "WEFT_CONFIG", global = true)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (embedded default configuration when no file is given).
    Serve {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Print a configuration file with every key at its default.
    GenerateConfig,
    /// Check a configuration file: syntax, values, database reachable, signing key readable.
    CheckConfig {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Create a user (same as `user create`; the password is read from a prompt or stdin).
    RegisterUser {
        #[command(flatten)]
        config: ConfigArg,
        username: String,
        #[arg(long)]
        admin: bool,
    },
    /// Users: list, show, create, deactivate, reset-password, promote.
    User {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        action: UserAction,
    },
    /// Rooms: list, show, purge.
    Room {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        action: RoomAction,
    },
    /// The server's signing keys: show, rotate.
    Keys {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        action: KeysAction,
    },
    /// The database: backup, migrate.
    Db {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        action: DbAction,
    },
}

#[derive(Subcommand)]
enum UserAction {
    /// List every local user.
    List,
    /// Show one user (devices, joined rooms).
    Show { user: String },
    /// Create a user; the password comes from a prompt or stdin.
    Create {
        username: String,
        #[arg(long)]
        admin: bool,
    },
    /// Deactivate a user: no more logins, every session ends, rooms are left.
    Deactivate { user: String },
    /// Set a new password (from a prompt or stdin) and end every session.
    ResetPassword { user: String },
    /// Make a user a server admin (`--revoke` takes it back).
    Promote {
        user: String,
        #[arg(long)]
        revoke: bool,
    },
}

#[derive(Subcommand)]
enum RoomAction {
    /// List rooms with member, event and state counts.
    List,
    /// Show one room: counts, members, aliases.
    Show { room: String },
    /// Delete a room's non-state events before a point.
    Purge {
        room: String,
        /// Purge events older than this time (milliseconds since the epoch).
        #[arg(long, conflicts_with = "before_event")]
        before_ts: Option<i64>,
        /// Purge events before this event.
        #[arg(long)]
        before_event: Option<String>,
    },
}

#[derive(Subcommand)]
enum KeysAction {
    /// Show the signing key and the retired ones.
    Show,
    /// Replace the signing key; the old one keeps verifying old events (old_verify_keys).
    /// A running server uses the new key after a restart.
    Rotate,
}

#[derive(Subcommand)]
enum DbAction {
    /// Write a consistent copy of the SQLite database (the server may keep running).
    Backup {
        #[arg(long)]
        to: PathBuf,
    },
    /// Copy this SQLite installation into an empty PostgreSQL database.
    Migrate {
        #[arg(long)]
        to: String,
    },
}

fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(&config.logging.filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.logging.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Logging for admin commands: warnings only unless RUST_LOG says otherwise.
fn init_quiet_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn load(config: &ConfigArg) -> Result<Config, String> {
    Config::load(config.config.as_deref()).map_err(|e| e.to_string())
}

/// Reads a password: a prompt (twice) on a terminal, else the first line of stdin.
fn read_password(what: &str) -> Result<String, String> {
    let pw = if std::io::stdin().is_terminal() {
        let a = rpassword::prompt_password(format!("{what}: ")).map_err(|e| e.to_string())?;
        let b =
            rpassword::prompt_password(format!("{what} (again): ")).map_err(|e| e.to_string())?;
        if a != b {
            return Err("the passwords differ".into());
        }
        a
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("reading the password from stdin: {e}"))?;
        line.trim_end_matches(['\n', '\r']).to_owned()
    };
    if pw.is_empty() {
        return Err("the password must not be empty".into());
    }
    Ok(pw)
}

/// Runs an async admin operation on a fresh actix system with the core opened.
fn with_core<T>(
    config: Config,
    f: impl AsyncFnOnce(std::sync::Arc<crate::core::Core>) -> Result<T, String>,
) -> Result<T, String> {
    let system = actix_rt::System::new();
    system.block_on(async move {
        let core = crate::core::Core::open(config).map_err(|e| e.to_string())?;
        f(core).await
    })
}

fn print_json(v: &impl serde::Serialize) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("weft: {e}"),
    }
}

pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::GenerateConfig => {
            print!("{}", Config::generate_toml());
            Ok(())
        }
        Command::Serve { config } => return serve(&config),
        Command::CheckConfig { config } => check_config(&config),
        Command::RegisterUser {
            config,
            username,
            admin,
        } => user(&config, UserAction::Create { username, admin }),
        Command::User { config, action } => user(&config, action),
        Command::Room { config, action } => room(&config, action),
        Command::Keys { config, action } => keys(&config, action),
        Command::Db { config, action } => db(&config, action),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: &ConfigArg) -> ExitCode {
    let config = match load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("weft: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config);
    let system = actix_rt::System::new();
    match system.block_on(crate::server::serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "weft stopped");
            eprintln!("weft: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(config: &ConfigArg) -> Result<(), String> {
    init_quiet_logging();
    let cfg = load(config)?;
    let (server, db) = (
        cfg.server_name.clone(),
        format!("{:?}", cfg.database_url().map_err(|e| e.to_string())?),
    );
    let listeners = (
        cfg.listeners.client.clone(),
        cfg.listeners.federation.clone(),
    );
    let metrics = cfg.metrics.clone();
    with_core(cfg, async move |core| {
        let (db_ok, writer_ok) = core.db.health(std::time::Duration::from_secs(5)).await;
        if !(db_ok && writer_ok) {
            return Err("the database does not answer".into());
        }
        println!("configuration OK");
        println!("  server_name: {server}");
        println!("  database:    {db} (reachable, migrations applied)");
        println!(
            "  signing key: {} ({} retired)",
            core.key.key_id(),
            core.old_keys.len()
        );
        println!("  client:      {}", listeners.0);
        println!(
            "  federation:  {}",
            if listeners.1.is_empty() {
                "off"
            } else {
                &listeners.1
            }
        );
        println!(
            "  metrics:     {}",
            if metrics.enabled {
                format!(
                    "{} on {} (allowed: {})",
                    metrics.path,
                    if metrics.listener.is_empty() {
                        "the client listener"
                    } else {
                        &metrics.listener
                    },
                    metrics.allowed.join(", ")
                )
            } else {
                "off".into()
            }
        );
        Ok(())
    })
}

fn user(config: &ConfigArg, action: UserAction) -> Result<(), String> {
    init_quiet_logging();
    let cfg = load(config)?;
    use crate::admin::users;
    // Read passwords before opening anything.
    let password = match &action {
        UserAction::Create { .. } => Some(read_password("password")?),
        UserAction::ResetPassword { .. } => Some(read_password("new password")?),
        _ => None,
    };
    with_core(cfg, async move |core| {
        let err = |e: crate::error::Error| e.to_string();
        match action {
            UserAction::List => {
                for u in users::list(&core).await.map_err(err)? {
                    println!(
                        "{}\t{}{}",
                        u.user_id,
                        if u.admin { "admin" } else { "user" },
                        if u.deactivated { "\tdeactivated" } else { "" }
                    );
                }
            }
            UserAction::Show { user } => {
                let id = users::local_user_id(&core, &user).map_err(err)?;
                print_json(&users::show(&core, &id).await.map_err(err)?);
            }
            UserAction::Create { username, admin } => {
                let id = users::create(&core, &username, password.unwrap_or_default(), admin)
                    .await
                    .map_err(err)?;
                println!("{id}");
            }
            UserAction::Deactivate { user } => {
                let id = users::local_user_id(&core, &user).map_err(err)?;
                let tokens = users::deactivate(&core, &id).await.map_err(err)?;
                println!(
                    "{id} deactivated ({} sessions ended); the server makes them leave their rooms",
                    tokens.len()
                );
            }
            UserAction::ResetPassword { user } => {
                let id = users::local_user_id(&core, &user).map_err(err)?;
                let tokens = users::reset_password(&core, &id, password.unwrap_or_default())
                    .await
                    .map_err(err)?;
                println!("{id}: password changed ({} sessions ended)", tokens.len());
            }
            UserAction::Promote { user, revoke } => {
                let id = users::local_user_id(&core, &user).map_err(err)?;
                users::set_admin(&core, &id, !revoke).await.map_err(err)?;
                println!(
                    "{id}: {}",
                    if revoke {
                        "no longer an admin"
                    } else {
                        "admin"
                    }
                );
            }
        }
        Ok(())
    })
}

fn room(config: &ConfigArg, action: RoomAction) -> Result<(), String> {
    init_quiet_logging();
    let cfg = load(config)?;
    use crate::admin::rooms::{self, PurgePoint};
    with_core(cfg, async move |core| {
        let err = |e: crate::error::Error| e.to_string();
        match action {
            RoomAction::List => {
                println!("room_id\tversion\tjoined\tlocal\tevents\tstate");
                for r in rooms::list(&core).await.map_err(err)? {
                    println!(
                        "{}\t{}\t{}\t{}\t{}\t{}",
                        r.room_id,
                        r.room_version,
                        r.joined_members,
                        r.local_members,
                        r.events,
                        r.state_events
                    );
                }
            }
            RoomAction::Show { room } => {
                let id = rooms::parse_room_id(&room).map_err(err)?;
                print_json(&rooms::show(&core, id.as_str()).await.map_err(err)?);
            }
            RoomAction::Purge {
                room,
                before_ts,
                before_event,
            } => {
                let id = rooms::parse_room_id(&room).map_err(err)?;
                let point = match (before_ts, before_event) {
                    (Some(ts), None) => PurgePoint::Ts(ts),
                    (None, Some(e)) => PurgePoint::Event(e),
                    _ => return Err("give --before-ts or --before-event".into()),
                };
                let n = rooms::purge_offline(&core, id.as_str(), point)
                    .await
                    .map_err(err)?;
                println!("{id}: {n} events purged");
            }
        }
        Ok(())
    })
}

fn keys(config: &ConfigArg, action: KeysAction) -> Result<(), String> {
    init_quiet_logging();
    let cfg = load(config)?;
    match action {
        KeysAction::Show => with_core(cfg, async move |core| {
            print_json(&crate::admin::keys_json(&core));
            Ok(())
        }),
        KeysAction::Rotate => {
            let path = cfg.signing_key_path();
            // Create the key first if there is none yet.
            crate::core::load_or_create_key(&path).map_err(|e| e.to_string())?;
            let (old, new) = crate::core::rotate_key(&path).map_err(|e| e.to_string())?;
            println!("retired {old}; signing with {new} (restart a running server to use it)");
            Ok(())
        }
    }
}

fn db(config: &ConfigArg, action: DbAction) -> Result<(), String> {
    init_quiet_logging();
    let cfg = load(config)?;
    match action {
        DbAction::Backup { to } => {
            let bytes = crate::admin::db::backup(&cfg, &to).map_err(|e| e.to_string())?;
            println!("backup written to {} ({bytes} bytes)", to.display());
            Ok(())
        }
        DbAction::Migrate { to } => {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{bar:40}] {pos}/{len} rows  {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            let counts =
                crate::admin::db::migrate_to_postgres(&cfg, &to, &mut |table, done, total| {
                    bar.set_length(total);
                    bar.set_position(done);
                    bar.set_message(table.to_owned());
                })
                .map_err(|e| e.to_string());
            bar.finish_and_clear();
            let counts = counts?;
            println!("table\tsqlite\tpostgres");
            for c in &counts {
                println!("{}\t{}\t{}", c.table, c.source, c.target);
            }
            let rows: i64 = counts.iter().map(|c| c.target).sum();
            println!(
                "verified: {} tables, {rows} rows, counts equal. Set database.url = \"{}\" and restart weft.",
                counts.len(),
                redact_url(&to)
            );
            Ok(())
        }
    }
}

/// A database URL without its password (for printing).
fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn database_passwords_are_not_printed() {
        assert_eq!(
            redact_url("postgres://weft:s3cret@db.example:5432/weft"),
            "postgres://weft:***@db.example:5432/weft"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1/weft"),
            "postgres://postgres@127.0.0.1/weft"
        );
    }
}
