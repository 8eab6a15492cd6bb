//! The VDE control protocol's one request (REFERENCE §2): what a client sends on a
//! vde_switch's control socket to get a port, and the `struct sockaddr_un` both sides
//! exchange. Pure bytes in and out, so the parser is tested and fuzzed without sockets;
//! what a switch does with a request is the VDE transport's business.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// AF_UNIX, as Linux numbers it.
const AF_UNIX: u16 = 1;

/// The request's magic number.
const MAGIC: u32 = 0xfeed_face;
/// The protocol version vnet speaks.
const VERSION: u32 = 3;
/// `type & 0xff` of a request for a data port.
const REQUEST_NEW_PORT: u32 = 0;
/// `type & 0xff` of a request for vde_switch's management port 0, which vnet serves as
/// a data port like any other.
const REQUEST_PORT_ZERO: u32 = 1;
/// sizeof(struct sockaddr_un) on Linux.
pub const SOCKADDR_UN_LEN: usize = 110;
/// Magic, version, type and the client's address: the shortest valid request.
pub const REQUEST_MIN: usize = 12 + SOCKADDR_UN_LEN;
/// The longest request: the description is at most 128 bytes.
pub const REQUEST_MAX: usize = REQUEST_MIN + 128;
/// Port numbers a client may ask for, as vde_switch's default `-n 32` would, and more.
pub const MAX_PORT: u32 = 1024;

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Fewer bytes than magic, version, type and an address.
    #[error("the request is {0} bytes, shorter than the {REQUEST_MIN} of a version 3 request")]
    Short(usize),
    /// More bytes than a request and its description.
    #[error("the request is longer than {REQUEST_MAX} bytes")]
    Oversized,
    /// Not the VDE magic number.
    #[error("bad magic {0:#x} (expected 0xfeedface)")]
    BadMagic(u32),
    /// A protocol version other than 3.
    #[error("protocol version {0} is not supported (only 3)")]
    BadVersion(u32),
    /// A request type other than a new port.
    #[error("request type {0} is not a port request")]
    BadType(u32),
    /// A port number above [`MAX_PORT`].
    #[error("port {0} is out of range (1 to {MAX_PORT})")]
    PortOutOfRange(u32),
    /// The port asked for is taken.
    #[error("port {0} is in use")]
    PortInUse(u32),
    /// Every port is taken.
    #[error("all {MAX_PORT} ports are in use")]
    NoFreePort,
    /// The client's address is not a unix socket path.
    #[error("the client's address is not a unix socket path")]
    BadAddress,
}

/// A parsed port request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRequest {
    /// The port asked for; None for any free one.
    pub port: Option<u32>,
    /// The client's datagram socket.
    pub client: PathBuf,
    /// The client's description of itself.
    pub description: String,
}

/// Parses a request read from a control connection.
pub fn parse_request(bytes: &[u8]) -> Result<PortRequest, RequestError> {
    if bytes.len() < REQUEST_MIN {
        return Err(RequestError::Short(bytes.len()));
    }
    if bytes.len() > REQUEST_MAX {
        return Err(RequestError::Oversized);
    }
    let word = |at: usize| u32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let (magic, version, kind) = (word(0), word(4), word(8));
    if magic != MAGIC {
        return Err(RequestError::BadMagic(magic));
    }
    if version != VERSION {
        return Err(RequestError::BadVersion(version));
    }
    let port = match (kind & 0xff, kind >> 8) {
        (REQUEST_NEW_PORT, 0) | (REQUEST_PORT_ZERO, _) => None,
        (REQUEST_NEW_PORT, port) if port <= MAX_PORT => Some(port),
        (REQUEST_NEW_PORT, port) => return Err(RequestError::PortOutOfRange(port)),
        (other, _) => return Err(RequestError::BadType(other)),
    };
    let client = sockaddr_un_path(&bytes[12..REQUEST_MIN]).ok_or(RequestError::BadAddress)?;
    let description: String = String::from_utf8_lossy(&bytes[REQUEST_MIN..])
        .chars()
        .filter(|c| !c.is_control())
        .collect::<String>()
        .trim()
        .to_owned();
    Ok(PortRequest { port, client, description })
}

/// The path of a `struct sockaddr_un`, if it is a non-empty AF_UNIX path.
pub fn sockaddr_un_path(address: &[u8]) -> Option<PathBuf> {
    let family = u16::from_ne_bytes([address[0], address[1]]);
    let path = &address[2..];
    let end = path.iter().position(|&b| b == 0)?;
    if family != AF_UNIX || end == 0 {
        return None;
    }
    Some(PathBuf::from(OsStr::from_bytes(&path[..end])))
}

/// `path` as a `struct sockaddr_un`.
pub fn sockaddr_un(path: &Path) -> io::Result<[u8; SOCKADDR_UN_LEN]> {
    let bytes = path.as_os_str().as_encoded_bytes();
    if bytes.len() >= SOCKADDR_UN_LEN - 2 || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is too long for a unix socket path", path.display()),
        ));
    }
    let mut address = [0u8; SOCKADDR_UN_LEN];
    address[..2].copy_from_slice(&(AF_UNIX).to_ne_bytes());
    address[2..2 + bytes.len()].copy_from_slice(bytes);
    Ok(address)
}

/// A port request as a client sends it.
pub fn encode_request(port: Option<u32>, client: &Path, description: &str) -> io::Result<Vec<u8>> {
    let mut request = Vec::with_capacity(REQUEST_MAX);
    for word in [MAGIC, VERSION, port.unwrap_or(0) << 8 | REQUEST_NEW_PORT] {
        request.extend_from_slice(&word.to_ne_bytes());
    }
    request.extend_from_slice(&sockaddr_un(client)?);
    request.extend_from_slice(&description.as_bytes()[..description.len().min(128)]);
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_round_trips_and_asks_for_its_port() {
        let bytes = encode_request(Some(7), Path::new("/tmp/vde/.client-1"), "qemu").unwrap();
        let request = parse_request(&bytes).unwrap();
        assert_eq!(
            request,
            PortRequest { port: Some(7), client: "/tmp/vde/.client-1".into(), description: "qemu".into() }
        );
        let any = parse_request(&encode_request(None, Path::new("/c"), "").unwrap()).unwrap();
        assert_eq!(any.port, None);
    }

    #[test]
    fn malformed_requests_say_what_is_wrong() {
        let good = encode_request(None, Path::new("/tmp/c"), "x").unwrap();
        let with = |at: usize, word: u32| {
            let mut bytes = good.clone();
            bytes[at..at + 4].copy_from_slice(&word.to_ne_bytes());
            bytes
        };
        assert_eq!(parse_request(&good[..100]), Err(RequestError::Short(100)));
        assert_eq!(parse_request(&[good.clone(), vec![b'x'; 200]].concat()), Err(RequestError::Oversized));
        assert_eq!(parse_request(&with(0, 0xdead_beef)), Err(RequestError::BadMagic(0xdead_beef)));
        assert_eq!(parse_request(&with(4, 2)), Err(RequestError::BadVersion(2)));
        assert_eq!(parse_request(&with(8, 5)), Err(RequestError::BadType(5)));
        assert_eq!(parse_request(&with(8, 5000 << 8)), Err(RequestError::PortOutOfRange(5000)));
        assert_eq!(parse_request(&with(12, 2)), Err(RequestError::BadAddress), "AF_INET");
        let mut no_nul = good.clone();
        no_nul[14..REQUEST_MIN].fill(b'a');
        assert_eq!(parse_request(&no_nul), Err(RequestError::BadAddress));
        let mut empty = good.clone();
        empty[14..REQUEST_MIN].fill(0);
        assert_eq!(parse_request(&empty), Err(RequestError::BadAddress));
        assert_eq!(parse_request(&with(8, 1)).unwrap().port, None, "port 0 is served as any port");
    }
}
