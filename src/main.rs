//! The `sigrelay` executable: parse flags, set up logging, bind, print where to connect, run.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use sigrelay::cli::Cli;
use sigrelay::{server, shutdown, Config};

fn main() -> ExitCode {
    let config = match Config::try_from(Cli::parse()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("sigrelay: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = match EnvFilter::try_new(&config.log) {
        Ok(filter) => filter,
        Err(e) => {
            eprintln!("sigrelay: --log {:?}: {e}", config.log);
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("sigrelay: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let mut listeners = Vec::new();
        for addr in &config.bind {
            match TcpListener::bind(addr).await {
                Ok(listener) => listeners.push(listener),
                Err(e) => {
                    eprintln!("sigrelay: cannot listen on {addr}: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        // The banner goes to stdout with write errors ignored: a closed stdout (a supervisor
        // that stopped reading) must not take the server down, as `println!` would.
        let mut banner = format!(
            "sigrelay {} is running. Open one of:\n",
            env!("CARGO_PKG_VERSION")
        );
        for listener in &listeners {
            if let Ok(addr) = listener.local_addr() {
                for url in server::reachable_urls(addr, "http") {
                    banner.push_str(&format!("  {url}\n"));
                }
            }
        }
        banner.push_str("Press Ctrl-C to stop.\n");
        let mut stdout = std::io::stdout();
        let _ = stdout
            .write_all(banner.as_bytes())
            .and_then(|()| stdout.flush());

        let token = CancellationToken::new();
        if let Err(e) = shutdown::cancel_on_signals(token.clone()) {
            eprintln!("sigrelay: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
        sigrelay::run(listeners, config, token).await;
        ExitCode::SUCCESS
    })
}
