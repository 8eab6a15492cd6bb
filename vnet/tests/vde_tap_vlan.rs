//! QEMU's two other connection modes and VLANs: vnet as a vde_switch for QEMU's
//! `-netdev vde` and Debian's vde_plug, vnet as a port of Debian's vde_switch, the
//! host's own tap as a port, and 802.1Q VLANs between namespaces. Every address is on
//! vnet's segment, and the tap's "host" is a namespace the test makes.

mod support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use support::guest::{assert_success, stream_netdev, GuestLock, GuestSpec, Nic, BOOT_DEADLINE, DHCP};
use support::*;

fn vde_netdev(dir: &Path) -> String {
    format!("vde,id=n0,sock={}", dir.display())
}

/// Guest script: DHCP, print the lease, then ping `peer`.
fn dhcp_and_ping(peer: &str) -> String {
    format!("{DHCP} || exit 1\ncat /run/dhcp.env\nwait_ping {peer} && ping -c 3 -W 5 {peer} && echo PEER-OK; report")
}

fn ctl_is_up(dir: &Path) -> bool {
    UnixStream::connect(dir.join("ctl")).is_ok()
}

#[test]
fn a_qemu_vde_guest_gets_dhcp_from_vnet_and_pings_a_stream_guest() {
    let _lock = GuestLock::acquire();
    let dir = tempfile::tempdir().unwrap();
    let (vde, sock) = (dir.path().join("switch"), dir.path().join("vnet.sock"));
    let vnet = Vnet::spawn(&[
        "run",
        "--listen",
        &format!("vde:{}", vde.display()),
        "--listen",
        &format!("stream:unix:{}", sock.display()),
    ]);
    wait_until("vnet's VDE control socket", DEADLINE, || ctl_is_up(&vde));
    let on_stream =
        GuestSpec::new("stream", Nic::VirtioNet, &stream_netdev(&sock), &dhcp_and_ping("10.0.2.16"))
            .mac("52:54:00:00:06:01")
            .boot();
    on_stream.wait_ready();
    let on_vde = GuestSpec::new("vde", Nic::E1000, &vde_netdev(&vde), &dhcp_and_ping("10.0.2.15"))
        .mac("52:54:00:00:06:02")
        .boot();
    let (first, second) = (on_stream.wait_result(), on_vde.wait_result());
    for guest in [&first, &second] {
        assert_success(guest);
        assert!(guest.output.contains("PEER-OK"), "{}", guest.output);
    }
    let leases: Vec<&str> = [&first, &second]
        .iter()
        .filter_map(|guest| guest.output.lines().find(|line| line.starts_with("ip=")))
        .collect();
    assert_eq!(leases.len(), 2, "both guests leased an address");
    let (_, log) = vnet.stop();
    assert!(log.contains(&format!("vde:{} port=1", vde.display())), "the QEMU guest took VDE port 1:\n{log}");
}

/// vde_plug's standard input and output: frames behind a 2-byte big-endian length.
struct VdePlug {
    child: Child,
}

impl VdePlug {
    fn connect(dir: &Path) -> Self {
        Self::connect_with(&[dir.to_str().unwrap()])
    }

    /// `vde_plug ARGS...`.
    fn connect_with(args: &[&str]) -> Self {
        let child = Command::new("vde_plug")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("vde_plug runs (apt install vde2)");
        Self { child }
    }

    fn send(&mut self, frame: &[u8]) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(&(frame.len() as u16).to_be_bytes()).unwrap();
        stdin.write_all(frame).unwrap();
        stdin.flush().unwrap();
    }

    fn recv(&mut self) -> Vec<u8> {
        let stdout = self.child.stdout.as_mut().unwrap();
        let mut length = [0u8; 2];
        stdout.read_exact(&mut length).unwrap();
        let mut frame = vec![0u8; usize::from(u16::from_be_bytes(length))];
        stdout.read_exact(&mut frame).unwrap();
        frame
    }
}

impl Drop for VdePlug {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `request` on a fresh control connection and says whether vnet closed it
/// without answering (a reset, when it closed with the request's tail unread).
fn closed_without_answer(dir: &Path, request: &[u8]) -> bool {
    let mut control = UnixStream::connect(dir.join("ctl")).unwrap();
    control.set_read_timeout(Some(DEADLINE)).unwrap();
    control.write_all(request).unwrap();
    let mut answer = Vec::new();
    match control.read_to_end(&mut answer) {
        Ok(0) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(_) => false,
    }
}

/// A version 3 request for any port from the client socket `client`.
fn request(magic: u32, version: u32, client: &Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    for word in [magic, version, 0] {
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let mut address = [0u8; 110];
    address[..2].copy_from_slice(&(libc::AF_UNIX as u16).to_ne_bytes());
    let path = client.as_os_str().as_encoded_bytes();
    address[2..2 + path.len()].copy_from_slice(path);
    bytes.extend_from_slice(&address);
    bytes.extend_from_slice(b"test");
    bytes
}

/// vnet as a plain switch listening on `vde` and on `other`, once its VDE control socket
/// is up.
fn vde_switch_and(vde: &Path, other: &str) -> Vnet {
    let vnet =
        Vnet::spawn(&["run", "--no-user", "--listen", &format!("vde:{}", vde.display()), "--listen", other]);
    wait_until("vnet's VDE control socket", DEADLINE, || ctl_is_up(vde));
    vnet
}

#[test]
fn vde_plug_connects_and_corrupted_handshakes_close_only_their_own_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (vde, sock) = (dir.path().join("switch"), dir.path().join("vnet.sock"));
    let vnet = vde_switch_and(&vde, &format!("stream:unix:{}", sock.display()));

    let mut plug = VdePlug::connect(&vde);
    vnet.wait_for_log("port=1");
    let mut peer = StreamPeer::connect(&sock);
    let from_plug = frame(BROADCAST, mac(1), 200, 0xa1);
    plug.send(&from_plug);
    assert_eq!(peer.recv().unwrap(), from_plug, "vde_plug to a stream peer");
    let from_peer = frame(mac(1), mac(2), 300, 0xb2);
    peer.send(&from_peer);
    assert_eq!(plug.recv(), from_peer, "a stream peer to vde_plug");

    let client = vde.join(".test-client");
    let client_socket = std::os::unix::net::UnixDatagram::bind(&client).unwrap();
    let refused = [
        vec![0xff; 200],
        request(0xfeed_face, 3, &client)[..50].to_vec(),
        request(0xdead_beef, 3, &client),
        request(0xfeed_face, 2, &client),
        request(0xfeed_face, 3, Path::new("/nonexistent/client")),
        [request(0xfeed_face, 3, &client), vec![b'x'; 300]].concat(),
    ];
    for (index, bytes) in refused.iter().enumerate() {
        assert!(closed_without_answer(&vde, bytes), "request {index} was answered");
    }
    // A client that connects and says nothing does not stop the others either, and is
    // closed after a while.
    let mut silent = UnixStream::connect(vde.join("ctl")).unwrap();
    let mut second = VdePlug::connect(&vde);
    vnet.wait_for_log("port=2");
    let again = frame(BROADCAST, mac(3), 100, 0xc3);
    second.send(&again);
    assert_eq!(plug.recv(), again, "the first plug still works, and the second joined");

    // A port asked for by number, with the group and mode the client chose for its
    // sockets (vde_plug -g/-m): the port's socket is the client's to share alike.
    let url = format!("{}[7]", vde.display());
    let numbered = VdePlug::connect_with(&["-g", "nogroup", "-m", "0660", &url]);
    vnet.wait_for_log("port=7");
    let port_socket = std::fs::read_dir(&vde)
        .unwrap()
        .flatten()
        .find(|entry| entry.file_name().to_string_lossy().starts_with("007."))
        .expect("port 7's socket");
    use std::os::unix::fs::MetadataExt;
    let metadata = port_socket.metadata().unwrap();
    assert_eq!(metadata.mode() & 0o777, 0o660);
    let nogroup =
        String::from_utf8(Command::new("getent").args(["group", "nogroup"]).output().unwrap().stdout)
            .unwrap();
    assert_eq!(metadata.gid().to_string(), nogroup.split(':').nth(2).unwrap());
    // A second client asking for port 7 is refused, and the first keeps it.
    let refused_twin =
        Command::new("timeout").args(["10", "vde_plug", &url]).stdin(Stdio::null()).output().unwrap();
    assert!(!refused_twin.status.success());
    vnet.wait_for_log("port 7 is in use");
    drop(numbered);
    silent.set_read_timeout(Some(DEADLINE)).unwrap();
    assert_eq!(silent.read(&mut [0u8; 8]).unwrap(), 0, "the silent client is closed");
    vnet.wait_for_log("sent no request in time");
    drop(plug);
    drop(second);
    drop(client_socket);
    std::fs::remove_file(&client).unwrap();
    let (status, log) = vnet.stop();
    assert!(status.success());
    assert_eq!(log.matches("refused a VDE port request").count(), refused.len() + 1, "{log}");
    assert!(log.contains("bad_vde_request=8"), "{log}");
    let left: Vec<_> =
        std::fs::read_dir(&vde).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(!vde.exists(), "the switch directory is removed on exit; left: {left:?}");
}

/// Debian's vde_switch, as a daemon serving `dir`; killed on drop.
struct VdeSwitch {
    pidfile: PathBuf,
}

impl VdeSwitch {
    fn start(dir: &Path, pidfile: &Path) -> Self {
        run_ok(
            Command::new("vde_switch").args(["-sock"]).arg(dir).args(["-daemon", "-pidfile"]).arg(pidfile),
        );
        let switch = Self { pidfile: pidfile.to_owned() };
        wait_until("vde_switch's control socket", DEADLINE, || ctl_is_up(dir));
        switch
    }
}

impl Drop for VdeSwitch {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.pidfile) {
            if let Ok(pid) = pid.trim().parse() {
                signal(pid, libc::SIGTERM);
            }
        }
    }
}

#[test]
fn a_guest_behind_debians_vde_switch_reaches_a_vnet_guest_through_attach_vde() {
    let _lock = GuestLock::acquire();
    let dir = tempfile::tempdir().unwrap();
    let (vde, sock) = (dir.path().join("vde_switch"), dir.path().join("vnet.sock"));
    let _switch = VdeSwitch::start(&vde, &dir.path().join("vde_switch.pid"));
    let vnet = Vnet::spawn(&[
        "run",
        "--attach",
        &format!("vde:{}", vde.display()),
        "--listen",
        &format!("stream:unix:{}", sock.display()),
    ]);
    wait_until("vnet's socket", DEADLINE, || UnixStream::connect(&sock).is_ok());
    vnet.wait_for_log("switch-port=");
    let on_vnet = GuestSpec::new("vnet", Nic::VirtioNet, &stream_netdev(&sock), &dhcp_and_ping("10.0.2.16"))
        .mac("52:54:00:00:06:11")
        .boot();
    on_vnet.wait_ready();
    let behind_switch = GuestSpec::new("vde", Nic::Rtl8139, &vde_netdev(&vde), &dhcp_and_ping("10.0.2.15"))
        .mac("52:54:00:00:06:12")
        .boot();
    for guest in [on_vnet.wait_result(), behind_switch.wait_result()] {
        assert_success(&guest);
        assert!(guest.output.contains("PEER-OK"), "{}", guest.output);
    }
    let (_, log) = vnet.stop();
    assert!(
        log.contains("DHCP lease") && log.contains("52-54-00-00-06-12"),
        "vnet's gateway served the vde_switch guest:\n{log}"
    );
}

#[test]
fn a_host_tap_lets_the_host_reach_the_guest_and_the_guest_a_host_service() {
    let _lock = GuestLock::acquire();
    // The "host" is a namespace of the test's own, so its tap and routes touch nothing else.
    let host = NamedNamespace::create();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vnet.sock");
    let vnet = Vnet::spawn_in(
        Some(&host),
        &["run", "--attach", "tap:vnettap0", "--listen", &format!("stream:unix:{}", sock.display())],
    );
    wait_until("vnet's socket", DEADLINE, || UnixStream::connect(&sock).is_ok());
    run_ok(&mut host.command(&["ip", "addr", "add", "10.0.2.1/24", "dev", "vnettap0"]));
    run_ok(&mut host.command(&["ip", "link", "set", "vnettap0", "up"]));
    let web_root = tempfile::tempdir().unwrap();
    std::fs::write(web_root.path().join("index.html"), "served-by-the-host\n").unwrap();
    let mut web = host
        .command(&["python3", "-m", "http.server", "8080", "--bind", "10.0.2.1", "--directory"])
        .arg(web_root.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the host's web server", DEADLINE, || {
        String::from_utf8_lossy(&host.exec(&["ss", "-Hltn", "sport", "=", ":8080"]).stdout).contains("8080")
    });
    let script = format!("{DHCP} || exit 1\nwget -q -O - http://10.0.2.1:8080/ && echo HOST-WEB-OK; report");
    let guest = GuestSpec::new("tap", Nic::VirtioNet, &stream_netdev(&sock), &script).boot();
    guest.wait_for("VNET-RESULT", BOOT_DEADLINE);
    assert!(guest.output().contains("served-by-the-host\nHOST-WEB-OK"), "{}", guest.output());
    let ping = host.exec(&["ping", "-c", "3", "-W", "5", "10.0.2.15"]);
    assert!(ping.status.success(), "the host pings the guest: {}", String::from_utf8_lossy(&ping.stdout));
    let _ = web.kill();
    let _ = web.wait();
    drop(guest);
    vnet.stop();
}

#[test]
fn creating_a_tap_without_privilege_says_what_is_needed() {
    let output = Command::new("setpriv")
        .args(["--reuid", "nobody", "--regid", "nogroup", "--clear-groups", "--inh-caps=-all"])
        .arg(support::vnet_binary())
        .args(["run", "--no-user", "--attach", "tap:vnetnopriv0"])
        .output()
        .expect("setpriv runs (util-linux)");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("CAP_NET_ADMIN") && stderr.contains("ip tuntap add vnetnopriv0"), "{stderr}");
}

/// Configures `eth0` (or `device`) of `netns` with `address`/24 and brings it up.
fn address(netns: &NamedNamespace, device: &str, address: &str) {
    run_ok(&mut netns.command(&["ip", "addr", "add", &format!("{address}/24"), "dev", device]));
    run_ok(&mut netns.command(&["ip", "link", "set", device, "up"]));
}

fn pings(netns: &NamedNamespace, target: &str) -> bool {
    netns.exec(&["ping", "-c", "2", "-W", "2", target]).status.success()
}

/// An ARP request from `sender` (MAC, IP) for `target`, tagged for VLAN `vlan`.
fn tagged_arp_request(vlan: u16, sender: ([u8; 6], [u8; 4]), target: [u8; 4]) -> Vec<u8> {
    let mut frame = BROADCAST.to_vec();
    frame.extend_from_slice(&sender.0);
    frame.extend_from_slice(&[0x81, 0x00]);
    frame.extend_from_slice(&vlan.to_be_bytes());
    frame.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    frame.extend_from_slice(&sender.0);
    frame.extend_from_slice(&sender.1);
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&target);
    frame
}

/// The VLAN id of a tagged frame, None for an untagged one.
fn vlan_of(frame: &[u8]) -> Option<u16> {
    (frame[12..14] == [0x81, 0x00]).then(|| u16::from_be_bytes([frame[14], frame[15]]) & 0x0fff)
}

#[test]
fn two_guests_on_vlan_10_see_each_other_and_not_the_one_on_vlan_20() {
    let [a, b, c] = [(); 3].map(|()| NamedNamespace::create());
    let dir = tempfile::tempdir().unwrap();
    let trunk_socket = dir.path().join("trunk.sock");
    let attach = |netns: &NamedNamespace, option: &str| format!("netns:{}{option}", netns.path());
    let vnet = Vnet::spawn(&[
        "run",
        "--user",
        "vlan=10,dns-upstream=127.0.0.1:9",
        "--attach",
        &attach(&a, ",vlan=10"),
        "--attach",
        &attach(&b, ",vlan=10"),
        "--attach",
        &attach(&c, ",vlan=20"),
        "--listen",
        &format!("stream:unix:{},trunk=10,20", trunk_socket.display()),
    ]);
    wait_until("the trunk socket", DEADLINE, || UnixStream::connect(&trunk_socket).is_ok());
    let mut trunk = StreamPeer::connect(&trunk_socket);
    address(&a, "eth0", "10.0.2.11");
    address(&b, "eth0", "10.0.2.12");
    address(&c, "eth0", "10.0.2.13");

    assert!(pings(&a, "10.0.2.12"), "A and B share VLAN 10");
    assert!(pings(&a, "10.0.2.2"), "the gateway is on VLAN 10");
    assert!(!pings(&a, "10.0.2.13"), "C is on VLAN 20");
    assert!(!pings(&c, "10.0.2.2"), "VLAN 20 has no gateway");
    assert!(!pings(&c, "10.0.2.11"), "nor does it reach A");

    // The trunk got both VLANs' broadcasts, each tagged with its own VLAN.
    let mut seen = std::collections::BTreeSet::new();
    trunk.socket.set_read_timeout(Some(std::time::Duration::from_millis(500))).unwrap();
    while let Some(frame) = trunk.recv() {
        seen.insert(vlan_of(&frame));
    }
    assert_eq!(seen, [Some(10), Some(20)].into_iter().collect(), "tags the trunk saw");
    // A tagged ARP request from the trunk reaches VLAN 10 only, and A's answer comes back
    // tagged.
    trunk.socket.set_read_timeout(Some(DEADLINE)).unwrap();
    let trunk_station = ([0x02, 0, 0, 0, 0, 0x77], [10, 0, 2, 77]);
    trunk.send(&tagged_arp_request(10, trunk_station, [10, 0, 2, 11]));
    let reply = std::iter::from_fn(|| trunk.recv())
        .find(|frame| frame[..6] == trunk_station.0)
        .expect("A's ARP reply");
    assert_eq!(vlan_of(&reply), Some(10));
    assert_eq!(&reply[16..18], &[0x08, 0x06], "an ARP reply");
    let (status, log) = vnet.stop();
    assert!(status.success(), "{log}");
}

#[test]
fn a_vde_client_cannot_make_vnet_talk_to_its_own_sockets_or_through_a_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let (vde, own_dgram) = (dir.path().join("switch"), dir.path().join("vnet-dgram.sock"));
    let vnet = vde_switch_and(&vde, &format!("dgram:unix:{}", own_dgram.display()));
    let plug = VdePlug::connect(&vde);
    vnet.wait_for_log("port=1");
    let port_socket = std::fs::read_dir(&vde)
        .unwrap()
        .flatten()
        .map(|entry| entry.path())
        .find(|path| path.file_name().is_some_and(|name| name.to_string_lossy().starts_with("001.")))
        .expect("port 1's socket");
    let client = dir.path().join("client");
    let _client_socket = std::os::unix::net::UnixDatagram::bind(&client).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&client, &link).unwrap();
    for (what, target) in
        [("the dgram listener", &own_dgram), ("a port's socket", &port_socket), ("a symlink", &link)]
    {
        assert!(closed_without_answer(&vde, &request(0xfeed_face, 3, target)), "{what} was accepted");
    }
    let mut control = UnixStream::connect(vde.join("ctl")).unwrap();
    control.set_read_timeout(Some(DEADLINE)).unwrap();
    control.write_all(&request(0xfeed_face, 3, &client)).unwrap();
    let mut answer = [0u8; 110];
    control.read_exact(&mut answer).expect("the client's own socket gets a port");
    drop(control);
    drop(plug);
    let (_, log) = vnet.stop();
    assert_eq!(log.matches("one of vnet's own sockets").count(), 2, "{log}");
    assert!(log.contains("a symbolic link"), "{log}");
}

/// Asks vnet's VDE switch in `vde`, as the user `nobody`, for a port whose client
/// socket is `client`; with `bind_first`, nobody binds that socket first, so it is
/// theirs, and lets others write to it (as `vde_plug -m 0666` does), since vnet keeps
/// no capability to override file modes. Says whether vnet answered.
fn nobody_asks_for_port(vde: &Path, client: &Path, bind_first: bool) -> bool {
    let script = r#"
import os, socket, struct, sys
ctl, client, bind_first = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
if bind_first:
    own = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    own.bind(client)
    os.chmod(client, 0o666)
control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
control.connect(ctl)
control.settimeout(20)
address = struct.pack("=H", socket.AF_UNIX) + client.encode().ljust(108, b"\0")
control.sendall(struct.pack("=III", 0xfeedface, 3, 0) + address + b"test")
try:
    answer = control.recv(200)
except ConnectionResetError:
    answer = b""
print("ANSWERED" if answer else "REFUSED")
"#;
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c", script])
        .arg(vde.join("ctl"))
        .arg(client)
        .arg(if bind_first { "1" } else { "0" })
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    stdout.contains("ANSWERED")
}

#[test]
fn a_local_user_cannot_make_vnet_send_into_another_users_socket() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let vde = dir.path().join("switch");
    std::fs::create_dir(&vde).unwrap();
    std::fs::set_permissions(&vde, std::fs::Permissions::from_mode(0o777)).unwrap();
    let sock = dir.path().join("vnet.sock");
    let vnet = vde_switch_and(&vde, &format!("stream:unix:{}", sock.display()));
    std::fs::set_permissions(vde.join("ctl"), std::fs::Permissions::from_mode(0o777)).unwrap();
    // root's socket, which nobody names as if it were theirs.
    let roots = dir.path().join("roots.sock");
    let roots_socket = std::os::unix::net::UnixDatagram::bind(&roots).unwrap();
    roots_socket.set_read_timeout(Some(std::time::Duration::from_millis(500))).unwrap();
    assert!(!nobody_asks_for_port(&vde, &roots, false), "vnet gave nobody a port sending into root's socket");
    assert!(
        nobody_asks_for_port(&vde, &dir.path().join("nobodys.sock"), true),
        "nobody's own socket gets a port: {}",
        vnet.log()
    );
    let mut peer = StreamPeer::connect(&sock);
    peer.send(&frame(BROADCAST, mac(9), 100, 0x99));
    assert!(roots_socket.recv(&mut [0u8; 2048]).is_err(), "a frame reached root's socket");
    let (_, log) = vnet.stop();
    assert!(log.contains("belongs to uid 0, not to uid 65534 who asked"), "{log}");
}
