//! vnet's benchmark: every scenario of issue 4 for vnet and its peers (slirp4netns, pasta,
//! passt, vde_switch and a veth pair as the kernel's limit), side by side in one run,
//! printed as a markdown table and written as JSON.
//!
//! `vnet-bench [--quick] [--only bulk,latency,...]` runs the bench. `vnet-bench tool ...`
//! is how the bench runs its own load generators inside the namespaces it makes; it is
//! not meant for people.
//!
//! The bench moves itself into a network namespace of its own before starting anything
//! (see [`netns`]), so its traffic stays on this machine.

mod backend;
mod load;
mod matrix;
mod netns;
mod plug;
mod process;
mod report;
mod scenarios;
mod test_guest;
mod vde;
mod vhost_plug;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use backend::Programs;
use report::{Report, RunInfo};
use scenarios::{Bench, Settings, SCENARIOS};

/// Benchmarks vnet against slirp4netns, pasta, passt, vde_switch and veth.
#[derive(Parser)]
#[command(name = "vnet-bench")]
struct Cli {
    /// One short round, fewer connections and no real guests: under 5 minutes.
    #[arg(long)]
    quick: bool,
    /// Only these scenarios (comma-separated): bulk, bulk-ipv6, latency, latency-ipv6,
    /// udp, scale, stream, vhost-user, vhost-user-switch, switch, tap, idle, guests.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Count vnet's own instructions with callgrind on fixed workloads instead (bulk
    /// TCP each way, 1-byte round trips); needs valgrind.
    #[arg(long)]
    profile: bool,
    /// Where to write the JSON results.
    #[arg(long, default_value = "target/bench/results.json")]
    json: PathBuf,
    /// Where to write the markdown table (it is printed too).
    #[arg(long, default_value = "target/bench/results.md")]
    markdown: PathBuf,
    /// The vnet binary to measure (default: the one beside this bench).
    #[arg(long)]
    vnet: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<BenchCommand>,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// QEMU's networking table, measured: two guests per backend mode (QEMU's user and
    /// socket, vnet over stream, dgram, mcast, VDE, vhost-user and a host tap) try
    /// VM→Host, Host→VM, VM1↔VM2, VM→Net and Net→VM. `scripts/demo` runs it.
    Matrix {
        /// Fewer pings and smaller transfers: under 90 seconds.
        #[arg(long)]
        quick: bool,
        /// Only these rows (comma-separated): user, socket, stream, dgram, mcast, vde,
        /// vhost-user, tap.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Where to write the markdown table (it is printed too).
        #[arg(long, default_value = "target/demo/matrix.md")]
        markdown: PathBuf,
        /// Where to write the JSON.
        #[arg(long, default_value = "target/demo/matrix.json")]
        json: PathBuf,
    },
    /// Load generators the bench runs inside namespaces.
    #[command(hide = true)]
    Tool {
        #[command(subcommand)]
        tool: Tool,
    },
}

#[derive(Subcommand, Clone)]
enum Tool {
    /// 1-byte ping-pong for SECONDS; prints latency percentiles.
    Rr { server: SocketAddr, seconds: u64 },
    /// COUNT 1-byte round trips as fast as they go; prints the count.
    RrCount { server: SocketAddr, count: u64 },
    /// Connect, 1 byte each way, close, for SECONDS; prints the rate.
    ConnectRate { server: SocketAddr, seconds: u64 },
    /// SIZE-byte datagrams for SECONDS; prints how many were sent.
    UdpSend { server: SocketAddr, size: usize, seconds: u64 },
    /// SIZE-byte datagrams for SECONDS or COUNT datagrams; prints how many were sent.
    UdpFlood { server: SocketAddr, size: usize, seconds: u64, count: u64 },
    /// Says it listens, then counts SIZE-byte datagrams on PORT until stdin ends and the
    /// datagrams stop, or SECONDS; prints the count.
    UdpCount { port: u16, size: usize, seconds: u64 },
    /// Opens COUNT connections, prints how many got through, holds them until stdin ends.
    Hold { server: SocketAddr, count: usize },
    /// Listens on PORT, writes a byte to each connection and holds it.
    Serve { port: u16 },
    /// Relays a new tap IFNAME to the QEMU stream socket SOCKET.
    Plug { socket: PathBuf, ifname: String },
    /// Relays a new tap IFNAME to the vhost-user socket SOCKET, as QEMU and a guest's
    /// virtio-net driver would.
    VhostPlug {
        socket: PathBuf,
        ifname: String,
        /// Bytes per receive buffer, header included (Linux's mergeable buffers are at
        /// most a page).
        #[arg(long, default_value_t = vhost_plug::DEFAULT_RX_BUFFER)]
        rx_buffer: usize,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match &cli.command {
        Some(BenchCommand::Tool { tool }) => run_tool(tool.clone()),
        Some(BenchCommand::Matrix { quick, only, markdown, json }) => {
            run_matrix(&cli, *quick, only, markdown, json)
        }
        None => run_bench(&cli),
    };
    if let Err(error) = result {
        eprintln!("vnet-bench: {error:#}");
        std::process::exit(1);
    }
}

fn run_tool(tool: Tool) -> Result<()> {
    load::raise_file_limit();
    match tool {
        Tool::Rr { server, seconds } => load::print_json(&load::request_response(server, secs(seconds))?),
        Tool::RrCount { server, count } => load::print_json(&load::round_trips(server, count)?),
        Tool::ConnectRate { server, seconds } => {
            load::print_json(&load::connection_rate(server, secs(seconds))?)
        }
        Tool::UdpSend { server, size, seconds } => {
            load::print_json(&load::udp_send(server, size, secs(seconds))?)
        }
        Tool::UdpFlood { server, size, seconds, count } => {
            load::print_json(&load::udp_flood(server, size, secs(seconds), count)?)
        }
        Tool::UdpCount { port, size, seconds } => {
            load::print_json(&load::udp_count(port, size, secs(seconds))?)
        }
        Tool::Hold { server, count } => {
            let (_connections, held) = load::hold_connections(server, count)?;
            load::print_json(&held)?;
            // Hold until the bench closes stdin (or kills this process).
            std::io::copy(&mut std::io::stdin(), &mut std::io::sink())?;
            Ok(())
        }
        Tool::Serve { port } => {
            let listener = std::net::TcpListener::bind(("0.0.0.0", port))?;
            nix::sys::socket::listen(&listener, nix::sys::socket::Backlog::MAXCONN)?;
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            load::serve_and_hold(listener, stop)?;
            println!("listening");
            std::io::copy(&mut std::io::stdin(), &mut std::io::sink())?;
            Ok(())
        }
        Tool::Plug { socket, ifname } => plug::run(&socket, &ifname),
        Tool::VhostPlug { socket, ifname, rx_buffer } => vhost_plug::run(&socket, &ifname, rx_buffer),
    }
}

fn secs(seconds: u64) -> Duration {
    Duration::from_secs(seconds)
}

fn run_bench(cli: &Cli) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the bench makes network namespaces and tap devices: run it as root (scripts/bench does)");
    }
    let scenarios: Vec<String> = if cli.profile {
        vec!["profile".to_owned()]
    } else if cli.only.is_empty() {
        SCENARIOS.iter().map(|s| s.to_string()).collect()
    } else {
        cli.only.clone()
    };
    if let Some(unknown) = cli.only.iter().find(|s| !SCENARIOS.contains(&s.as_str())) {
        bail!("unknown scenario {unknown}; the scenarios are {}", SCENARIOS.join(", "));
    }
    load::raise_file_limit();
    let programs = programs(cli)?;
    let vnet = programs.vnet.to_string_lossy().into_owned();
    let info = RunInfo::collect(
        cli.quick,
        &[
            ("vnet", &vnet),
            ("slirp4netns", "slirp4netns"),
            ("passt/pasta", "passt"),
            ("vde_switch", "vde_switch"),
            ("iperf3", "iperf3"),
        ],
    );
    let _host = netns::BenchHost::create_and_enter()?;
    let settings = if cli.quick { Settings::QUICK } else { Settings::FULL };
    let mut bench = Bench { programs, settings, report: Report::new(info) };
    for scenario in &scenarios {
        if let Err(error) = bench.run(scenario) {
            eprintln!("   scenario {scenario} failed: {error:#}");
        }
    }
    bench.report.finish();
    let markdown = bench.report.to_markdown();
    println!("{markdown}");
    write_file(&cli.markdown, &markdown)?;
    write_file(&cli.json, &bench.report.to_json())
}

/// Runs the connectivity matrix.
fn run_matrix(cli: &Cli, quick: bool, only: &[String], markdown: &Path, json: &Path) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the matrix makes network namespaces and a tap: run it as root (scripts/demo does); its backends and guests then run as nobody");
    }
    let vnet = programs(cli)?.vnet;
    let vnet_name = vnet.to_string_lossy().into_owned();
    let info = RunInfo::collect(
        quick,
        &[("vnet", &vnet_name), ("QEMU", "qemu-system-x86_64"), ("iperf3", "iperf3")],
    );
    let options = matrix::Options {
        quick,
        only: only.to_vec(),
        markdown: markdown.to_owned(),
        json: json.to_owned(),
        vnet,
    };
    matrix::run_matrix(&options, info)
}

fn write_file(path: &std::path::Path, contents: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

fn programs(cli: &Cli) -> Result<Programs> {
    let bench = std::env::current_exe().context("finding the bench's own binary")?;
    let vnet = match &cli.vnet {
        Some(vnet) => vnet.clone(),
        None => bench.with_file_name("vnet"),
    };
    if !vnet.exists() {
        bail!(
            "no vnet binary at {}; build it (cargo build --release -p vnet) or pass --vnet",
            vnet.display()
        );
    }
    Ok(Programs { vnet, bench })
}
