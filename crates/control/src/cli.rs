//! The `vnet` command line: `vnet run` and `vnet ns`, their options, and the exit codes
//! (the command's status for `vnet ns`, 0 after a stop signal, 2 for any setup error).
//! This is the binary's edge, where errors become one line on stderr; it builds a
//! network from the options and hands it to the transports, and never touches a frame.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use nix::unistd::Pid;
use std::path::PathBuf;
use tracing::level_filters::LevelFilter;

use vnet_gateway::{GatewayConfig, StaticLease};
use vnet_switch::{ForwardingMode, SwitchConfig, DEFAULT_AGING};
use vnet_transport::dgram::DEFAULT_PEER_IDLE_TIMEOUT;
use vnet_transport::{netns, AttachSpec, ListenSpec, Network, NetworkConfig};
use vnet_wire::MacAddress;

use crate::spec::{parse_attach, parse_listen};
use crate::supervisor::Signals;
use crate::user_options::parse_user_options;

/// Exit code for every setup error (bad option, unusable address, no permission).
const SETUP_ERROR: u8 = 2;

/// Virtual networks for virtual machines: one unprivileged process that QEMU guests and
/// network namespaces plug into.
#[derive(Debug, Parser)]
#[command(name = "vnet", version, about, long_about = None)]
struct Cli {
    /// Log verbosity: error, warn, info, debug or trace.
    #[arg(long, global = true, default_value = "info", value_name = "LEVEL")]
    log_level: LevelFilter,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one virtual network in the foreground until SIGINT or SIGTERM.
    Run(NetworkArgs),
    /// Run a command in a new network namespace whose interface is a port of a new network.
    Ns(NsArgs),
}

#[derive(Debug, Args)]
struct NetworkArgs {
    /// Accept peers: stream:unix:PATH, stream:tcp:HOST:PORT, dgram:unix:PATH, dgram:udp:HOST:PORT.
    #[arg(long = "listen", value_name = "SPEC", value_parser = parse_listen)]
    listen: Vec<ListenSpec>,
    /// Connect to or join: stream:unix:PATH, stream:tcp:HOST:PORT, mcast:GROUP:PORT, netns:PATH|PID.
    #[arg(long = "attach", value_name = "SPEC", value_parser = parse_attach)]
    attach: Vec<AttachSpec>,
    /// Flood every frame to every port, like QEMU's hub, instead of learning addresses.
    #[arg(long)]
    hub: bool,
    /// Seconds a learned MAC address stays without being seen again.
    #[arg(long, default_value_t = DEFAULT_AGING.as_secs(), value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    mac_aging: u64,
    /// The gateway's options, in QEMU's `-netdev user` syntax plus vnet's own
    /// (mtu=, dns-upstream=, host-loopback=, dhcp-host=, max-flows=).
    #[arg(long, value_name = "OPTS", default_value = "", conflicts_with = "no_user")]
    user: String,
    /// No gateway: a plain switch.
    #[arg(long)]
    no_user: bool,
    /// Seconds a dgram peer may be silent before its port is removed.
    #[arg(long, default_value_t = DEFAULT_PEER_IDLE_TIMEOUT.as_secs(), value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    dgram_peer_timeout: u64,
}

#[derive(Debug, Args)]
struct NsArgs {
    #[command(flatten)]
    network: NetworkArgs,
    /// Name of the interface inside the namespace.
    #[arg(long, default_value = netns::DEFAULT_IFNAME, value_name = "NAME", value_parser = parse_ifname)]
    ifname: String,
    /// The command to run and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<OsString>,
}

/// Entry point of the `vnet` binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) if error.use_stderr() => {
            let message = error.to_string();
            let first_line = message.lines().next().unwrap_or_default();
            eprintln!("vnet: {}", first_line.trim_start_matches("error: "));
            return ExitCode::from(SETUP_ERROR);
        }
        Err(help_or_version) => help_or_version.exit(),
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .with_max_level(cli.log_level)
        .init();
    match execute(cli.command) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(error) => {
            eprintln!("vnet: {error:#}");
            ExitCode::from(SETUP_ERROR)
        }
    }
}

fn execute(command: Command) -> anyhow::Result<i32> {
    raise_file_limit();
    let mut signals = Signals::install().context("cannot set up signal handling")?;
    match command {
        Command::Run(args) => {
            let gateway = gateway_config(&args)?;
            let mut network = build_network(&args, gateway)?;
            Ok(network.run(&mut signals)?)
        }
        Command::Ns(args) => {
            let mut gateway = gateway_config(&args.network)?;
            let resolv_conf = TempResolvConf::new()?;
            let setup = gateway.as_mut().map(|gateway| namespace_setup(gateway, &resolv_conf)).transpose()?;
            let mut network = build_network(&args.network, gateway)?;
            let namespaced =
                netns::spawn_in_new_namespace(&args.command[0], &args.command[1..], &args.ifname, setup)?;
            let pid = namespaced.child.id();
            signals.supervise(Pid::from_raw(pid as i32));
            network
                .attach_tap(namespaced.tap, format!("ns:pid={pid}"))
                .context("cannot relay the namespace's tap")?;
            Ok(network.run(&mut signals)?)
        }
    }
}

/// Raises the soft limit on open files to the hard one: each NAT flow holds a host
/// socket.
fn raise_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

/// The gateway's settings from `--user` (upstreams from /etc/resolv.conf unless given),
/// or None with `--no-user`.
fn gateway_config(args: &NetworkArgs) -> anyhow::Result<Option<GatewayConfig>> {
    if args.no_user {
        return Ok(None);
    }
    let resolv_conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    Ok(Some(parse_user_options(&args.user, &resolv_conf)?))
}

/// The MAC address of `vnet ns`'s interface: in QEMU's 52:54:00 range, made unique by
/// vnet's process id so that namespaces of linked networks never share one.
fn namespace_mac() -> [u8; 6] {
    let [_, a, b, c] = std::process::id().to_be_bytes();
    [0x52, 0x54, 0x00, a, b, c]
}

/// Configures the namespace as DHCP would: the first lease (reserved for its MAC),
/// the gateway as router, the MTU, and a resolv.conf naming the gateway's DNS address.
fn namespace_setup(
    gateway: &mut GatewayConfig,
    resolv_conf: &TempResolvConf,
) -> anyhow::Result<netns::InterfaceSetup> {
    let mac = MacAddress(namespace_mac());
    let address = match gateway.static_leases.iter().find(|lease| lease.mac == mac) {
        Some(lease) => lease.ip,
        None => {
            gateway.static_leases.push(StaticLease { mac, ip: gateway.dhcp_start });
            gateway.dhcp_start
        }
    };
    let mut text = String::new();
    if !gateway.restrict {
        text.push_str(&format!("nameserver {}\n", gateway.dns));
    }
    let search: Vec<&str> = gateway.domain.iter().chain(&gateway.dns_search).map(String::as_str).collect();
    if !search.is_empty() {
        text.push_str(&format!("search {}\n", search.join(" ")));
    }
    std::fs::write(&resolv_conf.path, text)
        .with_context(|| format!("cannot write {}", resolv_conf.path.display()))?;
    Ok(netns::InterfaceSetup {
        mac: mac.0,
        address,
        prefix_len: gateway.prefix_len,
        router: gateway.host,
        mtu: gateway.mtu,
        resolv_conf: resolv_conf.path.clone(),
    })
}

/// The resolv.conf `vnet ns` binds into its namespace, in a private temporary
/// directory removed when vnet exits.
struct TempResolvConf {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl TempResolvConf {
    fn new() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("vnet-ns-")
            .tempdir()
            .context("cannot create a temporary directory")?;
        let path = dir.path().join("resolv.conf");
        Ok(Self { _dir: dir, path })
    }
}

fn parse_ifname(text: &str) -> Result<String, String> {
    netns::validate_ifname(text).map(|()| text.to_owned())
}

fn build_network(args: &NetworkArgs, gateway: Option<GatewayConfig>) -> anyhow::Result<Network> {
    let config = NetworkConfig {
        switch: SwitchConfig {
            mode: if args.hub { ForwardingMode::Hub } else { ForwardingMode::Learning },
            aging: Duration::from_secs(args.mac_aging),
            ..SwitchConfig::default()
        },
        dgram_peer_timeout: Duration::from_secs(args.dgram_peer_timeout),
    };
    let mut network = Network::new(config)?;
    for spec in &args.listen {
        network.listen(spec)?;
    }
    for spec in &args.attach {
        network.attach(spec)?;
    }
    if let Some(gateway) = gateway {
        network.add_gateway(gateway)?;
    }
    Ok(network)
}
