//! The `weft` command: `serve`, `generate-config`, `register-user`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use weft::config::Config;

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

#[derive(Subcommand)]
enum Command {
    /// Run the server (embedded default configuration when no file is given).
    Serve {
        #[arg(long, short, env = "WEFT_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Print a configuration file with every key at its default.
    GenerateConfig,
    /// Create a user directly in the database.
    RegisterUser {
        #[arg(long, short, env = "WEFT_CONFIG")]
        config: Option<PathBuf>,
        username: String,
        #[arg(long)]
        password: String,
        #[arg(long)]
        admin: bool,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::GenerateConfig => {
            print!("{}", Config::generate_toml());
            ExitCode::SUCCESS
        }
        Command::Serve { config } => {
            let config = match Config::load(config.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("weft: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logging(&config);
            let system = actix_rt::System::new();
            match system.block_on(weft::server::serve(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "weft stopped");
                    eprintln!("weft: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::RegisterUser {
            config,
            username,
            password,
            admin,
        } => {
            let config = match Config::load(config.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("weft: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logging(&config);
            let system = actix_rt::System::new();
            let result = system.block_on(async move {
                let core = weft::core::Core::open(config).map_err(|e| e.to_string())?;
                weft::accounts::create_user(&core, &username.to_lowercase(), Some(password), admin)
                    .await
                    .map_err(|e| e.to_string())
            });
            match result {
                Ok(user_id) => {
                    println!("{user_id}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("weft: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
