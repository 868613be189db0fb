//! The real executable: starts with `--bind 127.0.0.1:0`, prints where it listens, relays, and
//! exits 0 on SIGTERM even with streams open. Bad flags exit 2 with a clear message. `--version`
//! names the version; the man page, the completions and the Debian package's environment file
//! cannot drift from `--help`.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn start(args: &[&str]) -> (Binary, std::net::SocketAddr) {
    let binary = Binary::start(args);
    let addr = binary.addr;
    (binary, addr)
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_serves_and_stops_cleanly_on_sigterm() {
    let (mut guard, addr) = start(&["--bind", "127.0.0.1:0", "--log", "warn"]);
    let mut sub = SseClient::connect(addr, "/stream?channel=bin", &[]).await;
    assert_eq!(sub.status, 200);
    let r = request(
        addr,
        "POST",
        "/channel/send/bin/request",
        &[],
        b"{\"sdp\":1}",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        message_of(&sub.next_message().await.unwrap()),
        "{\"sdp\":1}"
    );

    let pid = guard.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = guard.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}");
    // The open stream was ended, not cut.
    assert!(sub.next().await.is_none());
}

#[test]
fn bad_flags_exit_2_with_a_reason() {
    for args in [
        &["--bind", "nonsense"][..],
        &["--keepalive", "0"][..],
        &["--max-body", "0"][..],
        &["--ice-server", "http://x"][..],
        &["--peer-secret", ""][..],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_sigrelay"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!out.stderr.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn config_names_the_stun_port_actually_bound() {
    let (_guard, addr) = start(&["--bind", "127.0.0.1:0", "--stun", "127.0.0.1:0", "--turn"]);
    let config = request(addr, "GET", "/config?room=r1", &[], b"")
        .await
        .json();
    let stun = config["iceServers"][0]["urls"].as_str().unwrap().to_owned();
    let port: u16 = stun.rsplit(':').next().unwrap().parse().unwrap();
    assert_ne!(port, 0, "{config}");
    let turn = config["iceServers"][1]["urls"].as_str().unwrap();
    assert_eq!(turn, format!("turn:127.0.0.1:{port}?transport=udp"));
}

/// The STUN server a page is given by `/config`, if any: its port.
async fn stun_port(addr: std::net::SocketAddr) -> Option<u16> {
    let config = request(addr, "GET", "/config?room=r1", &[], b"")
        .await
        .json();
    let servers = config["iceServers"].as_array().unwrap().clone();
    servers
        .iter()
        .filter_map(|s| s["urls"].as_str())
        .find(|u| u.starts_with("stun:"))
        .map(|u| u.rsplit(':').next().unwrap().parse().unwrap())
}

/// Issue 17: STUN is on by default, over UDP on the HTTP port's number (so parallel servers on
/// kernel-chosen ports never collide); a taken port is a warning and another port, not a
/// failed start; --no-stun turns it off; a --stun address given that cannot be bound fails.
#[tokio::test(flavor = "multi_thread")]
async fn stun_is_on_by_default_on_the_http_port_and_a_taken_port_falls_back() {
    let (_guard, addr) = start(&["--bind", "127.0.0.1:0"]);
    assert_eq!(
        stun_port(addr).await,
        Some(addr.port()),
        "the HTTP port's number"
    );
    // It answers a Binding request there.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut binding = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    binding.extend_from_slice(&[7; 12]);
    udp.send_to(&binding, addr).unwrap();
    let mut buf = [0u8; 512];
    let (n, _) = udp.recv_from(&mut buf).expect("a Binding answer");
    assert_eq!(&buf[..2], &[0x01, 0x01], "Binding success ({n} bytes)");

    // The port number is taken over UDP: the server starts anyway, with STUN on another port.
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let bind = format!("127.0.0.1:{port}");
    let (_guard, addr) = start(&["--bind", &bind]);
    let moved = stun_port(addr).await.expect("STUN still on");
    assert_ne!(moved, port);
    assert_ne!(moved, 0);

    let (_guard, addr) = start(&["--bind", "127.0.0.1:0", "--no-stun"]);
    assert_eq!(stun_port(addr).await, None);

    // Asked for explicitly, a taken address is an error.
    let out = Command::new(env!("CARGO_BIN_EXE_sigrelay"))
        .args(["--bind", "127.0.0.1:0", "--stun", &bind])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot listen for STUN/TURN"));
    drop(taken);
}

#[allow(dead_code)] // its `main` is the example's; the test calls `generate`.
#[path = "../examples/gen-assets.rs"]
mod gen_assets;

/// What the real binary prints on stdout with this one argument; it must exit 0.
fn stdout_of(arg: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_sigrelay"))
        .arg(arg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{arg}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// `sigrelay --help` run for real, and the long flags it lists.
fn help_and_long_flags() -> (String, Vec<String>) {
    let help = stdout_of("--help");
    let mut flags: Vec<String> = help
        .lines()
        .filter_map(|line| {
            let line = line.trim_start();
            let line = line.strip_prefix("-h, ").unwrap_or(line);
            let line = line.strip_prefix("-V, ").unwrap_or(line);
            let flag = line.strip_prefix("--")?;
            let end = flag
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .unwrap_or(flag.len());
            Some(format!("--{}", &flag[..end]))
        })
        .collect();
    flags.dedup();
    assert!(
        flags.len() > 30,
        "too few flags parsed from --help: {flags:?}"
    );
    (help, flags)
}

#[test]
fn version_names_the_package_version() {
    let line = stdout_of("--version");
    // "sigrelay 0.1.0" or, from a git checkout, "sigrelay 0.1.0 (3f2c1ab)".
    let rest = line
        .trim_end()
        .strip_prefix(concat!("sigrelay ", env!("CARGO_PKG_VERSION")))
        .unwrap_or_else(|| panic!("{line:?}"));
    assert!(
        rest.is_empty()
            || (rest.starts_with(" (")
                && rest.ends_with(')')
                && rest[2..rest.len() - 1]
                    .chars()
                    .all(|c| c.is_ascii_hexdigit())),
        "{line:?}"
    );
    assert_eq!(
        line.trim_end(),
        format!("sigrelay {}", sigrelay::VERSION),
        "the binary and the library disagree"
    );
}

#[test]
fn man_page_and_completions_name_every_flag_of_help() {
    let (_, flags) = help_and_long_flags();
    let dir = std::env::temp_dir().join(format!("sigrelay-assets-{}", std::process::id()));
    let written = gen_assets::generate(&dir).unwrap();
    assert_eq!(written.len(), 4, "{written:?}");
    for path in &written {
        // roff escapes each '-' as "\-".
        let text = std::fs::read_to_string(path).unwrap().replace("\\-", "-");
        for flag in &flags {
            // fish writes `-l bind` rather than `--bind`.
            let fish = format!("-l {}", &flag[2..]);
            assert!(
                text.contains(flag.as_str()) || text.contains(&fish),
                "{} does not mention {flag}",
                path.display()
            );
        }
    }
    let man = std::fs::read_to_string(dir.join("sigrelay.1")).unwrap();
    assert!(man.contains(sigrelay::VERSION), "man page has no version");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn environment_file_names_only_real_variables() {
    // Every SIGRELAY_* in the packaged /etc/default/sigrelay is one `--help` lists.
    let (help, _) = help_and_long_flags();
    let file = include_str!("../packaging/debian/sigrelay.default");
    let mut seen = 0;
    for word in file.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("SIGRELAY_") {
            seen += 1;
            assert!(
                help.contains(&format!("[env: {word}")),
                "{word} in packaging/debian/sigrelay.default is not a flag's variable"
            );
        }
    }
    assert!(seen > 5);
}
