//! The seed's own stack for the migration tests: `tests/seed/app.py` (Flask and the real
//! flask-sse from PyPI) under gunicorn's gevent worker, from the virtualenv `tests/seed/venv.sh`
//! installs (`target/seed-venv`, or `SIGRELAY_SEED_VENV`). Self-contained (the browser tests
//! include it by path, without the rest of `common`).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// Bound for gunicorn to import gevent and Flask and listen (a cold disk is slow).
const START: Duration = Duration::from_secs(60);
/// Bound for a quick shutdown (SIGQUIT) before the processes are killed outright.
const STOP: Duration = Duration::from_secs(5);

/// The virtualenv holding flask, flask-sse, gunicorn, gevent and redis.
fn venv() -> PathBuf {
    match std::env::var_os("SIGRELAY_SEED_VENV") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/seed-venv"),
    }
}

/// The Flask + flask-sse app under gunicorn (one gevent worker) on 127.0.0.1, stopped by its
/// PIDs (master, then the workers it started) on drop.
pub struct FlaskApp {
    pub port: u16,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    child: Child,
    workers: Arc<Mutex<Vec<i32>>>,
    log: Arc<Mutex<Vec<String>>>,
}

impl FlaskApp {
    /// Starts the app on `redis_url`. `None` (after saying why) when the virtualenv or its
    /// packages are missing, unless `SIGRELAY_REQUIRE_REDIS=1` (CI), under which that fails.
    pub fn start(redis_url: &str) -> Option<FlaskApp> {
        let venv = venv();
        let gunicorn = venv.join("bin/gunicorn");
        let imports = Command::new(venv.join("bin/python"))
            .args(["-c", "import flask, flask_sse, gevent, redis, packaging"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !gunicorn.is_file() || !imports {
            let why = format!(
                "no Flask + flask-sse + gunicorn + gevent virtualenv at {} (run tests/seed/venv.sh)",
                venv.display()
            );
            assert!(
                std::env::var("SIGRELAY_REQUIRE_REDIS").as_deref() != Ok("1"),
                "{why}, and SIGRELAY_REQUIRE_REDIS=1"
            );
            eprintln!("skipped: {why}");
            return None;
        }
        let mut child = Command::new(&gunicorn)
            .args(["--worker-class", "gevent", "--workers", "1"])
            .args(["--bind", "127.0.0.1:0", "--graceful-timeout", "1"])
            .arg("--no-control-socket")
            .arg("--chdir")
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/seed"))
            .arg("app:app")
            .env("REDIS_URL", redis_url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start gunicorn");
        let log = Arc::new(Mutex::new(Vec::new()));
        let workers = Arc::new(Mutex::new(Vec::new()));
        let (port_tx, port_rx) = mpsc::channel();
        let stderr = child.stderr.take().expect("stderr");
        {
            let (log, workers) = (Arc::clone(&log), Arc::clone(&workers));
            // Drained for gunicorn's whole life, so it never blocks on a full pipe.
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Some((_, rest)) = line.split_once("Listening at: http://127.0.0.1:") {
                        let port = rest.split(|c: char| !c.is_ascii_digit()).next();
                        if let Some(port) = port.and_then(|p| p.parse::<u16>().ok()) {
                            let _ = port_tx.send(port);
                        }
                    }
                    if let Some((_, pid)) = line.split_once("Booting worker with pid: ") {
                        if let Ok(pid) = pid.trim().parse() {
                            workers.lock().unwrap().push(pid);
                        }
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let mut app = FlaskApp {
            port: 0,
            url: String::new(),
            child,
            workers,
            log,
        };
        app.port = port_rx
            .recv_timeout(START)
            .unwrap_or_else(|_| panic!("gunicorn never said where it listens:\n{}", app.log()));
        app.url = format!("http://127.0.0.1:{}", app.port);
        // Listening is the master's; a request is served once a worker has booted.
        let deadline = Instant::now() + START;
        while app.workers.lock().unwrap().is_empty() {
            assert!(
                Instant::now() < deadline,
                "gunicorn booted no worker:\n{}",
                app.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(app)
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// gunicorn's log so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for FlaskApp {
    fn drop(&mut self) {
        // SIGQUIT: gunicorn's quick shutdown (its workers too); killed outright past STOP.
        let master = self.child.id() as i32;
        // SAFETY: kill(2) with a PID we started and have not reaped yet.
        unsafe { libc::kill(master, libc::SIGQUIT) };
        let deadline = Instant::now() + STOP;
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for &pid in self.workers.lock().unwrap().iter() {
            // Only a worker still running under gunicorn's name (not a reused PID).
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains("gunicorn") {
                // SAFETY: kill(2) on a PID gunicorn reported as its worker, checked above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        if std::thread::panicking() {
            eprintln!("--- gunicorn's log ---\n{}", self.log());
        }
    }
}
