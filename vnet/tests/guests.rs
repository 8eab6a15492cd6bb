//! Real QEMU guests on every transport of issue 2: stream over unix and TCP (including
//! the legacy `-netdev socket,connect=`), dgram, multicast, a `vnet ns` namespace, jumbo
//! frames, a guest killed and restarted, and a frozen guest. Guests use static addresses
//! in 10.0.0.0/24 that exist only on vnet's segment.

mod support;

use std::path::{Path, PathBuf};

use support::guest::{
    assert_pinged, assert_success, stream_netdev, GuestLock, GuestSpec, Nic, BOOT_DEADLINE, SCRIPT_DEADLINE,
};
use support::*;

fn unix_listen(sock: &Path) -> String {
    format!("stream:unix:{}", sock.display())
}

/// A vnet listening on a unix stream socket in a fresh directory.
fn stream_network() -> (tempfile::TempDir, PathBuf, Vnet) {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vnet.sock");
    let vnet = Vnet::listening_on(&sock, &["run", "--listen", &unix_listen(&sock)]);
    (dir, sock, vnet)
}

#[test]
fn virtio_and_e1000_guests_ping_each_other_over_stream_unix() {
    let _lock = GuestLock::acquire();
    let (_dir, sock, _vnet) = stream_network();

    let a = GuestSpec::new(
        "virtio",
        Nic::VirtioNet,
        &stream_netdev(&sock),
        "net 10.0.0.1/24 && wait_ping 10.0.0.2 && ping -c 3 -W 5 10.0.0.2; report",
    )
    .mac("52:54:00:00:00:01")
    .boot();
    a.wait_ready();
    let b = GuestSpec::new(
        "e1000",
        Nic::E1000,
        &stream_netdev(&sock),
        "net 10.0.0.2/24 && wait_ping 10.0.0.1 && ping -c 3 -W 5 10.0.0.1; report",
    )
    .mac("52:54:00:00:00:02")
    .boot();
    let (a, b) = (a.wait_result(), b.wait_result());
    assert_pinged(&a, 3);
    assert_pinged(&b, 3);
}

#[test]
fn rtl8139_on_legacy_socket_connect_reaches_a_guest_on_stream_inet() {
    let _lock = GuestLock::acquire();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vnet.sock");
    let port = free_tcp_port();
    let _vnet = Vnet::listening_on(
        &sock,
        &["run", "--listen", &unix_listen(&sock), "--listen", &format!("stream:tcp:127.0.0.1:{port}")],
    );
    let responder = GuestSpec::new(
        "virtio",
        Nic::VirtioNet,
        &stream_netdev(&sock),
        "net 10.0.0.1/24 && wait_ping 10.0.0.3; report",
    )
    .mac("52:54:00:00:00:01")
    .boot();
    responder.wait_ready();
    let legacy = GuestSpec::new(
        "rtl8139",
        Nic::Rtl8139,
        &format!("socket,id=n0,connect=127.0.0.1:{port}"),
        "net 10.0.0.3/24 && wait_ping 10.0.0.1 && ping -c 3 -W 5 10.0.0.1; report",
    )
    .mac("52:54:00:00:00:03")
    .boot();
    let legacy = legacy.wait_result();
    assert_pinged(&legacy, 3);
    assert_success(&responder.wait_result());
}

#[test]
fn guests_on_dgram_unix_and_dgram_udp_reach_each_other() {
    let _lock = GuestLock::acquire();
    let dir = tempfile::tempdir().unwrap();
    let dgram = dir.path().join("vnet-dgram.sock");
    let vnet_port = free_udp_port();
    let vnet = Vnet::spawn(&[
        "run",
        "--listen",
        &format!("dgram:unix:{}", dgram.display()),
        "--listen",
        &format!("dgram:udp:127.0.0.1:{vnet_port}"),
    ]);
    vnet.wait_for_log("dgram:udp");
    let udp_netdev = format!(
        "dgram,id=n0,local.type=inet,local.host=127.0.0.1,local.port={},remote.type=inet,remote.host=127.0.0.1,remote.port={vnet_port}",
        free_udp_port()
    );
    let udp_guest =
        GuestSpec::new("udp", Nic::VirtioNet, &udp_netdev, "net 10.0.0.1/24 && wait_ping 10.0.0.4; report")
            .mac("52:54:00:00:00:01")
            .boot();
    udp_guest.wait_ready();
    let unix_netdev = format!(
        "dgram,id=n0,local.type=unix,local.path={},remote.type=unix,remote.path={}",
        dir.path().join("guest.sock").display(),
        dgram.display()
    );
    let unix_guest = GuestSpec::new(
        "unix",
        Nic::E1000,
        &unix_netdev,
        "net 10.0.0.4/24 && wait_ping 10.0.0.1 && ping -c 3 -W 5 10.0.0.1; report",
    )
    .mac("52:54:00:00:00:04")
    .boot();
    let result = unix_guest.wait_result();
    assert_pinged(&result, 3);
    assert_success(&udp_guest.wait_result());
    let log = vnet.log();
    assert!(log.contains("guest.sock"), "the unix dgram peer got a port: {log}");
    assert!(log.contains("peer=127.0.0.1:"), "the UDP peer got a port: {log}");
}

#[test]
fn vnet_attaches_to_listening_qemus_and_reattaches_after_a_restart() {
    let _lock = GuestLock::acquire();
    let dir = tempfile::tempdir().unwrap();
    let qemu_sock = dir.path().join("qemu.sock");
    let qemu_port = free_tcp_port();
    // vnet starts first: neither QEMU is listening yet, so it keeps retrying.
    let vnet = Vnet::spawn(&[
        "run",
        "--attach",
        &format!("stream:unix:{}", qemu_sock.display()),
        "--attach",
        &format!("stream:tcp:127.0.0.1:{qemu_port}"),
    ]);
    vnet.wait_for_log("retrying");
    let server = GuestSpec::new(
        "server-on",
        Nic::VirtioNet,
        &format!("stream,id=n0,server=on,addr.type=unix,addr.path={}", qemu_sock.display()),
        "net 10.0.0.1/24 && wait_ping 10.0.0.2; report",
    )
    .mac("52:54:00:00:00:01")
    .boot();
    server.wait_ready();
    let legacy_netdev = format!("socket,id=n0,listen=127.0.0.1:{qemu_port}");
    let ping_server = "net 10.0.0.2/24 && wait_ping 10.0.0.1 && ping -c 3 -W 5 10.0.0.1; report";
    let legacy =
        GuestSpec::new("listen", Nic::E1000, &legacy_netdev, ping_server).mac("52:54:00:00:00:02").boot();
    let first = legacy.wait_result();
    assert_pinged(&first, 3);

    // The listening QEMU goes away and comes back: vnet connects again by itself.
    legacy.signal(libc::SIGKILL);
    drop(legacy);
    vnet.wait_for_log("peer went away; reconnecting");
    let again = GuestSpec::new("listen-again", Nic::E1000, &legacy_netdev, ping_server)
        .mac("52:54:00:00:00:02")
        .boot();
    let second = again.wait_result();
    assert_pinged(&second, 3);
    drop(server);
}

#[test]
fn two_guests_on_a_multicast_segment_reach_a_guest_on_a_stream_port() {
    let _lock = GuestLock::acquire();
    // Multicast stays inside a namespace made for this test: its loopback carries the group.
    let netns = NamedNamespace::create();
    run_ok(&mut netns.command(&["ip", "link", "set", "lo", "multicast", "on"]));
    run_ok(&mut netns.command(&["ip", "route", "add", "224.0.0.0/4", "dev", "lo"]));
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vnet.sock");
    let group = "230.0.0.1:12345";
    let vnet = Vnet::spawn_in(
        Some(&netns),
        &["run", "--listen", &unix_listen(&sock), "--attach", &format!("mcast:{group},localaddr=127.0.0.1")],
    );
    wait_until("vnet's socket", DEADLINE, || std::os::unix::net::UnixStream::connect(&sock).is_ok());
    vnet.wait_for_log("mcast:230.0.0.1");

    let target = GuestSpec::new(
        "stream",
        Nic::VirtioNet,
        &stream_netdev(&sock),
        "net 10.0.0.1/24 && wait_ping 10.0.0.11 && wait_ping 10.0.0.12; report",
    )
    .mac("52:54:00:00:00:01")
    .boot();
    target.wait_ready();
    let mcast_netdev = format!("socket,id=n0,mcast={group},localaddr=127.0.0.1");
    let members: Vec<_> = [11, 12]
        .into_iter()
        .map(|n| {
            let guest = GuestSpec::new(
                &format!("mcast{n}"),
                Nic::E1000,
                &mcast_netdev,
                &format!("net 10.0.0.{n}/24 && wait_ping 10.0.0.1 && ping -c 3 -W 5 10.0.0.1; report"),
            )
            .mac(&format!("52:54:00:00:00:{n}"))
            .in_netns(&netns.name)
            .boot();
            guest.wait_ready();
            guest
        })
        .collect();
    for member in members {
        let result = member.wait_result();
        assert_pinged(&result, 3);
    }
    assert_success(&target.wait_result());
}

#[test]
fn a_namespace_made_by_vnet_ns_reaches_a_guest() {
    let _lock = GuestLock::acquire();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vnet.sock");
    let ns = support::vnet_with(&["--log-level", "warn", "ns", "--listen", &unix_listen(&sock), "--"])
        .args(["sh", "-c", "ip addr add 10.0.0.9/24 dev eth0 && n=0; until ping -c 1 -W 1 10.0.0.1; do n=$((n+1)); [ $n -ge 300 ] && exit 1; done; ping -c 3 -W 5 10.0.0.1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("vnet ns's socket", DEADLINE, || sock.exists());
    let guest = GuestSpec::new(
        "guest",
        Nic::VirtioNet,
        &stream_netdev(&sock),
        "net 10.0.0.1/24 && wait_ping 10.0.0.9; report",
    )
    .boot();
    let ns = ns.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&ns.stdout);
    assert!(ns.status.success(), "{stdout}");
    assert!(stdout.contains("3 received"), "{stdout}");
    assert_success(&guest.wait_result());
}

#[test]
fn jumbo_frames_pass_between_guests_with_mtu_9000() {
    let _lock = GuestLock::acquire();
    let (_dir, sock, vnet) = stream_network();
    let a = GuestSpec::new(
        "virtio",
        Nic::VirtioNet,
        &stream_netdev(&sock),
        "net 10.0.0.1/24 9000 && wait_ping 10.0.0.2; report",
    )
    .mac("52:54:00:00:00:01")
    .boot();
    a.wait_ready();
    let b = GuestSpec::new(
        "e1000",
        Nic::E1000,
        &stream_netdev(&sock),
        "net 10.0.0.2/24 9000 && wait_ping 10.0.0.1 && ping -c 3 -s 8972 -W 5 10.0.0.1; report",
    )
    .mac("52:54:00:00:00:02")
    .boot();
    let b = b.wait_result();
    assert_pinged(&b, 3);
    // B's MTU is 9000, so its kernel sent each 8972-byte ping as one 9014-byte frame.
    assert_success(&a.wait_result());
    let (_, log) = vnet.stop();
    assert!(log.contains("rx_bytes="), "{log}");
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn a_killed_guest_restarted_on_the_same_mac_is_reachable_and_others_lose_no_ping() {
    let _lock = GuestLock::acquire();
    let (_dir, sock, _vnet) = stream_network();
    let netdev = stream_netdev(&sock);
    let b =
        GuestSpec::new("b", Nic::E1000, &netdev, "net 10.0.0.2/24; report").mac("52:54:00:00:00:02").boot();
    b.wait_ready();
    let c_mac = "52:54:00:00:00:03";
    let c = GuestSpec::new("c", Nic::VirtioNet, &netdev, "net 10.0.0.3/24; report").mac(c_mac).boot();
    c.wait_ready();
    let a = GuestSpec::new(
        "a",
        Nic::VirtioNet,
        &netdev,
        "net 10.0.0.1/24 && wait_ping 10.0.0.2 && wait_ping 10.0.0.3 && echo PINGING && ping -c 80 -i 0.5 -W 5 10.0.0.2; report",
    )
    .mac("52:54:00:00:00:01")
    .boot();
    a.wait_for("PINGING", BOOT_DEADLINE);

    c.signal(libc::SIGKILL);
    drop(c);
    let c_again = GuestSpec::new(
        "c-again",
        Nic::VirtioNet,
        &netdev,
        "net 10.0.0.3/24 && wait_ping 10.0.0.1 && ping -c 3 -W 5 10.0.0.1; report",
    )
    .mac(c_mac)
    .boot();
    let c_result = c_again.wait_result();
    assert_pinged(&c_result, 3);

    // Every one of A's pings to B was answered while C went away and came back.
    assert_pinged(&a.wait_result(), 80);
    drop(b);
}

#[test]
fn a_frozen_guest_loses_its_own_frames_and_does_not_stall_the_others() {
    let _lock = GuestLock::acquire();
    let (_dir, sock, vnet) = stream_network();
    let netdev = stream_netdev(&sock);
    let b =
        GuestSpec::new("b", Nic::E1000, &netdev, "net 10.0.0.2/24; report").mac("52:54:00:00:00:02").boot();
    b.wait_ready();
    let c = GuestSpec::new("c", Nic::VirtioNet, &netdev, "net 10.0.0.3/24; report")
        .mac("52:54:00:00:00:03")
        .boot();
    c.wait_ready();
    // A floods the frozen C with 60 KB pings (about 40 frames each; more than C's socket
    // buffers and port queue hold) while it pings B, then waits for C to come back.
    let a = GuestSpec::new(
        "a",
        Nic::VirtioNet,
        &netdev,
        r#"net 10.0.0.1/24 && wait_ping 10.0.0.2 && wait_ping 10.0.0.3 || exit 1
echo FREEZE-NOW
n=0; while ping -c 1 -W 1 10.0.0.3 >/dev/null 2>&1; do n=$((n+1)); [ $n -ge 120 ] && exit 1; done
ping -q -s 60000 -i 0.01 -c 1000 10.0.0.3 >/dev/null 2>&1 &
ping -c 20 -i 0.2 -W 5 10.0.0.2; rc=$?
echo THAW-NOW
wait_ping 10.0.0.3 && [ $rc = 0 ]; report"#,
    )
    .mac("52:54:00:00:00:01")
    .boot();
    a.wait_for("FREEZE-NOW", BOOT_DEADLINE);
    c.signal(libc::SIGSTOP);
    a.wait_for("THAW-NOW", SCRIPT_DEADLINE);
    c.signal(libc::SIGCONT);
    assert_pinged(&a.wait_result(), 20);

    let c_pid = c.pid();
    drop((b, c, a));
    let (_, log) = vnet.stop();
    let c_port = log
        .lines()
        .find(|l| l.contains("port closed") && l.contains(&format!("pid={c_pid}\"")))
        .unwrap_or_else(|| panic!("no counters for C in:\n{log}"));
    assert!(c_port.contains("drop.queue_full="), "C's port dropped what it could not take: {c_port}");
    let others_dropped = log
        .lines()
        .filter(|l| l.contains("port closed") && !l.contains(&format!("pid={c_pid}\"")))
        .any(|l| l.contains("drop."));
    assert!(!others_dropped, "no other port dropped anything:\n{log}");
}
