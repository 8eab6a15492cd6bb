//! Scenario 8, real guests: a TCG guest (the test guest of `tests/guest/`) runs iperf3
//! against the bench host through vnet, QEMU's own user networking and passt, each on a
//! virtio-net NIC. TCG bounds all three, so the reading is relative only. Each backend
//! gives the guest its MTU by DHCP: passt 65520 by default, vnet 65520 when asked
//! (`mtu=65520`, as here), QEMU's user networking 1500 always.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

use super::{Bench, Iperf3Server};
use crate::backend::IpVersion;
use crate::process::{wait_until, ScratchDir, Spawned, READY_DEADLINE};
use crate::report::{Better, Metric};
use crate::test_guest;

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
    let image = test_guest::image()?;
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
            (Some(Spawned::start("vnet", &mut command)?), test_guest::stream_netdev(&socket))
        }
        GuestBackend::Passt => {
            let mut command = Command::new("passt");
            command.args(["-f", "-q", "-4", "-t", "none", "-u", "none", "-s"]).arg(&socket);
            command.stdout(Stdio::null()).stderr(Stdio::null());
            (Some(Spawned::start("passt", &mut command)?), test_guest::stream_netdev(&socket))
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
    let initrd = test_guest::initrd_with_script(image, dir.path(), &script)?;
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(test_guest::boot_args(&image.join("vmlinuz"), &initrd, "bench"))
        .args(["-netdev", &netdev])
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
        test_guest::mbits_per_second(line).with_context(|| format!("no rate in {line:?}"))
    };
    Ok((rate("up")?, rate("down")?))
}
