//! Taps inside network namespaces: opening one in a namespace that exists
//! (`--attach netns:PATH|PID`) and starting a command in a new namespace that has one
//! (`vnet ns -- CMD`).
//!
//! Entering a namespace is done by a short-lived child process, never by vnet's own
//! thread: the child joins the namespace (and its owning user namespace when vnet is not
//! privileged there), creates the tap, brings it up and passes the descriptor back over a
//! socket. vnet itself never changes namespace. What travels over the tap is
//! [`crate::tap`]'s business.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command};

use nix::mount::{mount, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::{getpid, getppid, Gid, Pid, Uid};

use vnet_runtime::sys;

use crate::{NamespaceRef, TransportError};

/// The name of the tap vnet creates in a namespace unless told otherwise.
pub const DEFAULT_IFNAME: &str = "eth0";

/// Checks that `name` can name a network interface, with a message saying why not.
pub fn validate_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > sys::MAX_IFNAME_LEN {
        return Err(format!("interface name '{name}' must be 1 to {} bytes long", sys::MAX_IFNAME_LEN));
    }
    if name.contains(['/', ' ', ':', '\0']) {
        return Err(format!("interface name '{name}' may not contain '/', ':', spaces or NUL"));
    }
    Ok(())
}

/// How long the child may take to report; it only makes a few system calls.
const HELPER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The step of namespace setup that failed, as the child reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Step {
    Done = 0,
    EnterNetworkNamespace = 1,
    CreateNamespace = 2,
    MapUser = 3,
    CreateTap = 4,
    LinkUp = 5,
    Configure = 6,
    OpenTunDevice = 7,
}

impl Step {
    fn from_byte(byte: u8) -> Option<Self> {
        [
            Step::Done,
            Step::EnterNetworkNamespace,
            Step::CreateNamespace,
            Step::MapUser,
            Step::CreateTap,
            Step::LinkUp,
            Step::Configure,
            Step::OpenTunDevice,
        ]
        .into_iter()
        .find(|step| *step as u8 == byte)
    }
}

/// Runs `step`'s work and tags its error with the step.
fn at<T>(step: Step, result: Result<T, impl Into<io::Error>>) -> Result<T, (Step, io::Error)> {
    result.map_err(|e| (step, e.into()))
}

/// Reports the outcome to the parent: the tap on success, the failing step otherwise.
fn report(socket: &UnixStream, outcome: &Result<OwnedFd, (Step, io::Error)>) -> io::Result<()> {
    match outcome {
        Ok(tap) => sys::send_with_fd(socket.as_fd(), &[Step::Done as u8, 0, 0, 0, 0], Some(tap.as_fd())),
        Err((step, error)) => {
            let errno = error.raw_os_error().unwrap_or(libc::EIO);
            let mut payload = vec![*step as u8];
            payload.extend_from_slice(&errno.to_le_bytes());
            sys::send_with_fd(socket.as_fd(), &payload, None)
        }
    }
}

/// Creates the tap `ifname` in the current namespace, with MAC address `mac` if given,
/// and brings it (and loopback) up.
fn create_tap_here(ifname: &str, mac: Option<[u8; 6]>) -> Result<OwnedFd, (Step, io::Error)> {
    let tap = at(Step::OpenTunDevice, sys::open_tun_device())?;
    at(Step::CreateTap, sys::create_tap(&tap, ifname))?;
    if let Some(mac) = mac {
        at(Step::Configure, sys::set_mac(ifname, mac))?;
    }
    at(Step::LinkUp, sys::set_link_up(ifname))?;
    at(Step::LinkUp, sys::set_link_up("lo"))?;
    Ok(tap)
}

/// Waits for the child's report and turns it into the tap or an error that says what to
/// fix. `what` names the namespace for messages.
fn receive_tap(socket: &UnixStream, what: &str, ifname: &str) -> Result<OwnedFd, TransportError> {
    socket
        .set_read_timeout(Some(HELPER_TIMEOUT))
        .map_err(|e| TransportError::io("cannot set a timeout on the helper socket", e))?;
    let (payload, fd) = sys::receive_with_fd::<5>(socket.as_fd())
        .map_err(|e| TransportError::io(format!("no answer from the helper that sets up {what}"), e))?;
    let step = payload.first().and_then(|b| Step::from_byte(*b));
    let errno = payload.get(1..5).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]])).unwrap_or(libc::EIO);
    match (step, fd) {
        (Some(Step::Done), Some(fd)) => Ok(fd),
        (Some(step), _) => Err(explain(step, io::Error::from_raw_os_error(errno), what, ifname)),
        (None, _) => {
            Err(TransportError::Namespace(format!("the helper that sets up {what} exited without a report")))
        }
    }
}

/// The error for a [`sys::TUN_DEVICE`] that cannot be opened, saying how to fix it.
pub(crate) fn tun_device_error(error: io::Error) -> TransportError {
    let device = sys::TUN_DEVICE;
    match error.raw_os_error() {
        Some(libc::EACCES | libc::EPERM) => {
            let mode = std::fs::metadata(device)
                .map(|meta| format!("{:o}", std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777))
                .unwrap_or_else(|_| "unknown".to_owned());
            TransportError::TunDevice(format!(
                "cannot open {device}: permission denied (its mode is {mode}); make it 0666 as Debian's udev rules do (`chmod 0666 {device}` as root; opening it grants nothing by itself), or run vnet as root"
            ))
        }
        Some(libc::ENOENT | libc::ENODEV | libc::ENXIO) => TransportError::TunDevice(format!(
            "{device} is missing; load the tun module (`modprobe tun`) or create the device (`mknod {device} c 10 200`)"
        )),
        _ => TransportError::io(format!("cannot open {device}"), error),
    }
}

fn explain(step: Step, error: io::Error, what: &str, ifname: &str) -> TransportError {
    let denied = error.raw_os_error() == Some(libc::EPERM) || error.raw_os_error() == Some(libc::EACCES);
    let message = match step {
        Step::EnterNetworkNamespace if denied => {
            format!("no permission to enter {what}; run vnet as root or as the user that created the namespace")
        }
        Step::CreateNamespace if denied => format!(
            "cannot create {what}: {error}; run as root or allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1)"
        ),
        Step::CreateTap if matches!(error.raw_os_error(), Some(libc::EBUSY) | Some(libc::EINVAL)) => format!(
            "an interface named {ifname} already exists in {what}; choose another name (netns:...,ifname=NAME or vnet ns --ifname NAME)"
        ),
        Step::OpenTunDevice => return tun_device_error(error),
        _ => format!("cannot set up a tap in {what} ({step:?}): {error}"),
    };
    TransportError::Namespace(message)
}

/// Opens the namespace file of `target`.
fn open_namespace(target: &NamespaceRef) -> Result<(File, String), TransportError> {
    let (path, what) = match target {
        NamespaceRef::Path(path) => (path.clone(), format!("network namespace {}", path.display())),
        NamespaceRef::Pid(pid) => {
            (PathBuf::from(format!("/proc/{pid}/ns/net")), format!("the network namespace of process {pid}"))
        }
    };
    match File::open(&path) {
        Ok(file) => Ok((file, what)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(TransportError::Namespace(format!(
            "{what} does not exist ({} not found); give a path such as /run/netns/NAME or the PID of a running process",
            path.display()
        ))),
        Err(e) => Err(TransportError::Namespace(format!("cannot open {what}: {e}; run vnet as the namespace's owner or as root"))),
    }
}

/// Creates a tap named `ifname` inside the network namespace `target`, brings it up and
/// returns its non-blocking descriptor. Call it before any thread is started.
pub fn open_tap_in(target: &NamespaceRef, ifname: &str) -> Result<OwnedFd, TransportError> {
    let (namespace, what) = open_namespace(target)?;
    let owner = sys::owning_user_namespace(namespace.as_fd()).ok();
    let (ours, theirs) =
        UnixStream::pair().map_err(|e| TransportError::io("cannot create a socket pair", e))?;
    let child = sys::fork_child(move || {
        let outcome = enter(&namespace, owner.as_ref()).and_then(|()| create_tap_here(ifname, None));
        match report(&theirs, &outcome) {
            Ok(()) if outcome.is_ok() => 0,
            _ => 1,
        }
    })
    .map_err(|e| TransportError::io("cannot fork the namespace helper", e))?;
    let tap = receive_tap(&ours, &what, ifname);
    if tap.is_err() {
        let _ = kill(Pid::from_raw(child), Signal::SIGKILL);
    }
    let _ = waitpid(Pid::from_raw(child), None);
    tap
}

/// Joins `namespace`. If vnet has no privilege over it as it is, joins the user
/// namespace that owns it first; when that is impossible too (it is vnet's own user
/// namespace or an ancestor), the original permission error stands.
fn enter(namespace: &File, owner: Option<&OwnedFd>) -> Result<(), (Step, io::Error)> {
    let denied = match setns(namespace.as_fd(), CloneFlags::CLONE_NEWNET) {
        Ok(()) => return Ok(()),
        Err(nix::errno::Errno::EPERM) => nix::errno::Errno::EPERM,
        Err(e) => return Err((Step::EnterNetworkNamespace, e.into())),
    };
    let joined_owner = owner.is_some_and(|owner| setns(owner.as_fd(), CloneFlags::CLONE_NEWUSER).is_ok());
    if !joined_owner {
        return Err((Step::EnterNetworkNamespace, denied.into()));
    }
    at(Step::EnterNetworkNamespace, setns(namespace.as_fd(), CloneFlags::CLONE_NEWNET))
}

/// The IPv4 part of an [`InterfaceSetup`].
#[derive(Debug, Clone, Copy)]
pub struct Ipv4Setup {
    /// The interface's address.
    pub address: Ipv4Addr,
    /// The prefix length of its network.
    pub prefix_len: u8,
    /// The default gateway.
    pub router: Ipv4Addr,
}

/// How the new namespace's interface is configured, as a DHCP client would configure it
/// from the gateway: IPv4 address and default route (IPv6 the kernel configures itself
/// from the gateway's router advertisements), MTU and resolv.conf.
#[derive(Debug, Clone)]
pub struct InterfaceSetup {
    /// The tap's MAC address.
    pub mac: [u8; 6],
    /// Its IPv4 address and route, unless the gateway serves no IPv4.
    pub ipv4: Option<Ipv4Setup>,
    /// The MTU.
    pub mtu: u16,
    /// A file to bind over /etc/resolv.conf inside the namespace (in a mount namespace
    /// of its own).
    pub resolv_conf: PathBuf,
}

impl InterfaceSetup {
    /// Applies the setup to interface `ifname` in the calling (child) process.
    fn apply(&self, ifname: &str) -> Result<(), (Step, io::Error)> {
        at(Step::Configure, sys::set_mtu(ifname, self.mtu))?;
        if let Some(ipv4) = self.ipv4 {
            at(Step::Configure, sys::set_ipv4_address(ifname, ipv4.address, ipv4.prefix_len))?;
            at(Step::Configure, sys::add_default_route(ipv4.router))?;
        }
        at(Step::Configure, unshare(CloneFlags::CLONE_NEWNS))?;
        let none: Option<&str> = None;
        at(Step::Configure, mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none))?;
        at(Step::Configure, mount(Some(&self.resolv_conf), "/etc/resolv.conf", none, MsFlags::MS_BIND, none))
    }
}

/// A command started in a network namespace of its own, and the tap that is its only
/// interface besides loopback.
pub struct NamespacedCommand {
    /// The running command.
    pub child: Child,
    /// The tap's descriptor, to relay with [`crate::tap::TapPort`].
    pub tap: OwnedFd,
}

/// Starts `program` with `args` in a new network namespace (and a new user namespace
/// when vnet is not root, mapping the caller to root inside) with a tap named `ifname`
/// that is up, and configured by `setup` if given. The command starts with no signal
/// blocked, and is sent SIGTERM if vnet dies. Call it before any thread is started.
pub fn spawn_in_new_namespace(
    program: &OsString,
    args: &[OsString],
    ifname: &str,
    setup: Option<InterfaceSetup>,
) -> Result<NamespacedCommand, TransportError> {
    let (ours, theirs) =
        UnixStream::pair().map_err(|e| TransportError::io("cannot create a socket pair", e))?;
    let uid = Uid::effective();
    let gid = Gid::effective();
    let vnet = getpid();
    let ifname_owned = ifname.to_owned();
    let mut command = Command::new(program);
    command.args(args);
    sys::before_exec(&mut command, move || {
        let outcome = isolate(uid, gid).and_then(|()| {
            let tap = create_tap_here(&ifname_owned, setup.as_ref().map(|setup| setup.mac))?;
            if let Some(setup) = &setup {
                setup.apply(&ifname_owned)?;
            }
            Ok(tap)
        });
        report(&theirs, &outcome)?;
        outcome.map_err(|(_, error)| error)?;
        // vnet blocks the signals it reads through a signalfd, and a blocked mask
        // survives exec: the command must start with none blocked, or the SIGTERM vnet
        // passes on would wait forever.
        nix::sys::signal::SigSet::empty().thread_set_mask()?;
        nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)?;
        if getppid() != vnet {
            return Err(io::Error::other("vnet exited while starting the command"));
        }
        Ok(())
    });
    let what = "a new network namespace";
    let spawned = command.spawn();
    // The child's end of the socket lives in the pre-exec hook: dropping the command
    // closes it here, so a child that dies before reporting reads as end of stream.
    drop(command);
    match spawned {
        Ok(child) => {
            let tap = receive_tap(&ours, what, ifname)?;
            Ok(NamespacedCommand { child, tap })
        }
        Err(spawn_error) => Err(match receive_tap(&ours, what, ifname) {
            Err(setup_error) => setup_error,
            Ok(_) => TransportError::Namespace(format!(
                "cannot run {program:?}: {spawn_error}; check the command name and PATH"
            )),
        }),
    }
}

/// Moves the calling (child) process into new network and, unless root, user namespaces.
fn isolate(uid: Uid, gid: Gid) -> Result<(), (Step, io::Error)> {
    if uid.is_root() {
        return at(Step::CreateNamespace, unshare(CloneFlags::CLONE_NEWNET));
    }
    at(Step::CreateNamespace, unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNET))?;
    at(Step::MapUser, std::fs::write("/proc/self/setgroups", "deny"))?;
    at(Step::MapUser, std::fs::write("/proc/self/uid_map", format!("0 {uid} 1")))?;
    at(Step::MapUser, std::fs::write("/proc/self/gid_map", format!("0 {gid} 1")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tun_device_vnet_may_not_open_is_named_with_its_mode_and_the_fix() {
        let message = tun_device_error(io::Error::from_raw_os_error(libc::EACCES)).to_string();
        assert!(message.contains("/dev/net/tun"), "{message}");
        assert!(message.contains("its mode is "), "{message}");
        assert!(message.contains("chmod 0666 /dev/net/tun"), "{message}");
        let missing = tun_device_error(io::Error::from_raw_os_error(libc::ENOENT)).to_string();
        assert!(missing.contains("modprobe tun"), "{missing}");
    }
}
