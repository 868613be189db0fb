//! A redis-server of our own for tests, on a free loopback port. Self-contained (the browser
//! tests include it by path, without the rest of `common`).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sigrelay::hub::{RedisFormat, RedisSettings};

/// Bound for waiting until the server listens.
const WAIT: Duration = Duration::from_secs(10);

/// A redis-server of our own on 127.0.0.1, killed (by its PID) on drop.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// `None` (after saying so) when redis-server is not installed and not required.
    pub fn start() -> Option<RedisServer> {
        let installed = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            assert!(
                std::env::var("SIGRELAY_REQUIRE_REDIS").as_deref() != Ok("1"),
                "redis-server is required (SIGRELAY_REQUIRE_REDIS=1) but not installed"
            );
            eprintln!("skipped: no redis-server");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = RedisServer { port, child: None };
        server.spawn();
        Some(server)
    }

    pub fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server did not start");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn settings(&self, format: RedisFormat) -> RedisSettings {
        RedisSettings {
            url: self.url(),
            format,
            heartbeat: Duration::from_secs(5),
        }
    }

    pub async fn client(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
