//! The control API: HTTP/1.1 with JSON bodies on a named network's unix socket (mode
//! 0600), so `curl --unix-socket` and the `vnet` subcommands both use it.
//!
//! Each client gets a thread of its own, which parses the request, runs what it asks on
//! the network's thread through a [`Remote`], and answers. Long requests (a capture, a
//! connection to a guest) keep their thread; the network's thread never waits for a
//! client. This module knows the paths and their JSON; the network's internals are
//! reached only through [`crate::views`] and [`Network`]'s own methods.

use std::io::{self, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::{debug, info, warn};
use vnet_gateway::policy::PolicyRule;
use vnet_gateway::{ForwardProtocol, HostForward};
use vnet_gateway_host::{GatewayHostError, GatewayNetwork};
use vnet_runtime::{Network, Remote};
use vnet_switch::PortId;

use crate::capture;
use crate::http::{self, HttpError, Request, Response};
use crate::metrics;
use crate::user_options::{parse_forward_host_side, parse_host_forward};
use crate::views::{self, NetworkInfo};

/// Clients served at once; more get 503.
const MAX_CLIENTS: usize = 64;
/// How long a client may take to send its request, or to take a part of the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the accept loop waits after a failed accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The API socket; dropping it removes the socket file.
pub struct ApiSocket {
    path: PathBuf,
}

impl Drop for ApiSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds the API socket at `path` (refusing one a running vnet serves) and serves it on
/// a thread of its own.
pub fn serve(path: &Path, remote: Remote, info: NetworkInfo) -> anyhow::Result<ApiSocket> {
    if UnixStream::connect(path).is_ok() {
        anyhow::bail!("{} is served by a running vnet; stop it or choose another --name", path.display());
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)
        .with_context(|| format!("cannot create the API socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {} to its owner", path.display()))?;
    let api = Arc::new(Api { remote, info });
    std::thread::Builder::new()
        .name("vnet-api".to_owned())
        .spawn(move || accept_loop(&listener, &api))
        .context("cannot start the API thread")?;
    info!(path = %path.display(), "API listening");
    Ok(ApiSocket { path: path.to_owned() })
}

struct Api {
    remote: Remote,
    info: NetworkInfo,
}

fn accept_loop(listener: &UnixListener, api: &Arc<Api>) {
    let clients = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let mut stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                // Out of descriptors, most likely: wait rather than spin.
                warn!(error = %e, "API accept failed");
                std::thread::sleep(ACCEPT_BACKOFF);
                continue;
            }
        };
        if clients.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
            clients.fetch_sub(1, Ordering::SeqCst);
            let _ = Response::error(503, "too many API clients at once; try again").write_to(&mut stream);
            continue;
        }
        let (api, clients) = (Arc::clone(api), Arc::clone(&clients));
        let spawned = std::thread::Builder::new().name("vnet-api-client".to_owned()).spawn(move || {
            if let Err(e) = serve_client(&api, stream) {
                debug!(error = %e, "API client ended with an error");
            }
            clients.fetch_sub(1, Ordering::SeqCst);
        });
        if spawned.is_err() {
            warn!("cannot start a thread for an API client");
        }
    }
}

/// What serving one request leads to.
enum Outcome {
    /// A complete response.
    Respond(Response),
    /// Stream a capture to the client.
    Capture { port: Option<PortId>, count: Option<u64> },
    /// Hand the connection to the gateway as a connection to `guest`.
    Connect(SocketAddr),
}

fn serve_client(api: &Api, stream: UnixStream) -> io::Result<()> {
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let request = match http::read_request(&mut reader) {
        Ok(request) => request,
        Err(HttpError::Io(e)) => return Err(e),
        Err(error) => {
            let status = match error {
                HttpError::HeadTooLarge => 431,
                HttpError::BodyTooLarge => 413,
                _ => 400,
            };
            warn!(%error, "bad API request");
            return Response::error(status, error.to_string()).write_to(&mut writer);
        }
    };
    debug!(method = %request.method, path = %request.path, "API request");
    match route(api, &request) {
        Outcome::Respond(response) => response.write_to(&mut writer),
        Outcome::Capture { port, count } => stream_capture(api, port, count, writer),
        Outcome::Connect(guest) => {
            let reachable = api.remote.run(move |network| match network.gateway() {
                None => Err(Response::error(409, "the network has no gateway (--no-user)")),
                Some(gateway) if !gateway.config().is_in_network(guest.ip()) => Err(Response::error(
                    400,
                    format!(
                        "{} is not in the network {}/{} or {}/{}",
                        guest.ip(),
                        gateway.config().network,
                        gateway.config().prefix_len,
                        gateway.config().ipv6_prefix,
                        gateway.config().ipv6_prefix_len
                    ),
                )),
                Some(_) => Ok(()),
            });
            match reachable {
                Ok(Ok(())) => {}
                Ok(Err(response)) => return response.write_to(&mut writer),
                Err(_) => return stopped().write_to(&mut writer),
            }
            writer.set_read_timeout(None)?;
            writer.set_write_timeout(None)?;
            http::write_open_head(&mut writer, 101, "application/octet-stream")?;
            let connected = api.remote.run(move |network| network.connect_to_guest(guest, writer));
            match connected {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(io::Error::other(e.to_string())),
                Err(e) => Err(io::Error::other(e)),
            }
        }
    }
}

fn route(api: &Api, request: &Request) -> Outcome {
    let result = match (request.method.as_str(), request.path.as_str()) {
        ("GET", "/v1/status") => snapshot(api, |network, info| json!(views::status(network, info))),
        ("GET", "/v1/ports") => snapshot(api, |network, _| json!(views::ports(network))),
        ("GET", "/v1/macs") => snapshot(api, |network, _| json!(views::stations(network))),
        ("GET", "/v1/leases") => snapshot(api, |network, _| json!(views::leases(network))),
        ("GET", "/v1/flows") => snapshot(api, |network, _| json!(views::flows(network))),
        ("GET", "/v1/forwards") => snapshot(api, |network, _| json!(views::forwards(network))),
        ("POST", "/v1/forwards") => add_forward(api, request),
        ("DELETE", "/v1/forwards") => remove_forward(api, request),
        ("GET", "/v1/policy") => snapshot(api, |network, _| json!(views::policy(network))),
        ("POST", "/v1/policy") => add_policy_rule(api, request),
        ("DELETE", "/v1/policy") => remove_policy_rule(api, request),
        ("GET", "/v1/dns") => snapshot(api, |network, _| json!(views::dns_records(network))),
        ("POST", "/v1/dns") => add_dns_record(api, request),
        ("DELETE", "/v1/dns") => remove_dns_record(api, request),
        ("POST", "/v1/capture") => return capture_request(request),
        ("POST", "/v1/connect") => return connect_request(request),
        ("GET", "/metrics") => metrics_response(api),
        (_, path) if KNOWN_PATHS.contains(&path) => {
            Err(Response::error(405, format!("{} is not allowed on {path}", request.method)))
        }
        (_, path) => Err(Response::error(404, format!("no such path: {path}; see /v1/status"))),
    };
    Outcome::Respond(result.unwrap_or_else(|error| error))
}

const KNOWN_PATHS: [&str; 11] = [
    "/v1/status",
    "/v1/policy",
    "/v1/dns",
    "/v1/ports",
    "/v1/macs",
    "/v1/leases",
    "/v1/flows",
    "/v1/forwards",
    "/v1/capture",
    "/v1/connect",
    "/metrics",
];

type Handled = Result<Response, Response>;

fn stopped() -> Response {
    Response::error(503, "the network is stopping")
}

fn snapshot(api: &Api, view: fn(&Network, &NetworkInfo) -> Value) -> Handled {
    let info = api.info.clone();
    let value = api.remote.run(move |network| view(network, &info)).map_err(|_| stopped())?;
    Ok(Response::json(200, &value))
}

fn metrics_response(api: &Api) -> Handled {
    let info = api.info.clone();
    let (status, ports) = api
        .remote
        .run(move |network| (views::status(network, &info), views::ports(network)))
        .map_err(|_| stopped())?;
    let body = metrics::render(&status, &ports).into_bytes();
    Ok(Response { status: 200, content_type: metrics::CONTENT_TYPE, body })
}

/// A forward as a request gives it: `{"rule": "tcp::2222-:22"}`, or the fields.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ForwardBody {
    rule: Option<String>,
    protocol: Option<String>,
    host: Option<String>,
    guest: Option<String>,
}

/// The rule text of a forward request: `?rule=`, a JSON body, or the body as plain text.
fn forward_text(request: &Request, needs_guest: bool) -> Result<String, Response> {
    if let Some(rule) = request.query_param("rule") {
        return Ok(rule);
    }
    let text =
        std::str::from_utf8(&request.body).map_err(|_| Response::error(400, "the body is not UTF-8"))?.trim();
    if text.is_empty() {
        return Err(Response::error(
            400,
            "give the rule as {\"rule\": \"tcp::2222-:22\"}, as fields, or as ?rule=",
        ));
    }
    if !text.starts_with('{') {
        return Ok(text.to_owned());
    }
    let body: ForwardBody =
        serde_json::from_str(text).map_err(|e| Response::error(400, format!("bad JSON body: {e}")))?;
    if let Some(rule) = body.rule {
        return Ok(rule);
    }
    let protocol = body.protocol.unwrap_or_else(|| "tcp".to_owned());
    let host = body
        .host
        .ok_or_else(|| Response::error(400, "the field \"host\" (ADDRESS:PORT or :PORT) is missing"))?;
    match (body.guest, needs_guest) {
        (Some(guest), _) => Ok(format!("{protocol}:{host}-{guest}")),
        (None, false) => Ok(format!("{protocol}:{host}")),
        (None, true) => Err(Response::error(400, "the field \"guest\" (ADDRESS:PORT or :PORT) is missing")),
    }
}

fn add_forward(api: &Api, request: &Request) -> Handled {
    let text = forward_text(request, true)?;
    let rule: HostForward = parse_host_forward(&text)
        .map_err(|problem| Response::error(400, format!("'{text}' is not a hostfwd rule: {problem}")))?;
    let added = api.remote.run(move |network| network.add_forward(rule)).map_err(|_| stopped())?;
    match added {
        Ok((id, rule)) => Ok(Response::json(201, &json!(views::ForwardView::new(id, &rule)))),
        Err(GatewayHostError::NoGateway) => {
            Err(Response::error(409, "the network has no gateway (--no-user)"))
        }
        Err(e) => Err(Response::error(409, e.to_string())),
    }
}

fn remove_forward(api: &Api, request: &Request) -> Handled {
    let text = forward_text(request, false)?;
    let (protocol, host): (ForwardProtocol, SocketAddr) = parse_forward_host_side(&text)
        .map_err(|problem| Response::error(400, format!("'{text}' is not a hostfwd rule: {problem}")))?;
    let removed =
        api.remote.run(move |network| network.remove_forward(protocol, host)).map_err(|_| stopped())?;
    match removed {
        Some((id, rule)) => Ok(Response::json(200, &json!(views::ForwardView::new(id, &rule)))),
        None => Err(Response::error(404, format!("no hostfwd rule listens at {text}; see GET /v1/forwards"))),
    }
}

/// An egress rule as a request gives it: `{"rule": "deny=proto:tcp+port:25"}` with an
/// optional `"position"` (from 0; the end without it), or the rule as the body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyBody {
    rule: String,
    position: Option<usize>,
}

fn add_policy_rule(api: &Api, request: &Request) -> Handled {
    let text =
        std::str::from_utf8(&request.body).map_err(|_| Response::error(400, "the body is not UTF-8"))?.trim();
    let (text, position) = if text.starts_with('{') {
        let body: PolicyBody =
            serde_json::from_str(text).map_err(|e| Response::error(400, format!("bad JSON body: {e}")))?;
        (body.rule, body.position)
    } else {
        (text.to_owned(), None)
    };
    let rule: PolicyRule = text
        .parse()
        .map_err(|problem| Response::error(400, format!("'{text}' is not a policy rule: {problem}")))?;
    let position = position.unwrap_or(usize::MAX);
    let written = rule.to_string();
    let added =
        api.remote.run(move |network| network.add_policy_rule(position, rule)).map_err(|_| stopped())?;
    match added {
        Ok(()) => Ok(Response::json(201, &json!({ "rule": written }))),
        Err(_) => Err(Response::error(409, "the network has no gateway (--no-user)")),
    }
}

fn remove_policy_rule(api: &Api, request: &Request) -> Handled {
    let index = request
        .query_param("index")
        .and_then(|index| index.parse::<usize>().ok())
        .ok_or_else(|| Response::error(400, "give the rule's number as ?index=N; see GET /v1/policy"))?;
    let removed = api.remote.run(move |network| network.remove_policy_rule(index)).map_err(|_| stopped())?;
    match removed {
        Ok(Some(rule)) => Ok(Response::json(200, &json!({ "rule": rule.to_string() }))),
        Ok(None) => Err(Response::error(404, format!("no rule {index}; see GET /v1/policy"))),
        Err(_) => Err(Response::error(409, "the network has no gateway (--no-user)")),
    }
}

/// A DNS record as a request gives it: `{"name": "files", "address": "10.0.2.2"}`,
/// `?record=NAME=ADDR` or `NAME=ADDR` as the body; a removal needs the name alone.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DnsRecordBody {
    name: String,
    address: Option<String>,
}

/// The `NAME[=ADDR]` text of a DNS record request.
fn dns_record_text(request: &Request) -> Result<String, Response> {
    if let Some(record) = request.query_param("record").or_else(|| request.query_param("name")) {
        return Ok(record);
    }
    let text =
        std::str::from_utf8(&request.body).map_err(|_| Response::error(400, "the body is not UTF-8"))?.trim();
    if !text.starts_with('{') {
        return Ok(text.to_owned());
    }
    let body: DnsRecordBody =
        serde_json::from_str(text).map_err(|e| Response::error(400, format!("bad JSON body: {e}")))?;
    Ok(match body.address {
        Some(address) => format!("{}={address}", body.name),
        None => body.name,
    })
}

fn add_dns_record(api: &Api, request: &Request) -> Handled {
    let text = dns_record_text(request)?;
    let (name, address) = crate::user_options::dns_record(&text).map_err(|problem| {
        Response::error(400, format!("'{text}' is not a DNS record NAME=ADDR: {problem}"))
    })?;
    let record = name.clone();
    let added =
        api.remote.run(move |network| network.add_dns_record(&record, address)).map_err(|_| stopped())?;
    match added {
        Ok(()) => {
            Ok(Response::json(201, &json!(views::DnsRecordView { name, address: address.to_string() })))
        }
        Err(GatewayHostError::NoGateway) => {
            Err(Response::error(409, "the network has no gateway (--no-user)"))
        }
        Err(e) => Err(Response::error(409, e.to_string())),
    }
}

fn remove_dns_record(api: &Api, request: &Request) -> Handled {
    let name = dns_record_text(request)?;
    let label = name.split('.').next().unwrap_or_default().to_owned();
    let removed = api.remote.run(move |network| network.remove_dns_record(&label)).map_err(|_| stopped())?;
    match removed {
        Ok(0) => Err(Response::error(404, format!("no DNS record named {name}; see GET /v1/dns"))),
        Ok(count) => Ok(Response::json(200, &json!({ "removed": count }))),
        Err(_) => Err(Response::error(409, "the network has no gateway (--no-user)")),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CaptureBody {
    port: Option<u32>,
    count: Option<u64>,
}

fn capture_request(request: &Request) -> Outcome {
    let parsed = if request.body.iter().all(u8::is_ascii_whitespace) {
        Ok(CaptureBody::default())
    } else {
        serde_json::from_slice::<CaptureBody>(&request.body)
    };
    let body = match parsed {
        Ok(body) => body,
        Err(e) => return Outcome::Respond(Response::error(400, format!("bad JSON body: {e}"))),
    };
    if body.count == Some(0) {
        return Outcome::Respond(Response::error(400, "count must be at least 1"));
    }
    let port = body.port.map(PortId);
    Outcome::Capture { port, count: body.count }
}

fn stream_capture(
    api: &Api,
    port: Option<PortId>,
    count: Option<u64>,
    mut out: UnixStream,
) -> io::Result<()> {
    let (sink, writer) = capture::channel(count);
    match api.remote.run(move |network| network.add_mirror(port, Box::new(sink))) {
        Ok(true) => {}
        Ok(false) => {
            let number = port.map_or(0, |port| port.0);
            return Response::error(404, format!("no port {number}; see GET /v1/ports")).write_to(&mut out);
        }
        Err(_) => return stopped().write_to(&mut out),
    }
    http::write_open_head(&mut out, 200, "application/vnd.tcpdump.pcap")?;
    let reader = out.try_clone()?;
    let summary = writer.run(&mut out, || client_is_connected(&reader))?;
    info!(written = summary.written, dropped = summary.dropped, "capture ended");
    out.flush()
}

/// Whether the client at the other end of `stream` is still there (it sends nothing
/// during a capture, so end of stream means it hung up).
fn client_is_connected(stream: &UnixStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut byte = [0u8; 1];
    let flags = nix::sys::socket::MsgFlags::MSG_PEEK | nix::sys::socket::MsgFlags::MSG_DONTWAIT;
    !matches!(nix::sys::socket::recv(stream.as_raw_fd(), &mut byte, flags), Ok(0))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectBody {
    guest: String,
}

fn connect_request(request: &Request) -> Outcome {
    let guest = serde_json::from_slice::<ConnectBody>(&request.body)
        .map_err(|e| format!("bad JSON body: {e}; expected {{\"guest\": \"10.0.2.15:22\"}}"))
        .and_then(|body| {
            body.guest
                .parse::<SocketAddr>()
                .map_err(|_| format!("'{}' is not ADDRESS:PORT (an IPv6 address in brackets)", body.guest))
        });
    match guest {
        Ok(guest) if guest.port() != 0 => Outcome::Connect(guest),
        Ok(_) => Outcome::Respond(Response::error(400, "the guest port must not be 0")),
        Err(problem) => Outcome::Respond(Response::error(400, problem)),
    }
}
