//! The `vnet` binary against real sockets, without guests: QEMU's stream and datagram
//! framings spoken by test peers, error handling at the edges, and shutdown.

mod support;

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use support::*;

fn unix_spec(kind: &str, path: &Path) -> String {
    format!("{kind}:unix:{}", path.display())
}

fn source_of(frame: &[u8]) -> [u8; 6] {
    frame[6..12].try_into().unwrap()
}

#[test]
fn stream_peers_learn_each_other_and_unicast_stays_private() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vnet.sock");
    let vnet = Vnet::listening_on(&sock, &["run", "--no-user", "--listen", &unix_spec("stream", &sock)]);
    let mut a = StreamPeer::connect(&sock);
    let mut b = StreamPeer::connect(&sock);
    let mut c = StreamPeer::connect(&sock);
    vnet.wait_for_log("port=4");

    b.send(&frame(BROADCAST, mac(2), 60, 0xb));
    assert_eq!(source_of(&a.recv().unwrap()), mac(2));
    assert_eq!(source_of(&c.recv().unwrap()), mac(2));

    // A now knows where B is: a unicast to B must not reach C.
    a.send(&frame(mac(2), mac(1), 100, 0xa));
    let got = b.recv().unwrap();
    assert_eq!((source_of(&got), got.len()), (mac(1), 100));
    b.send(&frame(BROADCAST, mac(2), 60, 0xb));
    assert_eq!(source_of(&c.recv().unwrap()), mac(2), "C got B's broadcast, not A's unicast");
    assert_eq!(source_of(&a.recv().unwrap()), mac(2));
    drop(vnet);
}

#[test]
fn hub_mode_floods_known_unicast() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vnet.sock");
    let vnet =
        Vnet::listening_on(&sock, &["run", "--no-user", "--hub", "--listen", &unix_spec("stream", &sock)]);
    let mut a = StreamPeer::connect(&sock);
    let mut b = StreamPeer::connect(&sock);
    let mut c = StreamPeer::connect(&sock);
    vnet.wait_for_log("port=4");
    b.send(&frame(BROADCAST, mac(2), 60, 0));
    a.recv().unwrap();
    c.recv().unwrap();
    a.send(&frame(mac(2), mac(1), 60, 0));
    assert_eq!(source_of(&b.recv().unwrap()), mac(1));
    assert_eq!(source_of(&c.recv().unwrap()), mac(1), "a hub floods unicast too");
}

#[test]
fn tcp_listen_carries_the_largest_frame_and_refuses_a_larger_one() {
    let probe = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    let vnet = Vnet::spawn(&["run", "--no-user", "--listen", &format!("stream:tcp:{addr}")]);
    wait_until("vnet's TCP port", DEADLINE, || TcpStream::connect(addr).is_ok());
    let connect = || {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        StreamPeer { socket: s }
    };
    let mut a = connect();
    let mut b = connect();
    let largest = frame(BROADCAST, mac(1), 65535 + 14, 0x5a);
    a.send(&largest);
    assert_eq!(b.recv().unwrap(), largest);

    // 65550 is one byte too many: that connection closes, the other keeps working.
    b.socket.write_all(&65550u32.to_be_bytes()).unwrap();
    assert!(b.recv().is_none(), "vnet closes the offending connection");
    let mut c = connect();
    a.send(&frame(BROADCAST, mac(1), 60, 1));
    assert_eq!(c.recv().unwrap().len(), 60);
    let (status, log) = vnet.stop();
    assert!(status.success());
    assert!(log.contains("bad_frame_length=1"), "{log}");
}

#[test]
fn a_zero_length_or_a_close_mid_frame_ends_only_that_connection() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vnet.sock");
    let vnet = Vnet::listening_on(&sock, &["run", "--no-user", "--listen", &unix_spec("stream", &sock)]);
    let mut good = StreamPeer::connect(&sock);
    let mut zero = StreamPeer::connect(&sock);
    let mut truncated = StreamPeer::connect(&sock);
    vnet.wait_for_log("port=4");

    zero.socket.write_all(&0u32.to_be_bytes()).unwrap();
    assert!(zero.recv().is_none());
    truncated.socket.write_all(&100u32.to_be_bytes()).unwrap();
    truncated.socket.write_all(&[0u8; 50]).unwrap();
    drop(truncated);
    vnet.wait_for_log("peer closed in the middle of a frame");

    let mut other = StreamPeer::connect(&sock);
    good.send(&frame(BROADCAST, mac(1), 60, 0));
    assert_eq!(source_of(&other.recv().unwrap()), mac(1));
    let (_, log) = vnet.stop();
    assert!(log.contains("bad_frame_length=1"), "{log}");
    assert!(log.contains("truncated_frame=1"), "{log}");
}

#[test]
fn frames_split_across_writes_and_batched_in_one_write_both_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vnet.sock");
    let _vnet = Vnet::listening_on(&sock, &["run", "--no-user", "--listen", &unix_spec("stream", &sock)]);
    let mut a = StreamPeer::connect(&sock);
    let mut b = StreamPeer::connect(&sock);
    _vnet.wait_for_log("port=3");

    let mut wire = Vec::new();
    for i in 0..50u8 {
        let f = frame(BROADCAST, mac(1), 60 + i as usize, i);
        wire.extend_from_slice(&(f.len() as u32).to_be_bytes());
        wire.extend_from_slice(&f);
    }
    a.socket.write_all(&wire).unwrap();
    for chunk in wire.chunks(7) {
        a.socket.write_all(chunk).unwrap();
        a.socket.flush().unwrap();
    }
    for round in 0..2 {
        for i in 0..50u8 {
            let got = b.recv().unwrap();
            assert_eq!((got.len(), got[20]), (60 + i as usize, i), "round {round}");
        }
    }
}

#[test]
fn a_peer_that_stops_reading_loses_its_own_frames_and_stalls_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vnet.sock");
    // Storm control off: this is about a slow peer, and the sender floods broadcasts.
    let spec = format!("{},storm=off", unix_spec("stream", &sock));
    let vnet = Vnet::listening_on(&sock, &["run", "--no-user", "--listen", &spec]);
    let mut sender = StreamPeer::connect(&sock);
    let mut reader = StreamPeer::connect(&sock);
    let _frozen = StreamPeer::connect(&sock);
    vnet.wait_for_log("port=4");

    // 40 bursts of 256 broadcast frames: far more than the frozen peer's socket buffer
    // and queue hold. The reader must get every one of them.
    let bursts = 40;
    for burst in 0..bursts {
        for i in 0..256u32 {
            let mut f = frame(BROADCAST, mac(1), 1000, 0);
            f[14..18].copy_from_slice(&(burst * 256 + i).to_be_bytes());
            sender.send(&f);
        }
        for i in 0..256u32 {
            let got = reader.recv().expect("reader keeps receiving while a peer is frozen");
            assert_eq!(got[14..18], (burst * 256 + i).to_be_bytes());
        }
    }
    let (_, log) = vnet.stop();
    let dropped_line = log.lines().find(|l| l.contains("port closed") && l.contains("drop.queue_full="));
    assert!(dropped_line.is_some(), "the frozen peer's port counts queue drops:\n{log}");
    assert!(log
        .lines()
        .any(|l| l.contains("port closed") && l.contains(&format!("tx_frames={} ", bursts * 256))));
}

#[test]
fn dgram_peers_each_get_a_port_and_a_vanished_peer_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vnet-dgram.sock");
    let vnet = Vnet::spawn(&["run", "--no-user", "--listen", &unix_spec("dgram", &sock)]);
    vnet.wait_for_log("listening");
    let a_path = dir.path().join("a.sock");
    let b_path = dir.path().join("b.sock");
    let a = UnixDatagram::bind(&a_path).unwrap();
    let b = UnixDatagram::bind(&b_path).unwrap();
    for peer in [&a, &b] {
        peer.connect(&sock).unwrap();
        peer.set_read_timeout(Some(DEADLINE)).unwrap();
    }
    b.send(&frame(BROADCAST, mac(2), 60, 0)).unwrap();
    vnet.wait_for_log("b.sock");
    a.send(&frame(mac(2), mac(1), 1500, 7)).unwrap();
    let mut buf = vec![0u8; 70000];
    let n = b.recv(&mut buf).unwrap();
    assert_eq!((n, source_of(&buf[..n])), (1500, mac(1)));

    // B goes away without saying so: the next frame for it finds its socket refusing,
    // and its port is removed.
    drop(b);
    a.send(&frame(BROADCAST, mac(1), 60, 0)).unwrap();
    vnet.wait_for_log("datagram peer is gone");
    let (status, log) = vnet.stop();
    assert!(status.success());
    assert!(log.contains("tx_frames=1"), "{log}");
    assert!(!sock.exists(), "vnet removes its socket file");
}

#[test]
fn sigterm_closes_ports_and_removes_socket_files() {
    let dir = tempfile::tempdir().unwrap();
    let stream = dir.path().join("s.sock");
    let dgram = dir.path().join("d.sock");
    let vnet = Vnet::listening_on(
        &stream,
        &[
            "run",
            "--no-user",
            "--listen",
            &unix_spec("stream", &stream),
            "--listen",
            &unix_spec("dgram", &dgram),
        ],
    );
    let mut peer = StreamPeer::connect(&stream);
    vnet.wait_for_log("port opened");
    let (status, log) = vnet.stop();
    assert_eq!(status.code(), Some(0));
    assert!(log.contains("port closed"), "{log}");
    assert!(peer.recv().is_none(), "the peer sees the connection close");
    assert!(!stream.exists() && !dgram.exists());
}

#[test]
fn a_stale_socket_file_is_replaced_and_a_live_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vnet.sock");
    drop(UnixListener::bind(&sock).unwrap());
    assert!(sock.exists(), "a dead listener leaves its file behind");
    let first = Vnet::listening_on(&sock, &["run", "--no-user", "--listen", &unix_spec("stream", &sock)]);

    let (status, log) = Vnet::spawn(&["run", "--no-user", "--listen", &unix_spec("stream", &sock)]).wait();
    assert_eq!(status.code(), Some(2));
    assert!(log.contains("is in use by a running process"), "{log}");
    assert_eq!(log.trim().lines().count(), 1, "one line: {log}");
    assert!(UnixStream::connect(&sock).is_ok(), "the first vnet still serves");
    drop(first);
}

#[test]
fn setup_errors_are_one_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap();
    let plain_file = dir.path().join("not-a-socket");
    std::fs::write(&plain_file, "x").unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--listen".into(), "stream:udp:1.2.3.4:5".into()], "stream:unix:PATH"),
        (vec!["--attach".into(), "mcast:10.0.0.1:1234".into()], "multicast"),
        (vec!["--listen".into(), "stream:unix:/nonexistent-dir/x.sock".into()], "not writable"),
        (vec!["--listen".into(), format!("stream:tcp:{busy_addr}")], "already in use"),
        (vec!["--listen".into(), format!("stream:unix:{}", plain_file.display())], "is not a socket"),
        (vec!["--attach".into(), "netns:/nonexistent/netns".into()], "does not exist"),
        (vec!["--user".into(), "net=10.0.2.0/24,frobnicate=1".into()], "'frobnicate=1'"),
        (vec!["--user".into(), "hostfwd=tcp::2222-:22,restrict=maybe".into()], "'restrict=maybe'"),
        (vec!["--run-as".into(), "no-such-user-vnet".into()], "no such user"),
        (vec!["--sandbox".into(), "maybe".into()], "on or off"),
    ];
    for (args, expected) in cases {
        let mut full = vec!["run".to_string()];
        full.extend(args.iter().cloned());
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        let (status, log) = Vnet::spawn(&refs).wait();
        assert_eq!(status.code(), Some(2), "{args:?}: {log}");
        assert!(log.contains(expected), "{args:?} should mention '{expected}': {log}");
        assert_eq!(log.lines().count(), 1, "{args:?}: one line expected, got {log}");
        assert!(log.starts_with("vnet: "), "{log}");
    }
    assert!(plain_file.exists(), "vnet never deletes a file that is not a socket");
}

#[test]
fn attach_waits_for_qemu_and_reconnects_after_it_goes_away() {
    let dir = tempfile::tempdir().unwrap();
    let qemu_sock = dir.path().join("qemu.sock");
    let mesh = dir.path().join("vnet.sock");
    let vnet = Vnet::listening_on(
        &mesh,
        &[
            "run",
            "--no-user",
            "--listen",
            &unix_spec("stream", &mesh),
            "--attach",
            &unix_spec("stream", &qemu_sock),
        ],
    );
    vnet.wait_for_log("retrying");

    // "QEMU" comes up late; vnet connects by itself.
    let listener = UnixListener::bind(&qemu_sock).unwrap();
    let (conn, _) = listener.accept().unwrap();
    conn.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut qemu = StreamPeer { socket: conn };
    let mut other = StreamPeer::connect(&mesh);
    vnet.wait_for_log("port=3");
    other.send(&frame(BROADCAST, mac(9), 60, 0));
    assert_eq!(source_of(&qemu.recv().unwrap()), mac(9));

    // QEMU goes away and comes back: vnet reconnects.
    drop(qemu);
    let (conn, _) = listener.accept().unwrap();
    conn.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut qemu = StreamPeer { socket: conn };
    vnet.wait_for_log("port=4");
    qemu.send(&frame(BROADCAST, mac(8), 60, 0));
    assert_eq!(source_of(&other.recv().unwrap()), mac(8));
}

#[test]
fn attach_tcp_reaches_a_listening_qemu() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mesh = dir.path().join("vnet.sock");
    let _vnet = Vnet::listening_on(
        &mesh,
        &[
            "run",
            "--no-user",
            "--listen",
            &unix_spec("stream", &mesh),
            "--attach",
            &format!("stream:tcp:{addr}"),
        ],
    );
    let (conn, _) = listener.accept().unwrap();
    conn.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut qemu = StreamPeer { socket: conn };
    let mut other = StreamPeer::connect(&mesh);
    _vnet.wait_for_log("port=3");
    qemu.send(&frame(BROADCAST, mac(7), 60, 0));
    assert_eq!(source_of(&other.recv().unwrap()), mac(7));
}

/// CPU time (user + system, in clock ticks) a process has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn an_idle_network_with_ten_peers_uses_no_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vnet.sock");
    let vnet = Vnet::listening_on(&sock, &["run", "--no-user", "--listen", &unix_spec("stream", &sock)]);
    let peers: Vec<_> = (0..10).map(|_| StreamPeer::connect(&sock)).collect();
    vnet.wait_for_log("port=11");
    let before = cpu_ticks(vnet.pid());
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu_ticks(vnet.pid()) - before;
    assert!(used <= 1, "idle vnet used {used} ticks of CPU in 3 s");
    drop(peers);
}

#[test]
fn a_silent_udp_peer_loses_its_port_after_the_idle_timeout() {
    let vnet_addr = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let vnet = Vnet::spawn(&[
        "run",
        "--no-user",
        "--dgram-peer-timeout",
        "1",
        "--listen",
        &format!("dgram:udp:{vnet_addr}"),
    ]);
    vnet.wait_for_log("listening");
    let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.send_to(&frame(BROADCAST, mac(5), 60, 0), vnet_addr).unwrap();
    vnet.wait_for_log("port opened");
    vnet.wait_for_log("datagram peer idle; port removed");
    peer.send_to(&frame(BROADCAST, mac(5), 60, 0), vnet_addr).unwrap();
    vnet.wait_for_log("port=2");
}

#[test]
fn run_as_drops_to_the_user_and_the_sandboxed_switch_still_carries_frames() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let sock = dir.path().join("vnet.sock");
    let vnet = Vnet::listening_on(
        &sock,
        &["run", "--no-user", "--run-as", "nobody", "--listen", &unix_spec("stream", &sock)],
    );
    let mut a = StreamPeer::connect(&sock);
    let mut b = StreamPeer::connect(&sock);
    vnet.wait_for_log("port=2");
    let status = std::fs::read_to_string(format!("/proc/{}/status", vnet.pid())).unwrap();
    let uid = status.lines().find(|line| line.starts_with("Uid:")).unwrap();
    assert_eq!(uid.split_whitespace().skip(1).collect::<Vec<_>>(), ["65534"; 4], "{uid}");
    let no_new_privs = status.lines().find(|line| line.starts_with("NoNewPrivs:")).unwrap();
    assert!(no_new_privs.ends_with('1'), "{no_new_privs}");
    let seccomp = status.lines().find(|line| line.starts_with("Seccomp:")).unwrap();
    assert!(seccomp.ends_with('2'), "a seccomp filter is on: {seccomp}");
    a.send(&frame(BROADCAST, mac(1), 80, 0xa));
    assert_eq!(source_of(&b.recv().unwrap()), mac(1));
    let (status, log) = vnet.stop();
    assert!(status.success(), "{log}");
}
