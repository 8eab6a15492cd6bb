//! Just enough HTTP/1.1 for the control API: one request per connection, a bounded head,
//! and bodies sized by Content-Length. Both ends are here, the server's request reader
//! and the client's response reader, so `vnet status` and `curl --unix-socket` speak the
//! same thing. Nothing here knows the API's paths.

use std::io::{self, BufRead, Read, Write};

use thiserror::Error;

/// Largest request or response head (request line and headers).
pub const MAX_HEAD: usize = 16 * 1024;
/// Largest request body the API accepts.
pub const MAX_BODY: usize = 64 * 1024;
/// Most header lines in one head.
const MAX_HEADERS: usize = 64;

/// Why a request or response could not be read.
#[derive(Debug, Error)]
pub enum HttpError {
    /// The peer broke the protocol; the message says how.
    #[error("{0}")]
    Malformed(&'static str),
    /// The head is larger than [`MAX_HEAD`].
    #[error("the head is larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    /// The body is larger than allowed.
    #[error("the body is larger than {MAX_BODY} bytes")]
    BodyTooLarge,
    /// The connection failed or closed early.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// One request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// GET, POST, DELETE, ...
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query string after `?`, if any, still percent-encoded.
    pub query: Option<String>,
    /// Header names (lower-case) and values.
    pub headers: Vec<(String, String)>,
    /// The body (empty without Content-Length).
    pub body: Vec<u8>,
}

impl Request {
    /// The value of query parameter `name`, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query.as_deref()?.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key == name).then(|| percent_decode(value))
        })
    }
}

/// One response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The Content-Type.
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// A JSON response.
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
        body.push(b'\n');
        Self { status, content_type: "application/json", body }
    }

    /// A JSON error: `{"error": message}`.
    pub fn error(status: u16, message: impl Into<String>) -> Self {
        Self::json(status, &serde_json::json!({ "error": message.into() }))
    }

    /// Writes the response and its body.
    pub fn write_to(&self, out: &mut impl Write) -> io::Result<()> {
        write!(
            out,
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.status,
            reason_phrase(self.status),
            self.content_type,
            self.body.len()
        )?;
        out.write_all(&self.body)?;
        out.flush()
    }
}

/// Writes the head of a response whose body follows until the connection closes (a
/// capture), or of a `101 Switching Protocols` after which the connection is a plain
/// byte stream.
pub fn write_open_head(out: &mut impl Write, status: u16, content_type: &str) -> io::Result<()> {
    let upgrade =
        if status == 101 { "Upgrade: tcp\r\nConnection: Upgrade\r\n" } else { "Connection: close\r\n" };
    write!(
        out,
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\n{upgrade}\r\n",
        reason_phrase(status)
    )?;
    out.flush()
}

/// The standard phrase for the status codes the API uses.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Reads lines of a head until the empty line, within [`MAX_HEAD`] bytes in all.
fn read_head(input: &mut impl BufRead) -> Result<Vec<String>, HttpError> {
    let mut lines = Vec::new();
    let mut total = 0;
    loop {
        let mut line = Vec::new();
        let limit = (MAX_HEAD - total) as u64 + 1;
        let read = input.by_ref().take(limit).read_until(b'\n', &mut line)?;
        total += read;
        if total > MAX_HEAD {
            return Err(HttpError::HeadTooLarge);
        }
        if read == 0 || line.last() != Some(&b'\n') {
            return Err(HttpError::Malformed("the connection closed in the middle of the head"));
        }
        let line = String::from_utf8(line).map_err(|_| HttpError::Malformed("the head is not UTF-8"))?;
        let line = line.trim_end_matches(['\r', '\n']).to_owned();
        if line.is_empty() {
            return Ok(lines);
        }
        if lines.len() > MAX_HEADERS {
            return Err(HttpError::HeadTooLarge);
        }
        lines.push(line);
    }
}

/// Splits header lines into lower-case names and trimmed values.
fn parse_headers(lines: &[String]) -> Result<Vec<(String, String)>, HttpError> {
    lines
        .iter()
        .map(|line| {
            let (name, value) =
                line.split_once(':').ok_or(HttpError::Malformed("a header line has no ':'"))?;
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(HttpError::Malformed("a header name is empty or has spaces"));
            }
            Ok((name.to_ascii_lowercase(), value.trim().to_owned()))
        })
        .collect()
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
}

/// Reads a body of Content-Length bytes, up to `limit`.
fn read_body(
    input: &mut impl BufRead,
    headers: &[(String, String)],
    limit: usize,
) -> Result<Vec<u8>, HttpError> {
    if header(headers, "transfer-encoding").is_some() {
        return Err(HttpError::Malformed("chunked bodies are not supported; send Content-Length"));
    }
    let Some(length) = header(headers, "content-length") else {
        return Ok(Vec::new());
    };
    let length: usize = length.parse().map_err(|_| HttpError::Malformed("Content-Length is not a number"))?;
    if length > limit {
        return Err(HttpError::BodyTooLarge);
    }
    let mut body = vec![0; length];
    input.read_exact(&mut body)?;
    Ok(body)
}

/// Reads one request.
pub fn read_request(input: &mut impl BufRead) -> Result<Request, HttpError> {
    let lines = read_head(input)?;
    let (request_line, header_lines) =
        lines.split_first().ok_or(HttpError::Malformed("the request is empty"))?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::Malformed("the request line is not METHOD PATH HTTP/1.1"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(HttpError::Malformed("only HTTP/1.x is spoken here"));
    }
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(HttpError::Malformed("the method is not an upper-case word"));
    }
    if !target.starts_with('/') {
        return Err(HttpError::Malformed("the path must start with '/'"));
    }
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path.to_owned(), Some(query.to_owned())),
        None => (target.to_owned(), None),
    };
    let headers = parse_headers(header_lines)?;
    let body = read_body(input, &headers, MAX_BODY)?;
    Ok(Request { method: method.to_owned(), path, query, headers, body })
}

/// A response as the client reads it: status, and the body read to its length or, for
/// an open-ended one, left in `input`.
#[derive(Debug)]
pub struct ResponseHead {
    /// The status code.
    pub status: u16,
    /// Header names (lower-case) and values.
    pub headers: Vec<(String, String)>,
}

/// Reads a response head.
pub fn read_response_head(input: &mut impl BufRead) -> Result<ResponseHead, HttpError> {
    let lines = read_head(input)?;
    let (status_line, header_lines) =
        lines.split_first().ok_or(HttpError::Malformed("the response is empty"))?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or(HttpError::Malformed("the status line has no status code"))?;
    Ok(ResponseHead { status, headers: parse_headers(header_lines)? })
}

/// Largest response body the client reads: far more than any table vnet answers with.
const MAX_RESPONSE_BODY: usize = 256 * 1024 * 1024;

/// Reads the body of a response whose head said how long it is.
pub fn read_response_body(input: &mut impl BufRead, head: &ResponseHead) -> Result<Vec<u8>, HttpError> {
    read_body(input, &head.headers, MAX_RESPONSE_BODY)
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = || {
            std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok().and_then(|h| u8::from_str_radix(h, 16).ok())
        };
        match (bytes[i], hex()) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &[u8]) -> Result<Request, HttpError> {
        read_request(&mut io::BufReader::new(text))
    }

    #[test]
    fn a_request_with_a_query_headers_and_a_body_parses() {
        let request = parse(
            b"POST /v1/forwards?rule=tcp%3A%3A2222-%3A22 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
        )
        .unwrap();
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/v1/forwards");
        assert_eq!(request.query_param("rule").as_deref(), Some("tcp::2222-:22"));
        assert_eq!(request.headers[0], ("host".to_owned(), "x".to_owned()));
        assert_eq!(request.body, b"{}");
    }

    #[test]
    fn malformed_requests_are_refused_with_a_reason() {
        for (text, expected) in [
            (&b""[..], "closed in the middle"),
            (b"GET /\r\n\r\n", "METHOD PATH"),
            (b"GET / SPDY/3\r\n\r\n", "HTTP/1.x"),
            (b"get / HTTP/1.1\r\n\r\n", "upper-case"),
            (b"GET v1 HTTP/1.1\r\n\r\n", "start with '/'"),
            (b"GET / HTTP/1.1\r\nNoColon\r\n\r\n", "no ':'"),
            (b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n", "not a number"),
            (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", "chunked"),
            (b"\xff / HTTP/1.1\r\n\r\n", "UTF-8"),
        ] {
            let error = parse(text).unwrap_err().to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }

    #[test]
    fn oversized_heads_and_bodies_are_refused() {
        let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
        long.resize(MAX_HEAD + 10, b'a');
        long.extend_from_slice(b"\r\n\r\n");
        assert!(matches!(parse(&long), Err(HttpError::HeadTooLarge)));
        let many: String = (0..100).map(|i| format!("X{i}: y\r\n")).collect();
        assert!(matches!(
            parse(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()),
            Err(HttpError::HeadTooLarge)
        ));
        let big = format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", MAX_BODY + 1);
        assert!(matches!(parse(big.as_bytes()), Err(HttpError::BodyTooLarge)));
        assert!(matches!(parse(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab"), Err(HttpError::Io(_))));
    }

    #[test]
    fn a_response_reads_back_as_written() {
        let mut wire = Vec::new();
        Response::error(404, "no such path").write_to(&mut wire).unwrap();
        let mut input = io::BufReader::new(&wire[..]);
        let head = read_response_head(&mut input).unwrap();
        assert_eq!(head.status, 404);
        let body: serde_json::Value =
            serde_json::from_slice(&read_response_body(&mut input, &head).unwrap()).unwrap();
        assert_eq!(body["error"], "no such path");
    }
}
