//! Limits that keep one client from taking the server from everyone else: open connections in
//! total and per client address, and publishes per address per second (a token bucket).
//! No hyper here; the server and the HTTP layer ask and map refusals to status codes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::sync::lock;

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionRefusal {
    /// `--max-connections` reached.
    Total(usize),
    /// `--max-connections-per-ip` reached for this address.
    PerIp(usize),
}

/// Counts open connections. A [`ConnectionPermit`] is held for a connection's lifetime.
pub struct ConnectionLimits {
    max_total: usize,
    max_per_ip: usize,
    total: AtomicUsize,
    /// Open connections per address; an address is removed when its count drops to zero, so the
    /// map never holds more entries than there are open connections.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

impl ConnectionLimits {
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(ConnectionLimits {
            max_total,
            max_per_ip,
            total: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
        })
    }

    pub fn try_acquire(
        self: &Arc<Self>,
        ip: IpAddr,
    ) -> Result<ConnectionPermit, ConnectionRefusal> {
        let mut per_ip = lock(&self.per_ip);
        if self.total.load(Ordering::Relaxed) >= self.max_total {
            return Err(ConnectionRefusal::Total(self.max_total));
        }
        let count = per_ip.entry(ip).or_insert(0);
        if *count >= self.max_per_ip {
            return Err(ConnectionRefusal::PerIp(self.max_per_ip));
        }
        *count += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        Ok(ConnectionPermit {
            limits: self.clone(),
            ip,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}

/// One open connection's place; released on drop.
pub struct ConnectionPermit {
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut per_ip = lock(&self.limits.per_ip);
        if let Some(count) = per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&self.ip);
            }
        }
        self.limits.total.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Publishes per client address: `rate` per second on average, bursts of `burst`.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Addresses tracked before full (idle) buckets are forgotten: bounds the map's memory.
const MAX_TRACKED: usize = 65_536;

impl RateLimiter {
    pub fn new(rate: f64, burst: f64) -> Self {
        RateLimiter {
            rate,
            burst: burst.max(1.0),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `ip`, or says how long until one is available.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let mut buckets = lock(&self.buckets);
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(&ip) {
            let (rate, burst) = (self.rate, self.burst);
            // A bucket that has refilled completely carries no information: drop those.
            buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.updated).as_secs_f64() * rate < burst
            });
        }
        let bucket = buckets.entry(ip).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        let elapsed = now.duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_counted_and_released() {
        let limits = ConnectionLimits::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let p1 = limits.try_acquire(a).unwrap();
        let _p2 = limits.try_acquire(a).unwrap();
        assert_eq!(
            limits.try_acquire(a).err(),
            Some(ConnectionRefusal::PerIp(2))
        );
        let _p3 = limits.try_acquire(b).unwrap();
        assert_eq!(
            limits.try_acquire(b).err(),
            Some(ConnectionRefusal::Total(3))
        );
        drop(p1);
        assert_eq!(limits.open(), 2);
        assert!(limits.try_acquire(b).is_ok());
    }

    #[test]
    fn token_bucket_allows_bursts_then_refuses_with_a_wait() {
        let limiter = RateLimiter::new(10.0, 5.0);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..5 {
            assert!(limiter.check(ip).is_ok());
        }
        let wait = limiter.check(ip).unwrap_err();
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        assert!(
            limiter.check("10.0.0.2".parse().unwrap()).is_ok(),
            "per address"
        );
        std::thread::sleep(Duration::from_millis(120));
        assert!(limiter.check(ip).is_ok());
    }
}
