//! Operating a running vnet: named networks, the HTTP API on their socket, the commands
//! built on it (status, ports, macs, leases, flows, fwd, connect, capture, qemu-args),
//! config files, readiness and pid files, and the generated completions and man page.
//! Guests are real: a TCG guest for DHCP, ping and TCP, and tshark reads the captures.
//! Every address is on vnet's own segment or the host's loopback.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use support::guest::{stream_netdev, GuestLock, GuestSpec, Nic, BOOT_DEADLINE, DHCP};
use support::*;

/// A network name unique to this test process and `what`.
fn unique_name(what: &str) -> String {
    format!("t{}-{what}", std::process::id())
}

/// Runs `vnet ARGS...` to completion.
fn vnet_cli(args: &[&str]) -> Output {
    support::vnet_with(args).output().expect("vnet runs")
}

/// Runs `vnet ARGS...`, which must succeed, and returns its stdout.
fn vnet_ok(args: &[&str]) -> String {
    let output = vnet_cli(args);
    assert!(output.status.success(), "vnet {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

/// `vnet ARGS... --json`, parsed.
fn vnet_json(args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    serde_json::from_str(&vnet_ok(&args)).unwrap()
}

/// A request with `body` and its Content-Length.
fn with_body(method: &str, path: &str, body: &str) -> Vec<u8> {
    format!("{method} {path} HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
}

fn get(name: &str, path: &str) -> (u16, String) {
    raw_request(name, format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
}

/// A named network with the gateway, listening on its default stream socket.
fn named_network(name: &str, extra: &[&str]) -> Vnet {
    let mut args = vec!["run", "--name", name, "--listen", "stream"];
    args.extend_from_slice(extra);
    let vnet = Vnet::spawn(&args);
    wait_until("the API socket", DEADLINE, || UnixStream::connect(api_socket(name)).is_ok());
    vnet
}

/// Checks Prometheus text exposition format line by line and returns the samples.
fn parse_prometheus(text: &str) -> Vec<(String, f64)> {
    let mut declared = std::collections::HashSet::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(["counter", "gauge"].contains(&kind), "{line}");
            assert!(declared.insert(name.to_owned()), "declared twice: {line}");
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value: {line}"));
        let name = series.split('{').next().unwrap();
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "bad name: {line}");
        assert!(declared.contains(name), "sample before its TYPE: {line}");
        if let Some(labels) = series.strip_prefix(name) {
            assert!(labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')), "{line}");
        }
        samples.push((series.to_owned(), value));
    }
    samples
}

fn metric(samples: &[(String, f64)], series: &str) -> f64 {
    samples.iter().find(|(s, _)| s == series).unwrap_or_else(|| panic!("no {series}")).1
}

/// tshark's one-line summaries of the frames in `pcap` that match `filter`.
fn tshark(pcap: &Path, filter: &str) -> String {
    let output = Command::new("tshark")
        .args(["-n", "-r", pcap.to_str().unwrap(), "-Y", filter])
        .output()
        .expect("tshark runs (apt install tshark)");
    assert!(output.status.success(), "tshark: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

/// One HTTP/1.0 GET through `stream`, returning the whole response.
fn http_get(mut stream: impl Read + Write) -> String {
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// A TCG guest that takes a lease by DHCP, serves HTTP on port 7000 and pings the
/// gateway twice a second, is seen through every inspection command, reached with
/// `vnet connect` and a runtime forward, and captured both from the start (`--pcap`)
/// and on request (`vnet capture`).
#[test]
fn a_guest_is_seen_reached_forwarded_to_and_captured_through_the_api() {
    let _lock = GuestLock::acquire();
    let name = unique_name("guest");
    let scratch = tempfile::tempdir().unwrap();
    let from_start = scratch.path().join("from-start.pcap");
    let vnet = named_network(&name, &["--pcap", from_start.to_str().unwrap()]);
    let sock = runtime_dir(&name).join("stream.sock");
    let script = format!(
        "{DHCP} || exit 1
mkdir -p /www && echo served-by-the-guest > /www/index.html && httpd -p 7000 -h /www
ping -i 0.5 -c 600 10.0.2.2 >/dev/null &
n=0; until netstat -ltn | grep -q ':7000 '; do n=$((n+1)); [ $n -ge 600 ] && exit 1; sleep 0.1; done
echo SERVERS-UP; report"
    );
    let guest =
        GuestSpec::new("api", Nic::VirtioNet, &stream_netdev(&sock), &script).mac("52:54:00:00:0a:01").boot();
    guest.wait_for("SERVERS-UP", BOOT_DEADLINE);

    // Leases, stations and ports.
    let leases = vnet_json(&["leases", &name]);
    assert_eq!(leases[0]["mac"], "52:54:00:00:0a:01", "{leases}");
    assert_eq!(leases[0]["ip"], "10.0.2.15");
    assert!(vnet_ok(&["leases", &name]).contains("10.0.2.15  52:54:00:00:0a:01  dhcp"));
    let ports = vnet_json(&["ports", &name]);
    let guest_port = ports
        .as_array()
        .unwrap()
        .iter()
        .find(|port| port["name"].as_str().unwrap().starts_with("stream:unix:"))
        .unwrap_or_else(|| panic!("the guest's port: {ports}"))["id"]
        .as_u64()
        .unwrap();
    let macs = vnet_json(&["macs", &name]);
    assert!(
        macs.as_array().unwrap().iter().any(|s| s["mac"] == "52:54:00:00:0a:01" && s["port"] == guest_port),
        "{macs}"
    );
    let status = vnet_ok(&["status", &name]);
    assert!(status.contains(&format!("network  {name}")) && status.contains("leases   1"), "{status}");

    // Metrics parse, and the guest's counters move with its pings.
    let series = format!("vnet_port_rx_frames_total{{port=\"{guest_port}\",name=\"");
    let rx_frames = |text: &str| {
        let samples = parse_prometheus(text);
        samples
            .iter()
            .find(|(s, _)| s.starts_with(&series))
            .map(|(_, v)| *v)
            .expect("the guest port's counter")
    };
    let (code, first) = get(&name, "/metrics");
    assert_eq!(code, 200);
    assert_eq!(metric(&parse_prometheus(&first), "vnet_dhcp_leases"), 1.0);
    wait_until("the guest's rx counter to move", DEADLINE, || {
        rx_frames(&get(&name, "/metrics").1) > rx_frames(&first)
    });

    // A capture of twelve frames of the guest's port: its pings (and ARP), read back by tshark.
    let on_request = scratch.path().join("on-request.pcap");
    let port_arg = guest_port.to_string();
    vnet_ok(&["capture", &name, "--port", &port_arg, "-w", on_request.to_str().unwrap(), "--count", "12"]);
    let icmp = tshark(&on_request, "icmp");
    assert_eq!(
        icmp.lines()
            .filter(|l| l.contains("10.0.2.15 → 10.0.2.2") && l.contains("Echo (ping) request"))
            .count()
            + icmp
                .lines()
                .filter(|l| l.contains("10.0.2.2 → 10.0.2.15") && l.contains("Echo (ping) reply"))
                .count(),
        icmp.lines().count(),
        "{icmp}"
    );
    assert!(icmp.lines().count() >= 4, "at least two pings among twelve frames:\n{icmp}");

    // `vnet connect` reaches the guest's server with no forward declared, and its flow
    // shows while it is open.
    let mut connect = support::vnet_command()
        .args(["connect", &name, "10.0.2.15:7000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the connection's flow", DEADLINE, || {
        let flows = vnet_json(&["flows", &name]);
        flows
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["protocol"] == "tcp" && f["guest"] == "10.0.2.15:7000" && f["state"] == "established")
    });
    connect.stdin.take().unwrap().write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut through_connect = String::new();
    connect.stdout.take().unwrap().read_to_string(&mut through_connect).unwrap();
    assert!(connect.wait().unwrap().success());
    assert!(through_connect.ends_with("served-by-the-guest\n"), "{through_connect}");

    // A forward added at runtime carries connections; once removed it refuses new ones
    // and leaves the open one alone.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let rule = format!("tcp:127.0.0.1:{port}-:7000");
    assert!(vnet_ok(&["fwd", "add", &name, &rule])
        .contains(&format!("added tcp 127.0.0.1:{port} -> 10.0.2.15:7000")));
    assert!(http_get(TcpStream::connect(("127.0.0.1", port)).unwrap()).ends_with("served-by-the-guest\n"));
    let held = TcpStream::connect(("127.0.0.1", port)).unwrap();
    held.set_read_timeout(Some(DEADLINE)).unwrap();
    wait_until("the held connection's flow", DEADLINE, || {
        vnet_json(&["flows", &name])
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["guest"] == "10.0.2.15:7000" && f["state"] == "established")
    });
    assert!(vnet_json(&["fwd", "list", &name])
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["host"] == format!("127.0.0.1:{port}")));
    vnet_ok(&["fwd", "rm", &name, &format!("tcp:127.0.0.1:{port}")]);
    let refused = TcpStream::connect(("127.0.0.1", port)).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(http_get(held).ends_with("served-by-the-guest\n"), "the open connection went on");
    assert!(vnet_json(&["fwd", "list", &name]).as_array().unwrap().is_empty());

    drop(guest);
    let (status, log) = vnet.stop();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("hostfwd added") && log.contains("hostfwd removed") && log.contains("DHCP lease"),
        "{log}"
    );
    let dhcp = tshark(&from_start, "dhcp");
    assert!(dhcp.contains("DHCP Discover") && dhcp.contains("DHCP ACK"), "--pcap caught the lease:\n{dhcp}");
    assert!(!runtime_dir(&name).exists(), "the runtime directory is removed on exit");
}

#[test]
fn bad_requests_get_a_4xx_with_a_reason_and_the_api_keeps_serving() {
    let name = unique_name("bad");
    let vnet = named_network(&name, &[]);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(api_socket(&name)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the API socket is its owner's only");

    let oversized = format!("POST /v1/forwards HTTP/1.1\r\nContent-Length: {}\r\n\r\n", 1 << 20);
    let huge_head = format!("GET /v1/status HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"GET /v2/nothing HTTP/1.1\r\n\r\n".to_vec(), 404, "no such path"),
        (b"DELETE /v1/status HTTP/1.1\r\n\r\n".to_vec(), 405, "not allowed"),
        (b"garbage\r\n\r\n".to_vec(), 400, "METHOD PATH"),
        (b"\x00\x01\x02\xff\r\n\r\n".to_vec(), 400, "UTF-8"),
        (oversized.into_bytes(), 413, "larger than"),
        (huge_head.into_bytes(), 431, "larger than"),
        (with_body("POST", "/v1/forwards", r#"{"rule":1"#), 400, "bad JSON"),
        (with_body("POST", "/v1/forwards", r#"tcp::22"#), 400, "not a hostfwd rule"),
        (with_body("POST", "/v1/forwards", r#"{"host":":2222"}"#), 400, "\"guest\""),
        (b"DELETE /v1/forwards?rule=tcp::1 HTTP/1.1\r\n\r\n".to_vec(), 404, "no hostfwd rule"),
        (with_body("POST", "/v1/capture", r#"{"port":999}"#), 404, "no port 999"),
        (with_body("POST", "/v1/connect", r#"{"guest":"10.9.9.9"}"#), 400, "ADDRESS:PORT"),
        (with_body("POST", "/v1/connect", r#"{"guest":"192.0.2.1:22"}"#), 400, "not in the network"),
    ];
    for (request, expected_status, expected_text) in cases {
        let (status, body) = raw_request(&name, &request);
        assert_eq!(status, expected_status, "{:?}: {body}", String::from_utf8_lossy(&request));
        let error: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("JSON error body: {body}"));
        assert!(error["error"].as_str().unwrap().contains(expected_text), "{body}");
    }
    // A client that connects and says nothing, and one that hangs up mid-head, do not
    // stop others.
    let _silent = UnixStream::connect(api_socket(&name)).unwrap();
    drop(UnixStream::connect(api_socket(&name)).unwrap());
    let (status, body) = get(&name, "/v1/status");
    assert_eq!(status, 200, "{body}");
    assert_eq!(vnet_cli(&["fwd", "rm", &name, "tcp::1"]).status.code(), Some(2));
    let (status, log) = vnet.stop();
    assert!(status.success(), "{log}");
    assert!(log.contains("bad API request"), "{log}");
}

#[test]
fn a_config_file_sets_the_network_flags_override_it_and_a_bad_one_names_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let file_name = unique_name("file");
    let flag_name = unique_name("flag");
    let config = dir.path().join("lab.toml");
    std::fs::write(
        &config,
        format!("name = \"{file_name}\"\nlisten = [\"stream\"]\nforwards = [\"tcp:127.0.0.1:0-:22\"]\nmac-aging = 30\n"),
    )
    .unwrap();
    let vnet = Vnet::spawn(&["run", "--config", config.to_str().unwrap(), "--name", &flag_name]);
    wait_until("the API socket", DEADLINE, || UnixStream::connect(api_socket(&flag_name)).is_ok());
    assert!(!runtime_dir(&file_name).exists(), "--name overrides the file's name");
    let status = vnet_json(&["status", &flag_name]);
    assert_eq!(status["listen"][0], format!("stream:unix:/run/vnet/{flag_name}/stream.sock"));
    assert_eq!(status["gateway"]["forwards"], 1, "{status}");
    assert!(UnixStream::connect(runtime_dir(&flag_name).join("stream.sock")).is_ok());
    let qemu = vnet_ok(&["qemu-args", &flag_name, "--model", "e1000"]);
    assert!(qemu.starts_with(&format!("-netdev stream,id=net0,server=off,addr.type=unix,addr.path=/run/vnet/{flag_name}/stream.sock -device e1000,netdev=net0,mac=52:54:00:")), "{qemu}");
    // A reader that goes away (`vnet ports NAME | head -0`) ends the output quietly.
    let mut ports = support::vnet_with(&["ports", &flag_name])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(ports.stdout.take());
    let ports = ports.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&ports.stderr);
    assert!(ports.status.success() && !stderr.contains("panicked"), "{:?} {stderr}", ports.status);
    vnet.stop();

    std::fs::write(&config, "name = \"lab\"\n\nlisten = [\"stream:tcp:nowhere\"]\n").unwrap();
    let output = vnet_cli(&["run", "--config", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("{}:3: 'stream:tcp:nowhere'", config.display())), "{stderr}");
    let output = vnet_cli(&["run", "--listen", "stream"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("needs --name"));
}

#[test]
fn readiness_goes_to_the_ready_fd_and_systemd_and_the_pid_file_lives_as_long_as_vnet() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let name = unique_name("ready");
    let pidfile = dir.path().join("vnet.pid");
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(DEADLINE)).unwrap();
    let (ready_reader, ready_writer) = UnixStream::pair().unwrap();
    let ready_fd = std::os::fd::AsRawFd::as_raw_fd(&ready_writer);
    let mut command =
        support::vnet_with(&["-q", "run", "--name", &name, "--listen", "stream", "--ready-fd", "3"]);
    command.arg("--pidfile").arg(&pidfile).env("NOTIFY_SOCKET", &notify_path).stderr(Stdio::piped());
    // SAFETY: dup2 is async-signal-safe and touches only descriptors.
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(ready_fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn().unwrap();
    drop(ready_writer);
    let mut line = String::new();
    BufReader::new(&ready_reader).read_line(&mut line).unwrap();
    assert_eq!(line, "READY=1\n");
    let mut buffer = [0u8; 64];
    let len = notify.recv(&mut buffer).unwrap();
    assert_eq!(&buffer[..len], b"READY=1");
    assert!(UnixStream::connect(runtime_dir(&name).join("stream.sock")).is_ok(), "listening once ready");
    assert_eq!(std::fs::read_to_string(&pidfile).unwrap(), format!("{}\n", child.id()));
    signal(child.id(), libc::SIGTERM);
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    assert!(output.stderr.is_empty(), "-q keeps info quiet: {}", String::from_utf8_lossy(&output.stderr));
    assert!(!pidfile.exists() && !runtime_dir(&name).exists());
}

#[test]
fn completions_and_the_man_page_come_from_the_command_line_definition() {
    let bash = vnet_ok(&["completions", "bash"]);
    assert!(bash.contains("_vnet()") && bash.contains("qemu-args") && bash.contains("--listen"), "{bash}");
    assert!(vnet_ok(&["completions", "zsh"]).contains("#compdef vnet"));
    let man = vnet_ok(&["man"]);
    assert!(man.starts_with(".ie") || man.contains(".TH vnet"), "{}", &man[..200.min(man.len())]);
    assert!(man.contains("capture"));
}

#[test]
fn rust_log_sets_the_log_level_and_a_bad_filter_is_reported() {
    let run = |filter: &str| {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("vnet.sock");
        let child = support::vnet_command()
            .args(["run", "--no-user", "--listen", &format!("stream:unix:{}", sock.display())])
            .env("RUST_LOG", filter)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_until("vnet's socket", DEADLINE, || UnixStream::connect(&sock).is_ok());
        signal(child.id(), libc::SIGTERM);
        String::from_utf8(child.wait_with_output().unwrap().stderr).unwrap()
    };
    let debug = run("debug");
    assert!(debug.contains("DEBUG") && debug.contains("endpoint added"), "{debug}");
    let warn = run("warn");
    assert!(!warn.contains("INFO"), "{warn}");
    let bad = run("=nonsense=");
    assert!(bad.contains("RUST_LOG is not a valid filter") && bad.contains("INFO"), "{bad}");
}
