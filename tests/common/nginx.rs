//! README's "Scaling out" as tests run it: the instances' command lines and the nginx block are
//! read from README.md (only addresses, ports and certificate paths are replaced, and a test
//! may add flags), and nginx runs as our child with its config, logs and temporary files in a
//! directory of its own. Self-contained: the browser tests include it by path.
//!
//! Without nginx the tests say "skipped: no nginx", unless SIGRELAY_REQUIRE_REDIS=1 (CI, which
//! installs both), which makes that a failure.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Bound for waiting until nginx listens.
const WAIT: Duration = Duration::from_secs(10);

const README: &str = include_str!("../../README.md");

/// README's "Scaling out" section.
fn scaling_out() -> &'static str {
    let start = README
        .find("\n## Scaling out")
        .expect("README has a Scaling out section");
    let rest = &README[start + 1..];
    let end = rest.find("\n## ").unwrap_or(rest.len());
    &rest[..end]
}

/// The first fenced block of `lang` in the section.
fn block(lang: &str) -> &'static str {
    let section = scaling_out();
    let open = format!("```{lang}\n");
    let start = section.find(&open).expect("a fenced block") + open.len();
    let len = section[start..].find("```").expect("a closed block");
    &section[start..start + len]
}

/// The `./sigrelay ...` lines of the section's commands, each as its arguments with `--bind`'s
/// value replaced by `127.0.0.1:0` and `--redis`'s by `redis_url`.
pub fn readme_instances(redis_url: &str) -> Vec<Vec<String>> {
    block("sh")
        .lines()
        .filter_map(|line| line.trim().strip_prefix("./sigrelay "))
        .map(|line| {
            let words: Vec<&str> = line.split_whitespace().filter(|w| *w != "&").collect();
            let mut args = Vec::new();
            let mut words = words.into_iter();
            while let Some(word) = words.next() {
                args.push(word.to_owned());
                match word {
                    "--bind" => {
                        words.next();
                        args.push("127.0.0.1:0".into());
                    }
                    "--redis" => {
                        words.next();
                        args.push(redis_url.into());
                    }
                    _ => {}
                }
            }
            args
        })
        .collect()
}

/// Replaces `from` (which must occur exactly once, so the README cannot drift from the test).
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "README's nginx block should contain {from:?} once"
    );
    text.replace(from, to)
}

/// The nginx binary: `SIGRELAY_NGINX`, `nginx` on PATH, or Debian's /usr/sbin/nginx.
fn find() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("SIGRELAY_NGINX") {
        return Some(PathBuf::from(path));
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("nginx"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| Some(PathBuf::from("/usr/sbin/nginx")).filter(|p| p.is_file()))
}

/// A loopback port free right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// nginx with README's block, killed (by its PID) on drop.
pub struct Nginx {
    child: Child,
    dir: PathBuf,
    /// Where it serves plain http and https (TLS terminated here).
    pub http: SocketAddr,
    pub https: SocketAddr,
}

impl Nginx {
    /// Starts nginx in front of `upstreams` (README's two instances, in order), serving
    /// `cert`/`key` on its https port. `None` (after saying so) when nginx is not installed
    /// and not required.
    pub fn start(upstreams: &[SocketAddr], cert: &Path, key: &Path) -> Option<Nginx> {
        let Some(binary) = find() else {
            assert!(
                std::env::var("SIGRELAY_REQUIRE_REDIS").as_deref() != Ok("1"),
                "nginx is required (SIGRELAY_REQUIRE_REDIS=1) but not installed"
            );
            eprintln!("skipped: no nginx (Debian: apt-get install nginx-light)");
            return None;
        };
        // Unique per start: the port just found free is, for now.
        let dir = std::env::temp_dir().join(format!(
            "sigrelay-nginx-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let https = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut server_block = block("nginx").to_owned();
        assert_eq!(upstreams.len(), 2, "README runs two instances");
        for (readme, ours) in ["127.0.0.1:8001", "127.0.0.1:8002"].iter().zip(upstreams) {
            server_block = replace_once(&server_block, readme, &ours.to_string());
        }
        server_block = replace_once(&server_block, "listen 80;", &format!("listen {http};"));
        server_block = replace_once(
            &server_block,
            "listen 443 ssl;",
            &format!("listen {https} ssl;"),
        );
        server_block = replace_once(
            &server_block,
            "/etc/ssl/sigrelay/cert.pem",
            &cert.display().to_string(),
        );
        server_block = replace_once(
            &server_block,
            "/etc/ssl/sigrelay/key.pem",
            &key.display().to_string(),
        );
        let d = dir.display();
        // One process (no workers to orphan when it is killed), everything in `dir`.
        let config = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\nevents {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n\
             proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n\
             uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n{server_block}}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), config).unwrap();
        let child = Command::new(&binary)
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx did not start");
        let mut nginx = Nginx {
            child,
            dir,
            http,
            https,
        };
        let deadline = Instant::now() + WAIT;
        for addr in [http, https] {
            while std::net::TcpStream::connect(addr).is_err() {
                let exited = nginx.child.try_wait().ok().flatten();
                assert!(
                    exited.is_none() && Instant::now() < deadline,
                    "nginx did not listen on {addr} ({exited:?}); its log:\n{}",
                    nginx.error_log()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Some(nginx)
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- nginx's error log ---\n{}", self.error_log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
