//! One virtual network: a switch, the endpoints that feed it, and the readiness loop that
//! runs them all on one thread.
//!
//! The loop is edge-triggered (mio over epoll) and never spins: it sleeps in `epoll_wait`
//! until a socket is ready or the next timer is due. Reading is done in bounded batches
//! per endpoint, and every batch is followed by a flush of the ports it filled, so one
//! busy peer can neither starve the others nor overflow their queues between flushes.
//! Endpoints, their event tokens and their timers are found by slab index, never by
//! hashing. What each endpoint does with its descriptors is its own business.

use std::any::Any;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use tracing::{debug, info, warn};
use vnet_switch::{MirrorSink, PortId, PortPolicy, Switch, SwitchConfig};

use crate::endpoint::{Context, Endpoint, EndpointId, Liveness, ReadOutcome};
use crate::events::EventCounters;
use crate::remote::{self, Job};
use crate::timers::Timers;
use crate::RuntimeError;

/// Runs code on a network's loop thread from other threads, with `run`.
pub type Remote = remote::Remote<Network>;

/// Something outside the switch the loop must watch, such as a signalfd: the network
/// stops when it says so.
pub trait Supervisor {
    /// The descriptor to wait on.
    fn fd(&self) -> BorrowedFd<'_>;
    /// Called when the descriptor is readable. `Some(code)` stops the network, which then
    /// returns `code` from [`Network::run`].
    fn on_readable(&mut self) -> Option<i32>;
}

const SUPERVISOR: Token = Token(usize::MAX - 1);
/// The wake-up of [`Remote`]: jobs from other threads wait.
const JOBS: Token = Token(usize::MAX);
/// Read batches one endpoint gets per readiness event before others have a turn.
const BATCHES_PER_TURN: usize = 8;
/// Rounds of [`Network::flush_pending`]: a frame in, the gateway's answer, its delivery.
const FLUSH_ROUNDS: usize = 4;
/// How often aged MAC table entries are swept.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(60);

/// An installed endpoint and what the loop keeps for it.
struct Slot {
    endpoint: Box<dyn Endpoint>,
    token: Token,
    /// What its ports carry and let in; what it spawns inherits it.
    policy: PortPolicy,
    /// The deadline it has in the timer heap.
    armed: Option<Instant>,
    /// Whether it is in the list of endpoints waiting for room.
    waiting: bool,
}

/// A running virtual network.
pub struct Network {
    poll: Poll,
    switch: Switch,
    endpoints: Slab<Slot>,
    /// Event tokens, each leading to the endpoint that registered it.
    sources: Slab<usize>,
    timers: Timers,
    /// Endpoints that hold back frames until ports drain, and the list being resumed.
    waiting: Vec<usize>,
    resuming: Vec<usize>,
    /// Endpoints whose timer is due this turn.
    due: Vec<usize>,
    /// Ports with frames to send, as the switch last listed them.
    pending: Vec<PortId>,
    events: EventCounters,
    next_housekeeping: Instant,
    /// The time of this turn of the loop, read once after each wake-up and given to
    /// every endpoint that runs in the turn.
    now: Instant,
    jobs: mpsc::Receiver<Job<Network>>,
    remote: Remote,
}

impl Network {
    /// A network whose switch has `config` and no ports yet.
    pub fn new(config: SwitchConfig) -> Result<Self, RuntimeError> {
        let poll =
            Poll::new().map_err(|source| RuntimeError { context: "cannot create epoll instance", source })?;
        let (remote, jobs) = remote::Remote::new(poll.registry(), JOBS)
            .map_err(|source| RuntimeError { context: "cannot create the loop's wake-up", source })?;
        Ok(Self {
            poll,
            switch: Switch::new(config),
            endpoints: Slab::new(),
            sources: Slab::new(),
            timers: Timers::default(),
            waiting: Vec::new(),
            resuming: Vec::new(),
            due: Vec::new(),
            pending: Vec::new(),
            events: EventCounters::default(),
            next_housekeeping: Instant::now() + HOUSEKEEPING_INTERVAL,
            now: Instant::now(),
            jobs,
            remote,
        })
    }

    /// The switch, for inspection.
    pub fn switch(&self) -> &Switch {
        &self.switch
    }

    /// Counts of events outside the ports.
    pub fn events(&self) -> &EventCounters {
        &self.events
    }

    /// A handle for other threads to run code on this network's loop.
    pub fn remote(&self) -> Remote {
        self.remote.clone()
    }

    /// Adds an endpoint whose ports follow `policy` (VLANs, port security), and starts it.
    pub fn add_endpoint(
        &mut self,
        endpoint: Box<dyn Endpoint>,
        policy: PortPolicy,
    ) -> Result<EndpointId, RuntimeError> {
        self.now = Instant::now();
        let id = self
            .install(endpoint, policy)
            .map_err(|source| RuntimeError { context: "cannot start endpoint", source })?;
        debug!(endpoint = %id, "endpoint added");
        Ok(id)
    }

    /// The first installed endpoint of type `E`, for inspection.
    pub fn endpoint<E: Endpoint>(&self) -> Option<&E> {
        self.endpoints.iter().find_map(|(_, slot)| (slot.endpoint.as_ref() as &dyn Any).downcast_ref::<E>())
    }

    /// Runs `f` with a context on the first installed endpoint of type `E`, then delivers
    /// what it sent; None if there is no such endpoint.
    pub fn with_endpoint<E: Endpoint, T>(
        &mut self,
        f: impl FnOnce(&mut E, &mut Context<'_>) -> T,
    ) -> Option<T> {
        let key = self
            .endpoints
            .iter()
            .find(|(_, slot)| (slot.endpoint.as_ref() as &dyn Any).is::<E>())
            .map(|(key, _)| key)?;
        let result = self.with_slot(key, None, |endpoint, cx| {
            let endpoint = (endpoint as &mut dyn Any).downcast_mut::<E>().expect("type checked above");
            (f(endpoint, cx), Liveness::Open)
        });
        self.flush_pending();
        result
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

    /// Runs until the supervisor asks to stop, and returns its exit code. Every port is
    /// closed and every endpoint dropped before it returns.
    pub fn run(&mut self, supervisor: &mut dyn Supervisor) -> Result<i32, RuntimeError> {
        let supervisor_fd = supervisor.fd().as_raw_fd();
        self.poll
            .registry()
            .register(&mut SourceFd(&supervisor_fd), SUPERVISOR, Interest::READABLE)
            .map_err(|source| RuntimeError { context: "cannot watch signals", source })?;
        let mut events = Events::with_capacity(256);
        let mut again: Vec<Token> = Vec::new();
        let mut turn: Vec<Token> = Vec::new();
        let exit_code = loop {
            let timeout = if again.is_empty() {
                self.next_deadline().map(|d| d.saturating_duration_since(Instant::now()))
            } else {
                Some(Duration::ZERO)
            };
            if let Err(source) = self.poll.poll(&mut events, timeout) {
                if source.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(RuntimeError { context: "epoll_wait failed", source });
            }
            self.now = Instant::now();
            let mut stop = None;
            let mut jobs_sent = false;
            turn.clear();
            turn.append(&mut again);
            for event in events.iter() {
                let token = event.token();
                if token == SUPERVISOR {
                    stop = stop.or(supervisor.on_readable());
                    continue;
                }
                if token == JOBS {
                    jobs_sent = true;
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
            for &token in &turn {
                if self.read_turn(token) == ReadOutcome::More {
                    again.push(token);
                }
            }
            if jobs_sent {
                self.run_jobs();
            }
            self.run_timers();
            self.resume_waiting_for_room();
            if let Some(code) = stop {
                break code;
            }
        };
        self.shutdown();
        Ok(exit_code)
    }

    /// Runs the jobs other threads sent through [`Remote`].
    fn run_jobs(&mut self) {
        while let Ok(job) = self.jobs.try_recv() {
            self.now = Instant::now();
            job(self);
        }
    }

    /// Gives `endpoint` a slot and a token and starts it, its ports following `policy`.
    fn install(&mut self, endpoint: Box<dyn Endpoint>, policy: PortPolicy) -> io::Result<EndpointId> {
        let entry = self.endpoints.vacant_entry();
        let key = entry.key();
        let token = Token(self.sources.insert(key));
        entry.insert(Slot { endpoint, token, policy, armed: None, waiting: false });
        let started = self.with_slot(key, Some(token), |endpoint, cx| match endpoint.start(cx) {
            Ok(()) => (Ok(()), Liveness::Open),
            Err(e) => (Err(e), Liveness::Closed),
        });
        started.expect("slot just inserted").map(|()| EndpointId(key))
    }

    /// Installs what the endpoint in slot `parent` spawned, under the parent's port policy.
    fn install_spawned(&mut self, spawned: Vec<Box<dyn Endpoint>>, policy: &PortPolicy) {
        for endpoint in spawned {
            if let Err(e) = self.install(endpoint, policy.clone()) {
                warn!(error = %e, "could not start a new connection");
            }
        }
    }

    /// Runs `f` on the endpoint in slot `key` (`ready` is the token whose event is
    /// handled; its own token if None), then re-arms its timer, notes whether it waits
    /// for room, installs whatever it spawned and removes it if `f` says it is closed.
    fn with_slot<T>(
        &mut self,
        key: usize,
        ready: Option<Token>,
        f: impl FnOnce(&mut dyn Endpoint, &mut Context<'_>) -> (T, Liveness),
    ) -> Option<T> {
        let mut spawned = Vec::new();
        let slot = self.endpoints.get_mut(key)?;
        let mut cx = Context {
            switch: &mut self.switch,
            registry: self.poll.registry(),
            now: self.now,
            token: slot.token,
            ready: ready.unwrap_or(slot.token),
            endpoint: key,
            events: &mut self.events,
            spawned: &mut spawned,
            sources: &mut self.sources,
            policy: &slot.policy,
        };
        let (result, liveness) = f(slot.endpoint.as_mut(), &mut cx);
        if liveness == Liveness::Closed {
            slot.endpoint.close(&mut cx);
            let slot = self.endpoints.remove(key);
            self.sources.remove(slot.token.0);
            self.install_spawned(spawned, &slot.policy);
            return Some(result);
        }
        self.timers.arm(key, slot.endpoint.deadline(), &mut slot.armed);
        if !slot.waiting && slot.endpoint.waits_for_room() {
            slot.waiting = true;
            self.waiting.push(key);
        }
        if !spawned.is_empty() {
            let policy = slot.policy.clone();
            self.install_spawned(spawned, &policy);
        }
        Some(result)
    }

    /// Runs `f` on the endpoint an event's token `ready` belongs to.
    fn with_ready<T>(
        &mut self,
        ready: Token,
        f: impl FnOnce(&mut dyn Endpoint, &mut Context<'_>) -> (T, Liveness),
    ) -> Option<T> {
        let key = *self.sources.get(ready.0)?;
        self.with_slot(key, Some(ready), f)
    }

    fn read_turn(&mut self, token: Token) -> ReadOutcome {
        for _ in 0..BATCHES_PER_TURN {
            let outcome = self
                .with_ready(token, |endpoint, cx| {
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
        self.with_ready(token, |endpoint, cx| ((), endpoint.on_writable(cx)));
    }

    /// Lets the owners of ports with queued frames send them. An owner that answers
    /// (the gateway) fills other ports in turn, so this repeats until nothing is pending,
    /// a bounded number of rounds.
    fn flush_pending(&mut self) {
        let mut pending = std::mem::take(&mut self.pending);
        for _ in 0..FLUSH_ROUNDS {
            self.switch.take_pending(&mut pending);
            if pending.is_empty() {
                break;
            }
            for &port in &pending {
                let Some(owner) = self.switch.port(port).map(|port| port.owner()) else {
                    continue;
                };
                self.with_slot(owner, None, |endpoint, cx| ((), endpoint.flush(port, cx)));
            }
        }
        self.pending = pending;
    }

    /// Lets endpoints that wait for room on other ports (the gateway's TCP toward a guest)
    /// go on, once per turn of the loop: a turn follows readiness, so this runs when
    /// ports may have drained, never in a spin.
    fn resume_waiting_for_room(&mut self) {
        if self.waiting.is_empty() {
            return;
        }
        let mut resuming = std::mem::take(&mut self.resuming);
        std::mem::swap(&mut resuming, &mut self.waiting);
        for &key in &resuming {
            let Some(slot) = self.endpoints.get_mut(key) else {
                continue;
            };
            slot.waiting = false;
            if slot.endpoint.waits_for_room() {
                self.with_slot(key, None, |endpoint, cx| {
                    endpoint.on_room(cx);
                    ((), Liveness::Open)
                });
            }
        }
        resuming.clear();
        self.resuming = resuming;
        self.flush_pending();
    }

    fn next_deadline(&mut self) -> Option<Instant> {
        let endpoints = &self.endpoints;
        let timers = self.timers.next(|key| endpoints.get(key).and_then(|slot| slot.armed));
        Some(timers.map_or(self.next_housekeeping, |due| due.min(self.next_housekeeping)))
    }

    fn run_timers(&mut self) {
        let now = self.now;
        if now >= self.next_housekeeping {
            self.switch.expire(now);
            self.next_housekeeping = now + HOUSEKEEPING_INTERVAL;
        }
        // Each due endpoint runs once per turn, even if its work leaves it due again.
        let mut due = std::mem::take(&mut self.due);
        let endpoints = &mut self.endpoints;
        while let Some(key) = self.timers.pop_due(now, |key| endpoints.get(key).and_then(|slot| slot.armed)) {
            if let Some(slot) = endpoints.get_mut(key) {
                slot.armed = None;
                due.push(key);
            }
        }
        for &key in &due {
            let Some(slot) = self.endpoints.get_mut(key) else {
                continue;
            };
            // The deadline may have moved later since it was armed: then only re-arm.
            let is_due = slot.endpoint.deadline().is_some_and(|deadline| deadline <= now);
            self.with_slot(key, None, |endpoint, cx| {
                if is_due {
                    endpoint.on_deadline(cx);
                }
                ((), Liveness::Open)
            });
        }
        due.clear();
        self.due = due;
        self.flush_pending();
    }

    fn shutdown(&mut self) {
        let keys: Vec<usize> = self.endpoints.iter().map(|(key, _)| key).collect();
        for key in keys {
            self.with_slot(key, None, |_, _| ((), Liveness::Closed));
        }
        let fields: Vec<String> = self.events.iter().map(|(name, count)| format!("{name}={count}")).collect();
        info!("network stopped {}", fields.join(" "));
    }
}
