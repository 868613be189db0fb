//! The load generator's command line (clap, as the server's own).

use clap::builder::TypedValueParser;
use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Scenario {
    /// End-to-end latency at a fixed publish rate (`--rate`, `--duration`, `--rooms`).
    Latency,
    /// Closed-loop publishes per second at 100 and 1,000 rooms of two (or `--rooms`).
    Throughput,
    /// Resident memory per idle SSE stream (N streams, `--n` or the number after `idle`).
    Idle,
    /// Publishes with no subscriber, next to a hyper "hello" server's ceiling.
    Nosub,
    /// Every scenario above, idle first.
    All,
}

/// Load generator for sigrelay and any server speaking its API. Loopback only.
#[derive(Clone, Debug, Parser)]
#[command(name = "load")]
pub(crate) struct Opts {
    pub(crate) scenario: Scenario,
    /// For `idle`: how many streams (same as --n).
    #[arg(value_name = "N")]
    pub(crate) idle_n: Option<usize>,
    /// Idle streams to hold.
    #[arg(long = "n", default_value_t = 19_000, value_parser = clap::value_parser!(u64).range(..=60_000).map(|n| n as usize))]
    pub(crate) n: usize,
    /// Stream URL template (`{room}`); with --pub-url, load another server instead of
    /// starting sigrelay.
    #[arg(long, requires = "pub_url")]
    pub(crate) sub_url: Option<String>,
    /// Publish URL template (`{room}`, `{type}`).
    #[arg(long, requires = "sub_url")]
    pub(crate) pub_url: Option<String>,
    /// The other server's processes, for their memory (comma-separated).
    #[arg(long = "server-pid", value_delimiter = ',')]
    pub(crate) server_pids: Vec<u32>,
    /// The sigrelay binary to start (default target/release/sigrelay).
    #[arg(long)]
    pub(crate) server_bin: Option<String>,
    /// Rooms (each of two subscribers) for latency and throughput.
    #[arg(long)]
    pub(crate) rooms: Option<usize>,
    /// Publishes per second for latency.
    #[arg(long, default_value_t = 5000.0, value_parser = rate)]
    pub(crate) rate: f64,
    /// Seconds per scenario.
    #[arg(long, default_value_t = 10.0, value_parser = duration)]
    pub(crate) duration: f64,
    /// Closed-loop publishers for throughput.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096).map(|n| n as usize))]
    pub(crate) publishers: usize,
    /// Publisher connections for latency.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..).map(|n| n as usize))]
    pub(crate) pub_conns: usize,
    /// Client source addresses (127.0.0.x) to spread connections over.
    #[arg(long)]
    pub(crate) sources: Option<usize>,
    /// The load generator's own worker threads.
    #[arg(long, default_value_t = 2)]
    pub(crate) client_threads: usize,
}

fn rate(text: &str) -> Result<f64, String> {
    let value: f64 = text.parse().map_err(|e| format!("{e}"))?;
    if value > 0.0 && value <= 1e6 {
        Ok(value)
    } else {
        Err("must be in (0, 1e6]".into())
    }
}

fn duration(text: &str) -> Result<f64, String> {
    let value: f64 = text.parse().map_err(|e| format!("{e}"))?;
    if value > 0.0 && value <= 600.0 {
        Ok(value)
    } else {
        Err("must be in (0, 600]".into())
    }
}

impl Opts {
    /// Parses the command line (without the `--bench` cargo adds).
    pub(crate) fn from_args() -> Opts {
        let args = std::env::args().filter(|a| a != "--bench");
        let mut o = Opts::parse_from(args);
        if let (Scenario::Idle, Some(n)) = (o.scenario, o.idle_n) {
            o.n = n.min(60_000);
        }
        o
    }

    pub(crate) fn runs(&self, scenario: Scenario) -> bool {
        self.scenario == scenario || self.scenario == Scenario::All
    }
}
