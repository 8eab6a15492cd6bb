//! One hostile port against a second guest: each test attacks vnet the way issue 12
//! found it could be attacked (flows, descriptors, shared limits, DHCP, spoofing, VLAN
//! hopping, the MAC table, memory, floods, datagram peers), then checks that the other
//! guest still gets DHCP, DNS, ping, a new TCP connection, UDP, and at least half of the
//! iperf3 throughput it had before, and that the API still answers.
//!
//! The victim is a network namespace on a tap port (`--attach netns:`); the attacker is a
//! raw stream port the test writes hand-built frames to. vnet runs inside a "world"
//! namespace whose loopback holds every host service (a DNS upstream, iperf3, TCP and
//! UDP echo servers), so no traffic leaves the namespaces the test creates.

mod support;

use std::io::Write;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use support::guest::GuestLock;
use support::hostile::*;
use support::services::{answer_dns, echo_one, greet_one, tcp_service, udp_service, ServiceThreads};
use support::*;

/// The attacker's MAC and address.
const ATTACKER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x66];
const ATTACKER_IP: [u8; 4] = [10, 0, 2, 200];
/// Host services on the world's loopback, reached by guests at the gateway's address.
const SINK_PORT: u16 = 7000;
const UDP_TARGET_PORT: u16 = 7001;
const HELLO_PORT: u16 = 7002;
const UDP_ECHO_PORT: u16 = 7003;
const IPERF_PORT: u16 = 5201;

/// The world's host services, each on a thread that stops when this is dropped.
struct Services {
    _threads: ServiceThreads,
    _sink: TcpListener,
}

impl Services {
    fn start(world: &NamedNamespace) -> Self {
        let (dns, hello, echo, sink) = world.run_inside(|| {
            let dns = udp_service("127.0.0.1:53");
            let hello = tcp_service(&format!("127.0.0.1:{HELLO_PORT}"));
            let echo = udp_service(&format!("127.0.0.1:{UDP_ECHO_PORT}"));
            // A listener that never accepts: what a SYN flood's connections land on.
            let sink = TcpListener::bind(("127.0.0.1", SINK_PORT)).unwrap();
            // SAFETY: listen on a valid listening socket only changes its backlog.
            unsafe { libc::listen(sink.as_raw_fd(), 4096) };
            (dns, hello, echo, sink)
        });
        let mut threads = ServiceThreads::default();
        threads.serve(move || answer_dns(&dns));
        threads.serve(move || echo_one(&echo));
        threads.serve(move || greet_one(&hello));
        Self { _threads: threads, _sink: sink }
    }
}

/// The guest under attack: a namespace on a tap port, configured by DHCP.
struct Victim {
    netns: NamedNamespace,
    dhcp_script: PathBuf,
}

impl Victim {
    fn exec(&self, script: &str) -> (bool, String) {
        self.netns.shell(script)
    }

    /// Takes a DHCP lease and configures it; returns the address. udhcpc gives up after
    /// three unanswered requests; on a machine busy with another test's flood that can
    /// be a few seconds, so it gets three tries.
    fn dhcp(&self) -> String {
        let command = format!(
            "ip link set eth0 up && busybox udhcpc -i eth0 -n -q -t 10 -T 3 -s {}",
            self.dhcp_script.display()
        );
        let mut tries = Vec::new();
        let (ok, output) = (0..3)
            .map(|_| self.exec(&command))
            .inspect(|(_, output)| tries.push(output.clone()))
            .find(|(ok, _)| *ok)
            .unwrap_or_else(|| (false, tries.join("\n")));
        assert!(ok, "the victim got no DHCP lease:\n{output}");
        output
            .lines()
            .find_map(|line| line.strip_prefix("LEASE "))
            .unwrap_or_else(|| panic!("no lease in:\n{output}"))
            .to_owned()
    }

    /// Gives the interface a new MAC address and drops its address: a guest that just
    /// joined.
    fn rejoin_as(&self, mac: [u8; 6]) {
        let mac = format_mac(mac);
        let (ok, output) = self.exec(&format!(
            "ip addr flush dev eth0 && ip link set eth0 down && ip link set eth0 address {mac} && ip link set eth0 up"
        ));
        assert!(ok, "{output}");
    }

    fn mac(&self) -> [u8; 6] {
        let (_, output) = self.exec("cat /sys/class/net/eth0/address");
        parse_mac(output.trim())
    }

    /// iperf3 to the host's loopback for two seconds, in bits per second.
    fn iperf(&self) -> f64 {
        let output =
            self.netns.exec(&["iperf3", "-c", "10.0.2.2", "-p", &IPERF_PORT.to_string(), "-t", "2", "-J"]);
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
        report["end"]["sum_received"]["bits_per_second"].as_f64().unwrap_or(0.0)
    }
}

fn format_mac(mac: [u8; 6]) -> String {
    mac.iter().map(|byte| format!("{byte:02x}")).collect::<Vec<_>>().join(":")
}

fn parse_mac(text: &str) -> [u8; 6] {
    let bytes: Vec<u8> = text.split(':').map(|part| u8::from_str_radix(part, 16).unwrap()).collect();
    bytes.try_into().unwrap()
}

/// vnet with the gateway, a victim, a raw attacker port and the host services.
struct Lab {
    name: String,
    dir: tempfile::TempDir,
    vnet: Vnet,
    victim: Victim,
    _iperf: ChildGuard,
    _services: Services,
    _world: NamedNamespace,
    /// The victim's iperf3 throughput before the attack.
    baseline: f64,
}

/// Kills a child process when dropped.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Lab {
    /// Starts vnet with `user` added to the gateway's options and `extra` arguments.
    fn start(user: &str, extra: &[&str]) -> Self {
        let world = NamedNamespace::create();
        let victim = NamedNamespace::create();
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let dhcp_script = write_dhcp_script(dir.path());
        let services = Services::start(&world);
        let iperf = ChildGuard(
            world
                .command(&["iperf3", "-s", "-B", "127.0.0.1", "-p", &IPERF_PORT.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("iperf3 runs"),
        );
        let name = format!("attack-{}-{}", std::process::id(), world.name);
        let attack = dir.path().join("attack.sock");
        let user = format!("dns-upstream=127.0.0.1:53{user}");
        let mut args = vec![
            "run".to_owned(),
            "--name".to_owned(),
            name.clone(),
            "--user".to_owned(),
            user,
            "--listen".to_owned(),
            format!("stream:unix:{}", attack.display()),
            "--attach".to_owned(),
            format!("netns:{}", victim.path()),
        ];
        args.extend(extra.iter().map(|arg| (*arg).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let vnet = Vnet::spawn_in(Some(&world), &args);
        wait_until("vnet's socket", DEADLINE, || UnixStream::connect(&attack).is_ok());
        wait_until("iperf3", DEADLINE, || {
            String::from_utf8_lossy(
                &world.exec(&["ss", "-Hltn", "sport", "=", &format!(":{IPERF_PORT}")]).stdout,
            )
            .contains("127.0.0.1")
        });
        let victim = Victim { netns: victim, dhcp_script };
        victim.dhcp();
        let baseline = victim.iperf();
        assert!(baseline > 0.0, "iperf3 ran before the attack");
        Self { name, dir, vnet, victim, _iperf: iperf, _services: services, _world: world, baseline }
    }

    fn attack_socket(&self) -> PathBuf {
        self.dir.path().join("attack.sock")
    }

    /// A raw stream port for the attacker.
    fn attacker(&self) -> StreamPeer<UnixStream> {
        StreamPeer::connect(&self.attack_socket())
    }

    /// A raw stream port for the attacker, and what vnet sends it.
    fn attacker_and_answers(&self) -> (StreamPeer<UnixStream>, Answers) {
        let attacker = self.attacker();
        let answers = Answers::read(StreamPeer { socket: attacker.socket.try_clone().unwrap() });
        (attacker, answers)
    }

    /// `vnet status --json`, which must answer.
    fn status(&self) -> serde_json::Value {
        self.json(&["status"])
    }

    fn json(&self, command: &[&str]) -> serde_json::Value {
        let output = vnet_command().args(command).args([&self.name, "--json"]).output().unwrap();
        assert!(
            output.status.success(),
            "the API did not answer: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    }

    /// How many frames the switch dropped for `reason`, over all ports.
    fn port_drops(&self, reason: &str) -> u64 {
        let ports = self.json(&["ports"]);
        ports.as_array().unwrap().iter().filter_map(|port| port["drops"][reason].as_u64()).sum()
    }

    /// How many frames or flows the gateway refused for `reason`.
    fn gateway_drops(&self, reason: &str) -> u64 {
        self.status()["gateway"]["drops"][reason].as_u64().unwrap_or(0)
    }

    fn event(&self, name: &str) -> u64 {
        self.status()["events"][name].as_u64().unwrap_or(0)
    }

    /// vnet's open descriptors and resident memory in KiB.
    fn usage(&self) -> (usize, u64) {
        let pid = self.vnet.pid();
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|dir| dir.count()).unwrap_or(0);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let rss = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap();
        (fds, rss)
    }

    /// The victim gets a lease, DNS, ping, a new TCP connection, UDP, and at least half
    /// its throughput from before the attack; the API answers. Returns its address.
    fn assert_victim_works(&self) -> String {
        let address = self.victim.dhcp();
        let checks = [
            ("DNS", "busybox nslookup vnet.test 10.0.2.3", "192.0.2.7"),
            ("ping", "ping -c 3 -i 0.2 -W 5 10.0.2.2", "3 received"),
            ("a new TCP connection", &format!("busybox nc -w 5 10.0.2.2 {HELLO_PORT} </dev/null"), "hello"),
            ("UDP", &format!(
                    "python3 -c \"import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5); \
                     s.sendto(b'udp-works', ('10.0.2.2', {UDP_ECHO_PORT})); print(s.recv(100).decode())\""
                ),
                "udp-works",
            ),
        ];
        for (what, script, expected) in checks {
            let (_, output) = self.victim.exec(script);
            assert!(
                output.contains(expected),
                "the victim lost {what}: {script}\n{output}\n{}",
                self.vnet.log()
            );
        }
        let best = (0..2).map(|_| self.victim.iperf()).fold(0.0, f64::max);
        assert!(
            best >= self.baseline / 2.0,
            "the victim's iperf3 fell to {:.0} Mbit/s from {:.0}",
            best / 1e6,
            self.baseline / 1e6
        );
        self.status();
        address
    }
}

/// Sends `frames` on `peer` as fast as the socket takes them.
fn flood(peer: &mut StreamPeer<UnixStream>, frames: impl Iterator<Item = Vec<u8>>) {
    for frame in frames {
        peer.send(&frame);
    }
}

/// Every frame `peer` has been sent so far, waiting `quiet` for the last one.
fn received(peer: &mut StreamPeer<UnixStream>, quiet: Duration) -> Vec<Vec<u8>> {
    peer.socket.set_read_timeout(Some(quiet)).unwrap();
    std::iter::from_fn(|| peer.recv()).collect()
}

/// What vnet sends an attacker, read on a thread so that vnet never stops sending to it.
struct Answers {
    stop: Arc<AtomicBool>,
    reader: JoinHandle<Vec<Vec<u8>>>,
}

impl Answers {
    /// Starts reading `peer`.
    fn read(mut peer: StreamPeer<UnixStream>) -> Self {
        peer.socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut frames = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match peer.recv() {
                        Some(frame) => frames.push(frame),
                        None => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
                frames
            })
        };
        Self { stop, reader }
    }

    /// Stops reading and returns every frame read.
    fn collect(self) -> Vec<Vec<u8>> {
        self.stop.store(true, Ordering::Relaxed);
        self.reader.join().unwrap()
    }
}

fn refused_guests(lab: &Lab) -> String {
    lab.status()["gateway"]["refused"].to_string()
}

#[test]
fn a_syn_flood_costs_the_attacker_its_own_handshakes_and_the_victim_keeps_working() {
    let _lock = GuestLock::acquire();
    let lab = Lab::start("", &[]);
    let (fds_before, _) = lab.usage();
    let (mut attacker, answers) = lab.attacker_and_answers();
    let mut most_fds = 0;
    for batch in 0..30u16 {
        flood(
            &mut attacker,
            (0..1000)
                .map(|i| tcp_syn(ATTACKER_MAC, ATTACKER_IP, 1024 + batch * 1000 + i, GATEWAY_IP, SINK_PORT)),
        );
        most_fds = most_fds.max(lab.usage().0);
    }
    lab.assert_victim_works();
    let answers = answers.collect();
    assert!(answers.iter().any(|frame| frame.len() > 47 && frame[47] & 0x04 != 0), "the attacker got RSTs");
    assert!(most_fds < fds_before + 400, "30,000 SYNs held {most_fds} descriptors (from {fds_before})");
    assert!(lab.gateway_drops("guest_budget") > 0);
    assert!(
        refused_guests(&lab).contains(&format_mac(ATTACKER_MAC).replace(':', "-")),
        "{}",
        refused_guests(&lab)
    );
}

#[test]
fn udp_from_20000_source_ports_leaves_descriptors_and_flows_for_the_victim() {
    let _lock = GuestLock::acquire();
    let lab = Lab::start("", &[]);
    let (mut attacker, answers) = lab.attacker_and_answers();
    flood(
        &mut attacker,
        (0..20_000u32)
            .map(|i| udp(ATTACKER_MAC, ATTACKER_IP, 20_000 + i as u16, GATEWAY_IP, UDP_TARGET_PORT, b"x")),
    );
    lab.assert_victim_works();
    let answers = answers.collect();
    let prohibited = answers
        .iter()
        .filter(|frame| frame.len() > 35 && frame[23] == 1 && frame[34] == 3 && frame[35] == 13)
        .count();
    assert!(prohibited > 0, "the attacker's extra flows were refused with ICMP administratively prohibited");
    let limits = lab.status()["gateway"]["budgets"].clone();
    let (fds, _) = lab.usage();
    assert!((fds as u64) < limits["udp"].as_u64().unwrap() + 400, "{fds} descriptors for {limits}");
}

#[test]
fn one_guest_cannot_hold_a_small_flow_table_or_the_dns_queue() {
    let _lock = GuestLock::acquire();
    let lab = Lab::start(",max-flows=2000", &[]);
    let (mut attacker, answers) = lab.attacker_and_answers();
    flood(
        &mut attacker,
        (0..2000u16).map(|i| udp(ATTACKER_MAC, ATTACKER_IP, 30_000 + i, GATEWAY_IP, UDP_TARGET_PORT, b"x")),
    );
    flood(
        &mut attacker,
        (0..2000u16).map(|i| {
            udp(ATTACKER_MAC, ATTACKER_IP, 40_000 + i, DNS_IP, 53, &dns_query(i, &format!("silent{i}.test")))
        }),
    );
    let flows = lab.status()["gateway"]["flows"].clone();
    assert!(flows["dns"].as_u64().unwrap() <= 128, "one guest holds {flows}");
    lab.assert_victim_works();
    let answers = answers.collect();
    let servfails = answers
        .iter()
        .filter(|frame| {
            frame.len() > 45 && frame[23] == 17 && frame[34..36] == [0, 53] && frame[45] & 0x0f == 2
        })
        .count();
    assert!(servfails > 0, "the queries over the attacker's budget got SERVFAIL");
    assert!(refused_guests(&lab).contains(&format_mac(ATTACKER_MAC).replace(':', "-")));
}

#[test]
fn dhcp_exhaustion_refused_requests_and_a_spoofed_decline_leave_the_victim_its_lease() {
    let _lock = GuestLock::acquire();
    let lab = Lab::start("", &[]);
    let victim_mac = lab.victim.mac();
    let leased = lab.victim.dhcp();
    let leased_octets: [u8; 4] =
        leased.split('.').map(|part| part.parse().unwrap()).collect::<Vec<u8>>().try_into().unwrap();
    let mut attacker = lab.attacker();
    // A DECLINE in the victim's name, from the attacker's port.
    attacker.send(&dhcp(DHCP_DECLINE, victim_mac, 7, Some(leased_octets), Some(GATEWAY_IP)));
    // 240 made-up clients ask for addresses, and ask for ones that are not theirs.
    flood(&mut attacker, (0..240).map(|n| dhcp(DHCP_DISCOVER, made_up_mac(n), n, None, None)));
    flood(
        &mut attacker,
        (0..60u8).map(|n| {
            dhcp(
                DHCP_REQUEST,
                made_up_mac(1000 + u32::from(n)),
                9,
                Some([10, 0, 2, 100 + n]),
                Some(GATEWAY_IP),
            )
        }),
    );
    let replies = received(&mut attacker, Duration::from_secs(2));
    let offers = (0..240)
        .filter(|n| {
            replies.iter().any(|frame| {
                dhcp_reply_to(frame, made_up_mac(*n)).is_some_and(|(kind, _)| kind == DHCP_OFFER)
            })
        })
        .count();
    assert!(offers <= 16, "one port was offered {offers} addresses");
    assert_eq!(lab.victim.dhcp(), leased, "the victim renews the address it held");
    lab.victim.rejoin_as([0x02, 0, 0, 0, 0, 0x77]);
    let fresh = lab.assert_victim_works();
    assert_ne!(fresh, leased, "a guest that joins after the attack gets an address of its own");
}

#[test]
fn spoofing_the_gateway_or_the_victim_reaches_nothing_that_was_not_the_attackers() {
    let _lock = GuestLock::acquire();
    let lab = Lab::start("", &[]);
    let victim_ip: [u8; 4] = lab
        .victim
        .dhcp()
        .split('.')
        .map(|part| part.parse().unwrap())
        .collect::<Vec<u8>>()
        .try_into()
        .unwrap();
    let mut attacker = lab.attacker();
    let mut bystander = lab.attacker();
    for _ in 0..20 {
        // Frames from the gateway's MAC, to move it to this port.
        attacker.send(&udp(GATEWAY_MAC, GATEWAY_IP, 53, victim_ip, 5353, b"spoof"));
        // The victim's address claimed to the gateway.
        attacker.send(&arp(2, GATEWAY_MAC, (ATTACKER_MAC, victim_ip), (GATEWAY_MAC, GATEWAY_IP)));
        // The gateway's address claimed to everyone.
        attacker.send(&arp(1, [0xff; 6], (ATTACKER_MAC, GATEWAY_IP), ([0; 6], GATEWAY_IP)));
    }
    lab.assert_victim_works();
    let stolen = received(&mut attacker, Duration::from_millis(500))
        .into_iter()
        .filter(|frame| frame[..6] == GATEWAY_MAC || (frame[12..14] == [8, 0] && frame[30..34] == victim_ip))
        .count();
    assert_eq!(stolen, 0, "frames for the gateway or the victim reached the attacker");
    let claims = received(&mut bystander, Duration::from_millis(500))
        .into_iter()
        .filter(|frame| {
            frame[12..14] == [8, 6] && frame[28..32] == GATEWAY_IP && frame[22..28] != GATEWAY_MAC
        })
        .count();
    assert_eq!(claims, 0, "an ARP claiming the gateway's address reached another port");
    let (_, neighbours) = lab.victim.exec("ip neigh show 10.0.2.2");
    assert!(neighbours.contains(&format_mac(GATEWAY_MAC)), "{neighbours}");
    assert!(lab.port_drops("pinned_source") > 0 && lab.port_drops("guarded") > 0);
    assert!(lab.gateway_drops("spoofed") > 0);
}

#[test]
fn a_double_tagged_frame_from_an_access_port_never_reaches_the_trunk() {
    let _lock = GuestLock::acquire();
    let dir = tempfile::tempdir().unwrap();
    let trunk_socket = dir.path().join("trunk.sock");
    let lab = Lab::start("", &["--listen", &format!("stream:unix:{},trunk=5", trunk_socket.display())]);
    let mut trunk = StreamPeer::connect(&trunk_socket);
    let mut attacker = lab.attacker();
    flood(&mut attacker, (0..100).map(|_| double_tagged([0xff; 6], ATTACKER_MAC, 0, 5)));
    flood(&mut attacker, (0..100).map(|_| double_tagged([0xff; 6], ATTACKER_MAC, 5, 5)));
    lab.assert_victim_works();
    let hopped = received(&mut trunk, Duration::from_millis(500))
        .into_iter()
        .filter(|frame| frame[6..12] == ATTACKER_MAC)
        .count();
    assert_eq!(hopped, 0, "double-tagged frames reached the trunk");
    assert!(lab.port_drops("stacked_vlan_tag") >= 100, "{}", lab.json(&["ports"]));
}

#[test]
fn a_flood_of_made_up_macs_neither_fills_the_table_nor_turns_a_new_guest_into_a_hub() {
    let _lock = GuestLock::acquire();
    let lab = Lab::start("", &[]);
    let mut attacker = lab.attacker();
    flood(&mut attacker, (0..65_536).map(|n| ethernet(GATEWAY_MAC, made_up_mac(n), 0x88b5, &[0; 46])));
    received(&mut attacker, Duration::from_millis(500));
    let joined = [0x02, 0, 0, 0, 0, 0x78];
    lab.victim.rejoin_as(joined);
    lab.assert_victim_works();
    let leaked = received(&mut attacker, Duration::from_millis(500))
        .into_iter()
        .filter(|frame| frame[..6] == joined)
        .count();
    assert_eq!(leaked, 0, "frames for the new guest were flooded to the attacker");
    let stations = lab.status()["stations"].as_u64().unwrap();
    assert!(stations < 100, "the MAC table holds {stations} stations");
    assert!(lab.port_drops("station_limit") > 60_000);
}

#[test]
fn peers_that_never_read_and_unfinished_frames_hold_bounded_memory_and_time_out() {
    let _lock = GuestLock::acquire();
    let lab = Lab::start("", &[]);
    raise_file_limit();
    let (_, rss_before) = lab.usage();
    let silent: Vec<UnixStream> =
        (0..200).map(|_| UnixStream::connect(lab.attack_socket()).unwrap()).collect();
    let mut unfinished = Vec::new();
    for _ in 0..2000 {
        let mut stream = UnixStream::connect(lab.attack_socket()).unwrap();
        stream.write_all(&65_535u32.to_be_bytes()).unwrap();
        stream.write_all(&[0xab; 3000]).unwrap();
        unfinished.push(stream);
    }
    wait_until("2,200 ports", DEADLINE, || lab.status()["ports"].as_u64().unwrap() >= 2202);
    let (_, rss) = lab.usage();
    assert!(
        rss < rss_before + 48 * 1024,
        "2,000 unfinished frames of 3 KB raised RSS from {rss_before} KiB to {rss} KiB"
    );
    lab.assert_victim_works();
    wait_until("the unfinished frames to time out", Duration::from_secs(120), || {
        lab.event("stalled_frame") >= 2000
    });
    drop(silent);
}

#[test]
fn a_broadcast_storm_from_one_port_leaves_the_victims_traffic_flowing() {
    let _lock = GuestLock::acquire();
    let lab = Lab::start("", &[]);
    let mut attacker = lab.attacker();
    let stop = Arc::new(AtomicBool::new(false));
    let storm = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let frame = ethernet([0xff; 6], ATTACKER_MAC, 0x88b5, &[0; 46]);
            let start = Instant::now();
            let mut sent = 0u64;
            // At most 20,000 frames a second, for at most two minutes.
            while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(120) {
                for _ in 0..200 {
                    attacker.send(&frame);
                }
                sent += 200;
                std::thread::sleep(Duration::from_millis(10));
            }
            (sent, attacker)
        })
    };
    lab.assert_victim_works();
    stop.store(true, Ordering::Relaxed);
    let (sent, _still_connected) = storm.join().unwrap();
    assert!(lab.port_drops("storm") > sent / 2, "storm control dropped most of {sent} broadcasts");
}

#[test]
fn a_full_datagram_peer_table_still_takes_a_new_guest() {
    let _lock = GuestLock::acquire();
    let dir = tempfile::tempdir().unwrap();
    let dgram = dir.path().join("dgram.sock");
    let lab = Lab::start("", &["--listen", &format!("dgram:unix:{}", dgram.display())]);
    raise_file_limit();
    let peers: Vec<UnixDatagram> = (0..1100u32)
        .map(|n| {
            let peer = UnixDatagram::bind(dir.path().join(format!("peer-{n}"))).unwrap();
            peer.send_to(&ethernet(GATEWAY_MAC, made_up_mac(n), 0x88b5, &[0; 46]), &dgram).unwrap();
            peer
        })
        .collect();
    wait_until("the peer table to fill", DEADLINE, || lab.event("dgram_peer_evicted") >= 76);
    let newcomer = UnixDatagram::bind(dir.path().join("newcomer")).unwrap();
    newcomer.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let newcomer_mac = [0x02, 0, 0, 0, 0, 0x79];
    let asked = Instant::now();
    let answered = std::iter::repeat_with(|| {
        newcomer
            .send_to(&arp(1, [0xff; 6], (newcomer_mac, [10, 0, 2, 201]), ([0; 6], GATEWAY_IP)), &dgram)
            .unwrap();
        let mut buf = [0u8; 2048];
        newcomer
            .recv(&mut buf)
            .ok()
            .filter(|len| *len >= 42 && buf[12..14] == [8, 6] && buf[..6] == newcomer_mac)
    })
    .take_while(|_| asked.elapsed() < DEADLINE)
    .any(|reply| reply.is_some());
    assert!(answered, "the gateway did not answer a new datagram peer once the table was full");
    lab.assert_victim_works();
    drop(peers);
}

/// Raises this process's soft descriptor limit to the hard one, for tests that hold
/// thousands of sockets.
fn raise_file_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit read and write the struct passed, which lives here.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
}

#[test]
fn a_rogue_router_advertisement_never_reaches_a_guest() {
    let _lock = GuestLock::acquire();
    let lab = Lab::start("", &[]);
    let mut attacker = lab.attacker();
    let rogue: std::net::Ipv6Addr = "fe80::66".parse().unwrap();
    let all_nodes: std::net::Ipv6Addr = "ff02::1".parse().unwrap();
    let bad_prefix: std::net::Ipv6Addr = "2001:db8:bad::".parse().unwrap();
    let advertisement = router_advertisement(bad_prefix.octets());
    let plain =
        icmpv6(ATTACKER_MAC, [0x33, 0x33, 0, 0, 0, 1], rogue.octets(), all_nodes.octets(), &advertisement);
    let hidden = behind_destination_options(&plain);
    for _ in 0..5 {
        attacker.send(&plain);
        attacker.send(&hidden);
    }
    // The victim solicits routers and configures itself from what it hears.
    let (_, routes) = lab.victim.exec(
        "n=0; until ip -6 route | grep -q 'default via fe80::2'; do n=$((n+1)); [ $n -ge 100 ] && break; sleep 0.1; done; ip -6 route; ip -6 addr",
    );
    assert!(routes.contains("default via fe80::2"), "the gateway is the router:\n{routes}");
    assert!(
        !routes.contains("fe80::66") && !routes.contains("2001:db8:bad"),
        "the rogue router got through:\n{routes}"
    );
    assert!(lab.port_drops("guarded") >= 10, "plain and behind options: {}", lab.json(&["ports"]));
    lab.assert_victim_works();
}
