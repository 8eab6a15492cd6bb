//! The control plane of one vhost-user-net device: the answers to the requests QEMU
//! sends on the vhost-user socket (features, guest memory, ring addresses, kick and call
//! descriptors), kept as the state the datapath ([`crate::rings`]) works on.
//!
//! The protocol itself (message framing, descriptor passing, replies) is rust-vmm's
//! `vhost` crate; the rings are `vhost-user-backend`'s [`VringMutex`] over
//! `virtio-queue`. This module only decides what vnet offers and checks what the
//! frontend asks for. It knows nothing of the switch or of frames.

use std::fs::File;

use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight,
    VhostUserLog, VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig, VhostUserSharedMsg,
    VhostUserSingleMemoryRegion, VhostUserVirtioFeatures, VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{
    Error as ProtocolError, GpuBackend, Result as ProtocolResult, VhostUserBackendReqHandlerMut,
};
use vhost::VhostUserMemoryRegionBase;
use vhost_user_backend::{VringMutex, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::QueueT;
use vm_memory::{GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap, GuestRegionMmap};

/// The ring the device fills with frames for the guest.
pub const RX_RING: usize = 0;
/// The ring the guest fills with frames to send.
pub const TX_RING: usize = 1;
/// The most descriptors a ring may have (virtio allows 32768; QEMU uses 256 to 1024).
pub const MAX_RING_SIZE: u16 = 1024;
/// The most memory regions a frontend may hand over, as vhost-user without
/// CONFIGURE_MEM_SLOTS allows.
const MAX_MEMORY_REGIONS: usize = 8;

const fn bit(feature: u32) -> u64 {
    1 << feature
}

/// The virtio features vnet offers: virtio 1.0, mergeable receive buffers, link status,
/// MAC and MTU from QEMU's configuration, event indexes, and checksum and TCP
/// segmentation offloads both ways.
pub const OFFERED_FEATURES: u64 = bit(VIRTIO_F_VERSION_1)
    | bit(VIRTIO_NET_F_MRG_RXBUF)
    | bit(VIRTIO_NET_F_STATUS)
    | bit(VIRTIO_NET_F_MAC)
    | bit(VIRTIO_NET_F_MTU)
    | bit(VIRTIO_RING_F_EVENT_IDX)
    | bit(VIRTIO_NET_F_CSUM)
    | bit(VIRTIO_NET_F_GUEST_CSUM)
    | bit(VIRTIO_NET_F_HOST_TSO4)
    | bit(VIRTIO_NET_F_HOST_TSO6)
    | bit(VIRTIO_NET_F_GUEST_TSO4)
    | bit(VIRTIO_NET_F_GUEST_TSO6)
    | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

/// What the guest's driver agreed to, as the datapath needs it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Negotiated {
    /// A received frame may span several receive buffers (VIRTIO_NET_F_MRG_RXBUF).
    pub mergeable_buffers: bool,
    /// The guest takes frames with partial checksums (VIRTIO_NET_F_GUEST_CSUM).
    pub guest_checksum: bool,
    /// The guest takes TCP segments over IPv4 larger than its MTU (GUEST_TSO4).
    pub guest_tso4: bool,
    /// The same over IPv6 (GUEST_TSO6).
    pub guest_tso6: bool,
}

impl Negotiated {
    fn from_features(features: u64) -> Self {
        let has = |feature: u32| features & bit(feature) != 0;
        Self {
            mergeable_buffers: has(VIRTIO_NET_F_MRG_RXBUF),
            guest_checksum: has(VIRTIO_NET_F_GUEST_CSUM),
            guest_tso4: has(VIRTIO_NET_F_GUEST_TSO4),
            guest_tso6: has(VIRTIO_NET_F_GUEST_TSO6),
        }
    }
}

/// Where one region of guest memory sits in QEMU's address space, to translate the ring
/// addresses QEMU gives (its own virtual addresses) into guest physical addresses.
#[derive(Debug, Clone, Copy)]
struct Mapping {
    frontend_address: u64,
    size: u64,
    guest_address: u64,
}

/// One vhost-user-net device: guest memory, the two rings and what was negotiated.
pub struct NetDevice {
    memory: GuestMemoryAtomic<GuestMemoryMmap>,
    mappings: Vec<Mapping>,
    rings: [VringMutex; 2],
    features: u64,
    protocol_features: u64,
    /// Set when a ring's kick descriptor changed, so the endpoint registers it anew.
    kicks_changed: bool,
}

impl NetDevice {
    /// A device with no memory and stopped rings, as a fresh connection finds it.
    pub fn new() -> Self {
        let memory = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        Self {
            rings: new_rings(&memory),
            memory,
            mappings: Vec::new(),
            features: 0,
            protocol_features: 0,
            kicks_changed: true,
        }
    }

    /// The guest's memory as mapped now.
    pub fn memory(&self) -> &GuestMemoryAtomic<GuestMemoryMmap> {
        &self.memory
    }

    /// Ring `index` ([`RX_RING`] or [`TX_RING`]).
    pub fn ring(&self, index: usize) -> &VringMutex {
        &self.rings[index]
    }

    /// What the driver agreed to.
    pub fn negotiated(&self) -> Negotiated {
        Negotiated::from_features(self.features)
    }

    /// Whether a kick descriptor changed since the last call.
    pub fn take_kicks_changed(&mut self) -> bool {
        std::mem::take(&mut self.kicks_changed)
    }

    /// Whether ring `index` may be worked on: started, enabled, and its addresses valid
    /// in guest memory.
    pub fn ring_usable(&self, index: usize) -> bool {
        let state = self.rings[index].get_ref();
        let memory = self.memory.memory();
        state.is_enabled() && state.get_queue().ready() && state.get_queue().is_valid(&*memory)
    }

    fn ring_at(&self, index: u32) -> ProtocolResult<&VringMutex> {
        self.rings.get(index as usize).ok_or(ProtocolError::InvalidParam)
    }

    fn frontend_to_guest(&self, address: u64) -> ProtocolResult<u64> {
        self.mappings
            .iter()
            .find(|m| address >= m.frontend_address && address - m.frontend_address < m.size)
            .map(|m| address - m.frontend_address + m.guest_address)
            .ok_or(ProtocolError::InvalidParam)
    }

    fn reset(&mut self) {
        self.rings = new_rings(&self.memory);
        self.features = 0;
        self.kicks_changed = true;
    }
}

impl Default for NetDevice {
    fn default() -> Self {
        Self::new()
    }
}

fn new_rings(memory: &GuestMemoryAtomic<GuestMemoryMmap>) -> [VringMutex; 2] {
    let ring = || VringMutex::new(memory.clone(), MAX_RING_SIZE).expect("MAX_RING_SIZE is a valid ring size");
    [ring(), ring()]
}

fn unsupported(what: &'static str) -> ProtocolError {
    ProtocolError::InvalidOperation(what)
}

impl VhostUserBackendReqHandlerMut for NetDevice {
    fn set_owner(&mut self) -> ProtocolResult<()> {
        Ok(())
    }

    fn reset_owner(&mut self) -> ProtocolResult<()> {
        self.reset();
        Ok(())
    }

    fn reset_device(&mut self) -> ProtocolResult<()> {
        self.reset();
        Ok(())
    }

    fn get_features(&mut self) -> ProtocolResult<u64> {
        Ok(OFFERED_FEATURES)
    }

    fn set_features(&mut self, features: u64) -> ProtocolResult<()> {
        if features & !OFFERED_FEATURES != 0 {
            return Err(ProtocolError::InvalidParam);
        }
        self.features = features;
        let event_idx = features & bit(VIRTIO_RING_F_EVENT_IDX) != 0;
        let enabled_at_once = features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() == 0;
        for ring in &self.rings {
            ring.set_queue_event_idx(event_idx);
            if enabled_at_once {
                ring.set_enabled(true);
            }
        }
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        regions: &[VhostUserMemoryRegion],
        files: Vec<File>,
        postcopy_listening: Option<bool>,
    ) -> ProtocolResult<Option<Vec<VhostUserMemoryRegionBase>>> {
        if postcopy_listening.is_some() {
            return Err(unsupported("postcopy migration"));
        }
        if regions.len() > MAX_MEMORY_REGIONS || regions.len() != files.len() {
            return Err(ProtocolError::InvalidParam);
        }
        let mut mapped = Vec::with_capacity(regions.len());
        let mut mappings = Vec::with_capacity(regions.len());
        for (region, file) in regions.iter().zip(files) {
            let guest = GuestRegionMmap::new(region.mmap_region(file)?, GuestAddress(region.guest_phys_addr))
                .ok_or(ProtocolError::InvalidParam)?;
            mapped.push(guest);
            mappings.push(Mapping {
                frontend_address: region.user_addr,
                size: region.memory_size,
                guest_address: region.guest_phys_addr,
            });
        }
        let memory = GuestMemoryMmap::from_regions(mapped).map_err(|_| ProtocolError::InvalidParam)?;
        self.memory.lock().map_err(|_| unsupported("guest memory lock poisoned"))?.replace(memory);
        self.mappings = mappings;
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> ProtocolResult<()> {
        let ring = self.ring_at(index)?;
        if num == 0 || num > u32::from(MAX_RING_SIZE) || !num.is_power_of_two() {
            return Err(ProtocolError::InvalidParam);
        }
        ring.set_queue_size(num as u16);
        Ok(())
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> ProtocolResult<()> {
        let descriptor = self.frontend_to_guest(descriptor)?;
        let available = self.frontend_to_guest(available)?;
        let used = self.frontend_to_guest(used)?;
        self.ring_at(index)?
            .set_queue_info(descriptor, available, used)
            .map_err(|_| ProtocolError::InvalidParam)
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> ProtocolResult<()> {
        let ring = self.ring_at(index)?;
        let base = u16::try_from(base).map_err(|_| ProtocolError::InvalidParam)?;
        ring.set_queue_next_avail(base);
        ring.set_queue_next_used(base);
        Ok(())
    }

    fn get_vring_base(&mut self, index: u32) -> ProtocolResult<VhostUserVringState> {
        let ring = self.ring_at(index)?;
        ring.set_queue_ready(false);
        ring.set_kick(None);
        let next = ring.queue_next_avail();
        self.kicks_changed = true;
        Ok(VhostUserVringState::new(index, u32::from(next)))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> ProtocolResult<()> {
        let ring = self.ring_at(u32::from(index))?;
        let started = fd.is_some();
        ring.set_kick(fd);
        ring.set_queue_ready(started);
        self.kicks_changed = true;
        Ok(())
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> ProtocolResult<()> {
        self.ring_at(u32::from(index))?.set_call(fd);
        Ok(())
    }

    fn set_vring_err(&mut self, index: u8, fd: Option<File>) -> ProtocolResult<()> {
        self.ring_at(u32::from(index))?.set_err(fd);
        Ok(())
    }

    fn get_protocol_features(&mut self) -> ProtocolResult<VhostUserProtocolFeatures> {
        Ok(VhostUserProtocolFeatures::REPLY_ACK | VhostUserProtocolFeatures::RESET_DEVICE)
    }

    fn set_protocol_features(&mut self, features: u64) -> ProtocolResult<()> {
        self.protocol_features = features;
        Ok(())
    }

    fn get_queue_num(&mut self) -> ProtocolResult<u64> {
        Ok(self.rings.len() as u64)
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> ProtocolResult<()> {
        self.ring_at(index)?.set_enabled(enable);
        self.kicks_changed = true;
        Ok(())
    }

    fn get_config(
        &mut self,
        _offset: u32,
        _size: u32,
        _flags: VhostUserConfigFlags,
    ) -> ProtocolResult<Vec<u8>> {
        Err(unsupported("device configuration: QEMU keeps virtio-net's own"))
    }

    fn set_config(&mut self, _offset: u32, _buf: &[u8], _flags: VhostUserConfigFlags) -> ProtocolResult<()> {
        Err(unsupported("device configuration: QEMU keeps virtio-net's own"))
    }

    fn set_gpu_socket(&mut self, _gpu_backend: GpuBackend) -> ProtocolResult<()> {
        Err(unsupported("GPU sockets"))
    }

    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> ProtocolResult<File> {
        Err(unsupported("shared objects"))
    }

    fn get_inflight_fd(
        &mut self,
        _inflight: &VhostUserInflight,
    ) -> ProtocolResult<(VhostUserInflight, File)> {
        Err(unsupported("inflight descriptor tracking"))
    }

    fn set_inflight_fd(&mut self, _inflight: &VhostUserInflight, _file: File) -> ProtocolResult<()> {
        Err(unsupported("inflight descriptor tracking"))
    }

    fn get_max_mem_slots(&mut self) -> ProtocolResult<u64> {
        Err(unsupported("memory slots"))
    }

    fn add_mem_region(
        &mut self,
        _region: &VhostUserSingleMemoryRegion,
        _fd: File,
        _postcopy_listening: Option<bool>,
    ) -> ProtocolResult<Option<VhostUserMemoryRegionBase>> {
        Err(unsupported("memory slots"))
    }

    fn remove_mem_region(&mut self, _region: &VhostUserSingleMemoryRegion) -> ProtocolResult<()> {
        Err(unsupported("memory slots"))
    }

    fn set_device_state_fd(
        &mut self,
        _direction: VhostTransferStateDirection,
        _phase: VhostTransferStatePhase,
        _fd: File,
    ) -> ProtocolResult<Option<File>> {
        Err(unsupported("device state transfer"))
    }

    fn check_device_state(&mut self) -> ProtocolResult<()> {
        Err(unsupported("device state transfer"))
    }

    fn get_shmem_config(&mut self) -> ProtocolResult<VhostUserShMemConfig> {
        Err(unsupported("shared memory regions"))
    }

    fn set_log_base(&mut self, _log: &VhostUserLog, _file: File) -> ProtocolResult<()> {
        Err(unsupported("dirty page logging"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_vnet_did_not_offer_are_refused_and_offered_ones_are_kept() {
        let mut device = NetDevice::new();
        assert!(device.set_features(OFFERED_FEATURES | 1 << 22).is_err(), "an unoffered feature");
        device
            .set_features(
                bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_NET_F_MRG_RXBUF) | bit(VIRTIO_NET_F_GUEST_TSO4),
            )
            .unwrap();
        let negotiated = device.negotiated();
        assert!(negotiated.mergeable_buffers && negotiated.guest_tso4);
        assert!(!negotiated.guest_tso6 && !negotiated.guest_checksum);
    }

    #[test]
    fn ring_sizes_indexes_and_addresses_outside_what_was_given_are_refused() {
        let mut device = NetDevice::new();
        for size in [0, 3, 2048, u32::MAX] {
            assert!(device.set_vring_num(0, size).is_err(), "size {size}");
        }
        device.set_vring_num(1, 256).unwrap();
        assert!(device.set_vring_num(2, 256).is_err(), "a third ring");
        assert!(device.set_vring_base(0, 1 << 16).is_err(), "a base past 16 bits");
        let flags = VhostUserVringAddrFlags::empty();
        assert!(device.set_vring_addr(0, flags, 0x1000, 0x2000, 0x3000, 0).is_err(), "no memory mapped");
        assert!(device.set_vring_kick(7, None).is_err());
    }

    #[test]
    fn getting_a_ring_base_stops_the_ring_and_a_reset_forgets_the_features() {
        let mut device = NetDevice::new();
        device.set_features(OFFERED_FEATURES).unwrap();
        device.set_vring_base(1, 42).unwrap();
        device.take_kicks_changed();
        let state = device.get_vring_base(1).unwrap();
        let base = state.num;
        assert_eq!(base, 42);
        assert!(device.take_kicks_changed(), "the endpoint must drop the kick");
        assert!(!device.ring_usable(1));
        device.reset_device().unwrap();
        assert_eq!(device.negotiated(), Negotiated::default());
    }
}
