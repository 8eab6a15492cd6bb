//! Bulk transfers between a guest and host loopback, checked end to end: deterministic
//! bytes, a one-shot HTTP server to download from, a one-shot receiver to upload to, and
//! their SHA-256.

use std::io::{Read, Write};
use std::net::TcpListener;

/// Deterministic bytes for transfer tests (xorshift), so both ends can check them.
pub fn test_bytes(len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// The SHA-256 of `data` in hex, as `sha256sum` prints it.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// Serves `body` once over minimal HTTP on host loopback; returns the port.
pub fn serve_http_once(body: Vec<u8>) -> u16 {
    serve_http_once_on("127.0.0.1:0", body)
}

/// Serves `body` over HTTP to one client on `address` (a port of 0 picks one), and
/// returns the port.
pub fn serve_http_once_on(address: &str, body: Vec<u8>) -> u16 {
    let listener = TcpListener::bind(address).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut request = [0u8; 4096];
        let _ = stream.read(&mut request);
        let header = format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
        let _ = stream.write_all(header.as_bytes());
        let _ = stream.write_all(&body);
    });
    port
}

/// Receives exactly `len` bytes once on host loopback and sends back their SHA-256.
pub fn receive_once(len: usize) -> (u16, std::thread::JoinHandle<String>) {
    receive_once_on("127.0.0.1:0", len)
}

/// [`receive_once`] on `address`.
pub fn receive_once_on(address: &str, len: usize) -> (u16, std::thread::JoinHandle<String>) {
    let listener = TcpListener::bind(address).unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut received = vec![0u8; len];
        stream.read_exact(&mut received).unwrap();
        let _ = stream.write_all(b"k");
        sha256_hex(&received)
    });
    (port, handle)
}

/// Guest script lines that download from `http_port` and upload `len` random bytes to
/// `upload_port` on the gateway (10.0.2.2), printing `download=SHA` and `upload=SHA`.
pub fn guest_transfer_script(http_port: u16, upload_port: u16, len: usize) -> String {
    format!(
        r#"echo download=$(wget -q -O - http://10.0.2.2:{http_port}/data | sha256sum)
mkfifo /tmp/upload
sha256sum /tmp/upload > /tmp/upload.sum &
head -c {len} /dev/urandom | tee /tmp/upload | nc 10.0.2.2 {upload_port}
wait
echo upload=$(cat /tmp/upload.sum)"#
    )
}
