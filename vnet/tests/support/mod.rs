//! Helpers for tests that run the real `vnet` binary against real sockets: start it,
//! wait for readiness, stop it and read what it logged, and build Ethernet frames.

#![allow(dead_code)]

pub mod guest;
pub mod hostile;
pub mod prerequisites;
pub mod services;
pub mod transfer;

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Generous deadline for anything a loaded two-core machine may be slow at.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Polls `ready` until it holds or `deadline` passes; panics with `what` on timeout.
pub fn wait_until(what: &str, deadline: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `vnet` binary under test, once the machine is known to be ready for it.
pub fn vnet_binary() -> &'static str {
    prerequisites::require();
    env!("CARGO_BIN_EXE_vnet")
}

/// A command that runs the `vnet` binary under test.
pub fn vnet_command() -> Command {
    Command::new(vnet_binary())
}

/// Shell lines that wait (30 s at most) until eth0 has a usable address in fec0::/64:
/// the kernel solicits a router when the link comes up, makes an address in the
/// advertised prefix (SLAAC), and may use it once duplicate address detection is done.
pub const AWAIT_SLAAC: &str = "ip link set eth0 up; n=0
until ip -6 addr show dev eth0 | grep 'inet6 fec0::' | grep -qv tentative; do
    n=$((n+1)); [ $n -ge 300 ] && { ip -6 addr; exit 1; }; sleep 0.1
done
";

/// Where tests' gateways send DNS when a test names no server of its own: a port
/// nothing listens on, so queries fail fast and never reach the machine's resolver.
const NO_DNS_UPSTREAM: &str = "dns-upstream=127.0.0.1:9";

/// A command that runs `vnet ARGS...`, its gateway given [`NO_DNS_UPSTREAM`] if it starts
/// one that names no upstream (see [`with_own_dns_upstream`]).
pub fn vnet_with(args: &[&str]) -> Command {
    let mut command = vnet_command();
    command.args(with_own_dns_upstream(args));
    command
}

/// `args` with [`NO_DNS_UPSTREAM`] added to the gateway's options, where they start a
/// gateway (`run` or `ns` without `--no-user` or `--config`) and name no upstream.
pub fn with_own_dns_upstream(args: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
    let end = args.iter().position(|arg| arg == "--").unwrap_or(args.len());
    let head = &args[..end];
    let starts_gateway = head.iter().any(|arg| arg == "run" || arg == "ns")
        && !head.iter().any(|arg| arg == "--no-user" || arg == "--config" || arg.contains("dns-upstream="));
    if !starts_gateway {
        return args;
    }
    if let Some(value) = head.iter().position(|arg| arg == "--user").map(|flag| flag + 1).filter(|v| *v < end)
    {
        args[value] = format!("{},{NO_DNS_UPSTREAM}", args[value]);
    } else if let Some(flag) = head.iter().position(|arg| arg.starts_with("--user=")) {
        args[flag] = format!("{},{NO_DNS_UPSTREAM}", args[flag]);
    } else {
        args.splice(end..end, ["--user".to_owned(), NO_DNS_UPSTREAM.to_owned()]);
    }
    args
}

/// A running `vnet` process whose stderr goes to a file.
pub struct Vnet {
    child: Option<Child>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Vnet {
    /// Starts `vnet ARGS...` without waiting for anything.
    pub fn spawn(args: &[&str]) -> Self {
        Self::spawn_in(None, args)
    }

    /// Starts `vnet ARGS...`, inside the named network namespace if one is given.
    pub fn spawn_in(netns: Option<&NamedNamespace>, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("vnet.log");
        let mut command = match netns {
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", &netns.name, vnet_binary()]);
                command
            }
            None => vnet_command(),
        };
        let child = command
            .args(with_own_dns_upstream(args))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .expect("vnet binary runs");
        Self { child: Some(child), log, _dir: dir }
    }

    /// Starts `vnet ARGS...` and waits until `socket` accepts connections.
    pub fn listening_on(socket: &Path, args: &[&str]) -> Self {
        let vnet = Self::spawn(args);
        wait_until("vnet's socket", DEADLINE, || UnixStream::connect(socket).is_ok());
        vnet
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_for_log(&self, needle: &str) {
        wait_until(&format!("'{needle}' in vnet's log"), DEADLINE, || self.log().contains(needle));
    }

    /// Sends SIGTERM and returns the exit status and the whole log.
    pub fn stop(mut self) -> (ExitStatus, String) {
        let mut child = self.child.take().unwrap();
        signal(child.id(), libc::SIGTERM);
        let status = wait_with_deadline(&mut child, DEADLINE);
        (status, self.log())
    }

    /// Waits for vnet to exit on its own.
    pub fn wait(mut self) -> (ExitStatus, String) {
        let mut child = self.child.take().unwrap();
        let status = wait_with_deadline(&mut child, DEADLINE);
        (status, self.log())
    }
}

impl Drop for Vnet {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends `signal` to `pid`.
pub fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(pid as libc::pid_t, signal) };
}

fn wait_with_deadline(child: &mut Child, deadline: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            panic!("process {} did not exit within {deadline:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A locally administered MAC address ending in `n`.
pub fn mac(n: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0, n]
}

/// The broadcast address.
pub const BROADCAST: [u8; 6] = [0xff; 6];

/// An Ethernet frame of `len` bytes whose payload bytes are `fill`.
pub fn frame(dst: [u8; 6], src: [u8; 6], len: usize, fill: u8) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&dst);
    v.extend_from_slice(&src);
    v.extend_from_slice(&[0x88, 0xb5]);
    v.resize(len, fill);
    v
}

/// A QEMU stream peer: frames with a 4-byte big-endian length.
pub struct StreamPeer<S: Read + Write> {
    pub socket: S,
}

impl StreamPeer<UnixStream> {
    /// Connects to a unix stream socket with read timeouts set.
    pub fn connect(path: &Path) -> Self {
        let socket = UnixStream::connect(path).unwrap();
        socket.set_read_timeout(Some(DEADLINE)).unwrap();
        Self { socket }
    }
}

impl<S: Read + Write> StreamPeer<S> {
    /// Sends one frame.
    pub fn send(&mut self, frame: &[u8]) {
        let mut wire = (frame.len() as u32).to_be_bytes().to_vec();
        wire.extend_from_slice(frame);
        self.socket.write_all(&wire).unwrap();
    }

    /// Receives one frame, or None at end of stream.
    pub fn recv(&mut self) -> Option<Vec<u8>> {
        let mut prefix = [0u8; 4];
        if self.socket.read_exact(&mut prefix).is_err() {
            return None;
        }
        let mut frame = vec![0u8; u32::from_be_bytes(prefix) as usize];
        self.socket.read_exact(&mut frame).ok()?;
        Some(frame)
    }
}

/// A named network namespace (`ip netns add`) made by a test, deleted on drop.
pub struct NamedNamespace {
    pub name: String,
}

impl NamedNamespace {
    /// Creates a namespace with a unique name; only loopback is in it, and it is up.
    pub fn create() -> Self {
        prerequisites::require();
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!("vnet-test-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let netns = Self { name };
        run_ok(&mut netns.command(&["ip", "link", "set", "lo", "up"]));
        netns
    }

    /// The namespace file, for `--attach netns:`.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).args(args);
        command
    }

    /// Runs a command inside the namespace and returns its output.
    pub fn exec(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Runs a shell script inside the namespace; true and its output if it succeeded.
    pub fn shell(&self, script: &str) -> (bool, String) {
        let output = self.exec(&["sh", "-c", script]);
        let text =
            format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        (output.status.success(), text)
    }

    /// Waits for vnet to make `eth0` here (`--attach netns:`), then gives it `address`
    /// in 10.0.2.0/24 and a default route through the gateway.
    pub fn configure_eth0(&self, address: &str) {
        wait_until("the namespace's tap", DEADLINE, || {
            self.exec(&["ip", "link", "show", "eth0"]).status.success()
        });
        let (ok, output) = self.shell(&format!(
            "ip addr add {address}/24 dev eth0 && ip link set eth0 up && ip route add default via 10.0.2.2"
        ));
        assert!(ok, "{output}");
    }

    /// Runs `make` on a thread inside the namespace, so that the sockets it creates live
    /// there.
    pub fn run_inside<T: Send>(&self, make: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file = File::open(self.path()).unwrap();
                    // SAFETY: setns has no memory preconditions; it moves only this thread.
                    let rc =
                        unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
                    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                    make()
                })
                .join()
                .unwrap()
        })
    }
}

/// Writes a busybox udhcpc script into `dir` that sets the leased address (/24) and,
/// when the server gave one, the MTU, and prints `LEASE ADDRESS`, `MTU N` and
/// `BOOT NEXT-SERVER FILE`.
pub fn write_dhcp_script(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let script = dir.join("udhcpc.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\ncase \"$1\" in bound|renew) ip addr flush dev \"$interface\"; \
         ip addr add \"$ip/24\" dev \"$interface\"; \
         [ -n \"$mtu\" ] && ip link set \"$interface\" mtu \"$mtu\" && echo \"MTU $mtu\"; \
         [ -n \"$boot_file\" ] && echo \"BOOT $siaddr $boot_file\"; \
         echo \"LEASE $ip\";; esac\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

impl Drop for NamedNamespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// The runtime directory of the network named `name` (vnet runs as root in the tests).
pub fn runtime_dir(name: &str) -> PathBuf {
    PathBuf::from("/run/vnet").join(name)
}

/// The API socket of the network named `name`.
pub fn api_socket(name: &str) -> PathBuf {
    runtime_dir(name).join("api.sock")
}

/// Sends raw bytes to the API of network `name` and returns the status code and the
/// body.
pub fn raw_request(name: &str, request: &[u8]) -> (u16, String) {
    let mut stream = UnixStream::connect(api_socket(name)).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.write_all(request).unwrap();
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let status = response.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
    (status, body)
}

/// A directory the test made outside its temporary ones (such as /etc/netns/NAME),
/// removed when the test ends, pass or fail.
pub struct RemoveOnDrop(pub PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A helper process (a server the test started) killed when the test ends, pass or
/// fail.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `command` and panics with its stderr unless it succeeds.
pub fn run_ok(command: &mut Command) -> Output {
    let output = command.output().unwrap();
    assert!(output.status.success(), "{command:?}: {}", String::from_utf8_lossy(&output.stderr));
    output
}

#[test]
fn a_gateway_the_test_leaves_without_upstream_gets_one_of_its_own() {
    assert_eq!(
        with_own_dns_upstream(&["ns", "--user", "mtu=9000", "--", "sh"]),
        ["ns", "--user", "mtu=9000,dns-upstream=127.0.0.1:9", "--", "sh"]
    );
    assert_eq!(
        with_own_dns_upstream(&["run", "--listen", "stream"]),
        ["run", "--listen", "stream", "--user", NO_DNS_UPSTREAM]
    );
    for untouched in
        [&["run", "--no-user"][..], &["run", "--user", "dns-upstream=127.0.0.1:53"], &["status", "x"]]
    {
        assert_eq!(with_own_dns_upstream(untouched), untouched);
    }
}
