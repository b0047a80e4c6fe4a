//! The partition start-info block (Sluice-specific, not part of iommufd):
//! what the hypervisor tells a partition's program at entry.
//!
//! The hypervisor writes one [`StartInfo`] at [`crate::layout::START_INFO_GPA`]
//! in the partition's RAM before the first vCPU entry and passes its GPA in
//! the first argument register (x86_64 `rdi`, aarch64 `x0`). It never
//! writes the block again. (The Rust guest SDK hands out a `&'static`
//! reference to it: a program must not write it.)
//!
//! Layout (little-endian, 328 bytes; `struct sluice_start_info` in
//! `sluice.h`):
//!
//! | offset | field | |
//! |---|---|---|
//! | 0 | `magic: u32` | [`START_INFO_MAGIC`]: the bytes `"SLS1"` |
//! | 4 | `version: u32` | [`START_INFO_VERSION`] (1) |
//! | 8 | `partition: u32` | index of the partition in the manifest, from 0 |
//! | 12 | `num_devices: u32` | how many entries of `devices` are valid (at most [`START_MAX_DEVICES`]) |
//! | 16 | `ram_base: u64` | GPA of the first RAM byte ([`crate::layout::RAM_BASE`]) |
//! | 24 | `ram_size: u64` | bytes of RAM |
//! | 32 | `name: [u8; 32]` | the partition's name, NUL padded (at most 31 bytes, so always NUL terminated) |
//! | 64 | `devices: [StartDevice; 8]` | the partition's devices, in manifest order |
//! | 320 | `resets: u32` | times the partition was reset before this start (0 at the first) |
//! | 324 | `reserved: u32` | 0 |
//!
//! [`StartDevice`] (32 bytes): `dev_id: u32 @0` (the ABI device id, as in
//! DEVICE_LIST), `seg_bdf: u32 @4` (`segment << 16 | bus << 8 | dev << 3 |
//! func`), `bar0_gpa: u64 @8` (where the device's BAR0 is mapped, 0 if it
//! has none), `bar0_size: u64 @16`, `dma_bits: u32 @24` (the device's DMA
//! address width), `reserved: u32 @28` (0).

use zerocopy::{FromBytes, Immutable, IntoBytes};

/// `StartInfo::magic`: the bytes `"SLS1"` in memory order, i.e. the
/// little-endian `u32` 0x3153_4C53.
pub const START_INFO_MAGIC: u32 = u32::from_le_bytes(*b"SLS1");
/// `StartInfo::version` this crate describes.
pub const START_INFO_VERSION: u32 = 1;
/// Entries of `StartInfo::devices`.
pub const START_MAX_DEVICES: usize = 8;
/// Bytes of `StartInfo::name` (the name itself is at most one less).
pub const START_NAME_LEN: usize = 32;

/// One device of the partition, as [`StartInfo::devices`] lists it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable)]
pub struct StartDevice {
    /// The ABI device id (DEVICE_LIST's `dev_id`).
    pub dev_id: u32,
    /// PCI address: `segment << 16 | bus << 8 | dev << 3 | func`.
    pub seg_bdf: u32,
    /// GPA where BAR0 is mapped (Device memory), 0 if none.
    pub bar0_gpa: u64,
    /// Bytes of BAR0.
    pub bar0_size: u64,
    /// The device's DMA address width in bits.
    pub dma_bits: u32,
    /// Zero.
    pub reserved: u32,
}

impl StartDevice {
    /// `seg_bdf` for a PCI address. Bits above a field's width are
    /// dropped (`dev` has 5 bits, `func` 3).
    #[must_use]
    pub const fn encode_seg_bdf(segment: u16, bus: u8, dev: u8, func: u8) -> u32 {
        (segment as u32) << 16 | (bus as u32) << 8 | ((dev & 0x1f) as u32) << 3 | (func & 0x7) as u32
    }

    /// PCI segment.
    #[must_use]
    pub const fn segment(&self) -> u16 {
        (self.seg_bdf >> 16) as u16
    }

    /// PCI bus.
    #[must_use]
    pub const fn bus(&self) -> u8 {
        (self.seg_bdf >> 8) as u8
    }

    /// PCI device number (0..32).
    #[must_use]
    pub const fn dev(&self) -> u8 {
        ((self.seg_bdf >> 3) & 0x1f) as u8
    }

    /// PCI function number (0..8).
    #[must_use]
    pub const fn func(&self) -> u8 {
        (self.seg_bdf & 0x7) as u8
    }

    /// The PCI requester id (`bus << 8 | devfn`), as DEVICE_LIST's `rid`
    /// reports it on VT-d.
    #[must_use]
    pub const fn rid(&self) -> u16 {
        self.seg_bdf as u16
    }
}

/// The partition start-info block, written by the hypervisor at
/// [`crate::layout::START_INFO_GPA`] before the first vCPU entry and passed
/// in `rdi` / `x0`; never written by it again.
///
/// Layout (little-endian, 328 bytes): `magic u32 @0` ([`START_INFO_MAGIC`],
/// the bytes `"SLS1"`), `version u32 @4` (1), `partition u32 @8` (index in
/// the manifest, from 0), `num_devices u32 @12`, `ram_base u64 @16`,
/// `ram_size u64 @24`, `name [u8; 32] @32` (NUL padded, at most 31 bytes),
/// `devices [StartDevice; 8] @64` (32 bytes each), `resets u32 @320`,
/// `reserved u32 @324`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable)]
pub struct StartInfo {
    /// [`START_INFO_MAGIC`].
    pub magic: u32,
    /// [`START_INFO_VERSION`].
    pub version: u32,
    /// Index of the partition, from 0, in manifest order.
    pub partition: u32,
    /// Valid entries of `devices`.
    pub num_devices: u32,
    /// GPA of the first RAM byte.
    pub ram_base: u64,
    /// Bytes of RAM.
    pub ram_size: u64,
    /// The partition's name, NUL padded.
    pub name: [u8; START_NAME_LEN],
    /// The partition's devices; the first `num_devices` are valid, the
    /// rest zero.
    pub devices: [StartDevice; START_MAX_DEVICES],
    /// Times the partition was reset (its devices blocked, its objects
    /// destroyed, its RAM zeroed) and started again before this start: 0
    /// at the first start. A manifest's `restarts` allows them.
    pub resets: u32,
    /// Zero.
    pub reserved: u32,
}

impl Default for StartInfo {
    fn default() -> Self {
        Self::new(0, "", crate::layout::RAM_BASE, 0)
    }
}

impl StartInfo {
    /// A block with the magic and version set, no devices, and `name`
    /// cut to [`START_NAME_LEN`]` - 1` bytes (at a character boundary).
    #[must_use]
    pub fn new(partition: u32, name: &str, ram_base: u64, ram_size: u64) -> Self {
        let mut info = Self {
            magic: START_INFO_MAGIC,
            version: START_INFO_VERSION,
            partition,
            num_devices: 0,
            ram_base,
            ram_size,
            name: [0; START_NAME_LEN],
            devices: [StartDevice::default(); START_MAX_DEVICES],
            resets: 0,
            reserved: 0,
        };
        let mut len = name.len().min(START_NAME_LEN - 1);
        while !name.is_char_boundary(len) {
            len -= 1;
        }
        info.name[..len].copy_from_slice(&name.as_bytes()[..len]);
        info
    }

    /// Append a device.
    ///
    /// # Errors
    ///
    /// The device back when all [`START_MAX_DEVICES`] entries are taken.
    pub fn push_device(&mut self, device: StartDevice) -> Result<(), StartDevice> {
        let slot = self.devices.get_mut(self.num_devices as usize).ok_or(device)?;
        *slot = device;
        self.num_devices += 1;
        Ok(())
    }

    /// Whether magic and version are the ones this crate knows and
    /// `num_devices` is in range.
    #[must_use]
    pub fn is_valid(&self) -> bool {
        self.magic == START_INFO_MAGIC && self.version == START_INFO_VERSION && self.num_devices as usize <= START_MAX_DEVICES
    }

    /// The valid devices (at most [`START_MAX_DEVICES`], whatever
    /// `num_devices` says).
    #[must_use]
    pub fn devices(&self) -> &[StartDevice] {
        &self.devices[..(self.num_devices as usize).min(START_MAX_DEVICES)]
    }

    /// The name up to the first NUL; `"?"` if it is not UTF-8.
    #[must_use]
    pub fn name(&self) -> &str {
        let len = self.name.iter().position(|&b| b == 0).unwrap_or(START_NAME_LEN);
        core::str::from_utf8(&self.name[..len]).unwrap_or("?")
    }

    /// One past the last RAM GPA.
    #[must_use]
    pub const fn ram_end(&self) -> u64 {
        self.ram_base.saturating_add(self.ram_size)
    }
}

#[cfg(test)]
mod tests {
    use core::mem::offset_of;

    use zerocopy::{FromBytes, IntoBytes};

    use super::*;

    #[test]
    fn layout_is_as_documented() {
        assert_eq!(size_of::<StartDevice>(), 32);
        assert_eq!(
            (
                offset_of!(StartDevice, seg_bdf),
                offset_of!(StartDevice, bar0_gpa),
                offset_of!(StartDevice, bar0_size),
                offset_of!(StartDevice, dma_bits),
                offset_of!(StartDevice, reserved)
            ),
            (4, 8, 16, 24, 28)
        );
        assert_eq!(size_of::<StartInfo>(), 328);
        assert_eq!(
            (
                offset_of!(StartInfo, version),
                offset_of!(StartInfo, partition),
                offset_of!(StartInfo, num_devices),
                offset_of!(StartInfo, ram_base),
                offset_of!(StartInfo, ram_size),
                offset_of!(StartInfo, name),
                offset_of!(StartInfo, devices),
                offset_of!(StartInfo, resets),
                offset_of!(StartInfo, reserved)
            ),
            (4, 8, 12, 16, 24, 32, 64, 320, 324)
        );
        assert_eq!(align_of::<StartInfo>(), 8);
        assert_eq!(START_INFO_MAGIC, 0x3153_4c53);
        assert_eq!(&START_INFO_MAGIC.to_le_bytes(), b"SLS1");
    }

    #[test]
    fn build_and_read_back() {
        let mut info = StartInfo::new(1, "B", 0x4000_0000, 8 << 20);
        let dev = StartDevice {
            dev_id: 1,
            seg_bdf: StartDevice::encode_seg_bdf(0, 0, 4, 0),
            bar0_gpa: 0xfea0_0000,
            bar0_size: 1 << 20,
            dma_bits: 28,
            reserved: 0,
        };
        info.push_device(dev).unwrap();
        assert!(info.is_valid());
        assert_eq!(info.name(), "B");
        assert_eq!(info.ram_end(), 0x4080_0000);
        let bytes = info.as_bytes();
        assert_eq!(&bytes[0..4], b"SLS1");
        assert_eq!(bytes[32], b'B');
        assert_eq!(u32::from_le_bytes(bytes[68..72].try_into().unwrap()), 0x20);
        let back = StartInfo::read_from_bytes(bytes).unwrap();
        assert_eq!(back, info);
        let d = back.devices();
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].segment(), d[0].bus(), d[0].dev(), d[0].func(), d[0].rid()), (0, 0, 4, 0, 0x20));
        for _ in 1..START_MAX_DEVICES {
            info.push_device(dev).unwrap();
        }
        assert_eq!(info.push_device(dev), Err(dev));
        assert_eq!(info.devices().len(), START_MAX_DEVICES);
    }

    #[test]
    fn names_are_cut_and_always_terminated() {
        let long = "a-partition-name-that-is-far-too-long";
        let info = StartInfo::new(0, long, 0, 0);
        assert_eq!(info.name(), &long[..31]);
        assert_eq!(info.name[31], 0);
        // A multi-byte character is not split.
        let info = StartInfo::new(0, "ééééééééééééééééé", 0, 0);
        assert_eq!(info.name().len(), 30);
        assert_eq!(StartDevice::encode_seg_bdf(1, 0xff, 31, 7), 0x1_ffff);
        let mut bad = StartInfo::default();
        assert!(bad.is_valid());
        bad.num_devices = 9;
        assert!(!bad.is_valid());
        assert_eq!(bad.devices().len(), START_MAX_DEVICES);
        bad.magic = 0;
        assert!(!bad.is_valid());
    }
}
