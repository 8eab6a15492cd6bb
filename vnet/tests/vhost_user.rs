//! Real QEMU guests whose virtio-net NIC vnet serves over vhost-user: DHCP from the
//! gateway, a ping to a guest on a stream port, 100 MB each way to host loopback with
//! SHA-256 checked, the offloads the guest's driver agreed to, and a guest that keeps its
//! network through a reboot, a reset of its device and a restart of vnet.

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use support::guest::{assert_success, stream_netdev, GuestLock, GuestSpec, Nic, BOOT_DEADLINE, DHCP};
use support::transfer::*;
use support::*;

/// Bytes moved each way in the transfer test.
const TRANSFER_BYTES: usize = 100_000_000;

/// Virtio feature bits the guest must have agreed to, by number: CSUM, GUEST_CSUM,
/// GUEST_TSO4, GUEST_TSO6, HOST_TSO4, HOST_TSO6, MRG_RXBUF, STATUS, EVENT_IDX and
/// VERSION_1.
const NEGOTIATED: [(usize, &str); 10] = [
    (0, "CSUM"),
    (1, "GUEST_CSUM"),
    (7, "GUEST_TSO4"),
    (8, "GUEST_TSO6"),
    (11, "HOST_TSO4"),
    (12, "HOST_TSO6"),
    (15, "MRG_RXBUF"),
    (16, "STATUS"),
    (29, "EVENT_IDX"),
    (32, "VERSION_1"),
];

/// `vnet run` with the gateway, a vhost-user socket and a stream socket in `dir`, under
/// `name`; ready once the stream socket answers (both are bound before the loop runs).
fn network(dir: &Path, name: &str) -> Vnet {
    let stream = dir.join("stream.sock");
    Vnet::listening_on(
        &stream,
        &[
            "run",
            "--name",
            name,
            "--user",
            "dns-upstream=127.0.0.1:9",
            "--listen",
            &format!("vhost-user:{}", dir.join("vm.sock").display()),
            "--listen",
            &format!("stream:unix:{}", stream.display()),
        ],
    )
}

/// `vnet ARGS NAME --json`, parsed.
fn json(args: &[&str], name: &str) -> serde_json::Value {
    let output = vnet_command().args(args).args([name, "--json"]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn a_vhost_user_guest_gets_dhcp_pings_a_stream_guest_and_moves_100_mb_each_way_with_offloads() {
    let _lock = GuestLock::acquire();
    let dir = tempfile::tempdir().unwrap();
    let name = format!("vhu-{}", std::process::id());
    let _vnet = network(dir.path(), &name);

    let peer = GuestSpec::new(
        "stream-peer",
        Nic::E1000,
        &stream_netdev(&dir.path().join("stream.sock")),
        "net 10.0.2.50/24; report",
    )
    .boot();
    peer.wait_ready();

    let iperf_port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let _iperf = KillOnDrop(
        std::process::Command::new("iperf3")
            .args(["-s", "-B", "127.0.0.1", "-p", &iperf_port])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until("iperf3 -s", DEADLINE, || {
        std::net::TcpStream::connect(format!("127.0.0.1:{iperf_port}")).is_ok()
    });
    let (go_port, go) = go_signal();
    let body = test_bytes(TRANSFER_BYTES);
    let expected_download = sha256_hex(&body);
    let http_port = serve_http_once(body);
    let (upload_port, upload) = receive_once(TRANSFER_BYTES);
    let script = format!(
        r#"{DHCP} || exit 1
echo lease=$(ip -4 addr show eth0 | grep -o 'inet [0-9.]*')
echo features=$(cat /sys/class/net/eth0/device/features)
wait_ping 10.0.2.50 || exit 1
iperf3 -c 10.0.2.2 -p {iperf_port} -t 3 -l 128K | grep receiver
iperf3 -c 10.0.2.2 -p {iperf_port} -t 3 -R | grep receiver
echo OFFLOADS-DONE
wget -q -O /dev/null http://10.0.2.2:{go_port}/ || exit 1
{}; report"#,
        guest_transfer_script(http_port, upload_port, TRANSFER_BYTES)
    );
    let guest = GuestSpec::vhost_user("vhost-user", &dir.path().join("vm.sock"), &script).boot();
    guest.wait_for("OFFLOADS-DONE", BOOT_DEADLINE);
    let port = vhost_user_port(&name);
    go.send(()).unwrap();
    let (frames, bytes) = (port["rx_frames"].as_u64().unwrap(), port["rx_bytes"].as_u64().unwrap());
    assert!(bytes / frames > 8000, "the guest's TSO segments did not cross whole: {port}");
    let (frames, bytes) = (port["tx_frames"].as_u64().unwrap(), port["tx_bytes"].as_u64().unwrap());
    assert!(bytes / frames > 8000, "the gateway's segments did not reach the guest whole: {port}");
    let result = guest.wait_result();
    assert_success(&result);
    assert!(result.output.contains("lease=inet 10.0.2.15"), "{}", result.output);
    let features = result.output.lines().find_map(|line| line.strip_prefix("features=")).unwrap_or("");
    for (bit, feature) in NEGOTIATED {
        assert_eq!(features.as_bytes().get(bit), Some(&b'1'), "{feature} not negotiated: {features}");
    }
    assert!(result.output.contains(&format!("download={expected_download}")), "{}", result.output);
    let uploaded = upload.join().unwrap();
    assert!(result.output.contains(&format!("upload={uploaded}")), "host got {uploaded}:\n{}", result.output);

    let port = vhost_user_port(&name);
    assert!(port["rx_bytes"].as_u64().unwrap() >= TRANSFER_BYTES as u64, "{port}");
    // The upload's segments went to the host socket from the guest's own buffers.
    let status = json(&["status"], &name);
    let lent = status["events"]["vhost_user_lent"].as_u64().unwrap_or(0);
    let copied = status["events"]["vhost_user_lent_copied"].as_u64().unwrap_or(0);
    assert!(lent * 8000 > TRANSFER_BYTES as u64, "too few frames were lent: {status}");
    assert!(copied * 100 < lent, "lent frames were copied after all: {status}");
    // The download's segments were peeked from the host socket into the guest's buffers.
    let in_place = status["events"]["vhost_user_received_in_place"].as_u64().unwrap_or(0);
    assert!(in_place * 65536 > TRANSFER_BYTES as u64, "too few frames were received in place: {status}");
    assert_eq!(
        port["drops"].as_object().unwrap().values().filter_map(|v| v.as_u64()).sum::<u64>(),
        0,
        "{port}"
    );
    drop(peer);
}

/// The vhost-user port of the network `name`, as `vnet ports` shows it.
fn vhost_user_port(name: &str) -> serde_json::Value {
    let ports = json(&["ports"], name);
    let port = ports
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"].as_str().unwrap_or("").starts_with("vhost-user:"));
    port.cloned().unwrap_or_else(|| panic!("no vhost-user port in {ports}"))
}

/// A port on host loopback whose one HTTP request is answered only once the test sends
/// on the channel, so a guest's `wget` to it waits for the test.
fn go_signal() -> (u16, std::sync::mpsc::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (send, receive) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let Ok(()) = receive.recv() else { return };
        let Ok((mut stream, _)) = listener.accept() else { return };
        let _ = stream.read(&mut [0u8; 1024]);
        let _ = stream.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\ngo");
    });
    (port, send)
}

/// Answers "reboot" to the first HTTP request on host loopback and "stay" to the next.
fn reboot_once() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for answer in ["reboot", "stay"] {
            let Ok((mut stream, _)) = listener.accept() else { return };
            let _ = stream.read(&mut [0u8; 1024]);
            let _ = write!(stream, "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{answer}", answer.len());
        }
    });
    port
}

#[test]
fn a_vhost_user_guest_keeps_its_network_through_a_reboot_a_device_reset_and_a_vnet_restart() {
    let _lock = GuestLock::acquire();
    let dir = tempfile::tempdir().unwrap();
    let name = format!("vhu-restart-{}", std::process::id());
    let vnet = network(dir.path(), &name);
    let http_port = reboot_once();
    let script = format!(
        r#"{DHCP} || exit 1
echo BOOTED
if [ "$(wget -q -O - http://10.0.2.2:{http_port}/)" = reboot ]; then reboot -f; fi
device=$(basename $(readlink /sys/class/net/eth0/device))
echo $device > /sys/bus/virtio/drivers/virtio_net/unbind
echo $device > /sys/bus/virtio/drivers/virtio_net/bind
{DHCP} && ping -c 1 -W 5 10.0.2.2 >/dev/null && echo RESET-OK
i=0
while [ $i -lt 1200 ]; do
  if ping -c 1 -W 1 10.0.2.2 >/dev/null 2>&1; then echo PING-OK; else echo PING-FAIL; sleep 1; fi
  i=$((i+1))
done"#
    );
    let guest = GuestSpec::vhost_user("vhost-user-restart", &dir.path().join("vm.sock"), &script)
        .allow_reboot()
        .boot();
    guest.wait_for_count("BOOTED", 2, BOOT_DEADLINE * 2);
    guest.wait_for("RESET-OK", BOOT_DEADLINE);
    guest.wait_for("PING-OK", BOOT_DEADLINE);

    let (_, log) = vnet.stop();
    assert!(log.contains("frontend disconnected") || log.contains("port closed"), "{log}");
    guest.wait_for("PING-FAIL", BOOT_DEADLINE);
    let failures = guest.output().matches("PING-FAIL").count();
    let _vnet = network(dir.path(), &name);
    let fails_then_ok = || {
        let output = guest.output();
        let after_restart = output.rsplit("PING-FAIL").next().unwrap_or("");
        output.matches("PING-FAIL").count() >= failures && after_restart.contains("PING-OK")
    };
    wait_until("a ping through the restarted vnet", Duration::from_secs(120), fails_then_ok);
}

#[test]
fn a_vhost_user_directory_gives_each_vm_its_own_socket_and_the_vms_reach_each_other() {
    let _lock = GuestLock::acquire();
    let dir = tempfile::tempdir().unwrap();
    let vms = dir.path().join("vms");
    let stream = dir.path().join("stream.sock");
    let name = format!("vhu-dir-{}", std::process::id());
    let listen_dir = format!("vhost-user:{}/", vms.display());
    let listen_stream = format!("stream:unix:{}", stream.display());
    let _vnet = Vnet::listening_on(
        &stream,
        &["run", "--name", &name, "--no-user", "--listen", &listen_dir, "--listen", &listen_stream],
    );
    let free = |n: u32| vms.join(format!("vm-{n}.sock"));
    assert!(free(0).exists(), "the first free socket");

    let first = GuestSpec::vhost_user("vm-0", &free(0), "net 10.0.2.60/24; report").boot();
    wait_until("vm-1.sock once vm-0 has a VM", BOOT_DEADLINE, || free(1).exists());
    let args = vnet_command().args(["qemu-args", &name, "--transport", "vhost-user"]).output().unwrap();
    let args = String::from_utf8_lossy(&args.stdout);
    assert!(
        args.contains(&format!("path={},", free(1).display())),
        "qemu-args names the free socket: {args}"
    );

    let second = GuestSpec::vhost_user(
        "vm-1",
        &free(1),
        "net 10.0.2.61/24; wait_ping 10.0.2.60 && ping -c 3 10.0.2.60; report",
    )
    .boot();
    let result = second.wait_result();
    support::guest::assert_pinged(&result, 3);
    assert!(free(2).exists(), "a free socket for the next VM");
    drop(first);
    wait_until("vm-0.sock removed once its QEMU left", DEADLINE, || !free(0).exists());
    assert!(free(1).exists() && free(2).exists());
}

/// A vhost-user message header: request code, flags (version 1), body size.
fn message_header(request: u32, size: u32) -> Vec<u8> {
    [request.to_le_bytes(), 1u32.to_le_bytes(), size.to_le_bytes()].concat()
}

/// Whether vnet closed `socket` (end of stream) within the deadline.
fn closed_by_vnet(socket: &mut std::os::unix::net::UnixStream) -> bool {
    socket.set_read_timeout(Some(DEADLINE)).unwrap();
    matches!(socket.read(&mut [0u8; 64]), Ok(0) | Err(_))
}

#[test]
fn a_hostile_vhost_user_frontend_stalls_and_loses_only_its_own_connection() {
    let dir = tempfile::tempdir().unwrap();
    let stream = dir.path().join("stream.sock");
    let vhost = dir.path().join("vm.sock");
    let name = format!("vhu-hostile-{}", std::process::id());
    let listen_vhost = format!("vhost-user:{}", vhost.display());
    let listen_stream = format!("stream:unix:{}", stream.display());
    let _vnet = Vnet::listening_on(
        &stream,
        &["run", "--name", &name, "--no-user", "--listen", &listen_vhost, "--listen", &listen_stream],
    );

    // Half a header, then silence: vnet must not wait for the rest.
    let mut stalled = std::os::unix::net::UnixStream::connect(&vhost).unwrap();
    stalled.write_all(&message_header(9999, 0)[..6]).unwrap();
    let (mut a, mut b) = (StreamPeer::connect(&stream), StreamPeer::connect(&stream));
    let from_a = frame([0xff; 6], mac(1), 64, 0xa1);
    a.send(&from_a);
    assert_eq!(b.recv().as_deref(), Some(&from_a[..]), "the switch goes on while a frontend stalls");

    // A second frontend on a socket that serves one is turned away.
    let mut second = std::os::unix::net::UnixStream::connect(&vhost).unwrap();
    assert!(closed_by_vnet(&mut second), "a second frontend is closed");

    // The rest of the header names no request vnet knows: the frontend is disconnected.
    stalled.write_all(&message_header(9999, 0)[6..]).unwrap();
    assert!(closed_by_vnet(&mut stalled), "an unknown request ends the connection");

    // The socket is free again; a body larger than any request is refused too.
    let mut oversized = std::os::unix::net::UnixStream::connect(&vhost).unwrap();
    oversized.write_all(&message_header(1, 0x10_0000)).unwrap();
    assert!(closed_by_vnet(&mut oversized), "an oversized request ends the connection");

    let events = vnet_command().args(["status", &name, "--json"]).output().unwrap();
    let status: serde_json::Value = serde_json::from_slice(&events.stdout).unwrap();
    assert_eq!(status["events"]["vhost_user_busy"].as_u64(), Some(1), "{status}");
    let ports = json(&["ports"], &name);
    assert!(
        !ports
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"].as_str().unwrap_or("").starts_with("vhost-user:")),
        "every hostile frontend's port is closed: {ports}"
    );
    let from_b = frame([0xff; 6], mac(2), 64, 0xb2);
    b.send(&from_b);
    assert_eq!(a.recv().as_deref(), Some(&from_b[..]));
}
