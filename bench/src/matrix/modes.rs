//! The matrix's rows: each way a QEMU guest's network can be carried, QEMU's own `user`
//! and `socket` backends as the reference and vnet over each of its transports, with how
//! to start it and the QEMU arguments that attach each of the two guests to it.
//!
//! Every backend and guest runs as `nobody`, so a row's privilege is what it really
//! needed; only the tap row has root make the tap first. Nothing here measures anything.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::netns::{FAR_ADDRESS, HOST_ADDRESS};
use crate::process::{run, wait_until, Spawned};
use crate::test_guest;

/// The user and group every backend and guest of the matrix runs as.
const NOBODY: u32 = 65534;
/// The segment's gateway: vnet's or slirp's, 10.0.2.2 in both.
pub const GATEWAY: &str = "10.0.2.2";
/// The host's own address on the segment in the tap row, on its tap.
pub const TAP_ADDRESS: &str = "10.0.2.200";
/// The tap the tap row makes.
const TAP_NAME: &str = "vnetmatrix0";
/// Where "Net" is: the bench's far namespace.
pub const NET_ADDRESS: &str = FAR_ADDRESS;
/// The host's address as Net sees it.
pub const HOST_LAN_ADDRESS: &str = HOST_ADDRESS;
/// The second guest's TCP echo (busybox nc running cat).
pub const ECHO_PORT: u16 = 7;
/// The second guest's sink: it counts what a connection brings and answers the count.
pub const SINK_PORT: u16 = 9;
/// The iperf3 servers' port, in the second guest, on the host and in Net.
pub const IPERF3_PORT: u16 = 5201;
/// The host's port forwarded to the second guest's echo.
pub const FORWARDED_ECHO_PORT: u16 = 10007;
/// The host's port forwarded to the second guest's sink.
pub const FORWARDED_SINK_PORT: u16 = 10009;
/// The port QEMU's socket backend listens on in the socket row.
const SOCKET_PORT: u16 = 10555;
/// The multicast group of the mcast row, on the host namespace's loopback.
pub const MCAST_GROUP: &str = "230.0.0.1:12345";
/// How long a backend may take to be ready.
const BACKEND_DEADLINE: Duration = Duration::from_secs(30);

/// One of the two guests of a row.
#[derive(Debug, Clone, Copy)]
pub struct GuestPlan {
    /// Its name, also its host name.
    pub name: &'static str,
    /// Its MAC address.
    pub mac: &'static str,
    /// The address it should have: vnet's DHCP gives it (`dhcp-host=`), elsewhere the
    /// guest takes it itself.
    pub address: &'static str,
}

/// VM1, which starts every measurement a guest starts.
pub const FIRST: GuestPlan = GuestPlan { name: "vm1", mac: "52:54:00:00:00:15", address: "10.0.2.15" };
/// VM2, which serves iperf3 and the echo.
pub const SECOND: GuestPlan = GuestPlan { name: "vm2", mac: "52:54:00:00:00:16", address: "10.0.2.16" };

/// How the host reaches VM2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostPath {
    /// Through a port forward on the host's addresses.
    Forwarded,
    /// At VM2's own address, over the host's tap.
    Direct,
}

/// A row of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    QemuUser,
    QemuSocket,
    Stream,
    Dgram,
    Mcast,
    Vde,
    VhostUser,
    Tap,
}

impl Mode {
    /// Every row, in the table's order.
    pub const ALL: [Mode; 8] = [
        Mode::QemuUser,
        Mode::QemuSocket,
        Mode::Stream,
        Mode::Dgram,
        Mode::Mcast,
        Mode::Vde,
        Mode::VhostUser,
        Mode::Tap,
    ];

    /// The row's name.
    pub fn label(self) -> &'static str {
        match self {
            Mode::QemuUser => "QEMU user (slirp)",
            Mode::QemuSocket => "QEMU socket",
            Mode::Stream => "vnet stream",
            Mode::Dgram => "vnet dgram",
            Mode::Mcast => "vnet mcast",
            Mode::Vde => "vnet VDE",
            Mode::VhostUser => "vnet vhost-user",
            Mode::Tap => "vnet + host tap",
        }
    }

    /// Whether vnet carries the row.
    pub fn by_vnet(self) -> bool {
        !matches!(self, Mode::QemuUser | Mode::QemuSocket)
    }

    /// The short name `--only` takes.
    pub fn key(self) -> &'static str {
        match self {
            Mode::QemuUser => "user",
            Mode::QemuSocket => "socket",
            Mode::Stream => "stream",
            Mode::Dgram => "dgram",
            Mode::Mcast => "mcast",
            Mode::Vde => "vde",
            Mode::VhostUser => "vhost-user",
            Mode::Tap => "tap",
        }
    }

    /// The guests' QEMU backend, and vnet's side of it.
    pub fn attachment(self) -> &'static str {
        match self {
            Mode::QemuUser => "-netdev user (one slirp per guest)",
            Mode::QemuSocket => "-netdev socket,listen= / connect=",
            Mode::Stream => "-netdev stream → --listen stream:unix:",
            Mode::Dgram => "-netdev dgram → --listen dgram:unix:",
            Mode::Mcast => "-netdev socket,mcast= → --attach mcast:",
            Mode::Vde => "-netdev vde → --listen vde:",
            Mode::VhostUser => "-netdev vhost-user → --listen vhost-user:",
            Mode::Tap => "-netdev stream, --attach tap:",
        }
    }

    /// What the row needed beyond an ordinary user.
    pub fn privilege(self) -> &'static str {
        match self {
            Mode::Tap => "root once, to make the tap (ip tuntap add … user nobody)",
            _ => "none",
        }
    }

    /// The guests' NICs: virtio-net and, where the backend is not vhost-user, an
    /// RTL8139, whose link is up at once (an e1000's first DHCP request is lost and
    /// costs every row three seconds).
    pub fn nics(self) -> [&'static str; 2] {
        match self {
            Mode::VhostUser => ["virtio-net-pci", "virtio-net-pci"],
            _ => ["virtio-net-pci", "rtl8139"],
        }
    }

    /// Whether a DHCP server is on the guests' segment.
    pub fn offers_dhcp(self) -> bool {
        self != Mode::QemuSocket
    }

    /// What the guests call the host.
    pub fn host_address(self) -> &'static str {
        match self {
            Mode::Tap => TAP_ADDRESS,
            _ => GATEWAY,
        }
    }

    /// How the host reaches VM2.
    pub fn host_path(self) -> HostPath {
        match self {
            Mode::Tap => HostPath::Direct,
            _ => HostPath::Forwarded,
        }
    }
}

/// What a row's backend needs from the run.
pub struct Setup<'a> {
    /// A directory `nobody` may write in.
    pub dir: &'a Path,
    /// The vnet binary, where `nobody` may run it.
    pub vnet: &'a Path,
}

/// A row's backend, running; stopped on drop (vnet before its tap).
pub struct Backend {
    _vnet: Option<Spawned>,
    _tap: Option<TapDevice>,
    /// The QEMU arguments that attach each guest.
    netdevs: [Vec<String>; 2],
    /// A port VM1's QEMU listens on, which VM2's QEMU connects to.
    pub second_waits_for_port: Option<u16>,
}

/// The names, in the run's directory, of the sockets vnet's rows listen on.
const STREAM_SOCKET: &str = "stream.sock";
const DGRAM_SOCKET: &str = "dgram.sock";
const VDE_DIR: &str = "vde";

/// The vhost-user socket vnet serves `guest`'s NIC at.
fn vhost_user_socket(dir: &Path, guest: GuestPlan) -> PathBuf {
    dir.join(format!("{}.vhost.sock", guest.name))
}

impl Backend {
    /// Starts `mode`'s backend: vnet (with the host's tap first, in the tap row), or
    /// nothing for QEMU's own.
    pub fn start(mode: Mode, setup: &Setup<'_>) -> Result<Self> {
        let tap = if mode == Mode::Tap { Some(TapDevice::create()?) } else { None };
        let vnet = match vnet_transports(mode, setup.dir) {
            Some(args) => Some(start_vnet(setup, mode, &args)?),
            None => None,
        };
        Ok(Backend {
            _vnet: vnet,
            _tap: tap,
            netdevs: guest_netdevs(mode, setup.dir),
            second_waits_for_port: (mode == Mode::QemuSocket).then_some(SOCKET_PORT),
        })
    }

    /// QEMU's arguments that give guest `index` (0 for VM1) its NIC on this backend.
    pub fn guest_args(&self, mode: Mode, index: usize) -> Vec<String> {
        let guest = [FIRST, SECOND][index];
        // QEMU 7.2 under TCG crashes starting a vhost-user device that uses MSI-X.
        let vectors = if mode == Mode::VhostUser { ",vectors=0" } else { "" };
        let mut args = self.netdevs[index].clone();
        args.push("-device".to_owned());
        args.push(format!("{},netdev=n0,mac={},romfile={vectors}", mode.nics()[index], guest.mac));
        args
    }
}

/// vnet's `--listen` and `--attach` options for `mode`; None for QEMU's own rows.
fn vnet_transports(mode: Mode, dir: &Path) -> Option<Vec<String>> {
    let option = |flag: &str, spec: String| [flag.to_owned(), spec];
    let stream = option("--listen", format!("stream:unix:{}", dir.join(STREAM_SOCKET).display()));
    let args: Vec<[String; 2]> = match mode {
        Mode::QemuUser | Mode::QemuSocket => return None,
        Mode::Stream => vec![stream],
        Mode::Tap => vec![stream, option("--attach", format!("tap:{TAP_NAME}"))],
        Mode::Dgram => vec![option("--listen", format!("dgram:unix:{}", dir.join(DGRAM_SOCKET).display()))],
        Mode::Mcast => vec![option("--attach", format!("mcast:{MCAST_GROUP},localaddr=127.0.0.1"))],
        Mode::Vde => vec![option("--listen", format!("vde:{}", dir.join(VDE_DIR).display()))],
        Mode::VhostUser => [FIRST, SECOND]
            .map(|guest| {
                option("--listen", format!("vhost-user:{}", vhost_user_socket(dir, guest).display()))
            })
            .to_vec(),
    };
    Some(args.concat())
}

/// The QEMU arguments up to the NIC that attach VM1 and VM2 to `mode`'s backend.
fn guest_netdevs(mode: Mode, dir: &Path) -> [Vec<String>; 2] {
    let netdev = |value: String| vec!["-netdev".to_owned(), value];
    let both = |value: String| [netdev(value.clone()), netdev(value)];
    match mode {
        Mode::QemuUser => [
            netdev("user,id=n0".to_owned()),
            netdev(format!(
                "user,id=n0,hostfwd=tcp::{FORWARDED_ECHO_PORT}-{second}:{ECHO_PORT},\
                 hostfwd=tcp::{FORWARDED_SINK_PORT}-{second}:{SINK_PORT}",
                second = SECOND.address
            )),
        ],
        Mode::QemuSocket => [
            netdev(format!("socket,id=n0,listen=127.0.0.1:{SOCKET_PORT}")),
            netdev(format!("socket,id=n0,connect=127.0.0.1:{SOCKET_PORT}")),
        ],
        Mode::Stream | Mode::Tap => both(test_guest::stream_netdev(&dir.join(STREAM_SOCKET))),
        Mode::Dgram => [FIRST, SECOND].map(|guest| {
            netdev(format!(
                "dgram,id=n0,local.type=unix,local.path={},remote.type=unix,remote.path={}",
                dir.join(format!("{}.dgram", guest.name)).display(),
                dir.join(DGRAM_SOCKET).display()
            ))
        }),
        Mode::Mcast => both(format!("socket,id=n0,mcast={MCAST_GROUP},localaddr=127.0.0.1")),
        Mode::Vde => both(format!("vde,id=n0,sock={}", dir.join(VDE_DIR).display())),
        Mode::VhostUser => [FIRST, SECOND].map(|guest| {
            [
                "-object",
                "memory-backend-memfd,id=mem,size=256M,share=on",
                "-numa",
                "node,memdev=mem",
                "-chardev",
                &format!("socket,id=c0,path={},reconnect=1", vhost_user_socket(dir, guest).display()),
                "-netdev",
                "vhost-user,id=n0,chardev=c0",
            ]
            .map(str::to_owned)
            .to_vec()
        }),
    }
}

/// `command`, to run as `nobody`.
pub fn as_nobody(mut command: Command) -> Command {
    std::os::unix::process::CommandExt::uid(&mut command, NOBODY);
    std::os::unix::process::CommandExt::gid(&mut command, NOBODY);
    command
}

/// Starts vnet as `nobody` with `args` after `run`, its gateway giving VM1 and VM2 their
/// addresses and forwarding the host's ports to VM2; waits for its API socket.
fn start_vnet(setup: &Setup<'_>, mode: Mode, args: &[String]) -> Result<Spawned> {
    let second = SECOND.address;
    let user = format!(
        "dns-upstream=127.0.0.1:9,dhcp-host={}={},dhcp-host={}={second},\
         hostfwd=tcp::{FORWARDED_ECHO_PORT}-{second}:{ECHO_PORT},\
         hostfwd=tcp::{FORWARDED_SINK_PORT}-{second}:{SINK_PORT}",
        FIRST.mac, FIRST.address, SECOND.mac,
    );
    let runtime = setup.dir.join("run");
    std::fs::create_dir_all(&runtime)?;
    std::fs::set_permissions(&runtime, std::os::unix::fs::PermissionsExt::from_mode(0o777))?;
    let name = format!("matrix-{}", mode.key());
    let log = setup.dir.join(format!("{name}.log"));
    let mut command = as_nobody(Command::new(setup.vnet));
    command
        .current_dir(setup.dir)
        .env("XDG_RUNTIME_DIR", &runtime)
        .args(["--log-level", "warn", "run", "--name", &name, "--user", &user])
        .args(args)
        .stdout(File::create(&log)?)
        .stderr(File::create(&log)?);
    let mut vnet = Spawned::start("vnet", &mut command)?;
    let api = runtime.join("vnet").join(&name).join("api.sock");
    wait_until("vnet's API socket", BACKEND_DEADLINE, || {
        if let Some(status) = vnet.child_mut().try_wait()? {
            anyhow::bail!("vnet exited ({status}): {}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        Ok(api.exists())
    })?;
    Ok(vnet)
}

/// The tap row's tap: made by root for `nobody`, with the host's address on the segment;
/// deleted on drop.
struct TapDevice;

impl TapDevice {
    fn create() -> Result<Self> {
        let ip = |args: &[&str]| run(Command::new("ip").args(args)).map(drop);
        ip(&["tuntap", "add", TAP_NAME, "mode", "tap", "user", "65534", "group", "65534"])
            .context("making the tap row's tap")?;
        let tap = TapDevice;
        ip(&["addr", "add", &format!("{TAP_ADDRESS}/24"), "dev", TAP_NAME])?;
        ip(&["link", "set", TAP_NAME, "up"])?;
        Ok(tap)
    }
}

impl Drop for TapDevice {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", TAP_NAME]).output();
    }
}

/// Whether something listens on TCP `port` (IPv4 or IPv6) in the calling thread's
/// namespace.
pub fn tcp_listening(port: u16) -> bool {
    let local = format!(":{port:04X}");
    ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"].iter().any(|table| {
        let Ok(table) = std::fs::read_to_string(table) else { return false };
        table.lines().skip(1).any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(1).is_some_and(|address| address.ends_with(&local)) && fields.get(3) == Some(&"0A")
        })
    })
}
