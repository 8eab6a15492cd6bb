//! `vnet ns` and `--attach netns:` with real network namespaces and the kernel's own
//! ping: every address used lives inside namespaces these tests create. Needs root (as CI
//! has); the unprivileged case drops to `nobody` with setpriv.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use support::*;

fn vnet() -> Command {
    support::vnet_command()
}

#[test]
fn vnet_ns_reaches_an_attached_namespace_and_returns_the_command_status() {
    let far = NamedNamespace::create();
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("link.sock");
    let network = Vnet::listening_on(
        &link,
        &[
            "run",
            "--no-user",
            "--listen",
            &format!("stream:unix:{}", link.display()),
            "--attach",
            &format!("netns:{}", far.path()),
        ],
    );
    network.wait_for_log("name=netns:");
    let addr = far.exec(&["ip", "addr", "add", "10.77.0.1/24", "dev", "eth0"]);
    assert!(addr.status.success(), "{}", String::from_utf8_lossy(&addr.stderr));

    let ping = vnet()
        .args([
            "--log-level",
            "warn",
            "ns",
            "--no-user",
            "--attach",
            &format!("stream:unix:{}", link.display()),
            "--",
        ])
        .args(["sh", "-c", "ip addr add 10.77.0.2/24 dev eth0 && ping -c 3 -W 10 10.77.0.1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&ping.stdout);
    assert!(ping.status.success(), "ping failed: {stdout}{}", String::from_utf8_lossy(&ping.stderr));
    assert!(stdout.contains("3 received"), "{stdout}");

    let status =
        support::vnet_with(&["--log-level", "warn", "ns", "--", "sh", "-c", "exit 7"]).status().unwrap();
    assert_eq!(status.code(), Some(7), "vnet ns exits with the command's status");
}

#[test]
fn unprivileged_namespaces_reach_each_other_through_a_stream_socket() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let sock = dir.path().join("seg.sock");
    let ready = dir.path().join("ready");
    let nobody = |args: &[&str]| {
        let mut command = Command::new("setpriv");
        command.args(["--reuid=65534", "--regid=65534", "--clear-groups", support::vnet_binary()]);
        command.args(args);
        command
    };
    let server_script = format!(
        "ip addr add 10.78.0.1/24 dev eth0 && id -u > {0}.tmp && mv {0}.tmp {0} && exec sleep 60",
        ready.display()
    );
    let mut server = nobody(&[
        "ns",
        "--no-user",
        "--listen",
        &format!("stream:unix:{}", sock.display()),
        "--",
        "sh",
        "-c",
        &server_script,
    ])
    .spawn()
    .unwrap();
    wait_until("the first namespace", DEADLINE, || ready.exists() && sock.exists());
    assert_eq!(
        std::fs::read_to_string(&ready).unwrap().trim(),
        "0",
        "the command is root in its user namespace"
    );

    let client = nobody(&[
        "--log-level",
        "warn",
        "ns",
        "--no-user",
        "--attach",
        &format!("stream:unix:{}", sock.display()),
        "--",
        "sh",
        "-c",
        "ip addr add 10.78.0.2/24 dev eth0 && ping -c 2 -W 10 10.78.0.1",
    ])
    .output()
    .unwrap();
    signal(server.id(), libc::SIGTERM);
    let server_status = server.wait().unwrap();
    assert!(
        client.status.success(),
        "{}{}",
        String::from_utf8_lossy(&client.stdout),
        String::from_utf8_lossy(&client.stderr)
    );
    assert_eq!(server_status.code(), Some(128 + libc::SIGTERM), "SIGTERM reaches the command");
}

#[test]
fn attaching_a_namespace_without_permission_is_a_one_line_error() {
    let far = NamedNamespace::create();
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", support::vnet_binary()])
        .args(["run", "--no-user", "--attach", &format!("netns:{}", far.path())])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no permission to enter"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn an_unprivileged_vnet_attaches_the_namespace_of_an_unprivileged_process() {
    let as_nobody = |program: &str| {
        let mut command = Command::new("setpriv");
        command.args(["--reuid=65534", "--regid=65534", "--clear-groups", program]);
        command
    };
    let mut holder = as_nobody("unshare").args(["-rn", "sleep", "60"]).spawn().unwrap();
    let pid = holder.id();
    let netns_of = |pid: u32| std::fs::read_link(format!("/proc/{pid}/ns/net")).ok();
    wait_until("the holder's own namespace", DEADLINE, || netns_of(pid) != netns_of(std::process::id()));

    let mut vnet = as_nobody(support::vnet_binary())
        .args(["run", "--no-user", "--attach", &format!("netns:{pid}")])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let links = || {
        Command::new("nsenter").args(["-t", &pid.to_string(), "-n", "ip", "-br", "link"]).output().unwrap()
    };
    wait_until("eth0 in the holder's namespace", DEADLINE, || {
        String::from_utf8_lossy(&links().stdout).contains("eth0")
    });
    let listing = String::from_utf8_lossy(&links().stdout).to_string();
    signal(vnet.id(), libc::SIGTERM);
    let status = vnet.wait().unwrap();
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(status.success());
    assert!(listing.lines().any(|l| l.starts_with("eth0") && l.contains("UP")), "{listing}");
}

#[test]
fn the_tap_name_is_chosen_with_ifname_and_a_taken_name_is_refused() {
    let far = NamedNamespace::create();
    let spec = format!("netns:{},ifname=vnet7", far.path());
    let first = Vnet::spawn(&["run", "--no-user", "--attach", &spec]);
    first.wait_for_log("port opened");
    let links = String::from_utf8_lossy(&far.exec(&["ip", "-br", "link"]).stdout).to_string();
    assert!(links.lines().any(|l| l.starts_with("vnet7") && l.contains("UP")), "{links}");

    let (status, log) = Vnet::spawn(&["run", "--no-user", "--attach", &spec]).wait();
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(log.contains("already exists"), "{log}");
    drop(first);
}

/// Runs `script`, after [`AWAIT_SLAAC`], in a namespace of `vnet ns --user USER`, and
/// returns what it printed, once it has succeeded.
fn in_ipv6_namespace(user: &str, script: &str) -> String {
    let script = format!("{AWAIT_SLAAC}{script}");
    let output =
        support::vnet_with(&["--log-level", "warn", "ns", "--user", user, "--", "sh", "-c", &script])
            .output()
            .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    stdout
}

#[test]
fn a_namespace_makes_its_ipv6_address_from_router_advertisements_and_pings_the_gateway() {
    let stdout = in_ipv6_namespace(
        "mtu=1400",
        "ip -6 addr show dev eth0; ip -6 route\nping -6 -c 3 -W 5 fec0::2 && ping -6 -c 2 -W 5 fe80::2%eth0",
    );
    assert!(stdout.contains("inet6 fec0::"), "a SLAAC address in fec0::/64:\n{stdout}");
    assert!(stdout.contains("default via fe80::2 dev eth0"), "the gateway is the default router:\n{stdout}");
    assert!(stdout.contains("3 packets transmitted, 3 received"), "{stdout}");
    assert!(stdout.contains("2 packets transmitted, 2 received"), "{stdout}");
}

#[test]
fn a_namespace_reaches_host_loopback_over_ipv6_with_tcp_udp_and_dns_through_an_ipv6_upstream() {
    use support::services::{answer_dns, echo_one, greet_one, tcp_service, udp_service, ServiceThreads};
    let upstream = udp_service("[::1]:0");
    let echo = udp_service("[::1]:0");
    let hello = tcp_service("[::1]:0");
    let (upstream_port, echo_port, hello_port) = (
        upstream.local_addr().unwrap().port(),
        echo.local_addr().unwrap().port(),
        hello.local_addr().unwrap().port(),
    );
    let mut services = ServiceThreads::default();
    services.serve(move || answer_dns(&upstream));
    services.serve(move || echo_one(&echo));
    services.serve(move || greet_one(&hello));
    let script = format!(
        r#"busybox nc -w 5 fec0::2 {hello_port} </dev/null
/usr/bin/python3 -c "import socket; s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.settimeout(5); s.sendto(b'udp6-works', ('fec0::2', {echo_port})); print(s.recv(100).decode())"
busybox nslookup vnet.test fec0::3"#
    );
    let stdout = in_ipv6_namespace(&format!("dns-upstream=[::1]:{upstream_port}"), &script);
    for expected in ["hello", "udp6-works", "192.0.2.7"] {
        assert!(stdout.contains(expected), "missing {expected}:\n{stdout}");
    }
    drop(services);
}

#[test]
fn with_ipv4_off_a_namespace_has_ipv6_only_and_its_resolver_is_the_ipv6_dns_address() {
    let stdout = in_ipv6_namespace(
        "ipv4=off",
        "echo \"ipv4: $(ip -4 addr show dev eth0 | grep -c inet)\"\ncat /etc/resolv.conf\nping -6 -c 1 -W 5 fec0::2",
    );
    assert!(stdout.contains("ipv4: 0"), "no IPv4 address:\n{stdout}");
    assert!(stdout.contains("nameserver fec0::3") && !stdout.contains("nameserver 10.0.2.3"), "{stdout}");
    assert!(stdout.contains("1 received"), "{stdout}");
}

#[test]
fn pings_over_ipv6_reach_a_host_beyond_the_gateway() {
    // vnet runs in "world", which reaches "far" (fd00:99::1) over a veth; the guest is a
    // namespace on vnet's tap.
    let [world, far, guest] = [(); 3].map(|()| NamedNamespace::create());
    link(&world, "v0", "fd00:99::2/64", &far, "v1", "fd00:99::1/64");
    let network = Vnet::spawn_in(Some(&world), &["run", "--attach", &format!("netns:{}", guest.path())]);
    network.wait_for_log("name=netns:");
    let output = guest.exec(&["sh", "-c", &format!("{AWAIT_SLAAC}ping -6 -c 3 -W 5 fd00:99::1")]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}\n{}",
        String::from_utf8_lossy(&output.stderr),
        network.log()
    );
    assert!(stdout.contains("3 packets transmitted, 3 received"), "{stdout}");
}

/// A TCP port free on the host's loopback right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("[::1]:0").unwrap().local_addr().unwrap().port()
}

/// What a connection to `address` reads until the server closes it, once one succeeds.
fn read_once_served(address: &str) -> String {
    use std::io::Read;
    let mut text = String::new();
    wait_until(&format!("a connection to {address}"), DEADLINE, || {
        let Ok(mut stream) = std::net::TcpStream::connect(address) else {
            return false;
        };
        stream.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        text.clear();
        stream.read_to_string(&mut text).is_ok() && !text.is_empty()
    });
    text
}

#[test]
fn hostfwd_listens_on_ipv6_and_with_no_host_address_on_both_families_and_reaches_ipv6_guests() {
    let (ipv6_port, both_port, to_ipv6_port) = (free_port(), free_port(), free_port());
    let user = format!(
        "hostfwd=tcp:[::1]:{ipv6_port}-:7070,hostfwd=tcp::{both_port}-:7070,hostfwd=tcp:[::1]:{to_ipv6_port}-[fec0::77]:7070"
    );
    // The guest has fec0::77 but never sends from it: the gateway must ask for it by
    // neighbour solicitation. Its server takes both families.
    let server = "import os, socket\n\
                  os.system('ip -6 addr add fec0::77/64 dev eth0 nodad')\n\
                  s = socket.socket(socket.AF_INET6)\n\
                  s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\n\
                  s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
                  s.bind(('::', 7070))\n\
                  s.listen()\n\
                  while True:\n    c, _ = s.accept()\n    c.sendall(b'forwarded')\n    c.close()\n";
    let mut namespace = support::vnet_with(&[
        "--log-level",
        "warn",
        "ns",
        "--user",
        &user,
        "--",
        "/usr/bin/python3",
        "-c",
        server,
    ])
    .stdout(std::process::Stdio::null())
    .spawn()
    .unwrap();
    for address in [
        format!("[::1]:{ipv6_port}"),
        format!("[::1]:{both_port}"),
        format!("127.0.0.1:{both_port}"),
        format!("[::1]:{to_ipv6_port}"),
    ] {
        assert_eq!(read_once_served(&address), "forwarded", "through {address}");
    }
    assert!(std::net::TcpStream::connect(format!("127.0.0.1:{ipv6_port}")).is_err(), "[::1] is IPv6 only");
    // SIGTERM reaches the command (which must not inherit vnet's blocked signals), and
    // vnet exits with it.
    signal(namespace.id(), libc::SIGTERM);
    wait_until("vnet ns to exit on SIGTERM", DEADLINE, || namespace.try_wait().unwrap().is_some());
}

/// Run in the namespace once it has its DHCPv6 lease: holds a TCP connection and a UDP
/// flow to the gateway's IPv6 address, then prints what `vnet flows` and `vnet status`
/// say, and the API's /metrics.
const SHOW_IPV6_FLOWS: &str = r#"
import socket, subprocess, sys
vnet, name, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
tcp = socket.create_connection(("fec0::2", port), timeout=30)
udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
udp.sendto(b"x", ("fec0::2", port))
for command in ("flows", "status"):
    print(subprocess.run([vnet, command, name], capture_output=True, text=True).stdout)
api = socket.socket(socket.AF_UNIX)
api.connect(f"/run/vnet/{name}/api.sock")
api.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
print(b"".join(iter(lambda: api.recv(65536), b"")).decode())
"#;

#[test]
fn dhclient_gets_an_ipv6_address_and_dns_from_dhcpv6_and_inspection_shows_ipv6_leases_and_flows() {
    let host_service = std::net::TcpListener::bind("[::1]:0").unwrap();
    let port = host_service.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let name = format!("dhcpv6-{}", std::process::id());
    let leases = dir.path().join("dhclient.leases");
    let script = format!(
        r#"n=0
until ip -6 addr show dev eth0 scope link | grep -q 'inet6 fe80' && ! ip -6 addr show dev eth0 | grep -q tentative; do
    n=$((n+1)); [ $n -ge 300 ] && exit 1; sleep 0.1
done
dhclient -6 -1 -v -lf {leases} -pf {dir}/dhclient.pid -sf /bin/true eth0 || exit 1
kill $(cat {dir}/dhclient.pid)
cat {leases}
{vnet} leases {name}
python3 -c '{SHOW_IPV6_FLOWS}' {vnet} {name} {port}"#,
        leases = leases.display(),
        dir = dir.path().display(),
        vnet = support::vnet_binary(),
    );
    let output = support::vnet_with(&[
        "--log-level",
        "warn",
        "ns",
        "--name",
        &name,
        "--user",
        "domainname=vnet.test",
        "--",
        "sh",
        "-c",
        &script,
    ])
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    for expected in ["iaaddr fec0::100", "dhcp6.name-servers fec0::3", "dhcp6.domain-search \"vnet.test.\""] {
        assert!(stdout.contains(expected), "missing {expected}:\n{stdout}");
    }
    assert!(
        stdout.lines().any(|line| line.contains("fec0::100")),
        "vnet leases lists the address:\n{stdout}"
    );
    let flow_lines = stdout.lines().filter(|line| line.contains(&format!("[fec0::2]:{port}"))).count();
    assert_eq!(flow_lines, 2, "vnet flows lists the TCP and the UDP flow:\n{stdout}");
    for expected in [
        "(IPv6 1)\n".to_owned(),
        "(IPv6 2)\n".to_owned(),
        "gateway  fec0::2 (fe80::2) in fec0::/64, dns fec0::3".to_owned(),
        "vnet_gateway_flows_by_family{family=\"ipv6\"} 2".to_owned(),
        "vnet_dhcp_leases_by_family{family=\"ipv6\"} 1".to_owned(),
    ] {
        assert!(stdout.contains(&expected), "missing {expected}:\n{stdout}");
    }
    drop(host_service);
}

/// Joins `a` and `b` with a veth pair, `a_end` in `a` at `a_address` and `b_end` in `b`
/// at `b_address` (no duplicate address detection, so they are usable at once).
fn link(a: &NamedNamespace, a_end: &str, a_address: &str, b: &NamedNamespace, b_end: &str, b_address: &str) {
    run_ok(
        &mut a
            .command(&["ip", "link", "add", a_end, "type", "veth", "peer", "name", b_end, "netns", &b.name]),
    );
    run_ok(&mut a.command(&["ip", "addr", "add", a_address, "dev", a_end, "nodad"]));
    run_ok(&mut a.command(&["ip", "link", "set", a_end, "up"]));
    run_ok(&mut b.command(&["ip", "addr", "add", b_address, "dev", b_end, "nodad"]));
    run_ok(&mut b.command(&["ip", "link", "set", b_end, "up"]));
}

#[test]
fn traceroute6_sees_the_gateway_each_router_and_the_destination() {
    // guest -> vnet (in "world") -> router -> far, all over IPv6.
    let [world, router, far, guest] = [(); 4].map(|()| NamedNamespace::create());
    link(&world, "w0", "fd00:1::2/64", &router, "r0", "fd00:1::1/64");
    link(&router, "r1", "fd00:2::1/64", &far, "f0", "fd00:2::2/64");
    run_ok(&mut router.command(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]));
    run_ok(&mut world.command(&["ip", "-6", "route", "add", "fd00:2::/64", "via", "fd00:1::1"]));
    run_ok(&mut far.command(&["ip", "-6", "route", "add", "default", "via", "fd00:2::1"]));
    let network = Vnet::spawn_in(Some(&world), &["run", "--attach", &format!("netns:{}", guest.path())]);
    network.wait_for_log("name=netns:");
    let script = format!("{AWAIT_SLAAC}busybox traceroute6 -n -q 1 -w 3 -m 5 fd00:2::2");
    let output = guest.exec(&["sh", "-c", &script]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}\n{}",
        String::from_utf8_lossy(&output.stderr),
        network.log()
    );
    let hops: Vec<&str> = stdout
        .lines()
        .filter(|line| line.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .filter_map(|line| line.split_whitespace().nth(1))
        .collect();
    let (_, log) = network.stop();
    assert_eq!(hops, ["fec0::2", "fd00:1::1", "fd00:2::2"], "the hops:\n{stdout}\n{log}");
}

/// A DNS query from inside `guest` to the gateway's DNS address; true if answered.
fn resolves(guest: &NamedNamespace, name: &str) -> bool {
    let socket = guest.run_inside(|| std::net::UdpSocket::bind("0.0.0.0:0").unwrap());
    socket.set_read_timeout(Some(std::time::Duration::from_secs(3))).unwrap();
    let mut query = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    socket.send_to(&query, "10.0.2.3:53").unwrap();
    let mut reply = [0u8; 512];
    matches!(socket.recv_from(&mut reply), Ok((len, _)) if len > 12 && reply[..2] == [0x12, 0x34] && reply[3] & 0xf == 0)
}

/// Without `dns-upstream=`, the gateway's upstreams follow the resolv.conf vnet sees.
/// vnet runs in a namespace of its own, where `ip netns exec` binds
/// /etc/netns/NAME/resolv.conf over /etc/resolv.conf, so the test's file (naming DNS
/// servers on that namespace's loopback) stands in for the host's; rewriting it moves
/// the guest's queries to the new server without a restart.
#[test]
fn without_dns_upstream_the_gateway_follows_changes_to_resolv_conf() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let world = NamedNamespace::create();
    let guest = NamedNamespace::create();
    let etc = std::path::PathBuf::from(format!("/etc/netns/{}", world.name));
    std::fs::create_dir_all(&etc).unwrap();
    let _etc = RemoveOnDrop(etc.clone());
    let resolv_conf = etc.join("resolv.conf");
    std::fs::write(&resolv_conf, "nameserver 127.0.0.1\n").unwrap();

    let counts = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
    let mut services = support::services::ServiceThreads::default();
    for (n, count) in counts.iter().enumerate() {
        let address = format!("127.0.0.{}:53", n + 1);
        let socket = world.run_inside(|| support::services::udp_service(&address));
        let count = Arc::clone(count);
        services.serve(move || {
            let mut peek = [0u8; 512];
            if socket.peek_from(&mut peek).is_ok() {
                count.fetch_add(1, Ordering::Relaxed);
            }
            support::services::answer_dns(&socket);
        });
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("vnet.log");
    let attach = format!("netns:{}", guest.path());
    let child = world
        .command(&[support::vnet_binary(), "run", "--attach", &attach])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let _vnet = KillOnDrop(child);
    let logged = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until("the gateway", DEADLINE, || logged().contains("gateway up"));
    wait_until("the guest's tap", DEADLINE, || guest.exec(&["ip", "link", "show", "eth0"]).status.success());
    let (ok, output) = guest.shell("ip addr add 10.0.2.15/24 dev eth0 && ip link set eth0 up");
    assert!(ok, "{output}");

    assert!(resolves(&guest, "first.test"), "{}", logged());
    assert_eq!(counts.iter().map(|c| c.load(Ordering::Relaxed)).collect::<Vec<_>>(), [1, 0]);
    std::fs::write(&resolv_conf, "# a VPN came up\nnameserver 127.0.0.2\n").unwrap();
    wait_until("vnet to see the change", DEADLINE, || logged().contains("new DNS upstreams"));
    assert!(resolves(&guest, "second.test"));
    assert_eq!(counts.iter().map(|c| c.load(Ordering::Relaxed)).collect::<Vec<_>>(), [1, 1], "{}", logged());
}

/// A hostfwd client in another namespace (standing for a machine on the LAN) reaches the
/// guest from its own address, TCP and UDP, and the guest's replies find it through the
/// gateway; a client on the host's loopback still appears as the gateway.
#[test]
fn a_forwarded_client_is_seen_by_the_guest_at_its_own_address() {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream, UdpSocket};
    let (world, lan, guest) = (NamedNamespace::create(), NamedNamespace::create(), NamedNamespace::create());
    let (ok, output) = world.shell(&format!(
        "ip link add w0 type veth peer name c0 netns {} && ip addr add 10.88.0.1/24 dev w0 && ip link set w0 up",
        lan.name
    ));
    assert!(ok, "{output}");
    let (ok, output) = lan.shell("ip addr add 10.88.0.2/24 dev c0 && ip link set c0 up");
    assert!(ok, "{output}");
    let attach = format!("netns:{}", guest.path());
    let vnet = Vnet::spawn_in(
        Some(&world),
        &[
            "run",
            "--user",
            "hostfwd=tcp:0.0.0.0:8022-10.0.2.15:22,hostfwd=udp:0.0.0.0:8053-10.0.2.15:5353",
            "--attach",
            &attach,
        ],
    );
    vnet.wait_for_log("gateway up");
    guest.configure_eth0("10.0.2.15");
    let (server, datagrams) = guest
        .run_inside(|| (TcpListener::bind("0.0.0.0:22").unwrap(), UdpSocket::bind("0.0.0.0:5353").unwrap()));
    let seen_by_guest = |client: &NamedNamespace, target: &str| {
        let mut stream = client.run_inside(|| {
            TcpStream::connect_timeout(&target.parse().unwrap(), DEADLINE).expect("the forward connects")
        });
        let (mut accepted, peer) = server.accept().unwrap();
        accepted.write_all(b"hi").unwrap();
        let mut greeting = [0u8; 2];
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        stream.read_exact(&mut greeting).unwrap();
        assert_eq!(&greeting, b"hi", "the guest's reply went back through the gateway");
        peer.ip().to_string()
    };
    assert_eq!(seen_by_guest(&lan, "10.88.0.1:8022"), "10.88.0.2", "{}", vnet.log());
    assert_eq!(seen_by_guest(&world, "127.0.0.1:8022"), "10.0.2.2");

    let client = lan.run_inside(|| UdpSocket::bind("0.0.0.0:0").unwrap());
    client.set_read_timeout(Some(std::time::Duration::from_secs(2))).unwrap();
    datagrams.set_read_timeout(Some(std::time::Duration::from_secs(2))).unwrap();
    let mut buffer = [0u8; 64];
    // The first datagram may find the guest not yet known to the gateway: send again.
    let from = (0..5)
        .find_map(|_| {
            client.send_to(b"ping", "10.88.0.1:8053").unwrap();
            datagrams.recv_from(&mut buffer).ok().map(|(_, from)| from)
        })
        .expect("the datagram reached the guest");
    assert_eq!(from.ip().to_string(), "10.88.0.2");
    datagrams.send_to(b"pong", from).unwrap();
    let (len, _) = client.recv_from(&mut buffer).expect("the guest's reply reached the client");
    assert_eq!(&buffer[..len], b"pong");
}

/// Guests by name: two guests name themselves in DHCP and find each other by name
/// with busybox `ping NAME` (through the search list) and `wget http://NAME.vnet.internal/`;
/// `host.vnet.internal`, a static `dns-record=` and PTR answer too, and a third guest
/// that asks for a name already held is refused and shadows nobody.
#[test]
fn guests_find_each_other_by_the_names_they_gave_in_dhcp() {
    let world = NamedNamespace::create();
    let guests = [NamedNamespace::create(), NamedNamespace::create(), NamedNamespace::create()];
    let dir = tempfile::tempdir().unwrap();
    let dhcp_script = write_dhcp_script(dir.path());
    let mut cleanup = Vec::new();
    for guest in &guests {
        let etc = std::path::PathBuf::from(format!("/etc/netns/{}", guest.name));
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(etc.join("resolv.conf"), "nameserver 10.0.2.3\nsearch vnet.internal\n").unwrap();
        cleanup.push(RemoveOnDrop(etc));
    }
    let name = format!("t{}-names", std::process::id());
    let mut args = vec![
        "run".to_owned(),
        "--name".to_owned(),
        name.clone(),
        "--user".to_owned(),
        "dns-record=files=10.0.2.2".to_owned(),
    ];
    for guest in &guests {
        args.extend(["--attach".to_owned(), format!("netns:{}", guest.path())]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let vnet = Vnet::spawn_in(Some(&world), &args);
    vnet.wait_for_log("gateway up");
    let lease = |guest: &NamedNamespace, name: &str| {
        wait_until("the guest's tap", DEADLINE, || {
            guest.exec(&["ip", "link", "show", "eth0"]).status.success()
        });
        let (ok, output) = guest.shell(&format!(
            "ip link set eth0 up && busybox udhcpc -i eth0 -n -q -t 10 -T 2 -x hostname:{name} -s {} && ip route add default via 10.0.2.2",
            dhcp_script.display()
        ));
        assert!(ok, "{output}");
        output.lines().find_map(|line| line.strip_prefix("LEASE ")).unwrap().to_owned()
    };
    let alpha = lease(&guests[0], "alpha");
    let beta = lease(&guests[1], "beta");
    lease(&guests[2], "alpha");
    vnet.wait_for_log("DHCP host name refused");

    let site = dir.path().join("site");
    std::fs::create_dir(&site).unwrap();
    std::fs::write(site.join("index.html"), "beta's page\n").unwrap();
    let _httpd = KillOnDrop(
        guests[1].command(&["busybox", "httpd", "-f", "-p", "8080", "-h"]).arg(&site).spawn().unwrap(),
    );
    wait_until("busybox httpd", DEADLINE, || {
        String::from_utf8_lossy(&guests[1].exec(&["ss", "-Hltn", "sport", "=", ":8080"]).stdout)
            .contains("8080")
    });
    let (ok, output) = guests[0].shell("ping -c 1 -W 3 beta");
    assert!(ok && output.contains(&beta), "{output}");
    let (ok, output) = guests[0].shell("busybox wget -q -O - http://beta.vnet.internal:8080/");
    assert!(ok && output.contains("beta's page"), "{output}");
    let lookup = |name: &str| guests[1].shell(&format!("busybox nslookup {name} 10.0.2.3")).1;
    assert!(lookup("alpha.vnet.internal").contains(&alpha), "the first to ask keeps the name");
    assert!(lookup("host.vnet.internal").contains("10.0.2.2"));
    assert!(lookup("files.vnet.internal").contains("10.0.2.2"));
    assert!(lookup(&beta).contains("beta.vnet.internal"), "PTR: {}", lookup(&beta));
    assert!(
        lookup("nobody.vnet.internal").contains("NXDOMAIN")
            || !lookup("nobody.vnet.internal").contains("Address")
    );
}

/// The gateway's TFTP server (`tftp=`, with `bootfile=` in DHCP): busybox tftp fetches
/// a file whole at the default and a large block size, and a path climbing out, a
/// symlink leading out, a missing file and a write each get their TFTP error.
#[test]
fn busybox_tftp_fetches_from_the_gateway_and_escapes_missing_files_and_writes_are_refused() {
    use support::transfer::{sha256_hex, test_bytes};
    let world = NamedNamespace::create();
    let guest = NamedNamespace::create();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tftp");
    std::fs::create_dir_all(root.join("ipxe")).unwrap();
    let image = test_bytes(300_000);
    std::fs::write(root.join("ipxe/boot.bin"), &image).unwrap();
    let outside = dir.path().join("secret");
    std::fs::write(&outside, "not for guests\n").unwrap();
    std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
    let dhcp_script = write_dhcp_script(dir.path());
    let user = format!("tftp={},bootfile=ipxe/boot.bin", root.display());
    let attach = format!("netns:{}", guest.path());
    let vnet = Vnet::spawn_in(Some(&world), &["run", "--user", &user, "--attach", &attach]);
    vnet.wait_for_log("gateway up");
    wait_until("the guest's tap", DEADLINE, || guest.exec(&["ip", "link", "show", "eth0"]).status.success());
    let (ok, output) = guest.shell(&format!(
        "ip link set eth0 up && busybox udhcpc -i eth0 -n -q -t 10 -T 2 -s {}",
        dhcp_script.display()
    ));
    assert!(ok && output.contains("BOOT 10.0.2.2 ipxe/boot.bin"), "{output}");

    for block_size in ["512", "1400"] {
        let local = dir.path().join(format!("fetched-{block_size}"));
        let (ok, output) = guest.shell(&format!(
            "busybox tftp -g -b {block_size} -r ipxe/boot.bin -l {} 10.0.2.2",
            local.display()
        ));
        assert!(ok, "{output}\n{}", vnet.log());
        assert_eq!(sha256_hex(&std::fs::read(&local).unwrap()), sha256_hex(&image), "blocks of {block_size}");
    }
    let refused = |command: &str| {
        let (ok, output) = guest.shell(command);
        assert!(!ok, "{command} succeeded: {output}");
        output
    };
    let scratch = dir.path().join("scratch");
    let get = |remote: &str| format!("busybox tftp -g -r {remote} -l {} 10.0.2.2", scratch.display());
    assert!(refused(&get("../secret")).contains("outside"), "a path climbing out");
    assert!(refused(&get("escape")).contains("outside"), "a symlink leading out");
    assert!(refused(&get("missing")).contains("not found"));
    std::fs::write(&scratch, "upload").unwrap();
    let put = format!("busybox tftp -p -l {} -r up 10.0.2.2", scratch.display());
    assert!(refused(&put).contains("read-only"));
    assert!(!root.join("up").exists());
}

/// Egress policy with real namespaces: one guest may reach one host port and nothing
/// else (TCP elsewhere is reset, UDP and ping are answered "administratively
/// prohibited"), another is unrestricted, `vnet policy list` counts the denials, and a
/// rule added at runtime lets the first guest's next connection through.
#[test]
fn an_egress_policy_limits_one_guest_to_one_port_and_changes_at_runtime() {
    use std::net::{TcpListener, TcpStream, UdpSocket};
    let world = NamedNamespace::create();
    let (limited, free) = (NamedNamespace::create(), NamedNamespace::create());
    let listeners = world.run_inside(|| {
        [TcpListener::bind("127.0.0.1:7001").unwrap(), TcpListener::bind("127.0.0.1:7002").unwrap()]
    });
    let echo = world.run_inside(|| UdpSocket::bind("127.0.0.1:7003").unwrap());
    let name = format!("t{}-policy", std::process::id());
    let vnet = Vnet::spawn_in(
        Some(&world),
        &[
            "run",
            "--name",
            &name,
            "--user",
            "allow=from:10.0.2.15+proto:tcp+to:10.0.2.2+port:7001,deny=from:10.0.2.15",
            "--attach",
            &format!("netns:{}", limited.path()),
            "--attach",
            &format!("netns:{}", free.path()),
        ],
    );
    vnet.wait_for_log("gateway up");
    for (guest, address) in [(&limited, "10.0.2.15"), (&free, "10.0.2.16")] {
        guest.configure_eth0(address);
    }
    let connects = |guest: &NamedNamespace, port: u16| {
        let target = std::net::SocketAddr::from(([10, 0, 2, 2], port));
        guest.run_inside(|| TcpStream::connect_timeout(&target, DEADLINE)).map(drop).map_err(|e| e.kind())
    };
    assert_eq!(connects(&limited, 7001), Ok(()), "the one port it may reach");
    assert_eq!(connects(&limited, 7002), Err(std::io::ErrorKind::ConnectionRefused), "reset at once");
    assert_eq!(connects(&free, 7002), Ok(()), "the other guest is unrestricted");
    let udp = limited.run_inside(|| UdpSocket::bind("0.0.0.0:0").unwrap());
    udp.connect("10.0.2.2:7003").unwrap();
    udp.set_read_timeout(Some(std::time::Duration::from_secs(3))).unwrap();
    udp.send(b"x").unwrap();
    let mut buffer = [0u8; 8];
    let refused = udp.recv(&mut buffer).expect_err("no answer to a denied datagram");
    assert_ne!(refused.kind(), std::io::ErrorKind::WouldBlock, "an ICMP error, not silence: {refused}");
    echo.set_nonblocking(true).unwrap();
    assert!(echo.recv_from(&mut buffer).is_err(), "the datagram never reached the host");
    // Beyond the gateway (the world namespace has no route there: nothing could leave).
    let (_, output) = limited.shell("ping -c 1 -W 2 192.0.2.1");
    assert!(output.contains("filtered") || output.contains("Prohibited"), "{output}");

    let policy = vnet_command().args(["policy", "list", &name, "--json"]).output().unwrap();
    let rules: serde_json::Value = serde_json::from_slice(&policy.stdout).unwrap();
    assert!(rules[1]["denied"].as_u64().unwrap() >= 3, "{rules}");
    let added = vnet_command()
        .args(["policy", "add", &name, "allow=from:10.0.2.15+proto:tcp+port:7002", "--position", "0"])
        .output()
        .unwrap();
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    assert_eq!(connects(&limited, 7002), Ok(()), "a new connection meets the new rule");
    let removed = vnet_command().args(["policy", "rm", &name, "0"]).output().unwrap();
    assert!(removed.status.success());
    assert_eq!(connects(&limited, 7002), Err(std::io::ErrorKind::ConnectionRefused));
    drop(listeners);
}

/// A name rule (`to:host:NAME`) lets a guest reach the addresses the gateway's DNS
/// handed it for that name, and nothing before it asked: the connection is reset until
/// the guest resolves the name, and goes through after.
#[test]
fn a_name_rule_opens_what_the_dns_told_the_guest() {
    use std::net::{TcpListener, TcpStream, UdpSocket};
    let world = NamedNamespace::create();
    let guest = NamedNamespace::create();
    // The address the test's DNS upstream answers with lives on the world's loopback.
    let (ok, output) = world.shell("ip addr add 192.0.2.7/32 dev lo");
    assert!(ok, "{output}");
    let _listener = world.run_inside(|| TcpListener::bind("0.0.0.0:7001").unwrap());
    let dns = world.run_inside(|| support::services::udp_service("127.0.0.1:53"));
    let mut services = support::services::ServiceThreads::default();
    services.serve(move || support::services::answer_dns(&dns));
    let vnet = Vnet::spawn_in(
        Some(&world),
        &[
            "run",
            "--user",
            "dns-upstream=127.0.0.1:53,allow=proto:tcp+to:host:files.example+port:7001,deny=proto:tcp+to:192.0.2.0/24",
            "--attach",
            &format!("netns:{}", guest.path()),
        ],
    );
    vnet.wait_for_log("gateway up");
    guest.configure_eth0("10.0.2.15");
    let target = std::net::SocketAddr::from(([192, 0, 2, 7], 7001));
    let connects =
        || guest.run_inside(|| TcpStream::connect_timeout(&target, DEADLINE)).map(drop).map_err(|e| e.kind());
    assert_eq!(connects(), Err(std::io::ErrorKind::ConnectionRefused), "not before the guest asked");
    let resolver = guest.run_inside(|| UdpSocket::bind("0.0.0.0:0").unwrap());
    resolver.set_read_timeout(Some(DEADLINE)).unwrap();
    let query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05files\x07example\x00\x00\x01\x00\x01";
    resolver.send_to(query, "10.0.2.3:53").unwrap();
    let mut reply = [0u8; 512];
    let (len, _) = resolver.recv_from(&mut reply).expect("the DNS answer");
    assert!(reply[..len].ends_with(&[192, 0, 2, 7]));
    assert_eq!(connects(), Ok(()), "what the DNS told it for files.example:\n{}", vnet.log());
}

/// `guestfwd=...-cmd:COMMAND`: each connection to the virtual address runs the command,
/// with the connection as its standard input and output, from vnet's helper outside the
/// sandbox.
#[test]
fn a_guestfwd_command_runs_for_each_connection() {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpStream;
    let world = NamedNamespace::create();
    let guest = NamedNamespace::create();
    let vnet = Vnet::spawn_in(
        Some(&world),
        &[
            "run",
            "--user",
            "guestfwd=tcp:10.0.2.100:80-cmd:echo hello-$$; cat",
            "--attach",
            &format!("netns:{}", guest.path()),
        ],
    );
    vnet.wait_for_log("gateway up");
    guest.configure_eth0("10.0.2.15");
    let talk = || {
        let target = std::net::SocketAddr::from(([10, 0, 2, 100], 80));
        let stream = guest
            .run_inside(|| TcpStream::connect_timeout(&target, DEADLINE))
            .expect("the guestfwd connects");
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut lines = BufReader::new(stream.try_clone().unwrap()).lines();
        let greeting = lines.next().expect("a greeting").unwrap();
        (&stream).write_all(b"ping\n").unwrap();
        assert_eq!(lines.next().expect("the echo").unwrap(), "ping", "cat echoes what the guest sends");
        greeting
    };
    let (first, second) = (talk(), talk());
    assert!(first.starts_with("hello-") && second.starts_with("hello-"), "{first} {second}");
    assert_ne!(first, second, "each connection runs its own command:\n{}", vnet.log());
}
