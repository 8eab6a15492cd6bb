//! Real QEMU guests for tests: a Debian kernel and a busybox initramfs built by
//! `tests/guest/build-guest.sh`, one NIC of a chosen model on a chosen netdev, and a shell
//! script that runs inside and whose output comes back.
//!
//! Guests run under TCG unless a short probe boot proves KVM works on this machine. Tests
//! that boot guests hold [`GuestLock`], so however the runner schedules them, the machine
//! boots only one test's guests at a time.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a guest may take to boot on a loaded two-core machine under TCG.
pub const BOOT_DEADLINE: Duration = Duration::from_secs(180);
/// How long a guest's script may take.
pub const SCRIPT_DEADLINE: Duration = Duration::from_secs(300);
/// The line /init prints once the NIC drivers are loaded.
const READY: &str = "VNET-GUEST-READY";
/// The line /init prints after the script, with its exit code.
const EXIT_PREFIX: &str = "VNET-GUEST-EXIT ";
/// The line the script's `report` prints, with the status it reports.
const RESULT_PREFIX: &str = "VNET-RESULT ";

/// Shell functions every guest script can use.
const PRELUDE: &str = r#"
# net ADDR/PREFIX [MTU]: configure eth0.
net() { ip link set eth0 mtu "${2:-1500}" && ip addr add "$1" dev eth0 && ip link set eth0 up; }
# wait_ping ADDR [TRIES]: ping once a second until ADDR answers.
wait_ping() { n=0; until ping -c 1 -W 1 "$1" >/dev/null 2>&1; do n=$((n+1)); [ "$n" -ge "${2:-120}" ] && echo "wait_ping $1: no answer" && return 1; done; return 0; }
# report: print the previous command's status as the result, then stay up (answering
# pings) until the test stops the guest.
report() { rc=$?; printf '\nVNET-RESULT %s\n' "$rc"; exec sleep 3600; }
"#;

/// Guest script line: bring eth0 up and take a DHCP lease with busybox udhcpc (up to
/// 20 tries, quitting once configured).
pub const DHCP: &str = "ip link set eth0 up && udhcpc -i eth0 -n -q -t 20 -T 2 >/dev/null 2>&1";

/// The `-netdev` value that connects a guest to vnet's stream socket `sock`.
pub fn stream_netdev(sock: &Path) -> String {
    format!("stream,id=n0,server=off,addr.type=unix,addr.path={}", sock.display())
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The kernel and initramfs, built (or found in the cache) once per test process.
struct Image {
    kernel: PathBuf,
    initramfs: PathBuf,
}

fn image() -> &'static Image {
    static IMAGE: OnceLock<Image> = OnceLock::new();
    IMAGE.get_or_init(|| {
        super::prerequisites::require();
        let out = repo_root().join("target/test-guest");
        let status = Command::new("bash")
            .arg(repo_root().join("tests/guest/build-guest.sh"))
            .arg(&out)
            .status()
            .expect("bash runs");
        assert!(status.success(), "building the test guest failed; see the output above");
        Image { kernel: out.join("vmlinuz"), initramfs: out.join("initramfs.cpio.gz") }
    })
}

/// The directory of the test guest's kernel and initramfs, built (or found in the cache)
/// first, for tests that boot it through something else than [`GuestSpec`].
pub fn image_dir() -> PathBuf {
    image().kernel.parent().expect("the kernel is in a directory").to_path_buf()
}

/// Serialises guest-booting tests across threads and processes (flock on a file).
pub struct GuestLock {
    _file: File,
}

impl GuestLock {
    /// Waits for the machine-wide guest lock.
    pub fn acquire() -> Self {
        let dir = repo_root().join("target/test-guest");
        std::fs::create_dir_all(&dir).unwrap();
        let file = File::create(dir.join("boot.lock")).unwrap();
        // SAFETY: flock has no memory preconditions; the descriptor is valid.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(rc, 0, "flock failed");
        Self { _file: file }
    }
}

/// The accelerator: KVM only if a probe boot with it finishes, else TCG. The verdict is
/// kept in a file for the rest of this machine boot, so the probe runs once.
fn accelerator() -> &'static str {
    static ACCEL: OnceLock<&'static str> = OnceLock::new();
    ACCEL.get_or_init(|| {
        if std::env::var("VNET_TEST_ACCEL").as_deref() == Ok("tcg") || File::open("/dev/kvm").is_err() {
            return "tcg";
        }
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
        let verdict_file = repo_root().join("target/test-guest/accel");
        if let Ok(verdict) = std::fs::read_to_string(&verdict_file) {
            match verdict.split_once(' ') {
                Some((id, "kvm")) if id == boot_id.trim() => return "kvm",
                Some((id, "tcg")) if id == boot_id.trim() => return "tcg",
                _ => {}
            }
        }
        let probe =
            GuestSpec::new("kvm-probe", Nic::VirtioNet, "hubport,id=n0,hubid=0", "true").accel("kvm").boot();
        let accel = match probe.wait_exit_within(Duration::from_secs(20)) {
            Some(result) if result.code == 0 => "kvm",
            _ => "tcg",
        };
        let _ = std::fs::write(&verdict_file, format!("{} {accel}", boot_id.trim()));
        accel
    })
}

/// The NIC the guest sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nic {
    /// virtio-net-pci.
    VirtioNet,
    /// Intel e1000.
    E1000,
    /// Realtek RTL8139.
    Rtl8139,
}

impl Nic {
    fn device(self) -> &'static str {
        match self {
            Nic::VirtioNet => "virtio-net-pci",
            Nic::E1000 => "e1000",
            Nic::Rtl8139 => "rtl8139",
        }
    }
}

/// A MAC address no other guest of this test process gets by default, and never QEMU's
/// (or `vnet ns`'s) default 52:54:00:12:34:56.
fn unique_mac() -> String {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("52:54:00:fe:{:02x}:{:02x}", n >> 8, n & 0xff)
}

/// What to boot.
pub struct GuestSpec {
    name: String,
    nic: Nic,
    netdev: String,
    mac: String,
    script: String,
    accel: Option<&'static str>,
    netns: Option<String>,
    /// The vhost-user socket the NIC is served at, if any.
    vhost_user: Option<PathBuf>,
    /// The TFTP root the guest boots from over the network, if it does.
    pxe: Option<PathBuf>,
    reboot: bool,
}

impl GuestSpec {
    /// A guest called `name` with `nic` on `-netdev NETDEV` (whose id must be `n0`),
    /// running `script`.
    pub fn new(name: &str, nic: Nic, netdev: &str, script: &str) -> Self {
        Self {
            name: name.to_owned(),
            nic,
            netdev: netdev.to_owned(),
            mac: unique_mac(),
            script: script.to_owned(),
            accel: None,
            netns: None,
            vhost_user: None,
            pxe: None,
            reboot: false,
        }
    }

    /// Boots the guest over the network instead of from QEMU's `-kernel`: the NIC's iPXE
    /// ROM (QEMU's default) takes DHCP and fetches `boot.ipxe`, which this writes into
    /// the TFTP root `tftp` with the kernel and the initramfs it loads.
    pub fn pxe(mut self, tftp: &Path) -> Self {
        self.pxe = Some(tftp.to_owned());
        self
    }

    /// A guest called `name` whose virtio-net NIC vnet serves over vhost-user at `sock`,
    /// running `script`. QEMU shares the guest's memory and reconnects to `sock` a second
    /// after losing it.
    pub fn vhost_user(name: &str, sock: &Path, script: &str) -> Self {
        let mut spec = Self::new(name, Nic::VirtioNet, "vhost-user,id=n0,chardev=c0", script);
        spec.vhost_user = Some(sock.to_owned());
        spec
    }

    /// Lets the guest reboot instead of ending QEMU.
    pub fn allow_reboot(mut self) -> Self {
        self.reboot = true;
        self
    }

    /// Sets the NIC's MAC address.
    pub fn mac(mut self, mac: &str) -> Self {
        self.mac = mac.to_owned();
        self
    }

    /// Runs QEMU inside the named network namespace.
    pub fn in_netns(mut self, netns: &str) -> Self {
        self.netns = Some(netns.to_owned());
        self
    }

    fn accel(mut self, accel: &'static str) -> Self {
        self.accel = Some(accel);
        self
    }

    /// Shared guest memory and the socket's chardev, for a vhost-user NIC.
    fn vhost_user_args(&self) -> Vec<String> {
        let Some(sock) = &self.vhost_user else {
            return Vec::new();
        };
        [
            "-object",
            "memory-backend-memfd,id=mem,size=256M,share=on",
            "-numa",
            "node,memdev=mem",
            "-chardev",
            &format!("socket,id=c0,path={},reconnect=1", sock.display()),
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// Options after the NIC's MAC. QEMU 7.2 under TCG crashes starting a vhost-user
    /// device that uses MSI-X (in msix_set_vector_notifiers), so such a NIC interrupts
    /// the old way.
    fn nic_options(&self) -> &'static str {
        if self.vhost_user.is_some() {
            ",vectors=0"
        } else {
            ""
        }
    }

    /// Starts QEMU.
    pub fn boot(self) -> Guest {
        let image = image();
        let dir = tempfile::tempdir().unwrap();
        let initrd = dir.path().join("initrd");
        let mut combined = std::fs::read(&image.initramfs).unwrap();
        combined
            .extend_from_slice(&newc_archive("test.sh", format!("{PRELUDE}\n{}", self.script).as_bytes()));
        std::fs::write(&initrd, combined).unwrap();
        let accel = self.accel.unwrap_or_else(accelerator);

        let mut command = match &self.netns {
            Some(netns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", netns, "qemu-system-x86_64"]);
                c
            }
            None => Command::new("qemu-system-x86_64"),
        };
        let append = format!("console=ttyS0 quiet panic=-1 loglevel=3 vnet.hostname={}", self.name);
        command
            .args(["-accel", accel, "-m", "256", "-smp", "1", "-nodefaults"])
            .args(if self.reboot { &[][..] } else { &["-no-reboot"][..] })
            .args(["-display", "none", "-serial", "stdio", "-monitor", "none"]);
        let rom = match &self.pxe {
            Some(tftp) => {
                std::fs::copy(&image.kernel, tftp.join("vmlinuz")).unwrap();
                std::fs::copy(&initrd, tftp.join("initrd")).unwrap();
                let script = format!("#!ipxe\nkernel vmlinuz {append}\ninitrd initrd\nboot\n");
                std::fs::write(tftp.join("boot.ipxe"), script).unwrap();
                command.args(["-boot", "n"]);
                ""
            }
            None => {
                command
                    .arg("-kernel")
                    .arg(&image.kernel)
                    .arg("-initrd")
                    .arg(&initrd)
                    .args(["-append", &append]);
                ",romfile="
            }
        };
        command
            .args(self.vhost_user_args())
            .args(["-netdev", &self.netdev])
            .args([
                "-device",
                &format!("{},netdev=n0,mac={}{rom}{}", self.nic.device(), self.mac, self.nic_options()),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("qemu-system-x86_64 runs (apt install qemu-system-x86)");
        let output = Arc::new((Mutex::new(String::new()), Condvar::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let output = Arc::clone(&output);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).split(b'\n') {
                    let Ok(line) = line else { break };
                    let text = String::from_utf8_lossy(&line).replace('\r', "");
                    let (buffer, changed) = &*output;
                    let mut buffer = buffer.lock().unwrap();
                    buffer.push_str(&text);
                    buffer.push('\n');
                    changed.notify_all();
                }
                output.1.notify_all();
            });
        }
        Guest { name: self.name, child, output, _dir: dir }
    }
}

/// A newc cpio archive holding one executable file, to append to the initramfs.
fn newc_archive(name: &str, data: &[u8]) -> Vec<u8> {
    fn entry(out: &mut Vec<u8>, ino: u32, mode: u32, name: &str, data: &[u8]) {
        let name_size = name.len() + 1;
        let fields = [ino, mode, 0, 0, 1, 0, data.len() as u32, 0, 0, 0, 0, name_size as u32, 0];
        out.extend_from_slice(b"070701");
        for field in fields {
            out.extend_from_slice(format!("{field:08x}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
        out.extend_from_slice(data);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    }
    let mut out = Vec::new();
    entry(&mut out, 1, 0o100755, name, data);
    entry(&mut out, 0, 0, "TRAILER!!!", &[]);
    out
}

/// A running guest.
pub struct Guest {
    name: String,
    child: Child,
    output: Arc<(Mutex<String>, Condvar)>,
    _dir: tempfile::TempDir,
}

/// What a finished guest printed.
#[derive(Debug)]
pub struct GuestResult {
    /// The script's exit code.
    pub code: i32,
    /// Everything the guest printed.
    pub output: String,
}

impl Guest {
    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything printed so far.
    pub fn output(&self) -> String {
        self.output.0.lock().unwrap().clone()
    }

    /// Waits until the guest printed a line containing `needle`; panics with the output
    /// after `deadline`.
    pub fn wait_for(&self, needle: &str, deadline: Duration) {
        self.wait_for_count(needle, 1, deadline);
    }

    /// Waits until the guest has printed `needle` `count` times.
    pub fn wait_for_count(&self, needle: &str, count: usize, deadline: Duration) {
        let (buffer, changed) = &*self.output;
        let start = Instant::now();
        let mut text = buffer.lock().unwrap();
        while text.matches(needle).count() < count {
            let left = deadline.checked_sub(start.elapsed()).unwrap_or_else(|| {
                panic!(
                    "guest {} did not print '{needle}' {count} times within {deadline:?}; output:\n{text}",
                    self.name
                )
            });
            text = changed.wait_timeout(text, left.min(Duration::from_millis(500))).unwrap().0;
        }
    }

    /// Waits until the guest's drivers are loaded.
    pub fn wait_ready(&self) {
        self.wait_for(READY, BOOT_DEADLINE);
    }

    /// Waits for the status the script gives with `report` (or for it to exit), and
    /// leaves the guest running.
    pub fn wait_result(&self) -> GuestResult {
        let (buffer, changed) = &*self.output;
        let deadline = BOOT_DEADLINE + SCRIPT_DEADLINE;
        let start = Instant::now();
        let mut text = buffer.lock().unwrap();
        loop {
            if let Some(code) = marked_code(&text, RESULT_PREFIX).or_else(|| marked_code(&text, EXIT_PREFIX))
            {
                return GuestResult { code, output: text.clone() };
            }
            let left = deadline.checked_sub(start.elapsed()).unwrap_or_else(|| {
                panic!("guest {} reported no result within {deadline:?}; output:\n{text}", self.name)
            });
            text = changed.wait_timeout(text, left.min(Duration::from_millis(500))).unwrap().0;
        }
    }

    /// Waits for the script to finish and QEMU to exit.
    pub fn wait_exit(self) -> GuestResult {
        let name = self.name.clone();
        self.wait_exit_within(BOOT_DEADLINE + SCRIPT_DEADLINE)
            .unwrap_or_else(|| panic!("guest {name} did not finish in time"))
    }

    /// Waits at most `deadline` for the script's exit line; None if it did not come.
    fn wait_exit_within(mut self, deadline: Duration) -> Option<GuestResult> {
        let start = Instant::now();
        loop {
            let output = self.output();
            if let Some(code) = exit_code(&output) {
                return Some(GuestResult { code, output });
            }
            if start.elapsed() > deadline {
                return None;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                let output = self.output();
                return Some(GuestResult {
                    code: exit_code(&output).unwrap_or(1000 + status.code().unwrap_or(0)),
                    output,
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends `signal` to QEMU (SIGKILL, SIGSTOP, SIGCONT).
    pub fn signal(&self, signal: libc::c_int) {
        super::signal(self.pid(), signal);
    }
}

fn exit_code(output: &str) -> Option<i32> {
    marked_code(output, EXIT_PREFIX)
}

fn marked_code(output: &str, prefix: &str) -> Option<i32> {
    output.lines().find_map(|line| line.trim().strip_prefix(prefix)).and_then(|code| code.trim().parse().ok())
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asserts a guest's script succeeded, showing its output otherwise.
pub fn assert_success(result: &GuestResult) {
    assert_eq!(result.code, 0, "guest script failed; output:\n{}", result.output);
}

/// Asserts a guest's script succeeded after `count` pings were all answered.
pub fn assert_pinged(result: &GuestResult, count: u32) {
    assert_success(result);
    let summary = format!("{count} packets transmitted, {count} packets received");
    assert!(result.output.contains(&summary), "expected '{summary}' in:\n{}", result.output);
}
