//! The vhost-user scenarios: vnet's vhost-user transport (`--listen vhost-user:`) driven
//! by the bench's own frontend (the vhost plug: shared memory and virtqueues set up as
//! QEMU does, a namespace's tap in place of the guest's stack), side by side with vnet's
//! stream transport and passt behind the stream plug (and passt's own `--vhost-user`
//! where the installed passt has it).
//!
//! `vhost-user`: bulk TCP both ways through each one's gateway to the host's loopback.
//! `vhost-user-switch`: 64-byte frames per second through vnet's switch alone (no
//! gateway), from a namespace on one port to a namespace on another: a UDP flood with
//! a 22-byte payload, counted by the receiving namespace's socket; two vhost-user ports
//! against two stream ports.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::{iperf3_both_ways, tool_result, Bench};
use crate::backend::{passt_has_vhost_user, start_plug_in, Backend, IpVersion, Programs};
use crate::load::{UdpReceived, UdpSent};
use crate::netns::Netns;
use crate::process::{wait_until, ScratchDir, Spawned, READY_DEADLINE};
use crate::report::{Better, Metric};

const BULK: &str = "vhost-user: bulk TCP through the gateway (iperf3, one stream)";
const SWITCH: &str = "vhost-user: switch, one namespace's port to another's (UDP flood)";
/// The UDP payload that makes a 64-byte Ethernet frame (14 + 20 + 8 + 22).
const PAYLOAD_FOR_64_BYTE_FRAMES: usize = 22;
/// The most datagrams one flood sends, whatever the time.
const MAX_DATAGRAMS: u64 = 100_000_000;
/// The port the receiving namespace counts on.
const COUNT_PORT: u16 = 40_000;
/// The two namespaces' addresses on the switch.
const SENDER_ADDRESS: &str = "10.77.0.1";
const RECEIVER_ADDRESS: &str = "10.77.0.2";

/// Bulk TCP through vnet (vhost-user), vnet (stream) and passt.
pub fn run(bench: &mut Bench) -> Result<()> {
    let mut backends = vec![Backend::VnetVhostUser, Backend::VnetStream, Backend::Passt];
    if passt_has_vhost_user() {
        backends.push(Backend::PasstVhostUser);
    } else {
        eprintln!("   the installed passt has no --vhost-user: passt runs behind the stream plug only");
    }
    iperf3_both_ways(bench, BULK, &backends, IpVersion::V4)
}

/// How the two namespaces reach vnet's switch.
#[derive(Debug, Clone, Copy)]
enum Transport {
    VhostUser,
    Stream,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::VhostUser => Backend::VnetVhostUser.name(),
            Transport::Stream => Backend::VnetStream.name(),
        }
    }
}

/// 64-byte frames per second from one namespace to another through vnet's switch.
pub fn run_switch(bench: &mut Bench) -> Result<()> {
    let frames =
        Metric { scenario: SWITCH, name: "64-byte frames", unit: "kframes/s", better: Better::Higher };
    let bits = Metric { unit: "Gbit/s", ..frames };
    let sent = Metric { name: "64-byte frames the sending namespace put out", ..frames };
    for _ in 0..bench.settings.rounds {
        for transport in [Transport::VhostUser, Transport::Stream] {
            let result = SwitchPair::start(&bench.programs, transport).and_then(|pair| pair.flood(bench));
            let name = transport.name();
            match result {
                Ok(rates) => {
                    bench.record(frames, name, Ok(rates.received / 1e3));
                    bench.record(bits, name, Ok(rates.received * 64.0 * 8.0 / 1e9));
                    bench.record(sent, name, Ok(rates.sent / 1e3));
                }
                Err(error) => {
                    for metric in [frames, bits] {
                        bench.record(metric, name, Err(anyhow::anyhow!("{error:#}")));
                    }
                    bench.record(sent, name, Err(error));
                }
            }
        }
    }
    Ok(())
}

/// Datagrams per second of sending, as sent and as counted by the receiver.
struct FloodRates {
    sent: f64,
    received: f64,
}

/// vnet with no gateway and two namespaces, each on a port of its switch.
struct SwitchPair {
    // Plugs first, then vnet: they stop before the namespaces go.
    _plugs: Vec<Spawned>,
    _vnet: Spawned,
    sender: Netns,
    receiver: Netns,
    _dir: ScratchDir,
}

impl SwitchPair {
    fn start(programs: &Programs, transport: Transport) -> Result<Self> {
        let dir = ScratchDir::create()?;
        let (listen, sockets, tool): (Vec<String>, Vec<PathBuf>, &str) = match transport {
            Transport::VhostUser => {
                let sockets = vec![dir.path().join("a.sock"), dir.path().join("b.sock")];
                let listen = sockets.iter().map(|s| format!("vhost-user:{}", s.display())).collect();
                (listen, sockets, "vhost-plug")
            }
            Transport::Stream => {
                let socket = dir.path().join("switch.sock");
                (vec![format!("stream:unix:{}", socket.display())], vec![socket.clone(), socket], "plug")
            }
        };
        let mut command = Command::new(&programs.vnet);
        command.args(["--log-level", "warn", "run", "--no-user"]);
        for listen in &listen {
            command.args(["--listen", listen]);
        }
        let vnet = Spawned::start("vnet", &mut command)?;
        wait_until("vnet's sockets", READY_DEADLINE, || Ok(sockets.iter().all(|s| s.exists())))?;
        let (sender, receiver) = (Netns::create("switch-a")?, Netns::create("switch-b")?);
        let mut plugs = Vec::new();
        for (netns, socket, address) in
            [(&sender, &sockets[0], SENDER_ADDRESS), (&receiver, &sockets[1], RECEIVER_ADDRESS)]
        {
            plugs.push(start_plug_in(netns, tool, socket, programs)?);
            wait_until("the plug's eth0", READY_DEADLINE, || {
                Ok(netns.command(&["ip", "link", "show", "eth0"]).output()?.status.success())
            })?;
            netns.run_lines(&format!(
                "ip addr add {address}/24 dev eth0
                 ip link set eth0 up"
            ))?;
        }
        Ok(Self { _plugs: plugs, _vnet: vnet, sender, receiver, _dir: dir })
    }

    /// Floods the receiver from the sender for the measured time; datagrams sent, and
    /// counted by the receiver, per second of sending.
    fn flood(&self, bench: &Bench) -> Result<FloodRates> {
        let server: SocketAddr = format!("{RECEIVER_ADDRESS}:{COUNT_PORT}").parse()?;
        let payload = PAYLOAD_FOR_64_BYTE_FRAMES.to_string();
        // Both sides learn each other's address (and the switch their ports) before the
        // count starts.
        let warm_up = ["udp-flood", &server.to_string(), &payload, "1", "1000"];
        tool_result::<UdpSent>(&mut tool(bench, &self.sender, &warm_up), Duration::from_secs(30))?;
        std::thread::sleep(Duration::from_millis(200));

        let seconds = bench.settings.seconds;
        let limit = (seconds + 20).to_string();
        let count_args = ["udp-count", &COUNT_PORT.to_string(), &payload, &limit];
        let mut counter =
            Spawned::start_piped("the UDP counter", &mut tool(bench, &self.receiver, &count_args))?;
        let lines = lines_of(&mut counter)?;
        let first = lines.recv_timeout(READY_DEADLINE).context("the UDP counter did not start")?;
        if first.trim() != "listening" {
            bail!("the UDP counter said {first:?}");
        }
        let flood =
            ["udp-flood", &server.to_string(), &payload, &seconds.to_string(), &MAX_DATAGRAMS.to_string()];
        let sent: UdpSent =
            tool_result(&mut tool(bench, &self.sender, &flood), Duration::from_secs(seconds + 30))?;
        // The counter ends once its stdin does and the datagrams stop.
        drop(counter.child_mut().stdin.take());
        let result =
            lines.recv_timeout(Duration::from_secs(seconds + 30)).context("the UDP counter's count")?;
        let received: UdpReceived = serde_json::from_str(&result).context("the UDP counter's count")?;
        if received.datagrams == 0 {
            bail!("none of {} datagrams arrived", sent.datagrams);
        }
        Ok(FloodRates {
            sent: sent.datagrams as f64 / sent.seconds,
            received: received.datagrams as f64 / sent.seconds,
        })
    }
}

/// A command running the bench's tool `args` inside `netns`.
fn tool(bench: &Bench, netns: &Netns, args: &[&str]) -> Command {
    let binary = bench.programs.bench.to_string_lossy().into_owned();
    let mut full = vec![binary.as_str(), "tool"];
    full.extend_from_slice(args);
    netns.command(&full)
}

/// The lines `process` prints, as they come.
fn lines_of(process: &mut Spawned) -> Result<mpsc::Receiver<String>> {
    let stdout = process.child_mut().stdout.take().context("the tool's stdout")?;
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    Ok(receiver)
}
