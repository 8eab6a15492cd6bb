//! Scenario 8, real guests: a TCG guest (the test guest of `tests/guest/`) runs iperf3
//! against the bench host through vnet, QEMU's own user networking and passt, each on a
//! virtio-net NIC. TCG bounds all three, so the reading is relative only. Each backend
//! gives the guest its MTU by DHCP: passt 65520 by default, vnet 65520 when asked
//! (`mtu=65520`, as here), QEMU's user networking 1500 always.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::{Bench, Iperf3Server};
use crate::backend::IpVersion;
use crate::process::{wait_until, ScratchDir, Spawned, READY_DEADLINE};
use crate::report::{Better, Metric};

const SCENARIO: &str = "Real guests (QEMU TCG, virtio-net, iperf3)";
const UPLOAD: Metric =
    Metric { scenario: SCENARIO, name: "guest → host", unit: "Mbit/s", better: Better::Higher };
const DOWNLOAD: Metric =
    Metric { scenario: SCENARIO, name: "host → guest", unit: "Mbit/s", better: Better::Higher };
/// How long a TCG guest may take to boot, run both transfers and power off.
const GUEST_DEADLINE: Duration = Duration::from_secs(300);

/// How the guest's NIC reaches the host.
#[derive(Debug, Clone, Copy)]
enum GuestBackend {
    Vnet,
    QemuUser,
    Passt,
}

impl GuestBackend {
    fn name(self) -> &'static str {
        match self {
            GuestBackend::Vnet => "vnet (mtu=65520)",
            GuestBackend::QemuUser => "QEMU user",
            GuestBackend::Passt => "passt",
        }
    }
}

pub fn run(bench: &mut Bench) -> Result<()> {
    if !bench.settings.guests {
        eprintln!("   skipped (--quick)");
        return Ok(());
    }
    let image = PathBuf::from("target/test-guest");
    if !image.join("vmlinuz").exists() {
        bail!("no test guest in target/test-guest; scripts/bench builds it (tests/guest/build-guest.sh)");
    }
    let server = Iperf3Server::start(IpVersion::V4)?;
    for _ in 0..bench.settings.rounds {
        for backend in [GuestBackend::Vnet, GuestBackend::QemuUser, GuestBackend::Passt] {
            match guest_iperf3(bench, &image, backend, server.port) {
                Ok((upload, download)) => {
                    bench.record(UPLOAD, backend.name(), Ok(upload));
                    bench.record(DOWNLOAD, backend.name(), Ok(download));
                }
                Err(error) => {
                    bench.record(UPLOAD, backend.name(), Err(anyhow::anyhow!("{error:#}")));
                    bench.record(DOWNLOAD, backend.name(), Err(error));
                }
            }
        }
    }
    Ok(())
}

/// Boots a guest behind `backend` that runs iperf3 both ways against `port` on its DHCP
/// router (which each backend maps to the host's loopback); returns Mbit/s both ways.
fn guest_iperf3(bench: &Bench, image: &Path, backend: GuestBackend, port: u16) -> Result<(f64, f64)> {
    let dir = ScratchDir::create()?;
    let socket = dir.path().join("backend.sock");
    let (_backend_process, netdev) = match backend {
        GuestBackend::Vnet => {
            let listen = format!("stream:unix:{}", socket.display());
            let mut command = Command::new(&bench.programs.vnet);
            command.args(["--log-level", "warn", "run", "--user", "mtu=65520", "--listen", &listen]);
            (Some(Spawned::start("vnet", &mut command)?), stream_netdev(&socket))
        }
        GuestBackend::Passt => {
            let mut command = Command::new("passt");
            command.args(["-f", "-q", "-4", "-t", "none", "-u", "none", "-s"]).arg(&socket);
            command.stdout(Stdio::null()).stderr(Stdio::null());
            (Some(Spawned::start("passt", &mut command)?), stream_netdev(&socket))
        }
        GuestBackend::QemuUser => (None, "user,id=n0".to_owned()),
    };
    if !matches!(backend, GuestBackend::QemuUser) {
        wait_until("the backend's socket", READY_DEADLINE, || Ok(socket.exists()))?;
    }
    let seconds = bench.settings.seconds;
    let script = format!(
        "ip link set eth0 up && udhcpc -i eth0 -n -q -t 20 -T 2 >/dev/null 2>&1 || exit 1
. /run/dhcp.env
for direction in up down; do
  flag=; [ $direction = down ] && flag=-R
  n=0; until iperf3 -c $router -p {port} -t {seconds} -f m $flag > /tmp/iperf3.out 2>&1; do
    n=$((n+1)); [ $n -ge 20 ] && cat /tmp/iperf3.out && exit 1; sleep 0.5; done
  echo \"BENCH-$direction $(grep receiver /tmp/iperf3.out)\"
done"
    );
    let initrd = initrd_with_script(image, dir.path(), &script)?;
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-accel", "tcg", "-m", "256", "-smp", "1", "-no-reboot", "-nodefaults"])
        .args(["-display", "none", "-serial", "stdio", "-monitor", "none", "-kernel"])
        .arg(image.join("vmlinuz"))
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 quiet panic=-1 loglevel=3", "-netdev", &netdev])
        .args(["-device", "virtio-net-pci,netdev=n0,romfile="])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let output = Spawned::start("qemu-system-x86_64", &mut qemu)?.wait_output(GUEST_DEADLINE)?;
    let console = String::from_utf8_lossy(&output.stdout).replace('\r', "");
    let rate = |direction: &str| -> Result<f64> {
        let line = console
            .lines()
            .find(|line| line.starts_with(&format!("BENCH-{direction} ")))
            .with_context(|| format!("the guest printed no {direction} result:\n{console}"))?;
        mbits_per_second(line).with_context(|| format!("no rate in {line:?}"))
    };
    Ok((rate("up")?, rate("down")?))
}

fn stream_netdev(socket: &Path) -> String {
    format!("stream,id=n0,server=off,addr.type=unix,addr.path={}", socket.display())
}

/// The number before "Mbits/sec" in an iperf3 summary line.
fn mbits_per_second(line: &str) -> Option<f64> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let unit = words.iter().position(|word| *word == "Mbits/sec")?;
    words.get(unit.checked_sub(1)?)?.parse().ok()
}

/// The test guest's initramfs with `/test.sh` (which its /init runs) appended as a
/// second archive, made by cpio.
fn initrd_with_script(image: &Path, dir: &Path, script: &str) -> Result<PathBuf> {
    let staging = dir.join("staging");
    std::fs::create_dir_all(&staging)?;
    std::fs::write(staging.join("test.sh"), script)?;
    let mut cpio = Command::new("cpio");
    cpio.args(["-o", "-H", "newc", "--quiet"]).current_dir(&staging);
    let mut cpio = cpio.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().context("running cpio")?;
    use std::io::Write;
    cpio.stdin.take().context("cpio's stdin")?.write_all(b"test.sh\n")?;
    let archive = cpio.wait_with_output()?;
    if !archive.status.success() {
        bail!("cpio failed");
    }
    let mut initrd = std::fs::read(image.join("initramfs.cpio.gz"))?;
    initrd.extend_from_slice(&archive.stdout);
    let path = dir.join("initrd");
    std::fs::write(&path, initrd)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_receiver_rate_is_read_from_iperf3s_summary() {
        let line = "BENCH-up [  5]   0.00-4.00   sec  23.1 MBytes  48.4 Mbits/sec                  receiver";
        assert_eq!(super::mbits_per_second(line), Some(48.4));
        assert_eq!(super::mbits_per_second("BENCH-up nothing"), None);
    }
}
