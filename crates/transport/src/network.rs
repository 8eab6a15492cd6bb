//! One virtual network: a switch, the endpoints that feed it, and the readiness loop that
//! runs them all on one thread.
//!
//! The loop is edge-triggered (mio over epoll) and never spins: it sleeps in `epoll_wait`
//! until a socket is ready or the next timer is due. Reading is done in bounded batches
//! per endpoint, and every batch is followed by a flush of the ports it filled, so one
//! busy peer can neither starve the others nor overflow their queues between flushes.
//! What each endpoint does with its descriptor is its own module's business.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};
use tracing::{debug, info, warn};
use vnet_switch::{MirrorSink, PortId, PortVlans, Switch, SwitchConfig};

use crate::gateway::GatewayPort;
use crate::TransportError;

/// Something outside the switch the loop must watch, such as a signalfd: the network
/// stops when it says so.
pub trait Supervisor {
    /// The descriptor to wait on.
    fn fd(&self) -> BorrowedFd<'_>;
    /// Called when the descriptor is readable. `Some(code)` stops the network, which then
    /// returns `code` from [`Network::run`].
    fn on_readable(&mut self) -> Option<i32>;
}

/// Events outside any port's counters: connections ended for bad input, datagrams that
/// could not be given a port, and connections accepted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetworkCounters {
    /// Stream connections closed because the peer sent a length of 0 or above the limit.
    pub bad_frame_length: u64,
    /// Stream connections that ended in the middle of a frame.
    pub truncated_frame: u64,
    /// Datagrams from peers vnet cannot answer (unnamed unix sockets).
    pub unanswerable_datagram: u64,
    /// Datagrams from new peers refused because a socket already serves its maximum.
    pub dgram_peer_refused: u64,
    /// Connections accepted by stream and VDE listeners (not a loss; counted for
    /// inspection).
    pub accepted: u64,
    /// VDE control connections closed for a malformed or refused port request.
    pub bad_vde_request: u64,
}

/// What one read batch found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadOutcome {
    /// Nothing more to read until the next readiness event.
    Drained,
    /// The batch was full; there may be more.
    More,
    /// The endpoint is finished and must be removed.
    Closed,
}

/// Whether an endpoint is still usable after writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Liveness {
    Open,
    Closed,
}

/// Tokens for readiness events: each endpoint has one, and may register more sources
/// (such as the gateway's host sockets) under tokens of their own that lead back to it.
#[derive(Debug)]
struct Tokens {
    next: usize,
    owner_of_source: HashMap<Token, Token>,
}

impl Tokens {
    fn allocate(&mut self) -> Token {
        let token = Token(self.next);
        self.next += 1;
        token
    }

    /// The endpoint an event's token belongs to.
    fn owner(&self, token: Token) -> Token {
        self.owner_of_source.get(&token).copied().unwrap_or(token)
    }
}

/// What an endpoint may touch while it runs: the switch, its own ports, the counters, and
/// the registry for (re-)registering its descriptors.
pub(crate) struct Context<'a> {
    pub switch: &'a mut Switch,
    pub registry: &'a Registry,
    pub counters: &'a mut NetworkCounters,
    pub now: Instant,
    /// The endpoint's own token.
    pub token: Token,
    /// The token whose event is being handled: `token`, or one from
    /// [`Context::register_source`].
    pub ready: Token,
    owners: &'a mut HashMap<PortId, Token>,
    spawned: &'a mut Vec<Box<dyn Endpoint>>,
    tokens: &'a mut Tokens,
    /// The VLANs the running endpoint's ports carry.
    vlans: &'a PortVlans,
}

impl Context<'_> {
    /// Adds a port owned by the running endpoint, whose peer gets frames ready for the
    /// wire.
    pub fn add_port(&mut self, name: String) -> PortId {
        self.add_port_taking_offloads(name, false)
    }

    /// Adds a port owned by the running endpoint; if `takes_offloads`, its frames may
    /// come with offloads still to do (see [`vnet_wire::Offload`]).
    pub fn add_port_taking_offloads(&mut self, name: String, takes_offloads: bool) -> PortId {
        let id = self.switch.add_port_on_vlans(name.clone(), takes_offloads, self.vlans.clone());
        info!(port = %id, %name, "port opened");
        self.owners.insert(id, self.token);
        id
    }

    /// Removes a port of the running endpoint and logs its final counters.
    pub fn remove_port(&mut self, id: PortId) {
        self.owners.remove(&id);
        if let Some(port) = self.switch.remove_port(id) {
            info!(port = %id, name = port.name(), counters = %port.counters(), "port closed");
        }
    }

    /// Hands a new endpoint (an accepted connection) to the network.
    pub fn spawn(&mut self, endpoint: Box<dyn Endpoint>) {
        self.spawned.push(endpoint);
    }

    /// Registers one more source of the running endpoint under a token of its own, whose
    /// events come back to this endpoint with that token in [`Context::ready`].
    pub fn register_source(
        &mut self,
        source: &mut dyn mio::event::Source,
        interest: Interest,
    ) -> io::Result<Token> {
        let token = self.tokens.allocate();
        self.registry.register(source, token, interest)?;
        self.tokens.owner_of_source.insert(token, self.token);
        Ok(token)
    }

    /// Forgets a source registered with [`Context::register_source`]; closing its
    /// descriptor removes it from epoll.
    pub fn forget_source(&mut self, token: Token) {
        self.tokens.owner_of_source.remove(&token);
    }
}

/// A source of frames: a listener, a connection, a datagram socket, a tap.
pub(crate) trait Endpoint {
    /// Registers descriptors under `cx.token` and opens ports.
    fn start(&mut self, cx: &mut Context<'_>) -> io::Result<()>;
    /// Reads one bounded batch and hands what arrived to the switch.
    fn read_batch(&mut self, cx: &mut Context<'_>) -> ReadOutcome;
    /// The descriptor can take writes again: send what waits on every port.
    fn on_writable(&mut self, cx: &mut Context<'_>) -> Liveness;
    /// Sends what waits on `port`, which this endpoint owns.
    fn flush(&mut self, port: PortId, cx: &mut Context<'_>) -> Liveness;
    /// When [`Endpoint::on_deadline`] wants to run next.
    fn deadline(&self) -> Option<Instant> {
        None
    }
    /// Timer work: retries, expiry.
    fn on_deadline(&mut self, _cx: &mut Context<'_>) {}
    /// Whether the endpoint holds back frames until other ports' queues drain.
    fn waits_for_room(&self) -> bool {
        false
    }
    /// Ports have delivered frames since the endpoint began to wait: send what waited.
    fn on_room(&mut self, _cx: &mut Context<'_>) {}
    /// Closes every port; the endpoint is dropped after this.
    fn close(&mut self, cx: &mut Context<'_>);
    /// The gateway, if this endpoint is it.
    fn as_gateway(&self) -> Option<&GatewayPort> {
        None
    }
    /// The gateway, if this endpoint is it, to change.
    fn as_gateway_mut(&mut self) -> Option<&mut GatewayPort> {
        None
    }
}

const SUPERVISOR: Token = Token(0);
/// The VLANs of an ordinary port: the default VLAN, untagged.
static DEFAULT_VLANS: PortVlans = PortVlans::DEFAULT;
/// The wake-up of [`Remote`]: jobs from other threads wait.
const JOBS: Token = Token(usize::MAX);
/// Read batches one endpoint gets per readiness event before others have a turn.
const BATCHES_PER_TURN: usize = 8;
/// Rounds of [`Network::flush_pending`]: a frame in, the gateway's answer, its delivery.
const FLUSH_ROUNDS: usize = 4;
/// How often aged MAC table entries are swept.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(60);

/// Settings of one network.
#[derive(Debug, Clone, Copy)]
pub struct NetworkConfig {
    /// The switch's settings.
    pub switch: SwitchConfig,
    /// How long a datagram peer may be silent before its port is removed.
    pub dgram_peer_timeout: Duration,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self { switch: SwitchConfig::default(), dgram_peer_timeout: crate::dgram::DEFAULT_PEER_IDLE_TIMEOUT }
    }
}

/// A running virtual network.
pub struct Network {
    config: NetworkConfig,
    poll: Poll,
    switch: Switch,
    endpoints: HashMap<Token, Box<dyn Endpoint>>,
    owners: HashMap<PortId, Token>,
    counters: NetworkCounters,
    tokens: Tokens,
    next_housekeeping: Instant,
    gateway: Option<Token>,
    /// The VLANs of endpoints whose ports carry other than the default VLAN untagged;
    /// what an endpoint spawns inherits them.
    vlans: HashMap<Token, PortVlans>,
    jobs: mpsc::Receiver<Job>,
    remote: Remote,
}

impl Network {
    /// A network with an empty switch.
    pub fn new(config: NetworkConfig) -> Result<Self, TransportError> {
        let poll = Poll::new().map_err(|e| TransportError::io("cannot create epoll instance", e))?;
        let waker = mio::Waker::new(poll.registry(), JOBS)
            .map_err(|e| TransportError::io("cannot create the loop's wake-up", e))?;
        let (sender, jobs) = mpsc::channel();
        Ok(Self {
            gateway: None,
            vlans: HashMap::new(),
            jobs,
            remote: Remote { jobs: sender, waker: Arc::new(waker) },
            poll,
            config,
            switch: Switch::new(config.switch),
            endpoints: HashMap::new(),
            owners: HashMap::new(),
            counters: NetworkCounters::default(),
            tokens: Tokens { next: 1, owner_of_source: HashMap::new() },
            next_housekeeping: Instant::now() + HOUSEKEEPING_INTERVAL,
        })
    }

    /// The settings the network was made with.
    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    /// The switch, for inspection.
    pub fn switch(&self) -> &Switch {
        &self.switch
    }

    /// Counters of events outside the ports.
    pub fn counters(&self) -> &NetworkCounters {
        &self.counters
    }

    /// Adds an endpoint whose ports carry `vlans`.
    pub(crate) fn add_endpoint(
        &mut self,
        endpoint: Box<dyn Endpoint>,
        vlans: PortVlans,
    ) -> Result<Token, TransportError> {
        let token =
            self.install(endpoint, vlans).map_err(|e| TransportError::io("cannot register endpoint", e))?;
        debug!(token = token.0, "endpoint added");
        Ok(token)
    }

    /// Adds the user-mode gateway as a port of the network, on `vlans`.
    pub fn add_gateway(
        &mut self,
        config: vnet_gateway::GatewayConfig,
        vlans: PortVlans,
    ) -> Result<(), TransportError> {
        let token = self.add_endpoint(Box::new(GatewayPort::new(config)?), vlans)?;
        self.gateway = Some(token);
        Ok(())
    }

    /// A handle for other threads to run code on this network's loop.
    pub fn remote(&self) -> Remote {
        self.remote.clone()
    }

    /// The gateway, if the network has one.
    pub fn gateway(&self) -> Option<&vnet_gateway::Gateway> {
        let endpoint = self.endpoints.get(&self.gateway?)?;
        endpoint.as_gateway().map(GatewayPort::gateway)
    }

    /// Runs `f` on the gateway with a context, then delivers what it sent; None if
    /// there is no gateway.
    fn with_gateway<T>(&mut self, f: impl FnOnce(&mut GatewayPort, &mut Context<'_>) -> T) -> Option<T> {
        let token = self.gateway?;
        let result = self.with_endpoint(token, |endpoint, cx| {
            let result = endpoint.as_gateway_mut().map(|gateway| f(gateway, cx));
            (result, Liveness::Open)
        });
        self.flush_pending();
        result.flatten()
    }

    /// Adds a hostfwd rule to the running gateway; see [`GatewayPort::add_forward`].
    pub fn add_forward(
        &mut self,
        rule: vnet_gateway::HostForward,
    ) -> Result<(usize, vnet_gateway::HostForward), TransportError> {
        self.with_gateway(|gateway, cx| gateway.add_forward(rule, cx))
            .unwrap_or(Err(TransportError::NoGateway))
    }

    /// Removes the hostfwd rule of `protocol` at `host` and returns it with its number;
    /// None if there is none.
    pub fn remove_forward(
        &mut self,
        protocol: vnet_gateway::ForwardProtocol,
        host: std::net::SocketAddr,
    ) -> Option<(usize, vnet_gateway::HostForward)> {
        self.with_gateway(|gateway, cx| gateway.remove_forward(protocol, host, cx)).flatten()
    }

    /// Connects `stream` to TCP port `guest` through the gateway (`vnet connect`).
    pub fn connect_to_guest(
        &mut self,
        guest: std::net::SocketAddrV4,
        stream: std::os::unix::net::UnixStream,
    ) -> Result<(), TransportError> {
        self.with_gateway(|gateway, cx| gateway.connect_to_guest(guest, stream, cx))
            .ok_or(TransportError::NoGateway)?
            .map_err(|e| TransportError::io("cannot connect to the guest", e))
    }

    /// Copies frames to `sink`; see [`Switch::add_mirror`]. With `port`, false (and no
    /// mirror) if there is no such port.
    pub fn add_mirror(&mut self, port: Option<PortId>, sink: Box<dyn MirrorSink>) -> bool {
        if port.is_some_and(|port| self.switch.port(port).is_none()) {
            return false;
        }
        self.switch.add_mirror(port, sink);
        true
    }

    /// Runs the jobs other threads sent through [`Remote`].
    fn run_jobs(&mut self) {
        while let Ok(job) = self.jobs.try_recv() {
            job(self);
        }
    }

    /// Runs until the supervisor asks to stop, and returns its exit code. Every port is
    /// closed and every socket file removed before it returns.
    pub fn run(&mut self, supervisor: &mut dyn Supervisor) -> Result<i32, TransportError> {
        let supervisor_fd = supervisor.fd().as_raw_fd();
        self.poll
            .registry()
            .register(&mut SourceFd(&supervisor_fd), SUPERVISOR, Interest::READABLE)
            .map_err(|e| TransportError::io("cannot watch signals", e))?;
        let mut events = Events::with_capacity(256);
        let mut again: Vec<Token> = Vec::new();
        let exit_code = loop {
            let timeout = if again.is_empty() {
                self.next_deadline().map(|d| d.saturating_duration_since(Instant::now()))
            } else {
                Some(Duration::ZERO)
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(TransportError::io("epoll_wait failed", e));
            }
            let mut stop = None;
            let mut turn: Vec<Token> = std::mem::take(&mut again);
            for event in events.iter() {
                let token = event.token();
                if token == SUPERVISOR {
                    stop = stop.or(supervisor.on_readable());
                    continue;
                }
                if token == JOBS {
                    continue;
                }
                if event.is_writable() {
                    self.write_ready(token);
                }
                if (event.is_readable() || event.is_read_closed() || event.is_error())
                    && !turn.contains(&token)
                {
                    turn.push(token);
                }
            }
            for token in turn {
                if self.read_turn(token) == ReadOutcome::More {
                    again.push(token);
                }
            }
            self.run_jobs();
            self.run_timers();
            self.resume_waiting_for_room();
            if let Some(code) = stop {
                break code;
            }
        };
        self.shutdown();
        Ok(exit_code)
    }

    /// Gives `endpoint` a token and starts it, its ports on `vlans`.
    fn install(&mut self, mut endpoint: Box<dyn Endpoint>, vlans: PortVlans) -> io::Result<Token> {
        let token = self.tokens.allocate();
        if vlans != PortVlans::default() {
            self.vlans.insert(token, vlans);
        }
        let mut spawned = Vec::new();
        let mut cx = Context {
            vlans: self.vlans.get(&token).unwrap_or(&DEFAULT_VLANS),
            switch: &mut self.switch,
            registry: self.poll.registry(),
            counters: &mut self.counters,
            now: Instant::now(),
            token,
            ready: token,
            owners: &mut self.owners,
            spawned: &mut spawned,
            tokens: &mut self.tokens,
        };
        if let Err(e) = endpoint.start(&mut cx) {
            self.vlans.remove(&token);
            return Err(e);
        }
        self.endpoints.insert(token, endpoint);
        self.install_spawned(spawned, token);
        Ok(token)
    }

    /// Installs what `parent` spawned, on the parent's VLANs.
    fn install_spawned(&mut self, spawned: Vec<Box<dyn Endpoint>>, parent: Token) {
        for endpoint in spawned {
            let vlans = self.vlans.get(&parent).cloned().unwrap_or_default();
            if let Err(e) = self.install(endpoint, vlans) {
                warn!(error = %e, "could not start a new connection");
            }
        }
    }

    /// Runs `f` on the endpoint an event's token `ready` belongs to, then installs
    /// whatever it spawned and removes it if `f` says it is closed.
    fn with_endpoint<T>(
        &mut self,
        ready: Token,
        f: impl FnOnce(&mut dyn Endpoint, &mut Context<'_>) -> (T, Liveness),
    ) -> Option<T> {
        let token = self.tokens.owner(ready);
        let mut spawned = Vec::new();
        let endpoint = self.endpoints.get_mut(&token)?;
        let mut cx = Context {
            vlans: self.vlans.get(&token).unwrap_or(&DEFAULT_VLANS),
            switch: &mut self.switch,
            registry: self.poll.registry(),
            counters: &mut self.counters,
            now: Instant::now(),
            token,
            ready,
            owners: &mut self.owners,
            spawned: &mut spawned,
            tokens: &mut self.tokens,
        };
        let (result, liveness) = f(endpoint.as_mut(), &mut cx);
        if liveness == Liveness::Closed {
            endpoint.close(&mut cx);
            self.endpoints.remove(&token);
        }
        self.install_spawned(spawned, token);
        if liveness == Liveness::Closed {
            self.vlans.remove(&token);
        }
        Some(result)
    }

    fn read_turn(&mut self, token: Token) -> ReadOutcome {
        for _ in 0..BATCHES_PER_TURN {
            let outcome = self
                .with_endpoint(token, |endpoint, cx| {
                    let outcome = endpoint.read_batch(cx);
                    let liveness =
                        if outcome == ReadOutcome::Closed { Liveness::Closed } else { Liveness::Open };
                    (outcome, liveness)
                })
                .unwrap_or(ReadOutcome::Closed);
            self.flush_pending();
            if outcome != ReadOutcome::More {
                return outcome;
            }
        }
        ReadOutcome::More
    }

    fn write_ready(&mut self, token: Token) {
        self.with_endpoint(token, |endpoint, cx| ((), endpoint.on_writable(cx)));
    }

    /// Lets the owners of ports with queued frames send them. An owner that answers
    /// (the gateway) fills other ports in turn, so this repeats until nothing is pending,
    /// a bounded number of rounds.
    fn flush_pending(&mut self) {
        for _ in 0..FLUSH_ROUNDS {
            let pending = self.switch.take_pending();
            if pending.is_empty() {
                return;
            }
            for port in pending {
                let Some(&token) = self.owners.get(&port) else {
                    continue;
                };
                self.with_endpoint(token, |endpoint, cx| ((), endpoint.flush(port, cx)));
            }
        }
    }

    /// Lets endpoints that wait for room on other ports (the gateway's TCP toward a guest)
    /// go on, once per turn of the loop: a turn follows readiness, so this runs when
    /// ports may have drained, never in a spin.
    fn resume_waiting_for_room(&mut self) {
        let waiting: Vec<Token> =
            self.endpoints.iter().filter(|(_, e)| e.waits_for_room()).map(|(token, _)| *token).collect();
        for token in waiting {
            self.with_endpoint(token, |endpoint, cx| {
                endpoint.on_room(cx);
                ((), Liveness::Open)
            });
        }
        self.flush_pending();
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.endpoints.values().filter_map(|e| e.deadline()).chain([self.next_housekeeping]).min()
    }

    fn run_timers(&mut self) {
        let now = Instant::now();
        if now >= self.next_housekeeping {
            self.switch.expire(now);
            self.next_housekeeping = now + HOUSEKEEPING_INTERVAL;
        }
        let due: Vec<Token> = self
            .endpoints
            .iter()
            .filter(|(_, e)| e.deadline().is_some_and(|d| d <= now))
            .map(|(token, _)| *token)
            .collect();
        for token in due {
            self.with_endpoint(token, |endpoint, cx| {
                endpoint.on_deadline(cx);
                ((), Liveness::Open)
            });
        }
        self.flush_pending();
    }

    fn shutdown(&mut self) {
        let tokens: Vec<Token> = self.endpoints.keys().copied().collect();
        for token in tokens {
            self.with_endpoint(token, |_, _| ((), Liveness::Closed));
        }
        info!(counters = ?self.counters, "network stopped");
    }
}

/// Work for the loop thread, sent by another thread.
type Job = Box<dyn FnOnce(&mut Network) + Send>;

/// The network stopped before it could answer.
#[derive(Debug, thiserror::Error)]
#[error("the network has stopped")]
pub struct NetworkStopped;

/// Runs code on a network's loop thread from other threads (the control API), so the
/// network's state is only ever touched by its own thread.
#[derive(Clone)]
pub struct Remote {
    jobs: mpsc::Sender<Job>,
    waker: Arc<mio::Waker>,
}

impl Remote {
    /// Runs `f` on the loop between two events and returns what it returned.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Network) -> T + Send + 'static,
    ) -> Result<T, NetworkStopped> {
        let (reply, answer) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |network| {
            let _ = reply.send(f(network));
        });
        self.jobs.send(job).map_err(|_| NetworkStopped)?;
        self.waker.wake().map_err(|_| NetworkStopped)?;
        answer.recv().map_err(|_| NetworkStopped)
    }
}
