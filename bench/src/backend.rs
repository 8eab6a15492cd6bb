//! The backends a "guest" network namespace reaches the host through: vnet, slirp4netns,
//! pasta, a plain veth pair (the kernel's limit), and for the stream transport scenario
//! vnet and passt behind the same tap-to-socket plug; for the vhost-user scenario, vnet
//! (and passt, where the installed one has `--vhost-user`) behind the bench's vhost-user
//! frontend.
//!
//! Each [`Guest`] is a namespace the bench made, configured so that `host_address` inside
//! it reaches the bench host's services (for the user-mode backends, through their
//! gateway-to-host-loopback mapping: 127.0.0.1, or ::1 for a guest set up for IPv6).
//! Nothing here measures anything.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::netns::{Netns, FAR_ADDRESS, FAR_IPV6_ADDRESS, HOST_ADDRESS, HOST_IPV6_ADDRESS};
use crate::process::{run, wait_until, ScratchDir, Spawned, READY_DEADLINE};

/// One way for a namespace to reach the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// `vnet run --attach netns:` with its gateway.
    Vnet,
    /// slirp4netns (libslirp).
    Slirp4netns,
    /// pasta (passt's namespace mode).
    Pasta,
    /// A veth pair: the kernel's own path, the limit.
    Veth,
    /// vnet's `--listen stream:unix:` with the bench's plug in the namespace.
    VnetStream,
    /// passt's QEMU stream socket with the bench's plug in the namespace.
    Passt,
    /// `vnet run --no-user --attach netns: --attach tap:`: the namespace bridged to a tap
    /// of the bench host, which has an address on it.
    VnetTap,
    /// vnet's `--listen vhost-user:` with the bench's vhost-user plug in the namespace.
    VnetVhostUser,
    /// passt's `--vhost-user` socket with the bench's vhost-user plug in the namespace.
    PasstVhostUser,
}

impl Backend {
    /// The name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Vnet => "vnet",
            Backend::Slirp4netns => "slirp4netns",
            Backend::Pasta => "pasta",
            Backend::Veth => "veth",
            Backend::VnetStream => "vnet (stream)",
            Backend::Passt => "passt",
            Backend::VnetTap => "vnet (tap)",
            Backend::VnetVhostUser => "vnet (vhost-user)",
            Backend::PasstVhostUser => "passt (vhost-user)",
        }
    }
}

/// The programs the bench runs.
#[derive(Debug, Clone)]
pub struct Programs {
    /// The vnet binary.
    pub vnet: PathBuf,
    /// This bench's own binary, for its tools inside namespaces.
    pub bench: PathBuf,
}

/// vnet's gateway address that leads to the host's ::1 (`ipv6-host`, QEMU's default).
const VNET_IPV6_HOST: Ipv6Addr = Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 2);
/// slirp4netns's host address, which leads to the host's ::1.
const SLIRP4NETNS_IPV6_HOST: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);

/// The IP version a guest reaches the host's services over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpVersion {
    /// IPv4, through every backend.
    V4,
    /// IPv6, through vnet, slirp4netns, pasta and veth.
    V6,
}

impl IpVersion {
    /// The address a server binds to take connections to any address of this version.
    pub fn any_address(self) -> IpAddr {
        match self {
            IpVersion::V4 => Ipv4Addr::UNSPECIFIED.into(),
            IpVersion::V6 => Ipv6Addr::UNSPECIFIED.into(),
        }
    }
}

/// How to set up a guest.
#[derive(Debug, Clone, Copy)]
pub struct GuestSetup {
    /// The namespace interface's MTU.
    pub mtu: u16,
    /// A TCP port of the host to forward to the same port of the guest.
    pub tcp_forward: Option<u16>,
    /// The IP version of the guest's `host_address`.
    pub ip: IpVersion,
}

/// A namespace connected to the host through a backend.
pub struct Guest {
    // Processes first: they stop before their namespace goes.
    plug: Option<Spawned>,
    process: Option<Spawned>,
    netns: Netns,
    /// The address inside the guest that reaches the host's services, of the IP version
    /// the setup asked for.
    pub host_address: IpAddr,
    /// The address a host client connects to for the guest's forwarded port.
    pub forward_address: Ipv4Addr,
    dir: ScratchDir,
}

impl Guest {
    /// Starts `backend` for a fresh namespace set up as `setup` asks.
    pub fn start(backend: Backend, setup: GuestSetup, programs: &Programs) -> Result<Self> {
        let has_ipv6 =
            matches!(backend, Backend::Vnet | Backend::Slirp4netns | Backend::Pasta | Backend::Veth);
        if setup.ip == IpVersion::V6 && !has_ipv6 {
            bail!(
                "the bench sets up IPv6 for vnet, slirp4netns, pasta and veth only, not {}",
                backend.name()
            );
        }
        let netns = Netns::create(backend.name().split(' ').next().unwrap_or("guest"))?;
        let dir = ScratchDir::create()?;
        let mut guest = Guest {
            netns,
            process: None,
            plug: None,
            host_address: Ipv4Addr::new(10, 0, 2, 2).into(),
            forward_address: Ipv4Addr::LOCALHOST,
            dir,
        };
        match backend {
            Backend::Vnet => guest.start_vnet(setup, programs)?,
            Backend::Slirp4netns => guest.start_slirp4netns(setup)?,
            Backend::Pasta => guest.start_pasta(setup)?,
            Backend::Veth => guest.start_veth(setup)?,
            Backend::VnetStream => guest.start_vnet_stream(setup, programs)?,
            Backend::Passt => guest.start_passt(setup, programs)?,
            Backend::VnetTap => guest.start_vnet_tap(setup, programs)?,
            Backend::VnetVhostUser => guest.start_vnet_vhost_user(setup, programs)?,
            Backend::PasstVhostUser => guest.start_passt_vhost_user(setup, programs)?,
        }
        Ok(guest)
    }

    /// A command that runs `args` inside the guest.
    pub fn command(&self, args: &[&str]) -> Command {
        self.netns.command(args)
    }

    /// The IP version the guest reaches the host's services over.
    pub fn ip(&self) -> IpVersion {
        match self.host_address {
            IpAddr::V4(_) => IpVersion::V4,
            IpAddr::V6(_) => IpVersion::V6,
        }
    }

    /// The backend's process, if it has one.
    pub fn backend_pid(&self) -> Option<u32> {
        self.process.as_ref().map(Spawned::pid)
    }

    fn socket_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn start_vnet(&mut self, setup: GuestSetup, programs: &Programs) -> Result<()> {
        let mut user = vnet_user_options(setup.mtu);
        if let Some(port) = setup.tcp_forward {
            user.push_str(&format!(",hostfwd=tcp:127.0.0.1:{port}-:{port}"));
        }
        let attach = format!("netns:{},ifname=eth0", self.netns.path());
        let mut command = Command::new(&programs.vnet);
        command.args(["--log-level", "warn", "run", "--user", &user, "--attach", &attach]);
        self.process = Some(Spawned::start("vnet", &mut command)?);
        self.wait_for_link("eth0")?;
        self.configure("eth0", "10.0.2.15/24", "10.0.2.2", setup.mtu)?;
        if setup.ip == IpVersion::V6 {
            self.reach_host_over_ipv6("eth0", VNET_IPV6_HOST, VNET_IPV6_HOST)?;
        }
        Ok(())
    }

    fn start_slirp4netns(&mut self, setup: GuestSetup) -> Result<()> {
        let api = self.socket_path("slirp4netns.sock");
        let mut command = Command::new("slirp4netns");
        command
            .arg("--configure")
            .arg(format!("--mtu={}", setup.mtu))
            .args((setup.ip == IpVersion::V6).then_some("--enable-ipv6"))
            .args(["--netns-type=path", "--api-socket"])
            .arg(&api)
            .args([&self.netns.path(), "tap0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.process = Some(Spawned::start("slirp4netns", &mut command)?);
        let netns = &self.netns;
        wait_until("slirp4netns to configure tap0", READY_DEADLINE, || {
            Ok(has_address(netns, "10.0.2.100") && api.exists())
        })?;
        if setup.ip == IpVersion::V6 {
            self.reach_host_over_ipv6("tap0", SLIRP4NETNS_IPV6_HOST, SLIRP4NETNS_IPV6_HOST)?;
        }
        if let Some(port) = setup.tcp_forward {
            slirp4netns_forward(&api, port)?;
        }
        Ok(())
    }

    fn start_pasta(&mut self, setup: GuestSetup) -> Result<()> {
        let forward = setup.tcp_forward.map_or("none".to_owned(), |port| port.to_string());
        let ip_version_only = match setup.ip {
            IpVersion::V4 => "-4",
            IpVersion::V6 => "-6",
        };
        let mut command = Command::new("pasta");
        command
            .args(["--config-net", "-f", "-q", ip_version_only, "-I", "eth0", "-m", &setup.mtu.to_string()])
            .args(["-t", &forward, "-u", "none", "-T", "none", "-U", "none"])
            // As nobody (its default under root) pasta cannot join a namespace root made.
            .args(["--runas", "0", "--netns", &self.netns.path()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.process = Some(Spawned::start("pasta", &mut command)?);
        // pasta gives the namespace the host's address and gateway, and takes connections
        // to the gateway to the host's loopback.
        match setup.ip {
            IpVersion::V4 => {
                let netns = &self.netns;
                wait_until("pasta to configure eth0", READY_DEADLINE, || {
                    Ok(has_address(netns, HOST_ADDRESS))
                })?;
                self.host_address = FAR_ADDRESS.parse()?;
            }
            IpVersion::V6 => self.reach_host_over_ipv6("eth0", HOST_IPV6_ADDRESS, FAR_IPV6_ADDRESS)?,
        }
        self.netns.run(&["ip", "link", "set", "eth0", "mtu", &setup.mtu.to_string()])
    }

    fn start_veth(&mut self, setup: GuestSetup) -> Result<()> {
        let (n, subnet) = next_subnet();
        let host_side = format!("vb{n}");
        self.host_address = Ipv4Addr::new(10, 200, subnet, 1).into();
        self.forward_address = Ipv4Addr::new(10, 200, subnet, 2);
        let mtu = setup.mtu.to_string();
        let add = ["link", "add", &host_side, "mtu", &mtu, "type", "veth", "peer", "name", "eth0"];
        run(Command::new("ip").args(add).args(["netns", self.netns.name()]))?;
        let host_address = format!("{}/24", self.host_address);
        run(Command::new("ip").args(["addr", "add", &host_address, "dev", &host_side]))?;
        run(Command::new("ip").args(["link", "set", &host_side, "up"]))?;
        let guest_address = format!("{}/24", self.forward_address);
        self.configure("eth0", &guest_address, &self.host_address.to_string(), setup.mtu)?;
        if setup.ip == IpVersion::V6 {
            self.add_veth_ipv6(&host_side, subnet)?;
        }
        Ok(())
    }

    /// Gives both sides of the veth pair of `subnet` (`host_side` and the guest's eth0)
    /// an IPv6 address in a /64 of their own, without duplicate address detection.
    fn add_veth_ipv6(&mut self, host_side: &str, subnet: u8) -> Result<()> {
        let address = |side| Ipv6Addr::new(0xfd10, 0x200, 0, subnet.into(), 0, 0, 0, side);
        let (host, guest) = (address(1), address(2));
        run(Command::new("ip").args(["addr", "add", &format!("{host}/64"), "dev", host_side, "nodad"]))?;
        self.netns.run(&["ip", "addr", "add", &format!("{guest}/64"), "dev", "eth0", "nodad"])?;
        self.reach_host_over_ipv6("eth0", guest, host)
    }

    fn start_vnet_tap(&mut self, setup: GuestSetup, programs: &Programs) -> Result<()> {
        let (n, subnet) = next_subnet();
        let tap = format!("vt{n}");
        self.host_address = Ipv4Addr::new(10, 201, subnet, 1).into();
        self.forward_address = Ipv4Addr::new(10, 201, subnet, 2);
        let attach_netns = format!("netns:{},ifname=eth0", self.netns.path());
        let attach_tap = format!("tap:{tap}");
        let mut command = Command::new(&programs.vnet);
        command.args(["-q", "run", "--no-user", "--attach", &attach_netns, "--attach", &attach_tap]);
        self.process = Some(Spawned::start("vnet", &mut command)?);
        self.wait_for_link("eth0")?;
        wait_until("vnet's tap on the host", READY_DEADLINE, || {
            Ok(Command::new("ip").args(["link", "show", &tap]).output()?.status.success())
        })?;
        let mtu = setup.mtu.to_string();
        run(Command::new("ip").args(["link", "set", &tap, "mtu", &mtu]))?;
        run(Command::new("ip").args(["addr", "add", &format!("{}/24", self.host_address), "dev", &tap]))?;
        run(Command::new("ip").args(["link", "set", &tap, "up"]))?;
        let guest_address = format!("{}/24", self.forward_address);
        self.configure("eth0", &guest_address, &self.host_address.to_string(), setup.mtu)
    }

    fn start_vnet_stream(&mut self, setup: GuestSetup, programs: &Programs) -> Result<()> {
        let socket = self.socket_path("vnet.sock");
        let listen = format!("stream:unix:{}", socket.display());
        let user = vnet_user_options(setup.mtu);
        let mut command = Command::new(&programs.vnet);
        command.args(["--log-level", "warn", "run", "--user", &user, "--listen", &listen]);
        self.process = Some(Spawned::start("vnet", &mut command)?);
        wait_until("vnet's stream socket", READY_DEADLINE, || Ok(socket.exists()))?;
        self.start_plug(&socket, programs)?;
        self.configure("eth0", "10.0.2.15/24", "10.0.2.2", setup.mtu)
    }

    fn start_passt(&mut self, setup: GuestSetup, programs: &Programs) -> Result<()> {
        let socket = self.socket_path("passt.sock");
        let mut command = Command::new("passt");
        command
            .args(["-f", "-q", "-4", "-t", "none", "-u", "none", "-s"])
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.process = Some(Spawned::start("passt", &mut command)?);
        wait_until("passt's socket", READY_DEADLINE, || Ok(socket.exists()))?;
        self.start_plug(&socket, programs)?;
        self.configure("eth0", &format!("{HOST_ADDRESS}/24"), FAR_ADDRESS, setup.mtu)?;
        self.host_address = FAR_ADDRESS.parse()?;
        Ok(())
    }

    fn start_vnet_vhost_user(&mut self, setup: GuestSetup, programs: &Programs) -> Result<()> {
        let socket = self.socket_path("vnet.sock");
        let listen = format!("vhost-user:{}", socket.display());
        let user = vnet_user_options(setup.mtu);
        let mut command = Command::new(&programs.vnet);
        command.args(["--log-level", "warn", "run", "--user", &user, "--listen", &listen]);
        self.process = Some(Spawned::start("vnet", &mut command)?);
        wait_until("vnet's vhost-user socket", READY_DEADLINE, || Ok(socket.exists()))?;
        self.start_vhost_plug(&socket, programs)?;
        self.configure("eth0", "10.0.2.15/24", "10.0.2.2", setup.mtu)
    }

    fn start_passt_vhost_user(&mut self, setup: GuestSetup, programs: &Programs) -> Result<()> {
        let socket = self.socket_path("passt.sock");
        let mut command = Command::new("passt");
        command
            .args(["-f", "-q", "-4", "-t", "none", "-u", "none", "--vhost-user", "-s"])
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.process = Some(Spawned::start("passt --vhost-user", &mut command)?);
        wait_until("passt's vhost-user socket", READY_DEADLINE, || Ok(socket.exists()))?;
        self.start_vhost_plug(&socket, programs)?;
        self.configure("eth0", &format!("{HOST_ADDRESS}/24"), FAR_ADDRESS, setup.mtu)?;
        self.host_address = FAR_ADDRESS.parse()?;
        Ok(())
    }

    /// Starts the bench's plug in the namespace: a tap called eth0 relayed to `socket`.
    fn start_plug(&mut self, socket: &Path, programs: &Programs) -> Result<()> {
        self.plug = Some(start_plug_in(&self.netns, "plug", socket, programs)?);
        self.wait_for_link("eth0")
    }

    /// Starts the bench's vhost-user plug in the namespace: a tap called eth0 whose
    /// frames go through the rings of the vhost-user device at `socket`.
    fn start_vhost_plug(&mut self, socket: &Path, programs: &Programs) -> Result<()> {
        self.plug = Some(start_plug_in(&self.netns, "vhost-plug", socket, programs)?);
        self.wait_for_link("eth0")
    }

    /// Waits until `interface` has an IPv6 address in the /64 of `prefix` (from SLAAC or
    /// given by the backend) and duplicate address detection is over for every address
    /// of it, link-local included, and makes `host` the address that reaches the host's
    /// services. (Debian 12's pasta, of 2023-03-09, sends a connection's segments to the
    /// guest's link-local address if the connection began while that address was
    /// tentative, and the guest resets it.)
    fn reach_host_over_ipv6(&mut self, interface: &str, prefix: Ipv6Addr, host: Ipv6Addr) -> Result<()> {
        let netns = &self.netns;
        let what = format!("an IPv6 address in {prefix}/64 on {interface}, past duplicate address detection");
        wait_until(&what, READY_DEADLINE, || Ok(ipv6_is_settled(netns, interface, prefix)))?;
        self.host_address = host.into();
        Ok(())
    }

    fn wait_for_link(&self, name: &str) -> Result<()> {
        let netns = &self.netns;
        wait_until(&format!("{name} in the guest namespace"), READY_DEADLINE, || {
            Ok(netns.command(&["ip", "link", "show", name]).output()?.status.success())
        })
    }

    /// Gives `interface` its MTU, address and default route, and brings it up.
    fn configure(&self, interface: &str, address: &str, gateway: &str, mtu: u16) -> Result<()> {
        self.netns.run_lines(&format!(
            "ip link set {interface} mtu {mtu}
             ip addr add {address} dev {interface}
             ip link set {interface} up
             ip route add default via {gateway}"
        ))
    }
}

/// Starts the bench's `tool` (`plug` or `vhost-plug`) in `netns`: a tap there called eth0,
/// relayed to `socket`. The tap exists once the plug is connected.
pub fn start_plug_in(netns: &Netns, tool: &str, socket: &Path, programs: &Programs) -> Result<Spawned> {
    let socket = socket.to_str().context("socket path is not UTF-8")?;
    let bench = programs.bench.to_str().context("bench path is not UTF-8")?;
    let mut command = netns.command(&[bench, "tool", tool, socket, "eth0"]);
    Spawned::start(&format!("the bench's {tool}"), &mut command)
}

/// Whether the installed passt serves vhost-user (`--vhost-user`, passt of 2024-11 on).
pub fn passt_has_vhost_user() -> bool {
    Command::new("passt").arg("--help").output().is_ok_and(|output| {
        let text = [output.stdout, output.stderr].concat();
        String::from_utf8_lossy(&text).contains("--vhost-user")
    })
}

/// A number for a host-side interface, and a /24 (and an IPv6 /64) of its own: the kernel
/// removes a deleted namespace's links lazily, and an old route must not shadow the next
/// one's.
fn next_subnet() -> (usize, u8) {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    (n, (n % 250) as u8)
}

/// Whether an interface of `netns` has IPv4 address `address`.
fn has_address(netns: &Netns, address: &str) -> bool {
    netns
        .command(&["ip", "-4", "-o", "addr", "show"])
        .output()
        .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).contains(&format!("inet {address}/")))
}

/// Whether `interface` of `netns` has an IPv6 address in the /64 of `prefix` and none of
/// its addresses is tentative any more (duplicate address detection is over).
fn ipv6_is_settled(netns: &Netns, interface: &str, prefix: Ipv6Addr) -> bool {
    let Ok(output) = netns.command(&["ip", "-6", "-o", "addr", "show", "dev", interface]).output() else {
        return false;
    };
    let addresses = String::from_utf8_lossy(&output.stdout);
    let in_prefix = |address: Ipv6Addr| address.segments()[..4] == prefix.segments()[..4];
    let has_address_in_prefix = addresses.lines().any(|line| {
        let mut words = line.split_whitespace().skip_while(|word| *word != "inet6").skip(1);
        let address = words.next().and_then(|word| word.split('/').next()?.parse().ok());
        address.is_some_and(in_prefix)
    });
    has_address_in_prefix && !addresses.contains("tentative")
}

/// Asks slirp4netns (through its API socket) to forward host port `port` on loopback to
/// the guest's same port.
fn slirp4netns_forward(api: &Path, port: u16) -> Result<()> {
    use std::io::{Read, Write};
    let mut socket = std::os::unix::net::UnixStream::connect(api).context("slirp4netns API socket")?;
    let request = format!(
        r#"{{"execute":"add_hostfwd","arguments":{{"proto":"tcp","host_addr":"127.0.0.1","host_port":{port},"guest_port":{port}}}}}"#
    );
    socket.write_all(request.as_bytes())?;
    socket.shutdown(std::net::Shutdown::Write)?;
    let mut reply = String::new();
    socket.read_to_string(&mut reply)?;
    if !reply.contains("return") {
        bail!("slirp4netns refused the forward: {reply}");
    }
    Ok(())
}

/// vnet's gateway options for a benchmark guest: its MTU, per-guest and per-port limits
/// as large as the whole flow table, since the bench measures what one guest can do (the
/// defaults keep one guest to an eighth of it), and a DNS upstream on a loopback port
/// nobody listens on, so that no query could reach the machine's own resolver.
fn vnet_user_options(mtu: u16) -> String {
    format!(
        "mtu={mtu},guest-max-tcp=65536,guest-max-udp=65536,guest-max-half-open=65536,port-max-flows=65536,\
         dns-upstream=127.0.0.1:{DEAD_PORT}"
    )
}

/// A loopback port nothing in the bench listens on (tcpmux: nothing serves it).
const DEAD_PORT: u16 = 1;
