//! The `weft` command: `serve`, `generate-config`, `check-config`, and the admin commands
//! (`user`, `room`, `keys`, `db`) — see [`weft::cli`].

fn main() -> std::process::ExitCode {
    weft::alloc::configure();
    weft::cli::run()
}
