//! The API every endpoint implements, and what the loop lends it while it runs.
//!
//! An endpoint is whatever owns descriptors and feeds the switch: a listener, a stream
//! connection, a datagram socket, a tap, the gateway's host sockets. It may live in any
//! crate: the loop calls it through [`Endpoint`] and never needs its type. What it may
//! touch while it runs is in [`Context`]: the switch, its own ports, the event counters,
//! and the registry for its descriptors.

use std::any::Any;
use std::fmt;
use std::io;
use std::time::Instant;

use mio::{Interest, Registry, Token};
use slab::Slab;
use tracing::info;
use vnet_switch::{PortId, PortPolicy, Switch};

use crate::events::EventCounters;

/// Identifies an endpoint while it is installed. Numbers of removed endpoints are reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EndpointId(pub(crate) usize);

impl fmt::Display for EndpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What one read batch found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    /// Nothing more to read until the next readiness event.
    Drained,
    /// The batch was full; there may be more.
    More,
    /// The endpoint is finished and must be removed.
    Closed,
}

/// Whether an endpoint is still usable after writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// It goes on.
    Open,
    /// It is finished and must be removed.
    Closed,
}

/// A source of frames: a listener, a connection, a datagram socket, a tap.
pub trait Endpoint: Any {
    /// Registers descriptors under [`Context::token`] and opens ports.
    fn start(&mut self, cx: &mut Context<'_>) -> io::Result<()>;
    /// Reads one bounded batch and hands what arrived to the switch.
    fn read_batch(&mut self, cx: &mut Context<'_>) -> ReadOutcome;
    /// The descriptor can take writes again: send what waits on every port.
    fn on_writable(&mut self, cx: &mut Context<'_>) -> Liveness;
    /// Sends what waits on `port`, which this endpoint owns.
    fn flush(&mut self, port: PortId, cx: &mut Context<'_>) -> Liveness;
    /// When [`Endpoint::on_deadline`] wants to run next. Asked after every call into the
    /// endpoint, so it must be cheap.
    fn deadline(&self) -> Option<Instant> {
        None
    }
    /// Timer work: retries, expiry.
    fn on_deadline(&mut self, _cx: &mut Context<'_>) {}
    /// Whether the endpoint holds back frames until other ports' queues drain. Asked
    /// after every call into the endpoint.
    fn waits_for_room(&self) -> bool {
        false
    }
    /// Ports have delivered frames since the endpoint began to wait: send what waited.
    fn on_room(&mut self, _cx: &mut Context<'_>) {}
    /// Closes every port and forgets every source registered with
    /// [`Context::register_source`]; the endpoint is dropped after this.
    fn close(&mut self, cx: &mut Context<'_>);
}

/// What an endpoint may touch while it runs.
pub struct Context<'a> {
    /// The switch, to hand frames to and to drain the endpoint's ports.
    pub switch: &'a mut Switch,
    /// The registry, for (re-)registering the endpoint's descriptors.
    pub registry: &'a Registry,
    /// When the loop woke up.
    pub now: Instant,
    /// The endpoint's own token.
    pub token: Token,
    /// The token whose event is being handled: `token`, or one from
    /// [`Context::register_source`].
    pub ready: Token,
    pub(crate) endpoint: usize,
    pub(crate) events: &'a mut EventCounters,
    pub(crate) spawned: &'a mut Vec<Box<dyn Endpoint>>,
    pub(crate) sources: &'a mut Slab<usize>,
    /// What the running endpoint's ports carry and let in.
    pub(crate) policy: &'a PortPolicy,
}

impl Context<'_> {
    /// Counts one event `name` (see [`EventCounters`]).
    pub fn count(&mut self, name: &'static str) {
        self.events.add(name);
    }

    /// Counts `n` happenings of the event `name` on the network.
    pub fn count_many(&mut self, name: &'static str, n: u64) {
        if n > 0 {
            self.events.add_many(name, n);
        }
    }

    /// Adds a port owned by the running endpoint, whose peer gets frames ready for the
    /// wire.
    pub fn add_port(&mut self, name: String) -> PortId {
        self.add_port_taking_offloads(name, false)
    }

    /// Adds a port owned by the running endpoint; if `takes_offloads`, its frames may
    /// come with offloads still to do (see [`vnet_switch::Port::takes_offloads`]).
    pub fn add_port_taking_offloads(&mut self, name: String, takes_offloads: bool) -> PortId {
        let policy = self.policy.clone();
        self.add_port_with_policy(name, takes_offloads, policy)
    }

    /// Adds a port owned by the running endpoint that follows `policy` rather than the
    /// endpoint's, for an endpoint whose ports differ (a VXLAN tunnel, whose VNIs map to
    /// VLANs of their own).
    pub fn add_port_with_policy(&mut self, name: String, takes_offloads: bool, policy: PortPolicy) -> PortId {
        let id = self.switch.add_port_with_policy(name.clone(), takes_offloads, policy);
        info!(port = %id, %name, "port opened");
        if let Some(port) = self.switch.port_mut(id) {
            port.set_owner(self.endpoint);
        }
        id
    }

    /// Removes a port of the running endpoint and logs its final counters.
    pub fn remove_port(&mut self, id: PortId) {
        if let Some(port) = self.switch.remove_port(id) {
            info!(port = %id, name = port.name(), counters = %port.counters(), "port closed");
        }
    }

    /// Hands a new endpoint (an accepted connection) to the network, under the running
    /// endpoint's port policy.
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
        let key = self.sources.insert(self.endpoint);
        let token = Token(key);
        if let Err(e) = self.registry.register(source, token, interest) {
            self.sources.remove(key);
            return Err(e);
        }
        Ok(token)
    }

    /// Forgets a source registered with [`Context::register_source`]; closing its
    /// descriptor removes it from epoll. Its token may be handed out again, so a stale
    /// event for it can reach another endpoint as a spurious wake-up, which
    /// non-blocking descriptors shrug off.
    pub fn forget_source(&mut self, token: Token) {
        if self.sources.get(token.0) == Some(&self.endpoint) {
            self.sources.remove(token.0);
        }
    }
}
