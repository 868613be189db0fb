//! The accept loops and connection handling: one task per listener accepting TCP connections,
//! each handed to `http::fast` (plain http: it serves streams and publishes itself and hands
//! the rest back) and then to hyper (HTTP/1.1, or HTTP/2 with prior knowledge or ALPN), all
//! watched by one `GracefulShutdown`, which `serve` drains when the shutdown token fires.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::http::error::ApiError;
use crate::http::fast::{self, Handoff};
use crate::http::{App, Client, Transport};
use crate::limits::{ConnectionLimits, ConnectionRefusal};

/// Serves every listener until `shutdown` fires, then waits up to the drain timeout for open
/// connections (SSE streams end by themselves on shutdown; in-flight POSTs finish).
pub async fn serve(listeners: Vec<TcpListener>, app: App, shutdown: CancellationToken) {
    let mut auto = auto::Builder::new(TokioExecutor::new());
    auto.http1()
        .timer(TokioTimer::new())
        // Slowloris: a client that dribbles its request head is cut off.
        .header_read_timeout(app.config.header_timeout)
        .keep_alive(true);
    auto.http2().timer(TokioTimer::new());
    let mut http1 = http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(app.config.header_timeout)
        .keep_alive(true);
    let builder = Arc::new(Builders { auto, http1 });
    // Shared by the accept loops, which take one watcher per connection; unwrapped again to
    // drain once they have all returned.
    let graceful = Arc::new(GracefulShutdown::new());
    let limits = ConnectionLimits::new(
        app.config.max_connections,
        app.config.max_connections_per_ip,
    );
    // Refused connections are answered by short tasks that hold their socket up to a second;
    // bound how many, so a flood over the limit cannot use the refusals to exhaust sockets.
    // Past this, a refused connection is simply closed.
    let refusals = Arc::new(tokio::sync::Semaphore::new(MAX_REFUSALS_IN_FLIGHT));
    let mut accept_loops = tokio::task::JoinSet::new();
    for listener in listeners {
        let builder = builder.clone();
        let graceful = graceful.clone();
        let app = app.clone();
        let shutdown = shutdown.clone();
        let limits = limits.clone();
        let refusals = refusals.clone();
        accept_loops.spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(e) => {
                            // Usually EMFILE: back off instead of spinning on the error.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                // Signaling messages are small and latency-bound: never wait for Nagle.
                let _ = stream.set_nodelay(true);
                let permit = match limits.try_acquire(peer.ip()) {
                    Ok(permit) => permit,
                    Err(refusal) => {
                        app.metrics.refused(ApiError::from(refusal).reason());
                        if let Ok(slot) = refusals.clone().try_acquire_owned() {
                            let plain = app.config.tls.is_none();
                            tokio::spawn(async move {
                                refuse(stream, refusal, plain).await;
                                drop(slot);
                            });
                        }
                        continue;
                    }
                };
                let watcher = graceful.watcher();
                let open = app.metrics.connection_opened();
                let served = connection(
                    stream,
                    peer,
                    builder.clone(),
                    watcher,
                    app.clone(),
                    shutdown.clone(),
                );
                tokio::spawn(async move {
                    served.await;
                    drop((permit, open));
                });
            }
        });
    }

    shutdown.cancelled().await;
    // Dropping the listeners (the accept tasks return) stops new connections at once.
    while accept_loops.join_next().await.is_some() {}
    let drain = app.config.drain_timeout;
    let Ok(graceful) = Arc::try_unwrap(graceful) else {
        unreachable!("every accept loop has returned and dropped its handle")
    };
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(drain) => {
            tracing::warn!("connections still open after {drain:?}; closing them")
        }
    }
}

/// hyper's connection settings. Plain connections that cannot be HTTP/2 (their first bytes
/// say so) go straight to HTTP/1, skipping the version detection of `auto` on every request
/// of a keep-alive publisher; TLS (ALPN) and possible h2c connections use `auto`.
struct Builders {
    auto: auto::Builder<TokioExecutor>,
    http1: http1::Builder,
}

/// Refused connections being answered at once (see `serve`).
const MAX_REFUSALS_IN_FLIGHT: usize = 256;

/// Turns away a connection over a limit: a one-line JSON answer where the client speaks plain
/// HTTP (we cannot know before reading, so it is written blind and the socket closed), or just
/// a close on a TLS port.
async fn refuse(stream: TcpStream, refusal: ConnectionRefusal, plain: bool) {
    tracing::debug!(?refusal, "connection refused");
    if plain {
        fast::refuse_connection(stream, refusal).await;
    }
}

/// Serves one accepted connection. With TLS on, the first byte tells a TLS handshake (0x16)
/// from a plain-http request, which is answered with a redirect to https on the same port.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    builder: Arc<Builders>,
    watcher: Watcher,
    app: App,
    shutdown: CancellationToken,
) {
    if let Some(turn) = app.turn_tcp.clone() {
        // TURN over TCP shares the port: its first byte is a STUN message's, never HTTP's or
        // TLS's. (Peeked only when TURN is on, so plain serving pays nothing otherwise.)
        let mut first = [0u8; 1];
        match tokio::time::timeout(app.config.header_timeout, stream.peek(&mut first)).await {
            Ok(Ok(1)) if crate::ice::tcp::is_stun_start(first[0]) => {
                drop(watcher);
                return turn.serve(stream, peer).await;
            }
            Ok(Ok(1)) => {}
            _ => return,
        }
    }
    let Some(tls) = app.config.tls.clone() else {
        return plain_connection(stream, peer, builder, watcher, app, shutdown).await;
    };
    // Boxed, like hyper's connections below: every connection's task is sized for its largest
    // state, and an idle SSE stream's (served directly) is far smaller than a TLS handshake's.
    Box::pin(tls_connection(stream, peer, builder, watcher, app, tls)).await
}

/// Plain http: `http::fast` serves what is its own (see its contract), hyper the rest.
async fn plain_connection(
    stream: TcpStream,
    peer: SocketAddr,
    builder: Arc<Builders>,
    watcher: Watcher,
    app: App,
    shutdown: CancellationToken,
) {
    let client = Client {
        addr: peer,
        transport: Transport::Plain,
    };
    match fast::serve(stream, client, &app, &shutdown).await {
        // The watcher was held until here, so a graceful shutdown waits for it too.
        Handoff::Done => drop(watcher),
        Handoff::Hyper {
            io,
            maybe_h2: false,
        } => Box::pin(serve_http1(io, peer, &builder.http1, watcher, app)).await,
        Handoff::Hyper { io, maybe_h2: true } => {
            let transport = Transport::Plain;
            Box::pin(serve_io(io, peer, &builder.auto, watcher, app, transport)).await
        }
    }
}

async fn tls_connection(
    stream: TcpStream,
    peer: SocketAddr,
    builder: Arc<Builders>,
    watcher: Watcher,
    app: App,
    tls: crate::tls::Tls,
) {
    let limit = app.config.header_timeout;
    let mut first = [0u8; 1];
    match tokio::time::timeout(limit, stream.peek(&mut first)).await {
        Ok(Ok(1)) => {}
        _ => return,
    }
    if first[0] != 0x16 {
        let transport = Transport::PlainOnTlsPort;
        return serve_io(stream, peer, &builder.auto, watcher, app, transport).await;
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config);
    match tokio::time::timeout(limit, acceptor.accept(stream)).await {
        Ok(Ok(tls_stream)) => {
            serve_io(
                tls_stream,
                peer,
                &builder.auto,
                watcher,
                app,
                Transport::Tls,
            )
            .await
        }
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
    }
}

async fn serve_io<I>(
    io: I,
    peer: SocketAddr,
    builder: &auto::Builder<TokioExecutor>,
    watcher: Watcher,
    app: App,
    transport: Transport,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let client = Client {
        addr: peer,
        transport,
    };
    let service = service_fn(move |req| app.clone().handle(req, client));
    let connection = builder.serve_connection(TokioIo::new(io), service);
    if let Err(e) = watcher.watch(connection.into_owned()).await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// A plain connection known to speak HTTP/1.
async fn serve_http1<I>(
    stream: I,
    peer: SocketAddr,
    builder: &http1::Builder,
    watcher: Watcher,
    app: App,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let client = Client {
        addr: peer,
        transport: Transport::Plain,
    };
    let service = service_fn(move |req| app.clone().handle(req, client));
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    if let Err(e) = watcher.watch(connection).await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// The URLs a person can open to reach `addr`: for a wildcard address, one per interface
/// address of that family (loopback first); otherwise the address itself.
pub fn reachable_urls(addr: SocketAddr, scheme: &str) -> Vec<String> {
    let port = addr.port();
    let url = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => format!("{scheme}://{v4}:{port}/"),
        IpAddr::V6(v6) => format!("{scheme}://[{v6}]:{port}/"),
    };
    if !addr.ip().is_unspecified() {
        return vec![url(addr.ip())];
    }
    let mut ips: Vec<IpAddr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|iface| iface.ip())
        .filter(|ip| ip.is_ipv4() == addr.is_ipv4() || addr.is_ipv6())
        // Link-local IPv6 needs a zone id in a URL, which browsers do not accept.
        .filter(|ip| !matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80))
        .collect();
    ips.sort_by_key(|ip| (!ip.is_loopback(), ip.is_ipv6(), *ip));
    ips.dedup();
    if ips.is_empty() {
        ips.push(if addr.is_ipv4() {
            IpAddr::from([127, 0, 0, 1])
        } else {
            IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
        });
    }
    ips.into_iter().map(url).collect()
}
