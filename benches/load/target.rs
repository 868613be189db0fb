//! The server under load: a URL template per endpoint, and the process behind it (started
//! here, or named with `--server-pid`), with its resident memory.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::{Child, Command, Stdio};

use crate::opts::Opts;

/// A URL template `http://HOST:PORT/path?q={room}`.
#[derive(Clone, Debug)]
pub(crate) struct Tmpl {
    pub(crate) addr: SocketAddr,
    pub(crate) host: String,
    pub(crate) path: String,
}

impl Tmpl {
    pub(crate) fn parse(url: &str) -> Result<Tmpl, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or(format!("{url}: only http:// URLs"))?;
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let addr = host
            .to_socket_addrs()
            .map_err(|e| format!("{host}: {e}"))?
            .next()
            .ok_or(format!("{host}: no address"))?;
        if !addr.ip().is_loopback() {
            return Err(format!("{url}: loopback only"));
        }
        Ok(Tmpl {
            addr,
            host: host.to_string(),
            path: path.to_string(),
        })
    }
    pub(crate) fn path(&self, room: &str, ty: &str) -> String {
        self.path.replace("{room}", room).replace("{type}", ty)
    }
}

pub(crate) struct Target {
    pub(crate) sub: Tmpl,
    pub(crate) publ: Tmpl,
    pub(crate) pids: Vec<u32>,
    pub(crate) child: Option<Child>,
    pub(crate) name: String,
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub(crate) fn spawn_relay(o: &Opts) -> Result<Target, String> {
    let bin = o.server_bin.clone().unwrap_or_else(|| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/sigrelay").to_string()
    });
    let mut child = Command::new(&bin)
        .args(["--bind", "127.0.0.1:0", "--no-qr", "--log", "warn"])
        .args(["--max-connections", "1000000"])
        .args(["--max-connections-per-ip", "1000000"])
        .args(["--post-rate", "1e9", "--post-burst", "1e9"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("{bin}: {e} (run `cargo build --release` first)"))?;
    let out = child.stdout.take().expect("piped");
    let mut url = None;
    // The banner is a handful of lines; give up after 50 or EOF.
    for line in BufReader::new(out).lines().take(50) {
        let Ok(line) = line else { break };
        if let Some(i) = line.find("http://127.0.0.1:") {
            url = Some(line[i..].trim().trim_end_matches('/').to_string());
            break;
        }
    }
    let Some(base) = url else {
        let _ = child.kill();
        return Err("sigrelay printed no http://127.0.0.1 URL".into());
    };
    let name = format!("sigrelay (pid {}, {base})", child.id());
    Target::spawned(&base, child, name)
}

impl Target {
    /// A server this generator started, speaking sigrelay's API at `base`.
    pub(crate) fn spawned(base: &str, child: Child, name: String) -> Result<Target, String> {
        Ok(Target {
            sub: Tmpl::parse(&format!("{base}/stream?channel={{room}}"))?,
            publ: Tmpl::parse(&format!("{base}/channel/send/{{room}}/{{type}}"))?,
            pids: vec![child.id()],
            child: Some(child),
            name,
        })
    }
}

pub(crate) fn target(o: &Opts) -> Result<Target, String> {
    match (&o.sub_url, &o.pub_url) {
        (Some(s), Some(p)) => Ok(Target {
            sub: Tmpl::parse(s)?,
            publ: Tmpl::parse(p)?,
            pids: o.server_pids.clone(),
            child: None,
            name: format!("external ({p})"),
        }),
        _ => spawn_relay(o),
    }
}

pub(crate) fn rss_kib(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    let mut sum = 0;
    for pid in pids {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
        sum += line.split_whitespace().nth(1)?.parse::<u64>().ok()?;
    }
    Some(sum)
}
