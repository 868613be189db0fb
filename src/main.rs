//! The `sigrelay` executable: parse flags, set up logging, bind, print where to connect, run.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use sigrelay::cli::Cli;
use sigrelay::{server, shutdown, tls, Config};

fn main() -> ExitCode {
    let mut config = match Config::try_from(Cli::parse()) {
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
    raise_open_file_limit();

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
        let udp = match config.ice.bind {
            Some(addr) => match tokio::net::UdpSocket::bind(addr).await {
                Ok(socket) => {
                    // Pages must be told the port actually bound (`--stun 127.0.0.1:0`).
                    if let Ok(bound) = socket.local_addr() {
                        config.ice.bind = Some(bound);
                    }
                    Some(socket)
                }
                Err(e) => {
                    eprintln!("sigrelay: cannot listen for STUN/TURN on udp {addr}: {e}");
                    return ExitCode::FAILURE;
                }
            },
            None => None,
        };
        if let Some(source) = &config.tls_source {
            match tls::load(source) {
                Ok(tls) => config.tls = Some(tls),
                Err(e) => {
                    eprintln!("sigrelay: TLS: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        // The banner goes to stdout with write errors ignored: a closed stdout (a supervisor
        // that stopped reading) must not take the server down, as `println!` would.
        let mut banner = banner(&listeners, &config);
        if let Some(addr) = udp.as_ref().and_then(|u| u.local_addr().ok()) {
            let what = if config.ice.turn {
                "STUN and TURN"
            } else {
                "STUN"
            };
            banner.push_str(&format!("{what} on udp {addr}\n"));
        }
        let mut stdout = std::io::stdout();
        let _ = stdout
            .write_all(banner.as_bytes())
            .and_then(|()| stdout.flush());

        let token = CancellationToken::new();
        if let Err(e) = shutdown::cancel_on_signals(token.clone()) {
            eprintln!("sigrelay: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
        let listeners = sigrelay::Listeners {
            http: listeners,
            udp,
        };
        match sigrelay::run(listeners, config, token).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sigrelay: {e}");
                // Its own code, so a supervisor can tell "Redis is down" from a bad flag.
                ExitCode::from(3)
            }
        }
    })
}

/// Raises the open-file soft limit to the hard limit. Every connection is a file descriptor,
/// and the usual soft default of 1024 would cap the server near 1000 connections, far below
/// `--max-connections`; the hard limit is what the administrator actually allows.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot read the open-file limit");
        return;
    }
    let before = limit.rlim_cur;
    // An unlimited hard limit cannot be used as a soft one: Linux refuses anything above
    // fs.nr_open, so aim at that instead.
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<libc::rlim_t>().ok())
        .unwrap_or(1 << 20);
    let target = if limit.rlim_max == libc::RLIM_INFINITY {
        nr_open
    } else {
        limit.rlim_max
    };
    if before < target {
        limit.rlim_cur = target;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            tracing::warn!(
                error = %std::io::Error::last_os_error(),
                soft = before,
                "cannot raise the open-file limit; connections are capped near it"
            );
            return;
        }
    }
    tracing::info!(
        from = before,
        to = limit.rlim_cur,
        "open-file limit (each connection uses one)"
    );
}

/// What a person needs at start-up: every URL, the certificate's fingerprint, and a QR code of
/// the LAN URL for phones.
fn banner(listeners: &[TcpListener], config: &Config) -> String {
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let urls: Vec<String> = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .flat_map(|addr| server::reachable_urls(addr, scheme))
        .collect();
    let mut out = format!("sigrelay {} is running. Open one of:\n", sigrelay::VERSION);
    for url in &urls {
        out.push_str(&format!("  {url}\n"));
    }
    if let Some(public) = &config.public_url {
        out.push_str(&format!(
            "Served to browsers as (--public-url):\n  {}/\n",
            public.origin()
        ));
    }
    if let Some(tls) = &config.tls {
        out.push_str(&format!(
            "TLS certificate ({}), SHA-256 fingerprint:\n  {}\n",
            tls.origin, tls.fingerprint
        ));
    } else {
        out.push_str(
            "Cameras work over plain http on localhost only; use --tls for other devices.\n",
        );
    }
    // The first address that is not loopback is the one other devices can use.
    let lan = urls
        .iter()
        .find(|u| !u.contains("://127.") && !u.contains("://[::1]"));
    if let (true, Some(lan)) = (config.qr, lan) {
        if let Ok(code) = qrcode::QrCode::new(lan.as_bytes()) {
            // Light modules drawn, dark ones left blank: right for the usual dark terminal.
            let art = code
                .render::<qrcode::render::unicode::Dense1x2>()
                .dark_color(qrcode::render::unicode::Dense1x2::Light)
                .light_color(qrcode::render::unicode::Dense1x2::Dark)
                .quiet_zone(true)
                .build();
            out.push_str(&format!("Scan to open {lan} on a phone:\n{art}\n"));
        }
    }
    out.push_str("Press Ctrl-C to stop.\n");
    out
}
