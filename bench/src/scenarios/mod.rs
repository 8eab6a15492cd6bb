//! The bench's scenarios, one file each, and what they share: the settings of a run, the
//! report they record into, and running iperf3 and the bench's tools inside a guest.
//!
//! Each scenario measures vnet and its peers in the same run, alternating backend by
//! backend within each round, and records every sample; the report takes medians.

mod bulk;
mod guests;
mod idle;
mod latency;
mod profile;
mod scale;
mod stream;
mod switch;
mod tap;
mod udp;
mod vhost_user;
mod vxlan;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::net::TcpListener;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;

use crate::backend::{Backend, Guest, GuestSetup, IpVersion, Programs};
use crate::load::{self, Held};
use crate::process::{wait_until, Spawned, READY_DEADLINE};
use crate::report::{Metric, Report};

/// How long and how often a run measures.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Rounds of every scenario; medians are taken over them.
    pub rounds: usize,
    /// Length of one throughput or latency measurement.
    pub seconds: u64,
    /// Concurrent connections in the scale scenario.
    pub connections: usize,
    /// Length of the idle measurement.
    pub idle_seconds: u64,
    /// Idle connections vnet holds while its round trips are measured again.
    pub idle_flows: usize,
    /// Whether to boot real guests.
    pub guests: bool,
}

impl Settings {
    /// The full run.
    pub const FULL: Settings = Settings {
        rounds: 3,
        seconds: 4,
        connections: 10_000,
        idle_seconds: 10,
        idle_flows: 60_000,
        guests: true,
    };
    /// `--quick`: one short round, fewer connections, no real guests; under 5 minutes.
    pub const QUICK: Settings = Settings {
        rounds: 1,
        seconds: 2,
        connections: 2_000,
        idle_seconds: 3,
        idle_flows: 5_000,
        guests: false,
    };
}

/// A scenario's name on the command line.
pub const SCENARIOS: [&str; 14] = [
    "bulk",
    "bulk-ipv6",
    "latency",
    "latency-ipv6",
    "udp",
    "scale",
    "stream",
    "vhost-user",
    "vhost-user-switch",
    "switch",
    "tap",
    "vxlan",
    "idle",
    "guests",
];

/// One run of the bench.
pub struct Bench {
    /// The programs it runs.
    pub programs: Programs,
    /// How long and how often it measures.
    pub settings: Settings,
    /// What it measured.
    pub report: Report,
}

impl Bench {
    /// Runs scenario `name`.
    pub fn run(&mut self, name: &str) -> Result<()> {
        eprintln!("== {name}");
        match name {
            "bulk" => bulk::run(self),
            "bulk-ipv6" => bulk::run_ipv6(self),
            "latency" => latency::run(self),
            "latency-ipv6" => latency::run_ipv6(self),
            "udp" => udp::run(self),
            "scale" => scale::run(self),
            "stream" => stream::run(self),
            "vhost-user" => vhost_user::run(self),
            "vhost-user-switch" => vhost_user::run_switch(self),
            "switch" => switch::run(self),
            "tap" => tap::run(self),
            "vxlan" => vxlan::run(self),
            "idle" => idle::run(self),
            "guests" => guests::run(self),
            "profile" => profile::run(self),
            other => bail!("unknown scenario {other}; the scenarios are {}", SCENARIOS.join(", ")),
        }
    }

    /// Records `result` as a sample of `metric` for `backend`, or its error.
    fn record(&mut self, metric: Metric<'_>, backend: &str, result: Result<f64>) {
        match result {
            Ok(value) => {
                eprintln!("   {:<14} {:<40} {value:.2} {}", backend, metric.name, metric.unit);
                self.report.record(metric, backend, value);
            }
            Err(error) => {
                eprintln!("   {backend:<14} {:<40} failed: {error:#}", metric.name);
                self.report.record_error(metric, backend, &format!("{error:#}"));
            }
        }
    }

    /// Starts a guest behind `backend`, or records why it could not start against every
    /// metric in `metrics`.
    fn start_guest(&mut self, backend: Backend, setup: GuestSetup, metrics: &[Metric<'_>]) -> Option<Guest> {
        match Guest::start(backend, setup, &self.programs) {
            Ok(guest) => Some(guest),
            Err(error) => {
                for metric in metrics {
                    self.record(*metric, backend.name(), Err(anyhow::anyhow!("{error:#}")));
                }
                None
            }
        }
    }

    /// A command running the bench's tool `args` inside `guest`.
    fn tool(&self, guest: &Guest, args: &[&str]) -> Command {
        let bench = self.programs.bench.to_string_lossy().into_owned();
        let mut full = vec![bench.as_str(), "tool"];
        full.extend_from_slice(args);
        guest.command(&full)
    }

    fn measure_seconds(&self) -> Duration {
        Duration::from_secs(self.settings.seconds)
    }
}

/// Runs `command` (a bench tool printing one JSON line) within `deadline` and parses
/// what it printed.
fn tool_result<T: DeserializeOwned>(command: &mut Command, deadline: Duration) -> Result<T> {
    command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let output = Spawned::start("a bench tool", command)?.wait_output(deadline)?;
    if !output.status.success() {
        bail!("tool failed: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    serde_json::from_slice(&output.stdout)
        .with_context(|| format!("tool printed {:?}", String::from_utf8_lossy(&output.stdout)))
}

/// An iperf3 server on the bench host, on a port of its own.
struct Iperf3Server {
    port: u16,
    _process: Spawned,
}

impl Iperf3Server {
    /// Starts a server for clients of IP version `ip` (an IPv6 one takes IPv6 alone).
    fn start(ip: IpVersion) -> Result<Self> {
        let port = free_port()?;
        let mut command = Command::new("iperf3");
        command.args(["-s", "-p", &port.to_string()]).stdout(std::process::Stdio::null());
        if ip == IpVersion::V6 {
            command.arg("-6");
        }
        let process = Spawned::start("iperf3 -s", &mut command)?;
        wait_until("the iperf3 server", READY_DEADLINE, || {
            let output = Command::new("ss").args(["-Hltn", "sport", "=", &format!(":{port}")]).output()?;
            Ok(!output.stdout.is_empty())
        })?;
        Ok(Self { port, _process: process })
    }

    /// One iperf3 run from `guest` to this server (`reverse`: server to guest), in Gbit/s
    /// as the receiver counted.
    fn measure(&self, guest: &Guest, seconds: u64, reverse: bool) -> Result<f64> {
        let (host, port) = (guest.host_address.to_string(), self.port.to_string());
        let mut args = vec!["iperf3", "-c", &host, "-p", &port];
        if guest.ip() == IpVersion::V6 {
            args.push("-6");
        }
        iperf3_client(|extra| guest.command(&[&args[..], extra].concat()), seconds, reverse)
    }
}

/// Runs the iperf3 client `client` gives (its arguments up to the port, then the
/// `extra` ones) for `seconds` (`reverse`: server to client), retrying while the
/// server is busy; Gbit/s as the receiver counted.
fn iperf3_client(client: impl Fn(&[&str]) -> Command, seconds: u64, reverse: bool) -> Result<f64> {
    let time = seconds.to_string();
    let mut extra = vec!["-t", &time, "-J", "--connect-timeout", "5000"];
    if reverse {
        extra.push("-R");
    }
    // The server takes one test at a time and is briefly busy between tests.
    for _ in 0..20 {
        let mut command = client(&extra);
        command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::null());
        let output =
            Spawned::start("iperf3 -c", &mut command)?.wait_output(Duration::from_secs(seconds + 30))?;
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).context("iperf3's JSON")?;
        if let Some(error) = report["error"].as_str() {
            if error.contains("busy") {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            bail!("iperf3: {error}");
        }
        let bits = report["end"]["sum_received"]["bits_per_second"].as_f64().context("no receiver rate")?;
        return Ok(bits / 1e9);
    }
    bail!("the iperf3 server stayed busy")
}

/// iperf3 over IP version `ip` both ways through each of `backends`, at MTU 65520 and
/// 1500, alternating backends within each round.
fn iperf3_both_ways(
    bench: &mut Bench,
    scenario: &'static str,
    backends: &[Backend],
    ip: IpVersion,
) -> Result<()> {
    let server = Iperf3Server::start(ip)?;
    let metric = |name| Metric { scenario, name, unit: "Gbit/s", better: crate::report::Better::Higher };
    for (mtu, upload, download) in [
        (65520, "MTU 65520, ns → host", "MTU 65520, host → ns"),
        (1500, "MTU 1500, ns → host", "MTU 1500, host → ns"),
    ] {
        let metrics = [metric(upload), metric(download)];
        for _ in 0..bench.settings.rounds {
            for &backend in backends {
                let setup = GuestSetup { mtu, tcp_forward: None, ip };
                let Some(guest) = bench.start_guest(backend, setup, &metrics) else { continue };
                for (metric, reverse) in [(metrics[0], false), (metrics[1], true)] {
                    let result = server.measure(&guest, bench.settings.seconds, reverse);
                    bench.record(metric, backend.name(), result);
                }
            }
        }
    }
    Ok(())
}

/// A TCP port nobody on the bench host listens on now.
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("0.0.0.0:0")?.local_addr()?.port())
}

/// The first line `process` prints, within `timeout`.
pub(super) fn first_line(process: &mut Spawned, timeout: Duration) -> Result<String> {
    let stdout = process.child_mut().stdout.take().context("the tool's stdout")?;
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = sender.send(line);
    });
    match receiver.recv_timeout(timeout) {
        Ok(line) if !line.is_empty() => Ok(line),
        Ok(_) => bail!("the tool ended without a result"),
        Err(_) => bail!("the tool gave no result within {timeout:?}"),
    }
}

/// Idle connections held from a guest through its backend to servers on the host, until
/// dropped.
pub(super) struct IdleConnections {
    stop: Arc<AtomicBool>,
    _holders: Vec<Spawned>,
}

impl IdleConnections {
    /// Idle connections per server: fewer than the guest's ephemeral ports toward one
    /// address.
    const PER_SERVER: usize = 25_000;
    /// How long setting up one server's connections may take.
    const SETUP_TIMEOUT: Duration = Duration::from_secs(240);

    /// Opens `count` connections from `guest` and holds them; fails unless all of them
    /// got through.
    pub(super) fn hold(bench: &Bench, guest: &Guest, count: usize) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut held = Self { stop: stop.clone(), _holders: Vec::new() };
        let mut left = count;
        while left > 0 {
            let batch = left.min(Self::PER_SERVER);
            left -= batch;
            let listener = load::listen_any(guest.ip().any_address())?;
            let server = SocketAddr::from((guest.host_address, listener.local_addr()?.port()));
            load::serve_and_hold(listener, stop.clone())?;
            let args = ["hold", &server.to_string(), &batch.to_string()];
            let mut holder = Spawned::start_piped("the hold tool", &mut bench.tool(guest, &args))?;
            let tally: Held = serde_json::from_str(&first_line(&mut holder, Self::SETUP_TIMEOUT)?)
                .context("the hold tool's result")?;
            if tally.connected < batch {
                bail!("only {} of {batch} idle connections were set up", tally.connected);
            }
            held._holders.push(holder);
        }
        Ok(held)
    }
}

impl Drop for IdleConnections {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
