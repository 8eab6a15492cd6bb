//! `--profile`: vnet's own instructions on fixed workloads, counted by callgrind, which
//! the noise of a shared machine does not move. vnet runs under
//! `valgrind --tool=callgrind`; after a warm-up, `callgrind_control --zero` starts the
//! count and `--dump` ends it, so start-up and setup are not in it. Only vnet's own
//! instructions are counted, not the kernel's. Each workload's dump is kept in
//! `target/bench/callgrind/` for `callgrind_annotate`.
//!
//! Workloads (one namespace behind vnet's gateway, MTU 65520 and 1500):
//! - bulk TCP from the namespace to the host's loopback and back: a fixed number of bytes
//!   with iperf3 (`-n`), reported as instructions per byte and as the share of them in
//!   memcpy (the payload vnet copies), once through a tap and once through the bench's
//!   vhost-user frontend;
//! - 1-byte round trips over one TCP connection: a fixed count, reported as instructions
//!   per round trip, once as they are and once while vnet holds 10,000 idle connections
//!   (what a wake-up costs must not grow with the flows that sleep).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::{tool_result, Bench, IdleConnections, Iperf3Server};
use crate::backend::{Backend, Guest, GuestSetup, IpVersion, Programs};
use crate::load::{self, RoundTrips};
use crate::process::{self, ScratchDir, Spawned};
use crate::report::{Better, Metric};

const SCENARIO: &str = "Profile (callgrind, vnet's own instructions)";
/// Bytes each bulk workload moves.
const BULK_BYTES: &str = "256M";
/// Round trips the latency workload makes.
const ROUND_TRIPS: u64 = 20_000;
/// Idle connections held for the second round-trip count.
const IDLE_CONNECTIONS: usize = 10_000;

fn per_byte(name: &'static str) -> Metric<'static> {
    Metric { scenario: SCENARIO, name, unit: "instructions/byte", better: Better::Lower }
}

const PER_ROUND_TRIP: Metric = Metric {
    scenario: SCENARIO,
    name: "1-byte round trip, MTU 65520",
    unit: "instructions",
    better: Better::Lower,
};
const PER_ROUND_TRIP_IDLE_FLOWS: Metric = Metric {
    scenario: SCENARIO,
    name: "1-byte round trip, 10,000 idle connections held",
    unit: "instructions",
    better: Better::Lower,
};

/// Each workload's backend and MTU, and the names of its two directions.
const BULK_WORKLOADS: [(Backend, u16, &str, &str); 4] = [
    (Backend::Vnet, 65520, "ns → host, MTU 65520", "host → ns, MTU 65520"),
    (Backend::Vnet, 1500, "ns → host, MTU 1500", "host → ns, MTU 1500"),
    (Backend::VnetVhostUser, 65520, "vhost-user ns → host, MTU 65520", "vhost-user host → ns, MTU 65520"),
    (Backend::VnetVhostUser, 1500, "vhost-user ns → host, MTU 1500", "vhost-user host → ns, MTU 1500"),
];

/// What share of a bulk workload's instructions are in memcpy: payload copied by vnet.
fn memcpy_share(name: &'static str) -> Metric<'static> {
    Metric { scenario: MEMCPY_SCENARIO, name, unit: "% of instructions", better: Better::Lower }
}

const MEMCPY_SCENARIO: &str = "Profile: instructions in memcpy (payload vnet copies)";

pub fn run(bench: &mut Bench) -> Result<()> {
    let dir = ScratchDir::create()?;
    let profiled =
        Programs { vnet: callgrind_wrapper(dir.path(), &bench.programs.vnet)?, ..bench.programs.clone() };
    let server = Iperf3Server::start(IpVersion::V4)?;
    for (backend, mtu, upload, download) in BULK_WORKLOADS {
        let guest =
            Guest::start(backend, GuestSetup { mtu, tcp_forward: None, ip: IpVersion::V4 }, &profiled)?;
        let pid = guest.backend_pid().context("vnet's process")?;
        for (name, reverse) in [(upload, false), (download, true)] {
            server.transfer(&guest, "16M", reverse)?;
            zero(pid)?;
            let bytes = server.transfer(&guest, BULK_BYTES, reverse)?;
            let instructions = dump(pid, dir.path(), &dump_name(name))?;
            bench.record(per_byte(name), "vnet", Ok(instructions as f64 / bytes as f64));
            let in_memcpy = memcpy_instructions(&dump_name(name));
            bench.record(
                memcpy_share(name),
                "vnet",
                in_memcpy.map(|n| 100.0 * n as f64 / instructions as f64),
            );
        }
        if backend == Backend::Vnet && mtu == 65520 {
            let plain = round_trip_instructions(bench, &guest, pid, dir.path(), "round-trip");
            bench.record(PER_ROUND_TRIP, "vnet", plain);
            let with_idle_flows = IdleConnections::hold(bench, &guest, IDLE_CONNECTIONS).and_then(|_held| {
                round_trip_instructions(bench, &guest, pid, dir.path(), "round-trip-idle-connections")
            });
            bench.record(PER_ROUND_TRIP_IDLE_FLOWS, "vnet", with_idle_flows);
        }
    }
    Ok(())
}

/// The instructions the kept dump `NAME.out` counts in memcpy and memmove, as
/// `callgrind_annotate` lists them by function.
fn memcpy_instructions(name: &str) -> Result<u64> {
    let dump = Path::new(KEPT_DUMPS).join(format!("{name}.out"));
    let output = process::run(Command::new("callgrind_annotate").arg("--threshold=100").arg(&dump))?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.contains("memcpy") || line.contains("memmove"))
        .filter_map(|line| line.split_whitespace().next()?.replace(',', "").parse::<u64>().ok())
        .sum())
}

/// A file name for a metric's dump: "ns → host, MTU 1500" is ns-to-host-mtu-1500.
fn dump_name(metric: &str) -> String {
    let words: Vec<String> = metric
        .replace('→', "to")
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(str::to_lowercase)
        .collect();
    words.join("-")
}

/// A script that runs `vnet` under callgrind, writing its counts into `dir`. valgrind
/// cannot run seccomp or Landlock, so vnet runs there without its sandbox (every
/// profiled command is a `vnet run`).
fn callgrind_wrapper(dir: &Path, vnet: &Path) -> Result<PathBuf> {
    let wrapper = dir.join("vnet-under-callgrind");
    let out = dir.join("callgrind.out.%p");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec valgrind --tool=callgrind --compress-strings=no --callgrind-out-file={} {} \"$@\" --sandbox off\n",
            out.display(),
            vnet.display()
        ),
    )?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
    Ok(wrapper)
}

/// Round trips from `guest` to an echo server on the host, counted from their start; the
/// dump is kept as `NAME.out`.
fn round_trip_instructions(bench: &Bench, guest: &Guest, pid: u32, dir: &Path, name: &str) -> Result<f64> {
    let echo = load::listen_any(guest.ip().any_address())?;
    let server = SocketAddr::new(guest.host_address, echo.local_addr()?.port()).to_string();
    let _stop_echo = load::serve_echo(echo);
    let count = ROUND_TRIPS.to_string();
    let _: RoundTrips = tool_result(&mut bench.tool(guest, &["rr-count", &server, "200"]), DEADLINE)?;
    zero(pid)?;
    let done: RoundTrips = tool_result(&mut bench.tool(guest, &["rr-count", &server, &count]), DEADLINE)?;
    let instructions = dump(pid, dir, name)?;
    Ok(instructions as f64 / done.count as f64)
}

const DEADLINE: Duration = Duration::from_secs(600);
/// Where the dumps of each workload are kept.
const KEPT_DUMPS: &str = "target/bench/callgrind";

/// Sets callgrind's counters of process `pid` to zero.
fn zero(pid: u32) -> Result<()> {
    callgrind_control(&["--zero", &pid.to_string()])
}

/// Dumps the counts of process `pid` since the last zero, keeps the dump as
/// `target/bench/callgrind/NAME.out` for `callgrind_annotate`, and returns its
/// instructions.
fn dump(pid: u32, dir: &Path, name: &str) -> Result<u64> {
    let before = dumps(dir, pid)?;
    callgrind_control(&["--dump", &pid.to_string()])?;
    let newest = dumps(dir, pid)?
        .into_iter()
        .find(|path| !before.contains(path))
        .context("callgrind wrote no dump")?;
    std::fs::create_dir_all(KEPT_DUMPS)?;
    std::fs::copy(&newest, Path::new(KEPT_DUMPS).join(format!("{name}.out")))?;
    let text = std::fs::read_to_string(&newest)?;
    text.lines()
        .find_map(|line| line.strip_prefix("summary:").or_else(|| line.strip_prefix("totals:")))
        .and_then(|total| total.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no instruction total in {}", newest.display()))
}

/// The callgrind dumps of process `pid` in `dir`.
fn dumps(dir: &Path, pid: u32) -> Result<Vec<PathBuf>> {
    let prefix = format!("callgrind.out.{pid}");
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.file_name().is_some_and(|name| name.to_string_lossy().starts_with(&prefix)) {
            paths.push(path);
        }
    }
    Ok(paths)
}

fn callgrind_control(args: &[&str]) -> Result<()> {
    process::run(Command::new("callgrind_control").args(args).stdout(Stdio::null())).map(drop)
}

impl Iperf3Server {
    /// Moves `amount` (iperf3's `-n`) from `guest` to this server (`reverse`: the other
    /// way) and returns the bytes the receiver counted.
    fn transfer(&self, guest: &Guest, amount: &str, reverse: bool) -> Result<u64> {
        let (host, port) = (guest.host_address.to_string(), self.port.to_string());
        let mut args =
            vec!["iperf3", "-c", &host, "-p", &port, "-n", amount, "-J", "--connect-timeout", "20000"];
        if reverse {
            args.push("-R");
        }
        let mut command = guest.command(&args);
        command.stdout(Stdio::piped()).stderr(Stdio::null());
        let output = Spawned::start("iperf3 -c", &mut command)?.wait_output(DEADLINE)?;
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).context("iperf3's JSON")?;
        if let Some(error) = report["error"].as_str() {
            bail!("iperf3: {error}");
        }
        report["end"]["sum_received"]["bytes"].as_u64().context("no byte count")
    }
}
