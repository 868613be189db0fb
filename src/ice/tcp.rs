//! TURN over TCP (RFC 8656 §3.1: the client ↔ server leg over TCP, the relay still UDP), for
//! networks that block UDP. The `turn` crate serves only datagram `Conn`s, so every TCP client
//! is presented to it through one [`TcpMux`]: frames read off each connection (a STUN message,
//! length from its header; or ChannelData, padded to 4 bytes over TCP) become datagrams from
//! that connection's address, and answers to that address are written back to its stream. The
//! mux sits behind a [`super::filter::Filter`] like the UDP socket, so quotas, peer rules,
//! rates and the bounds on unauthenticated traffic apply unchanged.
//!
//! Bounds of its own: TCP clients in total and per address (the allocation caps: a TCP
//! allocation needs its own connection), a connection that holds no allocation
//! [`ALLOCATE_WITHIN`] after it opened is closed, so is one idle for [`IDLE`], and a frame
//! larger than [`MAX_FRAME`] ends its connection. Frames waiting to be written to a slow
//! client are capped (past it they are dropped, as UDP would lose them).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::filter::{Datagrams, Shared};
use crate::sync::lock;

/// A TCP client must hold an allocation this soon after connecting.
pub const ALLOCATE_WITHIN: Duration = Duration::from_secs(10);
/// A TCP client that sends nothing this long is closed (a call sends consent checks every
/// few seconds).
pub const IDLE: Duration = Duration::from_secs(60);
/// The largest frame read: what the crate's read buffer holds.
pub const MAX_FRAME: usize = 1500;
/// Frames queued for one client's socket.
const QUEUE: usize = 128;

/// Every TCP client of TURN, as datagrams.
pub struct TcpMux {
    local: SocketAddr,
    inbound_tx: mpsc::Sender<(Vec<u8>, SocketAddr)>,
    inbound_rx: tokio::sync::Mutex<mpsc::Receiver<(Vec<u8>, SocketAddr)>>,
    writers: Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    max_total: usize,
    max_per_ip: usize,
    shared: Mutex<Option<Arc<Shared>>>,
}

/// Whether a connection's first byte starts a STUN message (the two top bits zero): never
/// an HTTP method, a TLS record (0x16 has them zero, but is checked first) or HTTP/2's preface.
pub fn is_stun_start(first: u8) -> bool {
    first & 0xc0 == 0 && first != 0x16
}

impl TcpMux {
    pub fn new(local: SocketAddr, max_total: usize, max_per_ip: usize) -> Self {
        let (inbound_tx, inbound_rx) = mpsc::channel(256);
        TcpMux {
            local,
            inbound_tx,
            inbound_rx: tokio::sync::Mutex::new(inbound_rx),
            writers: Mutex::new(HashMap::new()),
            per_ip: Mutex::new(HashMap::new()),
            max_total,
            max_per_ip,
            shared: Mutex::new(None),
        }
    }

    pub(super) fn attach(&self, shared: Arc<Shared>) {
        *lock(&self.shared) = Some(shared);
    }

    /// TCP clients now.
    pub fn connections(&self) -> usize {
        lock(&self.writers).len()
    }

    fn holds_allocation(&self, peer: SocketAddr) -> bool {
        lock(&self.shared)
            .as_ref()
            .is_some_and(|s| s.quota().has(peer))
    }

    /// Serves one TCP client (its first byte already seen to start a STUN message) until it
    /// closes or breaks a bound.
    pub async fn serve(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(QUEUE);
        {
            let mut writers = lock(&self.writers);
            let mut per_ip = lock(&self.per_ip);
            let here = per_ip.get(&peer.ip()).copied().unwrap_or(0);
            if writers.len() >= self.max_total || here >= self.max_per_ip {
                tracing::info!(%peer, "TURN over TCP refused: too many connections");
                return;
            }
            writers.insert(peer, tx);
            per_ip.insert(peer.ip(), here + 1);
        }
        tracing::info!(%peer, "TURN over TCP connection opened");
        let (mut reader, mut writer) = stream.into_split();
        let writing = tokio::spawn(async move {
            while let Some(frame) = rx.recv().await {
                if writer.write_all(&frame).await.is_err() {
                    return;
                }
            }
        });
        let opened = tokio::time::Instant::now();
        loop {
            let frame = tokio::time::timeout(IDLE, read_frame(&mut reader)).await;
            let Ok(Some(frame)) = frame else { break };
            if opened.elapsed() > ALLOCATE_WITHIN && !self.holds_allocation(peer) {
                tracing::debug!(%peer, "TURN over TCP: no allocation in time");
                break;
            }
            if self.inbound_tx.send((frame, peer)).await.is_err() {
                break;
            }
        }
        writing.abort();
        lock(&self.writers).remove(&peer);
        let mut per_ip = lock(&self.per_ip);
        if let Some(n) = per_ip.get_mut(&peer.ip()) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&peer.ip());
            }
        }
        tracing::info!(%peer, "TURN over TCP connection closed");
    }
}

/// One frame off a TURN TCP stream: a STUN message (20-byte header, length at 2..4) or
/// ChannelData (4-byte header, length at 2..4, padded to 4). `None` at the end of the stream
/// or on anything else (garbage, a frame over [`MAX_FRAME`]).
pub async fn read_frame<R: AsyncReadExt + Unpin>(reader: &mut R) -> Option<Vec<u8>> {
    let mut head = [0u8; 4];
    reader.read_exact(&mut head).await.ok()?;
    let length = usize::from(u16::from_be_bytes([head[2], head[3]]));
    let total = match head[0] {
        0x00..=0x3f => 20 + length,
        0x40..=0x4f => 4 + ((length + 3) & !3),
        _ => return None,
    };
    if total > MAX_FRAME {
        return None;
    }
    let mut frame = vec![0u8; total];
    frame[..4].copy_from_slice(&head);
    reader.read_exact(&mut frame[4..]).await.ok()?;
    Some(frame)
}

#[async_trait]
impl Datagrams for TcpMux {
    async fn recv_from(&self, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
        let mut inbound = self.inbound_rx.lock().await;
        let (frame, from) = inbound
            .recv()
            .await
            .ok_or_else(|| std::io::Error::other("TURN over TCP closed"))?;
        let n = frame.len().min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        Ok((n, from))
    }

    async fn send_to(&self, buf: &[u8], to: SocketAddr) -> std::io::Result<usize> {
        let mut frame = buf.to_vec();
        // ChannelData over TCP is padded to 4 bytes (the crate pads already; be sure).
        frame.resize((frame.len() + 3) & !3, 0);
        let writer = lock(&self.writers).get(&to).cloned();
        if let Some(writer) = writer {
            // A full queue drops the frame, as a congested UDP path would.
            let _ = writer.try_send(frame);
        }
        Ok(buf.len())
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_are_cut_by_their_length_fields() {
        let mut stun = vec![0x00, 0x03, 0x00, 0x04, 0x21, 0x12, 0xa4, 0x42];
        stun.extend_from_slice(&[9; 12]);
        stun.extend_from_slice(&[1, 2, 3, 4]);
        let chan = vec![0x40, 0x00, 0x00, 0x03, 7, 7, 7, 0];
        let mut wire = stun.clone();
        wire.extend_from_slice(&chan);
        let mut reader = &wire[..];
        assert_eq!(read_frame(&mut reader).await, Some(stun));
        assert_eq!(read_frame(&mut reader).await, Some(chan));
        assert_eq!(read_frame(&mut reader).await, None);
        let mut garbage = &b"GET / HTTP/1.1\r\n"[..];
        assert_eq!(read_frame(&mut garbage).await, None);
        let mut huge = &[0x00u8, 0x03, 0xff, 0xff][..];
        assert_eq!(read_frame(&mut huge).await, None, "over MAX_FRAME");
        assert!(is_stun_start(0x00) && is_stun_start(0x01));
        for b in [b'G', b'P', 0x16] {
            assert!(!is_stun_start(b));
        }
    }
}
