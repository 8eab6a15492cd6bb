//! The `vnet` command line: `vnet run` and `vnet ns`, the commands that inspect and
//! change a running network through its API, their options, and the exit codes (the
//! command's status for `vnet ns`, 0 after a stop signal, 2 for any setup error). This is
//! the binary's edge, where errors become one line on stderr; it builds a network from
//! the options and the config file and hands it to the transports, and never touches a
//! frame.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{ArgAction, Args, CommandFactory, Parser, Subcommand};
use nix::unistd::Pid;
use tracing::level_filters::LevelFilter;
use tracing::{debug, info, warn};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

use vnet_gateway::{GatewayConfig, StaticLease};
use vnet_gateway_host::{resolv_conf, GatewayNetwork};
use vnet_runtime::Network;
use vnet_switch::{ForwardingMode, PortPolicy, PortSecurity, SwitchConfig, DEFAULT_AGING};
use vnet_transport::dgram::DEFAULT_PEER_IDLE_TIMEOUT;
use vnet_transport::netns;
use vnet_transport::vxlan::VxlanTunnel;
use vnet_wire::MacAddress;

use crate::client::{self, Inspect};
use crate::config_file::{self, ConfigFile};
use crate::endpoints::{self, AttachSpec, ListenSpec};
use crate::qemu_args::{qemu_args, Model, Transport};
use crate::spec::{
    describe_with_policy, parse_attach_option, parse_listen_arg, parse_on_off, AttachOption, ListenOption,
};
use crate::supervisor::Signals;
use crate::user_options::{gives_option, parse_user_options, take_vlan_option};
use crate::views::NetworkInfo;
use crate::{api, capture, lifecycle, runtime_dir};
use vnet_runtime::sandbox::{Capability, Sandbox};

/// Exit code for every setup error (bad option, unusable address, no permission).
const SETUP_ERROR: u8 = 2;

/// Virtual networks for virtual machines: one unprivileged process that QEMU guests and
/// network namespaces plug into.
#[derive(Debug, Parser)]
#[command(
    name = "vnet",
    version,
    about = "Virtual networks for virtual machines: one unprivileged process that QEMU guests and network namespaces plug into",
    long_about = None
)]
struct Cli {
    /// More log output: -v for debug, -vv for trace.
    #[arg(short, long, global = true, action = ArgAction::Count)]
    verbose: u8,
    /// Less log output: -q for warnings and errors, -qq for errors only.
    #[arg(short, long, global = true, action = ArgAction::Count, conflicts_with = "verbose")]
    quiet: u8,
    /// Log level: error, warn, info, debug or trace. Without it, -v/-q or RUST_LOG decide.
    #[arg(long, global = true, value_name = "LEVEL")]
    log_level: Option<LevelFilter>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one virtual network in the foreground until SIGINT or SIGTERM.
    Run(NetworkArgs),
    /// Run a command in a new network namespace whose interface is a port of a new network.
    Ns(NsArgs),
    /// Show a running network at a glance.
    Status(InspectArgs),
    /// List a running network's ports and their counters.
    Ports(InspectArgs),
    /// List the stations a running network's switch has learned.
    Macs(InspectArgs),
    /// List the DHCP leases of a running network's gateway.
    Leases(InspectArgs),
    /// List the flows through a running network's gateway.
    Flows(InspectArgs),
    /// Add, remove or list port forwards of a running network, without a restart.
    Fwd {
        #[command(subcommand)]
        action: FwdAction,
    },
    /// Add, remove or list the egress rules of a running network's gateway, without a
    /// restart; new flows meet a change at once.
    Policy {
        #[command(subcommand)]
        action: PolicyAction,
    },
    /// Relay standard input and output to a TCP connection the gateway opens to a guest,
    /// for example as ssh's ProxyCommand.
    Connect {
        /// The network's name.
        name: String,
        /// The guest's address and port, such as 10.0.2.15:22.
        guest: String,
    },
    /// Capture a running network's frames to a pcap file.
    Capture {
        /// The network's name.
        name: String,
        /// Only frames a port sends and receives (see `vnet ports`).
        #[arg(long, value_name = "ID")]
        port: Option<u32>,
        /// The pcap file to write; - for standard output.
        #[arg(short = 'w', value_name = "FILE")]
        write: PathBuf,
        /// Stop after N frames.
        #[arg(short = 'c', long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        count: Option<u64>,
    },
    /// Print the QEMU arguments that attach a VM to a running network.
    QemuArgs {
        /// The network's name; may be left out when only one network runs.
        name: Option<String>,
        /// The NIC the guest sees.
        #[arg(long, value_enum, default_value = "virtio-net-pci")]
        model: Model,
        /// The QEMU backend.
        #[arg(long, value_enum, default_value = "stream")]
        transport: Transport,
    },
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    Man,
}

#[derive(Debug, Args)]
struct InspectArgs {
    /// The network's name; may be left out when only one network runs.
    name: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum FwdAction {
    /// Add a forward, in QEMU's hostfwd syntax: [tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport.
    Add {
        /// The network's name.
        name: String,
        /// The rule, such as tcp::2222-:22.
        rule: String,
    },
    /// Remove a forward: the rule as added, or its host side ([tcp|udp]:[hostaddr]:hostport).
    Rm {
        /// The network's name.
        name: String,
        /// The rule.
        rule: String,
    },
    /// List the forwards in force.
    List(InspectArgs),
}

#[derive(Debug, Subcommand)]
enum PolicyAction {
    /// Add a rule: allow= or deny= with +-joined fields proto:tcp|udp|icmp,
    /// from:MAC|ADDRESS, to:ADDRESS[/PREFIX] and port:N[-M], such as deny=proto:tcp+port:25.
    Add {
        /// The network's name.
        name: String,
        /// The rule.
        rule: String,
        /// Where it goes (from 0; the first that matches decides); the end without it.
        #[arg(long)]
        position: Option<usize>,
    },
    /// Remove rule number INDEX (as `vnet policy list` numbers them).
    Rm {
        /// The network's name.
        name: String,
        /// The rule's number.
        index: usize,
    },
    /// List the rules, with how much each denied.
    List(InspectArgs),
}

#[derive(Debug, Args)]
struct NetworkArgs {
    /// Name the network: its API socket and default sockets go in
    /// $XDG_RUNTIME_DIR/vnet/NAME (/run/vnet/NAME as root).
    #[arg(long, value_name = "NAME", value_parser = parse_name)]
    name: Option<String>,
    /// A TOML file with any of these options; flags given here override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Accept peers: stream:unix:PATH, stream:tcp:HOST:PORT, dgram:unix:PATH, dgram:udp:HOST:PORT,
    /// vde:DIR, vhost-user:PATH (one VM per socket), vhost-user:DIR/ (a socket per VM), or with --name a bare stream, dgram or vde.
    #[arg(long = "listen", value_name = "SPEC", value_parser = parse_listen_arg)]
    listen: Vec<ListenOption>,
    /// Connect to or join: stream:unix:PATH, stream:tcp:HOST:PORT, mcast:GROUP:PORT, netns:PATH|PID,
    /// vde:DIR, tap:NAME. Any spec may end in ,vlan=N (access port) or ,trunk=N,M (tagged).
    #[arg(long = "attach", value_name = "SPEC", value_parser = parse_attach_option)]
    attach: Vec<AttachOption>,
    /// Flood every frame to every port, like QEMU's hub, instead of learning addresses.
    #[arg(long)]
    hub: bool,
    /// Seconds a learned MAC address stays without being seen again [default: 300].
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    mac_aging: Option<u64>,
    /// The gateway's options, in QEMU's `-netdev user` syntax plus vnet's own
    /// (mtu=, dns-upstream=, host-loopback=, dhcp-host=, max-flows=, vlan=, and the
    /// per-guest limits guest-max-tcp=, guest-max-udp=, guest-max-icmp=, guest-max-dns=,
    /// guest-max-half-open=, port-max-flows=, port-max-leases=).
    #[arg(long, value_name = "OPTS", conflicts_with = "no_user")]
    user: Option<String>,
    /// No gateway: a plain switch.
    #[arg(long)]
    no_user: bool,
    /// Seconds a dgram peer may be silent before its port is removed [default: 3600].
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    dgram_peer_timeout: Option<u64>,
    /// Capture every frame from the start into this pcap file.
    #[arg(long, value_name = "FILE")]
    pcap: Option<PathBuf>,
    /// Write READY=1 and a newline to this descriptor, then close it, once every transport listens.
    #[arg(long, value_name = "FD")]
    ready_fd: Option<RawFd>,
    /// Write vnet's process id to this file, and remove it on exit.
    #[arg(long, value_name = "FILE")]
    pidfile: Option<PathBuf>,
    /// Once set up, run under a seccomp allow-list and Landlock, with no new privileges
    /// and no capability but CAP_NET_RAW; off is for debugging [default: on].
    #[arg(long, value_name = "on|off", value_parser = parse_on_off)]
    sandbox: Option<bool>,
    /// Once set up, become USER and its group (vnet must start as root).
    #[arg(long, value_name = "USER")]
    run_as: Option<String>,
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
    init_logging(&cli);
    match execute(cli.command) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(error) => {
            eprintln!("vnet: {error:#}");
            ExitCode::from(SETUP_ERROR)
        }
    }
}

/// Logs to stderr at the level --log-level, -v/-q or RUST_LOG ask for, in that order of
/// precedence; info by default.
fn init_logging(cli: &Cli) {
    let level = match (cli.log_level, cli.verbose, cli.quiet) {
        (Some(level), _, _) => Some(level),
        (None, 0, 0) => None,
        (None, verbose, 0) => Some(if verbose == 1 { LevelFilter::DEBUG } else { LevelFilter::TRACE }),
        (None, _, quiet) => Some(if quiet == 1 { LevelFilter::WARN } else { LevelFilter::ERROR }),
    };
    let from_env = std::env::var("RUST_LOG").ok().filter(|_| level.is_none());
    let (targets, bad_env) = match from_env.as_deref().map(str::parse::<Targets>) {
        Some(Ok(targets)) => (targets, None),
        Some(Err(e)) => (Targets::new().with_default(LevelFilter::INFO), Some(e)),
        None => (Targets::new().with_default(level.unwrap_or(LevelFilter::INFO)), None),
    };
    let format = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    tracing_subscriber::registry().with(format.with_filter(targets)).init();
    if let Some(error) = bad_env {
        tracing::warn!(%error, "RUST_LOG is not a valid filter; logging at info");
    }
}

fn execute(command: Command) -> anyhow::Result<i32> {
    match command {
        Command::Run(args) => run_network(args, None),
        Command::Ns(args) => {
            let namespace = NamespaceCommand { ifname: args.ifname, command: args.command };
            run_network(args.network, Some(namespace))
        }
        Command::Status(args) => inspect(args, Inspect::Status),
        Command::Ports(args) => inspect(args, Inspect::Ports),
        Command::Macs(args) => inspect(args, Inspect::Macs),
        Command::Leases(args) => inspect(args, Inspect::Leases),
        Command::Flows(args) => inspect(args, Inspect::Flows),
        Command::Fwd { action: FwdAction::List(args) } => inspect(args, Inspect::Forwards),
        Command::Fwd { action: FwdAction::Add { name, rule } } => {
            client::change_forward(&name, &rule, true).map(|()| 0)
        }
        Command::Fwd { action: FwdAction::Rm { name, rule } } => {
            client::change_forward(&name, &rule, false).map(|()| 0)
        }
        Command::Policy { action: PolicyAction::List(args) } => inspect(args, Inspect::Policy),
        Command::Policy { action: PolicyAction::Add { name, rule, position } } => {
            client::add_policy_rule(&name, &rule, position).map(|()| 0)
        }
        Command::Policy { action: PolicyAction::Rm { name, index } } => {
            client::remove_policy_rule(&name, index).map(|()| 0)
        }
        Command::Connect { name, guest } => client::connect(&name, &guest).map(|()| 0),
        Command::Capture { name, port, write, count } => {
            client::capture(&name, port, &write, count).map(|()| 0)
        }
        Command::QemuArgs { name, model, transport } => {
            let status = client::Client::new(name.as_deref())?.request("GET", "/v1/status", None)?;
            let listen: Vec<String> = serde_json::from_value(status["listen"].clone())?;
            client::print_out(&format!("{}\n", qemu_args(&listen, model, transport)?))?;
            Ok(0)
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "vnet", &mut std::io::stdout());
            Ok(0)
        }
        Command::Man => {
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            Ok(0)
        }
    }
}

fn inspect(args: InspectArgs, what: Inspect) -> anyhow::Result<i32> {
    client::inspect(args.name.as_deref(), what, args.json).map(|()| 0)
}

/// What `vnet ns` runs.
struct NamespaceCommand {
    ifname: String,
    command: Vec<OsString>,
}

/// Everything a network runs with, after the config file and the flags are merged.
struct Settings {
    name: Option<String>,
    listen: Vec<ListenOption>,
    attach: Vec<AttachOption>,
    hub: bool,
    mac_aging: Duration,
    /// The gateway's options; None for no gateway.
    user: Option<String>,
    dgram_peer_timeout: Duration,
    pcap: Option<PathBuf>,
    pidfile: Option<PathBuf>,
    ready_fd: Option<RawFd>,
    sandbox: bool,
    run_as: Option<String>,
}

impl Settings {
    /// The flags over the config file: a flag given wins, and a list given on the
    /// command line replaces the file's.
    fn merge(args: NetworkArgs) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(path) => config_file::load(path)?,
            None => ConfigFile::default(),
        };
        let no_user = args.no_user || (args.user.is_none() && file.no_user == Some(true));
        Ok(Self {
            name: args.name.or(file.name),
            listen: or_file(args.listen, file.listen),
            attach: or_file(args.attach, file.attach),
            hub: args.hub || file.hub == Some(true),
            mac_aging: Duration::from_secs(
                args.mac_aging.or(file.mac_aging).unwrap_or(DEFAULT_AGING.as_secs()),
            ),
            user: (!no_user).then(|| args.user.or(file.user).unwrap_or_default()),
            dgram_peer_timeout: Duration::from_secs(
                args.dgram_peer_timeout
                    .or(file.dgram_peer_timeout)
                    .unwrap_or(DEFAULT_PEER_IDLE_TIMEOUT.as_secs()),
            ),
            pcap: args.pcap.or(file.pcap),
            pidfile: args.pidfile.or(file.pidfile),
            ready_fd: args.ready_fd,
            sandbox: args.sandbox.unwrap_or(true),
            run_as: args.run_as,
        })
    }
}

/// The command line's list if it gave one, else the config file's.
fn or_file<T>(flags: Vec<T>, file: Vec<T>) -> Vec<T> {
    if flags.is_empty() {
        file
    } else {
        flags
    }
}

/// Runs a network (and for `vnet ns`, its command) until it stops.
fn run_network(args: NetworkArgs, namespace: Option<NamespaceCommand>) -> anyhow::Result<i32> {
    let files = raise_file_limit();
    let settings = Settings::merge(args)?;
    let ready_fd = settings.ready_fd.map(lifecycle::take_ready_fd).transpose()?;
    let mut signals = Signals::install().context("cannot set up signal handling")?;
    let runtime_dir = settings.name.as_deref().map(runtime_dir::create).transpose()?;
    let listen = settings
        .listen
        .iter()
        .map(|option| option.arg.resolve(runtime_dir.as_deref()).map(|spec| (spec, option.policy.clone())))
        .collect::<Result<Vec<(ListenSpec, PortPolicy)>, String>>()
        .map_err(anyhow::Error::msg)?;
    // The gateway's own port floods only DHCP replies, which its guests' storm limits
    // already bound; it is never locked.
    let gateway_security = PortSecurity { lock: false, storm_pps: None };
    let (user, gateway_policy) = match settings.user.as_deref().map(take_vlan_option).transpose()? {
        Some((user, vlans)) => (Some(user), PortPolicy { vlans, security: gateway_security }),
        None => (None, PortPolicy { security: gateway_security, ..PortPolicy::default() }),
    };
    let vxlan = endpoints::open_vxlan(settings.attach.iter().map(|option| (&option.spec, &option.policy)))?;
    let mut gateway = gateway_config(user.as_deref())?;
    let vxlan_mtu = vxlan.iter().map(VxlanTunnel::guest_mtu).min();
    if let (Some(gateway), Some(fitting)) = (gateway.as_mut(), vxlan_mtu) {
        fit_mtu_to_underlay(gateway, fitting, user.as_deref().is_some_and(|user| gives_option(user, "mtu")));
    }
    if let Some(lowered) = gateway.as_mut().and_then(|gateway| gateway.fit_descriptors(files)) {
        debug!(max_flows = lowered, files, "max-flows lowered so that every flow fits the file limit");
    }
    let resolv_conf = namespace.as_ref().map(|_| TempResolvConf::new()).transpose()?;
    let setup = match &resolv_conf {
        Some(resolv_conf) => {
            gateway.as_mut().map(|gateway| namespace_setup(gateway, resolv_conf)).transpose()?
        }
        None => None,
    };
    let run_as = settings.run_as.as_deref().map(user_to_become).transpose()?;
    let mut readable_dirs = gateway
        .as_ref()
        .and_then(|config| config.upstreams_from.as_deref())
        .map(resolv_conf::watched_dirs)
        .unwrap_or_default();
    readable_dirs.extend(gateway.as_ref().and_then(|config| config.tftp_root.clone()));
    let mut network =
        build_network(&settings, &listen, vxlan, gateway.map(|config| (config, gateway_policy)))?;
    let _pid_file = settings.pidfile.as_deref().map(lifecycle::PidFile::create).transpose()?;
    let capture_file = settings.pcap.as_deref().map(create_capture_file).transpose()?;
    if let Some(namespace) = namespace {
        let namespaced = netns::spawn_in_new_namespace(
            &namespace.command[0],
            &namespace.command[1..],
            &namespace.ifname,
            setup,
        )?;
        let pid = namespaced.child.id();
        signals.supervise(Pid::from_raw(pid as i32));
        endpoints::attach_tap(&mut network, namespaced.tap, format!("ns:pid={pid}"))
            .context("cannot relay the namespace's tap")?;
    }
    // The namespace has bind-mounted its resolv.conf: the file is not needed any more.
    drop(resolv_conf);
    let sandbox = Sandbox {
        writable_dirs: sandbox_dirs(&listen, &settings, runtime_dir.as_deref()),
        readable_dirs,
        run_as,
        keep: capabilities_to_keep(&listen),
    };
    enter_sandbox(settings.sandbox, sandbox)?;
    let capture = capture_file.map(|file| capture_from_start(&mut network, file)).transpose()?;
    let api = match (&settings.name, &runtime_dir) {
        (Some(name), Some(dir)) => {
            let info = NetworkInfo {
                name: name.clone(),
                started: std::time::Instant::now(),
                listen: listen.iter().map(|(spec, policy)| describe_with_policy(spec, policy)).collect(),
                attach: settings
                    .attach
                    .iter()
                    .map(|option| describe_with_policy(&option.spec, &option.policy))
                    .collect(),
            };
            Some(api::serve(&dir.join(runtime_dir::API_SOCKET), network.remote(), info)?)
        }
        _ => None,
    };
    lifecycle::notify_ready(ready_fd);
    let code = network.run(&mut signals)?;
    drop(network);
    if let Some(writer) = capture {
        match writer.join() {
            Ok(Ok(summary)) => info!(written = summary.written, dropped = summary.dropped, "capture written"),
            Ok(Err(e)) => warn!(error = %e, "capture failed"),
            Err(_) => warn!("the capture writer panicked"),
        }
    }
    drop(api);
    if let Some(dir) = runtime_dir {
        let _ = std::fs::remove_dir(dir);
    }
    Ok(code)
}

/// Creates the `--pcap` file, before the sandbox closes the filesystem.
fn create_capture_file(path: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::File::create(path).with_context(|| format!("cannot create the capture file {}", path.display()))
}

/// The user and group `--run-as` names.
fn user_to_become(name: &str) -> anyhow::Result<(nix::unistd::Uid, nix::unistd::Gid)> {
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!("--run-as {name} needs vnet to start as root; start it as root, or leave --run-as out");
    }
    let user = nix::unistd::User::from_name(name)
        .with_context(|| format!("cannot look up the user {name} (--run-as)"))?
        .ok_or_else(|| anyhow::anyhow!("--run-as {name}: there is no such user"))?;
    Ok((user.uid, user.gid))
}

/// The directories where vnet still makes or removes files once set up: those of its
/// unix listeners, its VDE switch directories, the runtime directory and the pid file,
/// each with its parent where vnet removes the directory itself at exit.
fn sandbox_dirs(
    listen: &[(ListenSpec, PortPolicy)],
    settings: &Settings,
    runtime_dir: Option<&Path>,
) -> Vec<PathBuf> {
    let parent = |path: &Path| path.parent().map(Path::to_path_buf);
    let mut dirs = Vec::new();
    for (spec, _) in listen {
        match spec {
            ListenSpec::StreamUnix(path) | ListenSpec::DgramUnix(path) | ListenSpec::VhostUser(path) => {
                dirs.extend(parent(path))
            }
            ListenSpec::Vde(dir) | ListenSpec::VhostUserDir(dir) => {
                dirs.extend([Some(dir.clone()), parent(dir)].into_iter().flatten())
            }
            ListenSpec::StreamTcp(_) | ListenSpec::DgramUdp(_) => {}
        }
    }
    for option in &settings.attach {
        if let AttachSpec::Vde(dir) = &option.spec {
            dirs.push(dir.clone());
        }
    }
    if let Some(dir) = runtime_dir {
        dirs.extend([Some(dir.to_path_buf()), parent(dir)].into_iter().flatten());
    }
    dirs.extend(settings.pidfile.as_deref().and_then(parent));
    dirs
}

/// The capabilities vnet keeps in the sandbox, where it holds them: CAP_NET_RAW for raw
/// ICMP sockets where ping sockets are not allowed, and with a VDE listener CAP_CHOWN,
/// to give each port's socket the group its client asked for (vde_plug -g).
fn capabilities_to_keep(listen: &[(ListenSpec, PortPolicy)]) -> Vec<Capability> {
    let mut keep = vec![Capability::CAP_NET_RAW];
    if listen.iter().any(|(spec, _)| matches!(spec, ListenSpec::Vde(_))) {
        keep.push(Capability::CAP_CHOWN);
    }
    keep
}

/// Enters `sandbox` (see [`vnet_runtime::sandbox`]) unless `--sandbox off`.
fn enter_sandbox(on: bool, sandbox: Sandbox) -> anyhow::Result<()> {
    if !on {
        info!("running without the sandbox (--sandbox off)");
        return Ok(());
    }
    let report = sandbox.enter().context("cannot enter the sandbox (--sandbox off runs without it)")?;
    if !report.landlock {
        info!("this kernel has no Landlock: the sandbox does not limit the filesystem");
    }
    debug!(landlock = report.landlock, capabilities = ?report.capabilities, "sandbox entered");
    Ok(())
}

/// Starts `--pcap`: a mirror of every frame, written to `file` by a thread of its own.
fn capture_from_start(
    network: &mut Network,
    file: std::fs::File,
) -> anyhow::Result<std::thread::JoinHandle<std::io::Result<capture::CaptureSummary>>> {
    let (sink, writer) = capture::channel(None);
    network.add_mirror(None, Box::new(sink));
    std::thread::Builder::new()
        .name("vnet-pcap".to_owned())
        .spawn(move || writer.run(&mut std::io::BufWriter::new(file), || true))
        .context("cannot start the capture thread")
}

/// Raises the soft limit on open files to the hard one (each NAT flow holds a host
/// socket) and returns the limit in force.
fn raise_file_limit() -> usize {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return usize::MAX;
    };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return usize::try_from(hard).unwrap_or(usize::MAX);
    }
    usize::try_from(soft).unwrap_or(usize::MAX)
}

/// Lowers the MTU the gateway advertises to `fitting`, the largest whose frames fit
/// every VXLAN underlay, unless `mtu=` was `given`; a given MTU that does not fit is
/// kept, with a warning, as the user asked.
fn fit_mtu_to_underlay(gateway: &mut GatewayConfig, fitting: usize, given: bool) {
    let fitting = u16::try_from(fitting).unwrap_or(u16::MAX);
    if given {
        if gateway.mtu > fitting {
            warn!(
                mtu = gateway.mtu,
                fitting, "mtu= is larger than the VXLAN underlay carries; frames that long will be dropped"
            );
        }
        return;
    }
    if gateway.mtu > fitting {
        info!(mtu = fitting, "the gateway advertises an MTU that fits the VXLAN underlay");
        gateway.mtu = fitting;
    }
}

/// The gateway's settings from `--user` (upstreams from /etc/resolv.conf unless given),
/// or None with `--no-user`.
fn gateway_config(user: Option<&str>) -> anyhow::Result<Option<GatewayConfig>> {
    let Some(user) = user else {
        return Ok(None);
    };
    let resolv_conf = std::fs::read_to_string(RESOLV_CONF).unwrap_or_default();
    let mut config = parse_user_options(user, &resolv_conf)?;
    if !gives_option(user, "dns-upstream") {
        config.upstreams_from = Some(PathBuf::from(RESOLV_CONF));
    }
    Ok(Some(config))
}

/// Where the host names its DNS servers, which the gateway follows unless
/// `dns-upstream=` is given.
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// The MAC address of `vnet ns`'s interface: in QEMU's 52:54:00 range, made unique by
/// vnet's process id so that namespaces of linked networks never share one.
fn namespace_mac() -> [u8; 6] {
    let [_, a, b, c] = std::process::id().to_be_bytes();
    [0x52, 0x54, 0x00, a, b, c]
}

/// Configures the namespace as DHCP would: the first lease (reserved for its MAC),
/// the gateway as router, the MTU, and a resolv.conf naming the gateway's DNS
/// addresses. IPv6 the namespace's kernel configures from router advertisements.
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
        if gateway.ipv4 {
            text.push_str(&format!("nameserver {}\n", gateway.dns));
        }
        if gateway.ipv6 {
            text.push_str(&format!("nameserver {}\n", gateway.ipv6_dns));
        }
    }
    let search: Vec<&str> = gateway.domain.iter().chain(&gateway.dns_search).map(String::as_str).collect();
    if !search.is_empty() {
        text.push_str(&format!("search {}\n", search.join(" ")));
    }
    std::fs::write(&resolv_conf.path, text)
        .with_context(|| format!("cannot write {}", resolv_conf.path.display()))?;
    let ipv4 = netns::Ipv4Setup { address, prefix_len: gateway.prefix_len, router: gateway.host };
    Ok(netns::InterfaceSetup {
        mac: mac.0,
        ipv4: gateway.ipv4.then_some(ipv4),
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

fn parse_name(text: &str) -> Result<String, String> {
    runtime_dir::validate_name(text).map(|()| text.to_owned())
}

fn build_network(
    settings: &Settings,
    listen: &[(ListenSpec, PortPolicy)],
    vxlan: Vec<VxlanTunnel>,
    gateway: Option<(GatewayConfig, PortPolicy)>,
) -> anyhow::Result<Network> {
    let config = SwitchConfig {
        mode: if settings.hub { ForwardingMode::Hub } else { ForwardingMode::Learning },
        aging: settings.mac_aging,
        ..SwitchConfig::default()
    };
    let mut network = Network::new(config)?;
    for (spec, policy) in listen {
        endpoints::listen(&mut network, spec, policy.clone(), settings.dgram_peer_timeout)?;
    }
    for option in &settings.attach {
        endpoints::attach(&mut network, &option.spec, option.policy.clone())?;
    }
    for tunnel in vxlan {
        network.add_endpoint(Box::new(tunnel), PortPolicy::default())?;
    }
    if let Some((config, policy)) = gateway {
        network.add_gateway(config, policy)?;
    }
    Ok(network)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_mtu_fits_the_underlay_unless_mtu_was_given() {
        let mut gateway = GatewayConfig::default();
        fit_mtu_to_underlay(&mut gateway, 1450, false);
        assert_eq!(gateway.mtu, 1450);
        fit_mtu_to_underlay(&mut gateway, 8950, false);
        assert_eq!(gateway.mtu, 1450, "never raised past what was set");
        let mut given = GatewayConfig { mtu: 9000, ..GatewayConfig::default() };
        fit_mtu_to_underlay(&mut given, 1450, true);
        assert_eq!(given.mtu, 9000, "mtu= wins");
    }
}
