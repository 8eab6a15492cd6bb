//! The `vnet` subcommands that talk to a running network through its API socket:
//! `status`, `ports`, `macs`, `leases`, `flows`, `fwd`, `connect` and `capture`. Each
//! sends one request and prints the answer, as a table or as the API's JSON. Nothing
//! here knows the network's internals; it only knows the API.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::http::{self, ResponseHead};
use crate::runtime_dir;
use crate::tables;
use crate::views::{FlowView, ForwardView, LeaseView, PolicyRuleView, PortView, StationView, StatusView};

/// A connection to one network's API.
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// The client of network `name`, or of the only running one.
    pub fn new(name: Option<&str>) -> anyhow::Result<Self> {
        Ok(Self { socket: runtime_dir::api_socket(name)? })
    }

    fn connect(&self) -> anyhow::Result<UnixStream> {
        UnixStream::connect(&self.socket).with_context(|| {
            format!(
                "cannot reach the network's API at {}; is it running (vnet run --name NAME)?",
                self.socket.display()
            )
        })
    }

    /// Sends a request and returns the open connection, positioned after the response
    /// head; an error status becomes an error with the API's message.
    fn open(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(ResponseHead, BufReader<UnixStream>)> {
        let mut stream = self.connect()?;
        let body = body.map(|value| value.to_string()).unwrap_or_default();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: vnet\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        let mut reader = BufReader::new(stream);
        let head = http::read_response_head(&mut reader).context("the API's answer is not HTTP")?;
        if head.status >= 400 {
            let body = http::read_response_body(&mut reader, &head).unwrap_or_default();
            let message = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|value| value["error"].as_str().map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            bail!("{message}");
        }
        Ok((head, reader))
    }

    /// Sends a request and returns its JSON answer.
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let (head, mut reader) = self.open(method, path, body)?;
        let body = http::read_response_body(&mut reader, &head)?;
        serde_json::from_slice(&body).context("the API's answer is not JSON")
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<(Value, T)> {
        let value = self.request("GET", path, None)?;
        let typed =
            serde_json::from_value(value.clone()).context("the API's answer has an unexpected shape")?;
        Ok((value, typed))
    }
}

/// What an inspection command shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inspect {
    /// `vnet status`.
    Status,
    /// `vnet ports`.
    Ports,
    /// `vnet macs`.
    Macs,
    /// `vnet leases`.
    Leases,
    /// `vnet flows`.
    Flows,
    /// `vnet fwd list`.
    Forwards,
    /// `vnet policy list`.
    Policy,
}

/// Prints what `what` shows of network `name`, as a table or as JSON.
pub fn inspect(name: Option<&str>, what: Inspect, as_json: bool) -> anyhow::Result<()> {
    let client = Client::new(name)?;
    let (value, text) = match what {
        Inspect::Status => client.get::<StatusView>("/v1/status").map(|(v, t)| (v, tables::status(&t)))?,
        Inspect::Ports => client.get::<Vec<PortView>>("/v1/ports").map(|(v, t)| (v, tables::ports(&t)))?,
        Inspect::Macs => {
            client.get::<Vec<StationView>>("/v1/macs").map(|(v, t)| (v, tables::stations(&t)))?
        }
        Inspect::Leases => {
            client.get::<Vec<LeaseView>>("/v1/leases").map(|(v, t)| (v, tables::leases(&t)))?
        }
        Inspect::Flows => client.get::<Vec<FlowView>>("/v1/flows").map(|(v, t)| (v, tables::flows(&t)))?,
        Inspect::Forwards => {
            client.get::<Vec<ForwardView>>("/v1/forwards").map(|(v, t)| (v, tables::forwards(&t)))?
        }
        Inspect::Policy => {
            client.get::<Vec<PolicyRuleView>>("/v1/policy").map(|(v, t)| (v, tables::policy(&t)))?
        }
    };
    if as_json {
        print_out(&format!("{}\n", serde_json::to_string_pretty(&value)?))
    } else {
        print_out(&text)
    }
}

/// Writes `text` to standard output. A reader that went away (`vnet ports | head`) ends
/// the output quietly: what it did not read it did not want.
pub fn print_out(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// `vnet fwd add|rm NAME RULE`.
pub fn change_forward(name: &str, rule: &str, add: bool) -> anyhow::Result<()> {
    let client = Client::new(Some(name))?;
    let method = if add { "POST" } else { "DELETE" };
    let answer: ForwardView =
        serde_json::from_value(client.request(method, "/v1/forwards", Some(&json!({ "rule": rule })))?)?;
    let verb = if add { "added" } else { "removed" };
    print_out(&format!("{verb} {} {} -> {}\n", answer.protocol, answer.host, answer.guest))?;
    Ok(())
}

/// `vnet policy add NAME RULE [--position N]`.
pub fn add_policy_rule(name: &str, rule: &str, position: Option<usize>) -> anyhow::Result<()> {
    let client = Client::new(Some(name))?;
    let answer =
        client.request("POST", "/v1/policy", Some(&json!({ "rule": rule, "position": position })))?;
    print_out(&format!("added {}\n", answer["rule"].as_str().unwrap_or(rule)))?;
    Ok(())
}

/// `vnet policy rm NAME INDEX`.
pub fn remove_policy_rule(name: &str, index: usize) -> anyhow::Result<()> {
    let client = Client::new(Some(name))?;
    let answer = client.request("DELETE", &format!("/v1/policy?index={index}"), None)?;
    print_out(&format!("removed {}\n", answer["rule"].as_str().unwrap_or_default()))?;
    Ok(())
}

/// `vnet connect NAME GUEST:PORT`: relays standard input and output to a TCP
/// connection the gateway opens to the guest, until the guest closes it.
pub fn connect(name: &str, guest: &str) -> anyhow::Result<()> {
    let client = Client::new(Some(name))?;
    let (_, reader) = client.open("POST", "/v1/connect", Some(&json!({ "guest": guest })))?;
    let mut stdout = io::stdout().lock();
    // The guest may have spoken already, in the same read as the answer's head.
    stdout.write_all(reader.buffer())?;
    stdout.flush()?;
    let stream = reader.into_inner();
    let upstream = stream.try_clone()?;
    std::thread::spawn(move || {
        let mut upstream = upstream;
        let _ = io::copy(&mut io::stdin().lock(), &mut upstream);
        let _ = upstream.shutdown(std::net::Shutdown::Write);
    });
    copy_flushing(&mut &stream, &mut stdout)?;
    Ok(())
}

/// Copies until end of stream, flushing after every read so interactive protocols (ssh)
/// see each message at once.
fn copy_flushing(input: &mut impl Read, output: &mut impl Write) -> io::Result<()> {
    let mut buffer = [0u8; 16 * 1024];
    loop {
        match input.read(&mut buffer) {
            Ok(0) => return output.flush(),
            Ok(len) => {
                output.write_all(&buffer[..len])?;
                output.flush()?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// `vnet capture NAME [--port ID] -w FILE [--count N]`; `-w -` writes to standard output.
pub fn capture(name: &str, port: Option<u32>, file: &Path, count: Option<u64>) -> anyhow::Result<()> {
    let client = Client::new(Some(name))?;
    let mut body = json!({});
    if let Some(port) = port {
        body["port"] = json!(port);
    }
    if let Some(count) = count {
        body["count"] = json!(count);
    }
    let mut output: Box<dyn Write> = if file == Path::new("-") {
        Box::new(io::stdout().lock())
    } else {
        Box::new(std::fs::File::create(file).with_context(|| format!("cannot create {}", file.display()))?)
    };
    let (_, mut reader) = client.open("POST", "/v1/capture", Some(&body))?;
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            break;
        }
        output.write_all(chunk)?;
        let len = chunk.len();
        reader.consume(len);
        output.flush()?;
    }
    Ok(())
}
