//! The host side of vnet's gateway: [`GatewayPort`] runs the sans-IO gateway core
//! ([`vnet_gateway::Gateway`]) as an endpoint of the loop, over real non-blocking host
//! sockets (UDP, ICMP, TCP, and the hostfwd listeners) registered under tokens of their
//! own. [`GatewayNetwork`] adds the gateway's operations to a
//! [`vnet_runtime::Network`].
//!
//! The protocols are the gateway core's business; this crate only moves frames and
//! datagrams between it, the switch and the host. Its modules: [`port`] (the endpoint),
//! `sockets` (the sockets and the core's host interface over them), `error_queue`
//! (IP_RECVERR and TTLs), `datagrams` (host datagrams received into pooled frames),
//! `forwards` (the hostfwd rules and their listeners) and [`resolv_conf`] (DNS upstreams
//! that follow the host's resolv.conf).

mod datagrams;
mod error_queue;
mod forwards;
mod guard;
pub mod port;
pub mod resolv_conf;
mod sockets;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::net::UnixStream;

use thiserror::Error;
use vnet_gateway::policy::PolicyRule;
use vnet_gateway::{ForwardId, ForwardProtocol, Gateway, GatewayConfig, HostForward};
use vnet_runtime::{Network, RuntimeError};
use vnet_switch::PortPolicy;
use vnet_transport::TransportError;

pub use port::GatewayPort;

/// A gateway operation that failed. The messages say what to change.
#[derive(Debug, Error)]
pub enum GatewayHostError {
    /// The network runs without a gateway.
    #[error("the network has no gateway (it runs with --no-user)")]
    NoGateway,
    /// A host socket could not be bound or watched.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The loop could not take the gateway.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// A DNS record was refused; the message says why.
    #[error("{0}")]
    DnsRecord(String),
    /// The connection to a guest could not be set up.
    #[error("cannot connect to the guest: {0}")]
    Connect(io::Error),
}

/// The gateway's operations on a network that may have one.
pub trait GatewayNetwork {
    /// Adds the user-mode gateway as a port of the network, its port following `policy`.
    fn add_gateway(&mut self, config: GatewayConfig, policy: PortPolicy) -> Result<(), GatewayHostError>;
    /// The gateway, if the network has one.
    fn gateway(&self) -> Option<&Gateway>;
    /// The hostfwd rules in force, with their ids; empty without a gateway.
    fn forwards(&self) -> Vec<(ForwardId, HostForward)>;
    /// Adds a hostfwd rule to the running gateway; see [`GatewayPort::add_forward`].
    fn add_forward(&mut self, rule: HostForward) -> Result<(ForwardId, HostForward), GatewayHostError>;
    /// Removes the hostfwd rule of `protocol` at `host` and returns it with its id; None
    /// if there is none.
    fn remove_forward(
        &mut self,
        protocol: ForwardProtocol,
        host: SocketAddr,
    ) -> Option<(ForwardId, HostForward)>;
    /// Connects `stream` to TCP port `guest` through the gateway (`vnet connect`).
    fn connect_to_guest(&mut self, guest: SocketAddr, stream: UnixStream) -> Result<(), GatewayHostError>;
    /// Adds a static DNS record to the running gateway; see [`Gateway::add_dns_record`].
    fn add_dns_record(&mut self, name: &str, address: IpAddr) -> Result<(), GatewayHostError>;
    /// Removes the static DNS records of `name`; how many there were.
    fn remove_dns_record(&mut self, name: &str) -> Result<usize, GatewayHostError>;
    /// Puts an egress rule at `position` of the running gateway's policy.
    fn add_policy_rule(&mut self, position: usize, rule: PolicyRule) -> Result<(), GatewayHostError>;
    /// Removes egress rule `index`; None if there is no such rule.
    fn remove_policy_rule(&mut self, index: usize) -> Result<Option<PolicyRule>, GatewayHostError>;
}

impl GatewayNetwork for Network {
    fn add_gateway(&mut self, config: GatewayConfig, policy: PortPolicy) -> Result<(), GatewayHostError> {
        self.add_endpoint(Box::new(GatewayPort::new(config)?), policy)?;
        Ok(())
    }

    fn gateway(&self) -> Option<&Gateway> {
        self.endpoint::<GatewayPort>().map(GatewayPort::gateway)
    }

    fn forwards(&self) -> Vec<(ForwardId, HostForward)> {
        self.endpoint::<GatewayPort>().map(|gateway| gateway.forwards().collect()).unwrap_or_default()
    }

    fn add_forward(&mut self, rule: HostForward) -> Result<(ForwardId, HostForward), GatewayHostError> {
        let added = self.with_endpoint(|gateway: &mut GatewayPort, cx| gateway.add_forward(rule, cx));
        Ok(added.ok_or(GatewayHostError::NoGateway)??)
    }

    fn remove_forward(
        &mut self,
        protocol: ForwardProtocol,
        host: SocketAddr,
    ) -> Option<(ForwardId, HostForward)> {
        self.with_endpoint(|gateway: &mut GatewayPort, cx| gateway.remove_forward(protocol, host, cx))
            .flatten()
    }

    fn connect_to_guest(&mut self, guest: SocketAddr, stream: UnixStream) -> Result<(), GatewayHostError> {
        self.with_endpoint(|gateway: &mut GatewayPort, cx| gateway.connect_to_guest(guest, stream, cx))
            .ok_or(GatewayHostError::NoGateway)?
            .map_err(GatewayHostError::Connect)
    }

    fn add_dns_record(&mut self, name: &str, address: IpAddr) -> Result<(), GatewayHostError> {
        self.with_endpoint(|gateway: &mut GatewayPort, cx| {
            gateway.gateway_mut().add_dns_record(name, address, cx.now)
        })
        .ok_or(GatewayHostError::NoGateway)?
        .map_err(GatewayHostError::DnsRecord)
    }

    fn remove_dns_record(&mut self, name: &str) -> Result<usize, GatewayHostError> {
        self.with_endpoint(|gateway: &mut GatewayPort, _| gateway.gateway_mut().remove_dns_record(name))
            .ok_or(GatewayHostError::NoGateway)
    }

    fn add_policy_rule(&mut self, position: usize, rule: PolicyRule) -> Result<(), GatewayHostError> {
        self.with_endpoint(|gateway: &mut GatewayPort, _| {
            gateway.gateway_mut().add_policy_rule(position, rule)
        })
        .ok_or(GatewayHostError::NoGateway)
    }

    fn remove_policy_rule(&mut self, index: usize) -> Result<Option<PolicyRule>, GatewayHostError> {
        self.with_endpoint(|gateway: &mut GatewayPort, _| gateway.gateway_mut().remove_policy_rule(index))
            .ok_or(GatewayHostError::NoGateway)
    }
}
