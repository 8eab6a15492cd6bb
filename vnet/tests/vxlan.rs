//! A vnet segment across hosts over VXLAN. Network namespaces stand in for the hosts:
//! each host namespace has one leg on an "underlay" bridge in a namespace of its own
//! (192.168.77.N/24 and fd77::N/64), and guests are namespaces on `--attach netns:` taps.
//! All traffic stays inside the namespaces the tests create.
//!
//! - two vnets share one gateway (DHCP, MTU), ping and move 100 MB, over IPv4 and IPv6;
//! - vnet and a Linux kernel vxlan device in a bridge carry traffic both ways, and
//!   tshark decodes the underlay as VXLAN with the right VNI;
//! - a third vnet is learned as a remote, and two VNIs mapped to two VLANs stay apart;
//! - malformed datagrams and strangers are counted and dropped.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::transfer::{sha256_hex, test_bytes};
use support::*;

/// The VNI most tests use.
const VNI: u32 = 42;

/// Host namespaces joined by a bridge: the underlay.
struct Underlay {
    hosts: Vec<NamedNamespace>,
    _bridge: NamedNamespace,
}

impl Underlay {
    /// `count` hosts, host N at 192.168.77.N and fd77::N on its interface `up0`.
    fn new(count: u8) -> Self {
        let bridge = NamedNamespace::create();
        run_ok(&mut bridge.command(&["ip", "link", "add", "br0", "type", "bridge"]));
        run_ok(&mut bridge.command(&["ip", "link", "set", "br0", "up"]));
        let hosts = (1..=count)
            .map(|n| {
                let host = NamedNamespace::create();
                let leg = format!("u{n}");
                run_ok(Command::new("ip").args([
                    "link", "add", "up0", "netns", &host.name, "type", "veth", "peer", "name", &leg, "netns",
                    &bridge.name,
                ]));
                run_ok(&mut bridge.command(&["ip", "link", "set", &leg, "master", "br0", "up"]));
                let (ok, output) = host.shell(&format!(
                    "ip addr add 192.168.77.{n}/24 dev up0 && ip addr add fd77::{n}/64 dev up0 nodad && ip link set up0 up"
                ));
                assert!(ok, "{output}");
                host
            })
            .collect();
        Self { hosts, _bridge: bridge }
    }

    fn host(&self, n: u8) -> &NamedNamespace {
        &self.hosts[usize::from(n - 1)]
    }
}

/// The underlay address of host `n`.
fn underlay_ip(n: u8, ipv6: bool) -> String {
    if ipv6 {
        format!("[fd77::{n}]")
    } else {
        format!("192.168.77.{n}")
    }
}

/// A guest: a namespace whose `eth0` is a tap of some vnet.
struct Guest {
    netns: NamedNamespace,
    dhcp_script: PathBuf,
    _dir: tempfile::TempDir,
}

impl Guest {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self { netns: NamedNamespace::create(), dhcp_script: write_dhcp_script(dir.path()), _dir: dir }
    }

    fn attach_arg(&self) -> String {
        format!("netns:{}", self.netns.path())
    }

    /// Waits for vnet to have made `eth0` here.
    fn wait_for_tap(&self) {
        wait_until("the guest's tap", DEADLINE, || {
            self.netns.exec(&["ip", "link", "show", "eth0"]).status.success()
        });
    }

    /// Takes a DHCP lease; returns the address and the MTU the server gave.
    fn dhcp(&self) -> (String, Option<u32>) {
        self.wait_for_tap();
        let (ok, output) = self.netns.shell(&format!(
            "ip link set eth0 up && busybox udhcpc -i eth0 -n -q -t 15 -T 2 -O mtu -s {}",
            self.dhcp_script.display()
        ));
        assert!(ok, "no DHCP lease:\n{output}");
        let lease = output.lines().find_map(|line| line.strip_prefix("LEASE ")).expect("a lease").to_owned();
        let mtu = output.lines().find_map(|line| line.strip_prefix("MTU ")).and_then(|mtu| mtu.parse().ok());
        (lease, mtu)
    }

    /// Gives `eth0` a static address in 10.9.0.0/24.
    fn set_address(&self, address: &str) {
        self.wait_for_tap();
        let (ok, output) =
            self.netns.shell(&format!("ip addr add {address}/24 dev eth0 && ip link set eth0 up"));
        assert!(ok, "{output}");
    }

    fn mac(&self) -> String {
        self.netns.shell("cat /sys/class/net/eth0/address").1.trim().to_owned()
    }

    /// Whether `address` answers ping (three tries a second apart, then a few more).
    fn pings(&self, address: &str) -> bool {
        self.netns.shell(&format!("ping -c 1 -W 2 {address} || ping -c 3 -W 3 {address}")).0
    }
}

/// `vnet COMMAND NAME --json`.
fn api(command: &str, name: &str) -> Value {
    let output = vnet_command().args([command, name, "--json"]).output().unwrap();
    assert!(output.status.success(), "vnet {command}: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// A vnet in `host` named `name`, once its tunnel is up.
fn vnet_in(host: &NamedNamespace, name: &str, args: &[&str]) -> Vnet {
    let mut all = vec!["run", "--name", name];
    all.extend_from_slice(args);
    let vnet = Vnet::spawn_in(Some(host), &all);
    vnet.wait_for_log("VXLAN tunnel up");
    vnet
}

fn unique(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

/// Moves `len` bytes from `sender` to `receiver` (at `address`) over TCP; returns the
/// SHA-256 the receiver computed, which must match what was sent.
fn transfer(sender: &Guest, receiver: &Guest, address: &str, len: usize) {
    let listener = receiver.netns.run_inside(|| TcpListener::bind("0.0.0.0:9000").unwrap());
    let reader = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        let mut received = Vec::with_capacity(len);
        stream.read_to_end(&mut received).unwrap();
        sha256_hex(&received)
    });
    let target: SocketAddr = format!("{address}:9000").parse().unwrap();
    let mut stream = sender.netns.run_inside(|| TcpStream::connect_timeout(&target, DEADLINE).unwrap());
    stream.set_write_timeout(Some(Duration::from_secs(120))).unwrap();
    let data = test_bytes(len);
    stream.write_all(&data).unwrap();
    drop(stream);
    assert_eq!(reader.join().unwrap(), sha256_hex(&data), "{len} bytes arrived whole");
}

/// Two vnets, one gateway: the guest behind the second vnet gets its lease (and an MTU
/// that fits the underlay) from the first vnet's gateway, the guests ping each other,
/// 100 MB (IPv4) or 20 MB (IPv6) cross, and each vnet shows the other as the remote of
/// the far guest.
fn two_vnets_share_one_segment(ipv6: bool, len: usize) {
    let underlay = Underlay::new(2);
    let (first, second) = (Guest::new(), Guest::new());
    let (name1, name2) = (unique(&format!("vx1-{ipv6}")), unique(&format!("vx2-{ipv6}")));
    let to_second = format!("vxlan:{},vni={VNI}", underlay_ip(2, ipv6));
    let to_first = format!("vxlan:{},vni={VNI}", underlay_ip(1, ipv6));
    let _vnet1 =
        vnet_in(underlay.host(1), &name1, &["--attach", &to_second, "--attach", &first.attach_arg()]);
    let _vnet2 = vnet_in(
        underlay.host(2),
        &name2,
        &["--no-user", "--attach", &to_first, "--attach", &second.attach_arg()],
    );

    let (address1, _) = first.dhcp();
    let (address2, mtu) = second.dhcp();
    let overhead = if ipv6 { 70 } else { 50 };
    assert_eq!(mtu, Some(1500 - overhead), "the gateway advertises an MTU that fits the underlay");
    assert!(second.pings("10.0.2.2"), "the guest behind the second vnet reaches the gateway");
    assert!(first.pings(&address2) && second.pings(&address1), "the guests reach each other");
    transfer(&second, &first, &address1, len);
    transfer(&first, &second, &address2, len / 4);

    let remote1 = if ipv6 { "fd77::1" } else { "192.168.77.1" };
    let macs = api("macs", &name2);
    let far = macs.as_array().unwrap().iter().find(|station| station["mac"] == first.mac().as_str());
    assert_eq!(far.map(|station| station["remote"].clone()), Some(Value::from(remote1)), "{macs}");
    let ports = api("ports", &name2);
    let tunnel =
        ports.as_array().unwrap().iter().find(|port| port["name"] == format!("vxlan:vni={VNI}")).unwrap();
    let remote = &tunnel["remotes"][0];
    assert_eq!(remote["name"], remote1, "{tunnel}");
    assert!(remote["tx_bytes"].as_u64().unwrap() as usize > len, "what the second guest sent: {tunnel}");
    assert!(remote["rx_bytes"].as_u64().unwrap() as usize > len / 4, "what it was sent: {tunnel}");
}

#[test]
fn two_vnets_over_an_ipv4_underlay_share_a_gateway_and_move_100_mb() {
    two_vnets_share_one_segment(false, 100 << 20);
}

#[test]
fn two_vnets_over_an_ipv6_underlay_share_a_gateway_and_move_20_mb() {
    two_vnets_share_one_segment(true, 20 << 20);
}

/// vnet in one host; in the other a kernel vxlan device bridged with a veth to a test
/// host. The test host gets DHCP from vnet's gateway, pings the vnet guest, and TCP
/// crosses both ways; the underlay, captured on vnet's side, decodes as VXLAN VNI 42.
#[test]
fn vnet_and_a_kernel_vxlan_device_carry_traffic_both_ways() {
    let underlay = Underlay::new(2);
    let kernel_host = underlay.host(2);
    let (ok, output) = kernel_host.shell(&format!(
        "ip link add vx0 type vxlan id {VNI} remote 192.168.77.1 local 192.168.77.2 dstport 4789 dev up0 && \
         ip link add br0 type bridge && ip link set vx0 master br0 && \
         ip link set vx0 up && ip link set br0 up"
    ));
    assert!(ok, "{output}");
    let kernel_guest = Guest::new();
    let (ok, output) = kernel_host.shell(&format!(
        "ip link add kv0 type veth peer name eth0 netns {} && ip link set kv0 master br0 up",
        kernel_guest.netns.name
    ));
    assert!(ok, "{output}");
    // A veth leaves TCP checksums to "hardware" that never comes: the kernel's vxlan
    // would carry them unfinished to vnet, which a real NIC would have filled in.
    let (ok, output) = kernel_guest.netns.shell("ethtool -K eth0 tx off");
    assert!(ok, "{output}");

    let capture_dir = tempfile::tempdir().unwrap();
    let capture = capture_dir.path().join("underlay.pcap");
    let vnet_guest = Guest::new();
    let name = unique("vxk");
    let _vnet = vnet_in(
        underlay.host(1),
        &name,
        &["--attach", &format!("vxlan:192.168.77.2,vni={VNI}"), "--attach", &vnet_guest.attach_arg()],
    );
    let tshark = KillOnDrop(
        underlay
            .host(1)
            .command(&["tshark", "-q", "-i", "up0", "-f", "udp port 4789", "-c", "20", "-w"])
            .arg(&capture)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tshark runs"),
    );
    wait_until("tshark capturing", DEADLINE, || capture.exists());

    let (vnet_address, _) = vnet_guest.dhcp();
    let (kernel_address, mtu) = kernel_guest.dhcp();
    assert_eq!(mtu, Some(1450));
    assert!(kernel_guest.pings("10.0.2.2") && kernel_guest.pings(&vnet_address));
    assert!(vnet_guest.pings(&kernel_address));
    transfer(&kernel_guest, &vnet_guest, &vnet_address, 10 << 20);
    transfer(&vnet_guest, &kernel_guest, &kernel_address, 10 << 20);

    let mut tshark = tshark;
    wait_until("tshark's 20 packets", DEADLINE, || tshark.0.try_wait().unwrap().is_some());
    let decoded = run_ok(Command::new("tshark").args(["-r"]).arg(&capture).args(["-V", "-Y", "vxlan"]));
    let text = String::from_utf8_lossy(&decoded.stdout);
    assert!(text.contains(&format!("VXLAN Network Identifier (VNI): {VNI}")), "{text}");
    assert!(text.contains("Ethernet II"), "an inner frame decodes too: {text}");
}

/// Three vnets: the first learns the third as a remote when it speaks up
/// (`learn-remotes=on`), the third lists both others (head-end replication), and
/// `vnet macs` shows each station behind its VTEP. Two VNIs map to VLANs 10 and 20 on
/// the first vnet (and other VLANs on the second, bound to its underlay interface with
/// `dev=`) and stay apart.
#[test]
fn a_third_vnet_is_learned_and_two_vnis_on_two_vlans_stay_apart() {
    let underlay = Underlay::new(3);
    let [a10, a20, b100, b200, c100] = [(); 5].map(|()| Guest::new());
    let name_a = unique("vxa");
    let _a = vnet_in(
        underlay.host(1),
        &name_a,
        &[
            "--no-user",
            "--attach",
            "vxlan:192.168.77.2,vni=100,learn-remotes=on,vlan=10",
            "--attach",
            "vxlan:192.168.77.2,vni=200,vlan=20",
            "--attach",
            &format!("{},vlan=10", a10.attach_arg()),
            "--attach",
            &format!("{},vlan=20", a20.attach_arg()),
        ],
    );
    let _b = vnet_in(
        underlay.host(2),
        &unique("vxb"),
        &[
            "--no-user",
            "--attach",
            "vxlan:192.168.77.1,vni=100,dev=up0",
            "--attach",
            "vxlan:192.168.77.3,vni=100,dev=up0",
            "--attach",
            "vxlan:192.168.77.1,vni=200,dev=up0,vlan=5",
            "--attach",
            &b100.attach_arg(),
            "--attach",
            &format!("{},vlan=5", b200.attach_arg()),
        ],
    );
    let _c = vnet_in(
        underlay.host(3),
        &unique("vxc"),
        &[
            "--no-user",
            "--attach",
            "vxlan:192.168.77.1,vni=100",
            "--attach",
            "vxlan:192.168.77.2,vni=100",
            "--attach",
            &c100.attach_arg(),
        ],
    );
    for (guest, address) in [(&a10, "10.9.0.1"), (&a20, "10.9.0.2"), (&b100, "10.9.0.3"), (&b200, "10.9.0.4")]
    {
        guest.set_address(address);
    }
    c100.set_address("10.9.0.5");

    assert!(a10.pings("10.9.0.3"), "VNI 100: VLAN 10 here, the default VLAN there");
    assert!(a20.pings("10.9.0.4"), "VNI 200: VLAN 20 here, VLAN 5 there");
    assert!(c100.pings("10.9.0.1"), "the third vnet reaches the first, which learns it");
    assert!(c100.pings("10.9.0.3"), "and the second, which lists it: its floods went to both");
    assert!(!a10.netns.shell("ping -c 2 -W 1 10.9.0.4").0, "VNI 100 does not reach VNI 200");
    assert!(!a20.netns.shell("ping -c 2 -W 1 10.9.0.3").0, "VNI 200 does not reach VNI 100");

    let macs = api("macs", &name_a);
    let remote_of = |guest: &Guest| {
        let mac = guest.mac();
        macs.as_array().unwrap().iter().find(|s| s["mac"] == mac.as_str()).map(|s| s["remote"].clone())
    };
    assert_eq!(remote_of(&b100), Some(Value::from("192.168.77.2")), "{macs}");
    assert_eq!(remote_of(&c100), Some(Value::from("192.168.77.3")), "learned: {macs}");
    assert_eq!(remote_of(&a10), Some(Value::Null), "a local guest has no remote: {macs}");
    let table = vnet_command().args(["macs", &name_a]).output().unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("REMOTE") && table.contains("192.168.77.3"), "{table}");
}

/// Datagrams a VTEP must refuse, sent from the second host to the first, are each
/// counted under their reason; a guest frame too long for the underlay is dropped and
/// counted, not fragmented.
#[test]
fn malformed_vxlan_datagrams_and_strangers_are_counted_and_dropped() {
    let underlay = Underlay::new(3);
    let guest = Guest::new();
    let name = unique("vxbad");
    let _vnet = vnet_in(
        underlay.host(1),
        &name,
        &["--no-user", "--attach", &format!("vxlan:192.168.77.2,vni={VNI}"), "--attach", &guest.attach_arg()],
    );
    guest.set_address("10.9.0.1");
    let mut valid = vec![0x08, 0, 0, 0, 0, 0, VNI as u8, 0];
    valid.extend_from_slice(&frame(BROADCAST, mac(0x77), 60, 0));
    let mut wrong_flags = valid.clone();
    wrong_flags[0] = 0x0c;
    let mut unknown_vni = valid.clone();
    unknown_vni[6] = 43;
    let send = |host: &NamedNamespace, datagram: &[u8]| {
        let socket = host.run_inside(|| UdpSocket::bind("0.0.0.0:0").unwrap());
        socket.send_to(datagram, "192.168.77.1:4789").unwrap();
    };
    for datagram in [&valid[..10], &wrong_flags[..], &unknown_vni[..]] {
        send(underlay.host(2), datagram);
    }
    send(underlay.host(3), &valid);
    let events = |name: &str| api("status", name)["events"].clone();
    wait_until("the four refusals counted", DEADLINE, || {
        let events = events(&name);
        ["vxlan_truncated", "vxlan_bad_flags", "vxlan_unknown_vni", "vxlan_unknown_remote"]
            .iter()
            .all(|event| events[*event] == 1)
    });
    let (sent, output) = guest.netns.shell("ping -b -c 1 -W 1 -s 1472 -M do 10.9.0.255");
    assert!(!sent || output.contains("0 received"), "{output}");
    let ports = api("ports", &name);
    let too_long = ports
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|port| port["drops"]["underlay_mtu"].as_u64())
        .sum::<u64>();
    assert_eq!(too_long, 1, "a 1514-byte frame does not fit a 1500-byte underlay: {ports}");

    send(underlay.host(2), &valid);
    wait_until("the one valid frame counted on the port", DEADLINE, || {
        let ports = api("ports", &name);
        let tunnel_name = format!("vxlan:vni={VNI}");
        ports
            .as_array()
            .unwrap()
            .iter()
            .any(|port| port["name"] == tunnel_name.as_str() && port["rx_frames"] == 1)
    });
}

/// Three vnets on a multicast group, none listing another: floods go to the group, each
/// learns the others from their traffic, and unicast then goes to the learned remote.
#[test]
fn three_vnets_on_a_multicast_group_find_each_other() {
    let underlay = Underlay::new(3);
    let guests = [(); 3].map(|()| Guest::new());
    let names: Vec<String> = (1..=3).map(|n| unique(&format!("vxg{n}"))).collect();
    let _vnets: Vec<Vnet> = (1..=3u8)
        .map(|n| {
            let i = usize::from(n - 1);
            let tunnel = format!("vxlan:239.1.1.1,vni={VNI},local=192.168.77.{n}");
            vnet_in(
                underlay.host(n),
                &names[i],
                &["--no-user", "--attach", &tunnel, "--attach", &guests[i].attach_arg()],
            )
        })
        .collect();
    for (n, guest) in guests.iter().enumerate() {
        guest.set_address(&format!("10.9.0.{}", n + 1));
    }
    assert!(guests[0].pings("10.9.0.2") && guests[0].pings("10.9.0.3") && guests[2].pings("10.9.0.2"));

    let macs = api("macs", &names[0]);
    let remote_of = |guest: &Guest| {
        let mac = guest.mac();
        macs.as_array().unwrap().iter().find(|s| s["mac"] == mac.as_str()).map(|s| s["remote"].clone())
    };
    assert_eq!(remote_of(&guests[1]), Some(Value::from("192.168.77.2")), "{macs}");
    assert_eq!(remote_of(&guests[2]), Some(Value::from("192.168.77.3")), "{macs}");
    let ports = api("ports", &names[0]);
    let remotes =
        ports.as_array().unwrap().iter().find_map(|port| port["remotes"].as_array().cloned()).unwrap();
    let by_name =
        |name: &str| remotes.iter().find(|remote| remote["name"] == name).cloned().unwrap_or_default();
    assert!(
        by_name("group 239.1.1.1")["tx_frames"].as_u64() > Some(0),
        "floods went to the group: {remotes:?}"
    );
    assert!(
        by_name("192.168.77.2")["tx_frames"].as_u64() > Some(0),
        "unicast to a learned remote: {remotes:?}"
    );
}
