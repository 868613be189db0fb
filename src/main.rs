//! The `sigrelay` executable: parse flags, set up logging, bind, print where to connect, run.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use tokio::net::{TcpListener, UdpSocket};
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
        // The default STUN port is the HTTP port's number: the one the kernel chose for `:0`.
        if let (true, Some(stun), Some(http)) = (
            config.ice.bind_fallback,
            config.ice.bind.as_mut(),
            listeners.first().and_then(|l| l.local_addr().ok()),
        ) {
            if stun.port() == 0 {
                stun.set_port(http.port());
            }
        }
        let udp = match bind_udp(&config.ice).await {
            Ok(udp) => udp,
            Err(e) => {
                eprintln!("sigrelay: {e}");
                return ExitCode::FAILURE;
            }
        };
        // Pages must be told the port actually bound (`--stun 127.0.0.1:0`, a fallback).
        config.ice.bind = udp.as_ref().and_then(|u| u.local_addr().ok());
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

/// The STUN/TURN socket. A `--stun` address given must bind or the start fails; the default
/// (the HTTP port number over UDP) falls back to a free port, then to no STUN, with a warning
/// each time, so a port taken by something else never stops the server.
async fn bind_udp(ice: &sigrelay::ice::IceSettings) -> Result<Option<UdpSocket>, String> {
    let Some(addr) = ice.bind else {
        return Ok(None);
    };
    let err = match UdpSocket::bind(addr).await {
        Ok(socket) => return Ok(Some(socket)),
        Err(e) if !ice.bind_fallback => {
            return Err(format!("cannot listen for STUN/TURN on udp {addr}: {e}"))
        }
        Err(e) => e,
    };
    let any = std::net::SocketAddr::new(addr.ip(), 0);
    match UdpSocket::bind(any).await {
        Ok(socket) => {
            let at = socket.local_addr().map_or(any, |a| a);
            tracing::warn!(
                "STUN/TURN cannot use udp {addr} ({err}); using udp {at} instead \
                 (give --stun ADDR to choose, --no-stun to turn it off)"
            );
            Ok(Some(socket))
        }
        Err(e) => {
            tracing::warn!("STUN/TURN is off: cannot listen on udp {addr} ({err}) nor {any} ({e})");
            Ok(None)
        }
    }
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
    // The first address that is not loopback is the one other devices can use.
    let lan = urls
        .iter()
        .find(|u| !u.contains("://127.") && !u.contains("://[::1]"));
    if let Some(tls) = &config.tls {
        out.push_str(&format!(
            "TLS certificate ({}), SHA-256 fingerprint:\n  {}\n",
            tls.origin, tls.fingerprint
        ));
        if let Some(ca) = &tls.ca {
            // Plain http on the same port: a phone opens it before it trusts the CA.
            let trust = lan
                .or(urls.first())
                .map(|u| format!("{}trust", u.replacen("https://", "http://", 1)));
            out.push_str(&format!(
                "Devices trust this server once (no warnings afterwards) from:\n  {}\n\
                 Local CA {:?}, SHA-256 fingerprint (compare it on the device):\n  {}\n",
                trust.as_deref().unwrap_or("http://HOST:PORT/trust"),
                ca.name,
                ca.fingerprint
            ));
            if let (true, Some(trust)) = (config.qr, trust.filter(|_| lan.is_some())) {
                if let Some(art) = qr_art(&trust) {
                    out.push_str(&format!("1. Scan to trust this server ({trust}):\n{art}\n"));
                }
            }
        }
    } else {
        out.push_str(
            "Cameras work over plain http on localhost only; use --tls for other devices.\n",
        );
    }
    if let (true, Some(lan)) = (config.qr, lan) {
        if let Some(art) = qr_art(lan) {
            out.push_str(&format!("Scan to open {lan} on a phone:\n{art}\n"));
        }
    }
    out.push_str("Press Ctrl-C to stop.\n");
    out
}

/// `text` as a QR code in terminal characters: light modules drawn, dark ones left blank,
/// right for the usual dark terminal.
fn qr_art(text: &str) -> Option<String> {
    let code = qrcode::QrCode::new(text.as_bytes()).ok()?;
    Some(
        code.render::<qrcode::render::unicode::Dense1x2>()
            .dark_color(qrcode::render::unicode::Dense1x2::Light)
            .light_color(qrcode::render::unicode::Dense1x2::Dark)
            .quiet_zone(true)
            .build(),
    )
}
