//! VXLAN: bulk TCP between two namespaces on one segment that spans two "hosts", each
//! host a namespace with a leg on a veth underlay. The segment is carried by a vnet on
//! each host joined by `--attach vxlan:`, and by a kernel vxlan device in a bridge on
//! each host: the kernel's own path, the limit. One iperf3 stream each way, at an
//! underlay MTU of 1500 and 9000 (guests 50 bytes less).

use std::process::{Command, Stdio};

use anyhow::Result;

use super::{iperf3_client, Bench};
use crate::netns::Netns;
use crate::process::{wait_until, Spawned, READY_DEADLINE};
use crate::report::{Better, Metric};

const SCENARIO: &str = "VXLAN: bulk TCP between namespaces on two hosts (iperf3, one stream)";
/// What an IPv4 underlay costs a frame: outer IPv4, UDP and VXLAN headers, and the
/// inner Ethernet header.
const OVERHEAD: u16 = 50;
const VNI: &str = "42";
const IPERF_PORT: &str = "5201";

/// What carries the segment across the underlay.
#[derive(Debug, Clone, Copy)]
enum Overlay {
    Vnet,
    Kernel,
}

impl Overlay {
    fn name(self) -> &'static str {
        match self {
            Overlay::Vnet => "vnet (vxlan)",
            Overlay::Kernel => "kernel vxlan",
        }
    }
}

pub fn run(bench: &mut Bench) -> Result<()> {
    for underlay_mtu in [1500u16, 9000] {
        let forward = format!("underlay MTU {underlay_mtu}, ns A → ns B");
        let back = format!("underlay MTU {underlay_mtu}, ns B → ns A");
        let metric = |name| Metric { scenario: SCENARIO, name, unit: "Gbit/s", better: Better::Higher };
        let metrics = [metric(forward.as_str()), metric(back.as_str())];
        for _ in 0..bench.settings.rounds {
            for overlay in [Overlay::Vnet, Overlay::Kernel] {
                let segment = match TwoHosts::start(bench, overlay, underlay_mtu) {
                    Ok(segment) => segment,
                    Err(error) => {
                        for metric in metrics {
                            bench.record(metric, overlay.name(), Err(anyhow::anyhow!("{error:#}")));
                        }
                        continue;
                    }
                };
                for (metric, reverse) in [(metrics[0], false), (metrics[1], true)] {
                    let result = segment.measure(bench.settings.seconds, reverse);
                    bench.record(metric, overlay.name(), result);
                }
            }
        }
    }
    Ok(())
}

/// Two hosts on an underlay, a guest namespace on each, and the overlay between them.
struct TwoHosts {
    // Processes first: they stop before their namespaces go.
    _processes: Vec<Spawned>,
    guests: [Netns; 2],
    _hosts: [Netns; 2],
}

impl TwoHosts {
    fn start(bench: &Bench, overlay: Overlay, underlay_mtu: u16) -> Result<Self> {
        let hosts = [Netns::create("vxlan-host-a")?, Netns::create("vxlan-host-b")?];
        let guests = [Netns::create("vxlan-guest-a")?, Netns::create("vxlan-guest-b")?];
        let mtu = underlay_mtu.to_string();
        let add = ["ip", "link", "add", "u0", "mtu", &mtu, "type", "veth", "peer", "name", "u0", "mtu", &mtu];
        hosts[0].run(&[&add[..], &["netns", hosts[1].name()]].concat())?;
        let guest_mtu = (underlay_mtu - OVERHEAD).to_string();
        let mut processes = Vec::new();
        for (n, (host, guest)) in hosts.iter().zip(&guests).enumerate() {
            let (own, other) = (format!("10.250.0.{}", n + 1), format!("10.250.0.{}", 2 - n));
            host.run_lines(&format!(
                "ip addr add {own}/24 dev u0
                 ip link set u0 up"
            ))?;
            match overlay {
                Overlay::Kernel => kernel_vtep(host, guest, &own, &other, &guest_mtu)?,
                Overlay::Vnet => processes.push(vnet_vtep(bench, host, guest, &own, &other)?),
            }
            wait_until("the guest's eth0", READY_DEADLINE, || {
                Ok(guest.command(&["ip", "link", "show", "eth0"]).output()?.status.success())
            })?;
            guest.run_lines(&format!(
                "ip addr add 10.77.0.{}/24 dev eth0
                 ip link set eth0 mtu {guest_mtu}
                 ip link set eth0 up",
                n + 1
            ))?;
        }
        let mut server = guests[1].command(&["iperf3", "-s", "-p", IPERF_PORT]);
        processes.push(Spawned::start("iperf3 -s", server.stdout(Stdio::null()))?);
        wait_until("the iperf3 server", READY_DEADLINE, || {
            let output =
                guests[1].command(&["ss", "-Hltn", "sport", "=", &format!(":{IPERF_PORT}")]).output()?;
            Ok(!output.stdout.is_empty())
        })?;
        Ok(Self { _processes: processes, guests, _hosts: hosts })
    }

    /// iperf3 from guest A to guest B (`reverse`: B to A), in Gbit/s.
    fn measure(&self, seconds: u64, reverse: bool) -> Result<f64> {
        let base = ["iperf3", "-c", "10.77.0.2", "-p", IPERF_PORT];
        iperf3_client(|extra| self.guests[0].command(&[&base[..], extra].concat()), seconds, reverse)
    }
}

/// A kernel vxlan device and a bridge on `host`, with a veth to `guest` in the bridge.
fn kernel_vtep(host: &Netns, guest: &Netns, own: &str, other: &str, guest_mtu: &str) -> Result<()> {
    host.run_lines(&format!(
        "ip link add vx0 mtu {guest_mtu} type vxlan id {VNI} remote {other} local {own} dstport 4789 dev u0
         ip link add br0 type bridge
         ip link set vx0 master br0
         ip link add g0 mtu {guest_mtu} type veth peer name eth0 netns {}
         ip link set g0 master br0
         ip link set vx0 up
         ip link set g0 up
         ip link set br0 up",
        guest.name()
    ))
}

/// vnet on `host`, with `guest`'s tap and a VXLAN port to the other host.
fn vnet_vtep(bench: &Bench, host: &Netns, guest: &Netns, own: &str, other: &str) -> Result<Spawned> {
    let vnet = bench.programs.vnet.to_string_lossy().into_owned();
    let tunnel = format!("vxlan:{other},vni={VNI},local={own}");
    let tap = format!("netns:{},ifname=eth0", guest.path());
    let args = [&vnet[..], "--log-level", "warn", "run", "--no-user", "--attach", &tunnel, "--attach", &tap];
    let mut command: Command = host.command(&args);
    Spawned::start("vnet", &mut command)
}
