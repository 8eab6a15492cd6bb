//! The user-mode gateway with real QEMU guests: DHCP, ping to the gateway, DNS through a
//! test upstream (dnsmasq), and UDP NAT to the host's loopback. Every upstream and host
//! service runs on loopback inside a namespace the test creates, and vnet is told about it
//! with dns-upstream=, so the machine's own resolver is never asked.

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};

use support::guest::{assert_pinged, assert_success, stream_netdev, GuestLock, GuestSpec, Nic, DHCP};
use support::transfer::*;
use support::*;

/// Bytes moved each way in the guest transfer test.
const TRANSFER_BYTES: usize = 100_000_000;

/// A vnet with the gateway (DNS upstream: the namespace's own 127.0.0.1) running inside
/// `netns` and listening on a unix socket in a fresh directory.
fn network_in(netns: &NamedNamespace) -> (tempfile::TempDir, std::path::PathBuf, Vnet) {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vnet.sock");
    let vnet = Vnet::spawn_in(
        Some(netns),
        &["run", "--user", "dns-upstream=127.0.0.1", "--listen", &format!("stream:unix:{}", sock.display())],
    );
    wait_until("vnet's socket", DEADLINE, || std::os::unix::net::UnixStream::connect(&sock).is_ok());
    (dir, sock, vnet)
}

/// PXE: a guest with no kernel of its own boots over the network. The iPXE ROM QEMU
/// gives its NIC takes DHCP from vnet (boot file `boot.ipxe`, next server the gateway),
/// fetches that script, the kernel and the initramfs over TFTP, and the booted guest
/// pings the gateway.
#[test]
fn a_guest_boots_over_the_network_from_the_gateways_tftp_server() {
    let _lock = GuestLock::acquire();
    let dir = tempfile::tempdir().unwrap();
    let tftp = dir.path().join("tftp");
    std::fs::create_dir(&tftp).unwrap();
    let sock = dir.path().join("vnet.sock");
    let user = format!("tftp={},bootfile=boot.ipxe", tftp.display());
    let vnet = Vnet::listening_on(
        &sock,
        &["run", "--user", &user, "--listen", &format!("stream:unix:{}", sock.display())],
    );
    let script = format!("{DHCP} && ping -c 3 -W 5 10.0.2.2; report");
    let guest = GuestSpec::new("pxe", Nic::VirtioNet, &stream_netdev(&sock), &script).pxe(&tftp).boot();
    let result = guest.wait_result();
    assert_pinged(&result, 3);
    let log = vnet.log();
    for file in ["boot.ipxe", "vmlinuz", "initrd"] {
        assert!(
            log.contains(&format!("file=\"{file}\"")) || log.contains(&format!("file={file}")),
            "{file} over TFTP:\n{log}"
        );
    }
}

#[test]
fn dhcp_configures_two_guests_and_the_gateway_answers_ping() {
    let _lock = GuestLock::acquire();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vnet.sock");
    let vnet = Vnet::listening_on(
        &sock,
        &[
            "run",
            "--user",
            "mtu=1400,domainname=vnet.test,dns-upstream=127.0.0.1:9",
            "--listen",
            &format!("stream:unix:{}", sock.display()),
        ],
    );
    let script = format!(
        "{DHCP} && cat /run/dhcp.env && echo mtu-now=$(cat /sys/class/net/eth0/mtu) && ip route && wait_ping 10.0.2.2 30 && ping -c 3 -W 5 10.0.2.2; report"
    );
    let first = GuestSpec::new("first", Nic::VirtioNet, &stream_netdev(&sock), &script)
        .mac("52:54:00:00:00:01")
        .boot();
    let first = first.wait_result();
    assert_pinged(&first, 3);
    for expected in
        ["ip=10.0.2.15", "router=10.0.2.2", "dns=10.0.2.3", "mtu=1400", "mtu-now=1400", "domain=vnet.test"]
    {
        assert!(first.output.contains(expected), "missing {expected}:\n{}", first.output);
    }
    assert!(first.output.contains("default via 10.0.2.2"), "{}", first.output);

    // A machine busy with other tests' bulk transfers can starve a TCG guest for a few
    // seconds: the script waits for the first answer (wait_ping) before counting three.
    let second =
        GuestSpec::new("second", Nic::E1000, &stream_netdev(&sock), &script).mac("52:54:00:00:00:02").boot();
    let second = second.wait_result();
    assert_success(&second);
    assert!(second.output.contains("ip=10.0.2.16"), "{}", second.output);
    let (_, log) = vnet.stop();
    assert!(log.contains("DHCP lease") && log.contains("ip=10.0.2.16"), "{log}");
}

/// dnsmasq answering `vnet.test` with a TEST-NET address, inside `netns` on
/// 127.0.0.1:53. It never forwards anything.
fn start_dnsmasq(netns: &NamedNamespace) -> Child {
    netns
        .command(&[
            "dnsmasq",
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--port=53",
            "--address=/vnet.test/192.0.2.7",
            "--address=/vnet.test/fd00:2::7",
            "--pid-file=",
            "--user=root",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dnsmasq runs (apt install dnsmasq-base)")
}

fn dnsmasq_is_up(netns: &NamedNamespace) -> bool {
    let output = netns.exec(&["ss", "-Hlun", "sport", "=", ":53"]);
    String::from_utf8_lossy(&output.stdout).contains("127.0.0.1:53")
}

#[test]
fn dns_is_forwarded_and_udp_reaches_host_loopback_and_a_dead_upstream_gives_servfail() {
    let _lock = GuestLock::acquire();
    let netns = NamedNamespace::create();
    let mut dnsmasq = start_dnsmasq(&netns);
    wait_until("dnsmasq", DEADLINE, || dnsmasq_is_up(&netns));

    let (_dir, sock, vnet) = network_in(&netns);
    let script = format!(
        r#"{DHCP} || exit 1
nslookup -type=a vnet.test && echo RESOLVED-VIA-DNS
nslookup -type=a vnet.test 10.0.2.2 && echo RESOLVED-VIA-HOST-LOOPBACK
echo STOP-DNS
n=0; until nslookup -type=a vnet.test 2>&1 | grep -q SERVFAIL; do n=$((n+1)); [ $n -ge 60 ] && exit 1; done
echo GOT-SERVFAIL; report"#
    );
    let guest = GuestSpec::new("dns", Nic::VirtioNet, &stream_netdev(&sock), &script).boot();
    guest.wait_for("STOP-DNS", support::guest::BOOT_DEADLINE);
    let _ = dnsmasq.kill();
    let _ = dnsmasq.wait();
    let result = guest.wait_result();
    assert_success(&result);
    for expected in ["192.0.2.7", "RESOLVED-VIA-DNS", "RESOLVED-VIA-HOST-LOOPBACK", "GOT-SERVFAIL"] {
        assert!(result.output.contains(expected), "missing {expected}:\n{}", result.output);
    }
    drop(vnet);
}

#[test]
fn tcp_carries_data_both_ways_between_a_guest_and_host_loopback() {
    let _lock = GuestLock::acquire();
    let len = TRANSFER_BYTES;
    let body = test_bytes(len);
    let expected_download = sha256_hex(&body);
    let http_port = serve_http_once(body);
    let (upload_port, upload) = receive_once(len);
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vnet.sock");
    let _vnet = Vnet::listening_on(&sock, &["run", "--listen", &format!("stream:unix:{}", sock.display())]);
    let script = format!(
        r#"{DHCP} || exit 1
{}; report"#,
        guest_transfer_script(http_port, upload_port, len)
    );
    let guest = GuestSpec::new("tcp", Nic::VirtioNet, &stream_netdev(&sock), &script).boot();
    let result = guest.wait_result();
    assert_success(&result);
    assert!(result.output.contains(&format!("download={expected_download}")), "{}", result.output);
    let uploaded = upload.join().unwrap();
    assert!(result.output.contains(&format!("upload={uploaded}")), "host got {uploaded}:\n{}", result.output);
}

fn free_port(udp: bool) -> u16 {
    if udp {
        std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    } else {
        TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }
}

#[test]
fn hostfwd_and_guestfwd_reach_guest_and_host_services() {
    let _lock = GuestLock::acquire();
    let (web_port, closed_port, iperf_port) = (free_port(false), free_port(false), free_port(false));
    let host_web = serve_http_once(b"through guestfwd".to_vec());
    let user = format!(
        "dns-upstream=127.0.0.1:9,hostfwd=tcp:127.0.0.1:{web_port}-:7000,hostfwd=tcp:127.0.0.1:{closed_port}-:7001,\
         hostfwd=tcp:127.0.0.1:{iperf_port}-:5201,hostfwd=udp:127.0.0.1:{iperf_port}-:5201,\
         guestfwd=tcp:10.0.2.100:80-127.0.0.1:{host_web}"
    );
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vnet.sock");
    let _vnet = Vnet::listening_on(
        &sock,
        &["run", "--user", &user, "--listen", &format!("stream:unix:{}", sock.display())],
    );
    let script = format!(
        "{DHCP} || exit 1
wget -q -O - http://10.0.2.100/ && echo
mkdir -p /www && echo served-by-the-guest > /www/index.html && httpd -p 7000 -h /www
iperf3 -s -D
n=0; until netstat -ltn | grep -q ':5201 ' && netstat -ltn | grep -q ':7000 '; do n=$((n+1)); [ $n -ge 600 ] && exit 1; sleep 0.1; done
echo SERVERS-UP; report"
    );
    let guest = GuestSpec::new("fwd", Nic::VirtioNet, &stream_netdev(&sock), &script).boot();
    guest.wait_for("SERVERS-UP", support::guest::BOOT_DEADLINE);
    assert!(guest.output().contains("through guestfwd"), "guestfwd reached the host:\n{}", guest.output());

    // Many concurrent host clients through one TCP forward, each served by the guest.
    let clients: Vec<_> = (0..50)
        .map(|_| {
            std::thread::spawn(move || {
                let mut stream = std::net::TcpStream::connect(("127.0.0.1", web_port)).unwrap();
                stream.set_read_timeout(Some(DEADLINE)).unwrap();
                stream.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
                let mut response = String::new();
                stream.read_to_string(&mut response).unwrap();
                assert!(response.ends_with("served-by-the-guest\n"), "{response}");
            })
        })
        .collect();
    for client in clients {
        client.join().expect("a response through hostfwd");
    }

    // Nothing listens on the guest's port 7001: the host client sees the connection end.
    let mut closed = std::net::TcpStream::connect(("127.0.0.1", closed_port)).unwrap();
    closed.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut byte = [0u8; 1];
    match closed.read(&mut byte) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the connection to close, got {other:?}"),
    }

    // UDP both ways through the forward: iperf3 host to guest, then guest to host (-R).
    // The guest's iperf3 server closes its listener between tests, so a client that
    // arrives in that gap is reset, as it would be on a real network: try again.
    for reverse in [false, true] {
        let mut last_report = String::new();
        let passed = (0..20).any(|_| {
            let (ok, report) = iperf3_udp_through(iperf_port, reverse);
            last_report = report;
            ok || {
                std::thread::sleep(std::time::Duration::from_millis(500));
                false
            }
        });
        assert!(passed, "no UDP packets went through (reverse: {reverse}):\n{last_report}");
    }
}

/// Runs a 2-second iperf3 UDP test through `port`; true if packets were received.
fn iperf3_udp_through(port: u16, reverse: bool) -> (bool, String) {
    let mut iperf = Command::new("iperf3");
    // 1200-byte datagrams: the gateway does not reassemble IPv4 fragments.
    iperf.args(["-c", "127.0.0.1", "-p", &port.to_string(), "-u", "-l", "1200", "-b", "2M", "-t", "2", "-J"]);
    if reverse {
        iperf.arg("-R");
    }
    let output = iperf.output().expect("iperf3 runs (apt install iperf3)");
    let report = String::from_utf8_lossy(&output.stdout).into_owned();
    let received = report
        .split("\"sum\":")
        .nth(1)
        .and_then(|sum| sum.split("\"packets\":").nth(1))
        .and_then(|rest| rest.trim_start().split([',', '\n']).next())
        .and_then(|packets| packets.trim().parse::<u64>().ok());
    (output.status.success() && received.is_some_and(|p| p > 0), report)
}

/// Accepts `count` connections on `address`, then echoes one byte on each and keeps them
/// open until the client closes them; returns the port and how many closed cleanly.
fn echo_many(address: &str, count: usize) -> (u16, std::thread::JoinHandle<usize>) {
    let listener = TcpListener::bind(address).unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let open: Vec<std::net::TcpStream> = (0..count).map(|_| listener.accept().unwrap().0).collect();
        for mut stream in &open {
            stream.set_read_timeout(Some(DEADLINE)).unwrap();
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).unwrap();
            stream.write_all(&byte).unwrap();
        }
        let mut closed = 0;
        for mut stream in open {
            let mut rest = Vec::new();
            if stream.read_to_end(&mut rest).is_ok() {
                closed += 1;
            }
        }
        closed
    });
    (port, handle)
}

/// Raises this process's open-file limit to the hard limit, for tests holding
/// thousands of sockets.
fn raise_file_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit read and write one rlimit, which `limit` is.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// The namespace side of the full-speed test, in Python (on the machine with the tests).
const NAMESPACE_CLIENT: &str = r#"
import hashlib, resource, socket, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
gateway = sys.argv[1]
download, upload, echo, length = (int(a) for a in sys.argv[2:])
digest = hashlib.sha256()
with socket.create_connection((gateway, download)) as s:
    while chunk := s.recv(1 << 20):
        digest.update(chunk)
print("download=" + digest.hexdigest())
block = bytes(range(256)) * 4096
sent = hashlib.sha256()
with socket.create_connection((gateway, upload)) as s:
    left = length
    while left:
        piece = block[: min(left, len(block))]
        s.sendall(piece)
        sent.update(piece)
        left -= len(piece)
    s.shutdown(socket.SHUT_WR)
    s.recv(1)
print("upload=" + sent.hexdigest())
conns = [socket.create_connection((gateway, echo)) for _ in range(1000)]
for c in conns:
    c.sendall(b"x")
echoed = sum(1 for c in conns if c.recv(1) == b"x")
for c in conns:
    c.close()
print(f"echoed={echoed}")
"#;

#[test]
fn a_namespace_moves_100_mb_each_way_and_holds_1000_connections() {
    namespace_moves_100_mb_each_way_and_holds_1000_connections("127.0.0.1", "10.0.2.2", "");
}

#[test]
fn a_namespace_moves_100_mb_each_way_and_holds_1000_connections_over_ipv6() {
    namespace_moves_100_mb_each_way_and_holds_1000_connections("::1", "fec0::2", AWAIT_SLAAC);
}

/// A `vnet ns` namespace (MTU 65520) downloads 100 MB from a server on the host's
/// `loopback`, uploads 100 MB to another and holds 1,000 connections to a third, all
/// through `gateway`, the gateway's address that leads there, after running `prepare`.
fn namespace_moves_100_mb_each_way_and_holds_1000_connections(loopback: &str, gateway: &str, prepare: &str) {
    raise_file_limit();
    let len = TRANSFER_BYTES;
    let body = test_bytes(len);
    let expected_download = sha256_hex(&body);
    let any_port = std::net::SocketAddr::new(loopback.parse().unwrap(), 0).to_string();
    let download = TcpListener::bind(&any_port).unwrap();
    let download_port = download.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let (mut stream, _) = download.accept().unwrap();
        stream.write_all(&body).unwrap();
    });
    let (upload_port, upload) = receive_once_on(&any_port, len);
    let (echo_port, echo) = echo_many(&any_port, 1000);
    let script = format!(r#"{prepare}exec python3 -c "$0" "$@""#);
    let output =
        support::vnet_with(&["--log-level", "info", "ns", "--user", "mtu=65520", "--", "sh", "-c", &script])
            .arg(NAMESPACE_CLIENT)
            .arg(gateway)
            .args([download_port, upload_port, echo_port].map(|p| p.to_string()))
            .arg(len.to_string())
            .output()
            .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains(&format!("download={expected_download}")), "{stdout}");
    let uploaded = upload.join().unwrap();
    assert!(stdout.contains(&format!("upload={uploaded}")), "host got {uploaded}: {stdout}");
    assert!(stdout.contains("echoed=1000"), "{stdout}");
    assert_eq!(echo.join().unwrap(), 1000, "every connection was closed cleanly");
    // The gateway sent the namespace no more than its port's queue took: each port's
    // final counters (logged as it closes) show no frame dropped for a full queue.
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("port closed"), "{stderr}");
    assert!(!stderr.contains("drop.queue_full"), "the gateway overran a port's queue: {stderr}");
}

/// Two namespaces made for a test: `inner`, where vnet runs, reaches `far` (192.0.2.2
/// and fd00:2::2, a test host) over a veth pair as 192.0.2.1 and fd00:2::1.
struct TestHostPair {
    inner: NamedNamespace,
    far: NamedNamespace,
}

impl TestHostPair {
    /// With `ping_sockets`, every group in `inner` may open ping sockets; without, none
    /// may (the kernel's default), so vnet (root in the tests) falls back to raw sockets.
    fn create(ping_sockets: bool) -> Self {
        let (inner, far) = (NamedNamespace::create(), NamedNamespace::create());
        let veth = format!("vt{}", std::process::id() % 100_000);
        run_ok(&mut inner.command(&[
            "ip", "link", "add", &veth, "type", "veth", "peer", "name", "far0", "netns", &far.name,
        ]));
        run_ok(&mut inner.command(&["ip", "addr", "add", "192.0.2.1/24", "dev", &veth]));
        run_ok(&mut inner.command(&["ip", "link", "set", &veth, "up"]));
        run_ok(&mut far.command(&["ip", "addr", "add", "192.0.2.2/24", "dev", "far0"]));
        run_ok(&mut far.command(&["ip", "link", "set", "far0", "up"]));
        run_ok(&mut inner.command(&["ip", "addr", "add", "fd00:2::1/64", "dev", &veth, "nodad"]));
        run_ok(&mut far.command(&["ip", "addr", "add", "fd00:2::2/64", "dev", "far0", "nodad"]));
        let range = if ping_sockets { "0 2147483647" } else { "1 0" };
        run_ok(&mut inner.command(&["sysctl", "-qw", &format!("net.ipv4.ping_group_range={range}")]));
        Self { inner, far }
    }
}

/// A web server (a directory listing) on `address` port 8080 in `netns`, once it listens.
fn web_server_on_8080(netns: &NamedNamespace, address: &str) -> Child {
    let web = netns
        .command(&["python3", "-m", "http.server", "8080", "--bind", address])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the web server", DEADLINE, || {
        String::from_utf8_lossy(&netns.exec(&["ss", "-Hltn", "sport", "=", ":8080"]).stdout).contains("8080")
    });
    web
}

#[test]
fn two_guests_reach_each_other_and_a_test_host_at_the_same_time() {
    let _lock = GuestLock::acquire();
    let hosts = TestHostPair::create(true);
    let mut web = web_server_on_8080(&hosts.far, "192.0.2.2");
    let (_dir, sock, _vnet) = network_in(&hosts.inner);
    let script = |peer: &str| {
        format!(
            "{DHCP} || exit 1
wait_ping {peer} && ping -c 3 -W 5 {peer} && echo PEER-OK
ping -c 3 -W 5 192.0.2.2 && echo TEST-HOST-PING-OK
wget -q -O /dev/null http://192.0.2.2:8080/ && echo TEST-HOST-WEB-OK; report"
        )
    };
    let first = GuestSpec::new("one", Nic::VirtioNet, &stream_netdev(&sock), &script("10.0.2.16"))
        .mac("52:54:00:00:00:01")
        .boot();
    first.wait_ready();
    let second = GuestSpec::new("two", Nic::E1000, &stream_netdev(&sock), &script("10.0.2.15"))
        .mac("52:54:00:00:00:02")
        .boot();
    for guest in [first.wait_result(), second.wait_result()] {
        assert_success(&guest);
        for expected in ["PEER-OK", "TEST-HOST-PING-OK", "TEST-HOST-WEB-OK"] {
            assert!(guest.output.contains(expected), "missing {expected}:\n{}", guest.output);
        }
    }
    let _ = web.kill();
    let _ = web.wait();
}

#[test]
fn pings_use_a_raw_socket_when_ping_sockets_are_not_allowed_and_traceroute_sees_each_hop() {
    let _lock = GuestLock::acquire();
    let hosts = TestHostPair::create(false);
    let (_dir, sock, _vnet) = network_in(&hosts.inner);
    let script =
        format!("{DHCP} && ping -c 3 -W 5 192.0.2.2; traceroute -n -q 1 -w 5 -m 4 192.0.2.2; report");
    let guest = GuestSpec::new("raw", Nic::VirtioNet, &stream_netdev(&sock), &script).boot();
    let result = guest.wait_result();
    assert_pinged(&result, 3);
    for hop in [" 1  10.0.2.2 ", " 2  192.0.2.2 "] {
        assert!(result.output.contains(hop), "traceroute hop {hop:?} missing:\n{}", result.output);
    }
}

#[test]
fn restrict_on_keeps_the_guest_in_and_hostfwd_working() {
    let _lock = GuestLock::acquire();
    let web_port = free_port(false);
    let host_server = TcpListener::bind("127.0.0.1:0").unwrap();
    host_server.set_nonblocking(true).unwrap();
    let host_port = host_server.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vnet.sock");
    let user = format!("dns-upstream=127.0.0.1:9,restrict=on,hostfwd=tcp:127.0.0.1:{web_port}-:7000");
    let _vnet = Vnet::listening_on(
        &sock,
        &["run", "--user", &user, "--listen", &format!("stream:unix:{}", sock.display())],
    );
    let script = format!(
        "{DHCP} || exit 1
cat /run/dhcp.env
wget -q -T 5 -O - http://10.0.2.2:{host_port}/ && echo ESCAPED
mkdir -p /www && echo inside > /www/index.html && httpd -p 7000 -h /www
n=0; until netstat -ltn | grep -q ':7000 '; do n=$((n+1)); [ $n -ge 600 ] && exit 1; sleep 0.1; done
echo SERVING; report"
    );
    let guest = GuestSpec::new("restricted", Nic::VirtioNet, &stream_netdev(&sock), &script).boot();
    guest.wait_for("SERVING", support::guest::BOOT_DEADLINE);
    let output = guest.output();
    assert!(!output.contains("ESCAPED"), "restrict=on let the guest out:\n{output}");
    assert!(
        !output.contains("router=") && !output.contains("dns="),
        "no router or DNS under restrict:\n{output}"
    );
    assert!(host_server.accept().is_err(), "the host server saw no connection");
    let mut client = std::net::TcpStream::connect(("127.0.0.1", web_port)).unwrap();
    client.set_read_timeout(Some(DEADLINE)).unwrap();
    client.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut response = String::new();
    client.read_to_string(&mut response).unwrap();
    assert!(response.ends_with("inside\n"), "hostfwd still works under restrict: {response}");
}

#[test]
fn no_user_gives_a_plain_switch() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vnet.sock");
    let vnet = Vnet::listening_on(
        &sock,
        &["run", "--no-user", "--listen", &format!("stream:unix:{}", sock.display())],
    );
    let (_, log) = vnet.stop();
    assert!(!log.contains("gateway"), "{log}");
    let status = support::vnet_command().args(["run", "--no-user", "--user", "mtu=9000"]).output().unwrap();
    assert_eq!(status.status.code(), Some(2), "--user and --no-user conflict");
}

/// A route two routers deep, all in namespaces made for the test: vnet runs in `inner`
/// (192.0.2.1), whose route to 198.51.100.0/24 goes through `router` (192.0.2.2 and
/// 198.51.100.1) to `far` (198.51.100.2), which serves nothing.
struct TwoHopRoute {
    inner: NamedNamespace,
    _router: NamedNamespace,
    _far: NamedNamespace,
}

impl TwoHopRoute {
    fn create() -> Self {
        let (inner, router, far) =
            (NamedNamespace::create(), NamedNamespace::create(), NamedNamespace::create());
        let link = |near: &NamedNamespace, near_if: &str, other: &NamedNamespace, other_if: &str| {
            let peer = ["peer", "name", other_if, "netns", &other.name];
            run_ok(near.command(&["ip", "link", "add", near_if, "type", "veth"]).args(peer));
        };
        link(&inner, "up0", &router, "down0");
        link(&router, "up1", &far, "down1");
        for (netns, address, interface) in [
            (&inner, "192.0.2.1/24", "up0"),
            (&router, "192.0.2.2/24", "down0"),
            (&router, "198.51.100.1/24", "up1"),
            (&far, "198.51.100.2/24", "down1"),
        ] {
            run_ok(&mut netns.command(&["ip", "addr", "add", address, "dev", interface]));
            run_ok(&mut netns.command(&["ip", "link", "set", interface, "up"]));
        }
        run_ok(&mut inner.command(&["ip", "route", "add", "198.51.100.0/24", "via", "192.0.2.2"]));
        run_ok(&mut far.command(&["ip", "route", "add", "default", "via", "198.51.100.1"]));
        run_ok(&mut router.command(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]));
        Self { inner, _router: router, _far: far }
    }
}

/// Connects to 198.51.100.2:80 with TTLs 1, 2 and 3 and prints how each connect ended.
const TCP_TTL_PROBE: &str = r#"
import errno, socket
for ttl in (1, 2, 3):
    s = socket.socket()
    s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
    s.settimeout(20)
    try:
        s.connect(("198.51.100.2", 80))
        print(ttl, "connected")
    except OSError as e:
        print(ttl, errno.errorcode.get(e.errno, e))
"#;

#[test]
fn traceroute_sees_the_gateway_and_each_router_and_tcp_gets_their_errors() {
    let route = TwoHopRoute::create();
    let vnet_ns = |command: &[&str]| {
        let mut args = vec![support::vnet_binary(), "--log-level", "warn", "ns", "--"];
        args.extend_from_slice(command);
        run_ok(&mut route.inner.command(&args))
    };
    let traceroute =
        vnet_ns(&["busybox", "traceroute", "-n", "-q", "1", "-w", "5", "-m", "6", "198.51.100.2"]);
    let hops: Vec<String> = String::from_utf8_lossy(&traceroute.stdout)
        .lines()
        .filter(|line| !line.starts_with("traceroute to"))
        .filter_map(|line| line.split_whitespace().nth(1).map(str::to_owned))
        .collect();
    assert_eq!(hops, ["10.0.2.2", "192.0.2.2", "198.51.100.2"], "the gateway, the router, the destination");

    let probe = vnet_ns(&["python3", "-c", TCP_TTL_PROBE]);
    let outcomes = String::from_utf8_lossy(&probe.stdout).into_owned();
    assert_eq!(outcomes, "1 EHOSTUNREACH\n2 EHOSTUNREACH\n3 ECONNREFUSED\n", "TTL errors, then the RST");
}

/// Asks 10.0.2.3 for vnet.test over TCP and prints the rcode and the answer's address.
const DNS_OVER_TCP_QUERY: &str = r#"
import socket, struct
query = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + b"\x04vnet\x04test\x00" + struct.pack(">HH", 1, 1)
s = socket.create_connection(("10.0.2.3", 53), timeout=30)
s.sendall(struct.pack(">H", len(query)) + query)
def read(n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise SystemExit("connection closed")
        data += chunk
    return data
(length,) = struct.unpack(">H", read(2))
reply = read(length)
print("rcode", reply[3] & 15, "answer", socket.inet_ntoa(reply[-4:]))
"#;

#[test]
fn dns_over_tcp_fails_over_past_a_refusing_and_a_silent_upstream() {
    let netns = NamedNamespace::create();
    // 203.0.113.77 sits behind a veth whose other end takes nothing for that MAC: SYNs
    // to it vanish without an answer.
    for command in [
        "ip link add void0 type veth peer name void1",
        "ip addr add 203.0.113.1/24 dev void0",
        "ip link set void0 up",
        "ip link set void1 up",
        "ip neigh add 203.0.113.77 lladdr 02:00:00:00:00:99 dev void0 nud permanent",
    ] {
        run_ok(&mut netns.command(&command.split(' ').collect::<Vec<_>>()));
    }
    let mut dnsmasq = start_dnsmasq(&netns);
    wait_until("dnsmasq", DEADLINE, || dnsmasq_is_up(&netns));
    let user = "dns-upstream=127.0.0.1:5399,dns-upstream=203.0.113.77,dns-upstream=127.0.0.1";
    let vnet = support::vnet_binary();
    let args = [vnet, "--log-level", "warn", "ns", "--user", user, "--", "python3", "-c", DNS_OVER_TCP_QUERY];
    let output = run_ok(&mut netns.command(&args));
    let _ = dnsmasq.kill();
    let _ = dnsmasq.wait();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "rcode 0 answer 192.0.2.7\n");
}

#[test]
fn a_guest_makes_its_ipv6_address_from_router_advertisements_and_reaches_the_host_over_ipv6() {
    let _lock = GuestLock::acquire();
    let http_port = serve_http_once_on("[::1]:0", b"over-ipv6".to_vec());
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vnet.sock");
    let _vnet = Vnet::listening_on(&sock, &["run", "--listen", &format!("stream:unix:{}", sock.display())]);
    let script = format!(
        r#"ip link set eth0 up
n=0; until ping -6 -c 1 -W 1 fec0::2 >/dev/null 2>&1; do n=$((n+1)); [ $n -ge 120 ] && exit 1; sleep 1; done
ip addr show dev eth0; ip -6 route
ping -6 -c 3 -W 5 fec0::2 && echo got=$(wget -q -O - 'http://[fec0::2]:{http_port}/'); report"#
    );
    let guest = GuestSpec::new("ipv6", Nic::VirtioNet, &stream_netdev(&sock), &script).boot();
    let result = guest.wait_result();
    assert_pinged(&result, 3);
    for expected in ["inet6 fec0::", "default via fe80::2", "got=over-ipv6"] {
        assert!(result.output.contains(expected), "missing {expected}:\n{}", result.output);
    }
}

#[test]
fn an_ipv6_only_guest_gets_slaac_dns_and_dhcpv6_reaches_host_and_test_host_and_is_reached_by_hostfwd() {
    let _lock = GuestLock::acquire();
    let hosts = TestHostPair::create(true);
    let mut dnsmasq = start_dnsmasq(&hosts.inner);
    wait_until("dnsmasq", DEADLINE, || dnsmasq_is_up(&hosts.inner));
    let mut web = web_server_on_8080(&hosts.inner, "::1");
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vnet.sock");
    let _vnet = Vnet::spawn_in(
        Some(&hosts.inner),
        &[
            "run",
            "--user",
            "dns-upstream=127.0.0.1,ipv4=off,dnssearch=vnet.test,hostfwd=tcp:[::1]:2280-:7000",
            "--listen",
            &format!("stream:unix:{}", sock.display()),
        ],
    );
    wait_until("vnet's socket", DEADLINE, || std::os::unix::net::UnixStream::connect(&sock).is_ok());
    let script = r#"ip link set eth0 up
n=0; until ping -6 -c 1 -W 1 fec0::2 >/dev/null 2>&1; do n=$((n+1)); [ $n -ge 120 ] && exit 1; sleep 1; done
ip addr show dev eth0
rdisc6 -1 -w 3000 eth0
nslookup vnet.test fec0::3
ping -6 -c 3 -W 5 fd00:2::2 || exit 1
wget -q -O - 'http://[fec0::2]:8080/' | grep -q 'Directory listing' && echo WEB-OK
dhclient -6 -1 -v -lf /tmp/dhclient.leases -pf /tmp/dhclient.pid -sf /bin/true eth0 || exit 1
grep iaaddr /tmp/dhclient.leases
mkdir -p /www && echo inside-over-ipv6 > /www/index.html && httpd -p 7000 -h /www
n=0; until netstat -ltn | grep -q ':7000 '; do n=$((n+1)); [ $n -ge 600 ] && exit 1; sleep 0.1; done
echo SERVING; report"#;
    let guest = GuestSpec::new("ipv6only", Nic::VirtioNet, &stream_netdev(&sock), script).boot();
    guest.wait_for("SERVING", support::guest::BOOT_DEADLINE);
    let output = guest.output();
    for expected in [
        "inet6 fec0::",
        "Recursive DNS server     : fec0::3",
        "DNS search list          : vnet.test",
        "Address: fd00:2::7",
        "3 packets transmitted, 3 packets received",
        "WEB-OK",
        "iaaddr fec0::",
    ] {
        assert!(output.contains(expected), "missing {expected}:\n{output}");
    }
    assert!(!output.contains("inet 10.0.2."), "an IPv4 address with ipv4=off:\n{output}");
    let fetched = hosts.inner.exec(&[
        "python3",
        "-c",
        "import urllib.request; print(urllib.request.urlopen('http://[::1]:2280/', timeout=30).read().decode())",
    ]);
    assert_eq!(String::from_utf8_lossy(&fetched.stdout), "inside-over-ipv6\n\n", "{fetched:?}");
    for child in [&mut web, &mut dnsmasq] {
        let _ = child.kill();
        let _ = child.wait();
    }
}
