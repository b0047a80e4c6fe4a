//! The Sluice hypercall ABI, version 1 (shared/design/ABI.md): command
//! numbers, command structs and records, byte for byte as a partition lays
//! them out (little-endian, `repr(C)`, offsets checked by tests), and the
//! errnos; plus Sluice's partition start-up contract: the [`StartInfo`]
//! block and the guest-physical [`layout`] of a partition.
//!
//! The structs follow Linux iommufd's uAPI where ABI.md says so. Parsing
//! partition bytes goes through `zerocopy`, never through pointer casts.
//!
//! One crate for both sides: the hypervisor core (`sluice-kernel`
//! re-exports it as `sluice_kernel::abi`) and the guest SDK
//! (`sluice-guest`). `guest/sdk/include/sluice.h` is the same contract in
//! C; a test compiles it and compares every size, offset and constant.
#![no_std]
#![forbid(unsafe_code)]
// zerocopy's derives generate helper types without `Debug`; every struct
// declared here derives `Debug` itself.
#![allow(missing_debug_implementations)]

pub mod layout;
mod start;

pub use start::{START_INFO_MAGIC, START_INFO_VERSION, START_MAX_DEVICES, START_NAME_LEN, StartDevice, StartInfo};

use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Linux errno values the ABI returns (as `-errno`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum Errno {
    /// Operation not permitted.
    EPERM = 1,
    /// No such object or mapping.
    ENOENT = 2,
    /// Non-zero bytes beyond the known struct.
    E2BIG = 7,
    /// The IOMMU hardware did not complete an operation in time (Sluice
    /// only: iommufd reports such failures the same way).
    EIO = 5,
    /// Out of memory, or over the pin limit.
    ENOMEM = 12,
    /// Bad partition address.
    EFAULT = 14,
    /// Object in use.
    EBUSY = 16,
    /// Already exists / overlaps.
    EEXIST = 17,
    /// No such device.
    ENODEV = 19,
    /// Invalid argument.
    EINVAL = 22,
    /// Unknown command.
    ENOTTY = 25,
    /// No space (IOVA allocation).
    ENOSPC = 28,
    /// Value too large / arithmetic overflow.
    EOVERFLOW = 75,
    /// Output array too small; the needed count was written back.
    EMSGSIZE = 90,
    /// Flags or reserved fields not supported.
    EOPNOTSUPP = 95,
    /// Address range in use (attach conflicts).
    EADDRINUSE = 98,
}

impl Errno {
    /// The errno as the hypercall returns it: `-errno`.
    #[must_use]
    pub const fn to_return(self) -> i64 {
        -(self as i64)
    }

    /// The name, as hvsim prints it.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::EPERM => "EPERM",
            Self::ENOENT => "ENOENT",
            Self::E2BIG => "E2BIG",
            Self::EIO => "EIO",
            Self::ENOMEM => "ENOMEM",
            Self::EFAULT => "EFAULT",
            Self::EBUSY => "EBUSY",
            Self::EEXIST => "EEXIST",
            Self::ENODEV => "ENODEV",
            Self::EINVAL => "EINVAL",
            Self::ENOTTY => "ENOTTY",
            Self::ENOSPC => "ENOSPC",
            Self::EOVERFLOW => "EOVERFLOW",
            Self::EMSGSIZE => "EMSGSIZE",
            Self::EOPNOTSUPP => "EOPNOTSUPP",
            Self::EADDRINUSE => "EADDRINUSE",
        }
    }

    /// Every errno of the ABI.
    pub const ALL: [Self; 16] = [
        Self::EPERM,
        Self::ENOENT,
        Self::EIO,
        Self::E2BIG,
        Self::ENOMEM,
        Self::EFAULT,
        Self::EBUSY,
        Self::EEXIST,
        Self::ENODEV,
        Self::EINVAL,
        Self::ENOTTY,
        Self::ENOSPC,
        Self::EOVERFLOW,
        Self::EMSGSIZE,
        Self::EOPNOTSUPP,
        Self::EADDRINUSE,
    ];

    /// The errno called `name`.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.name() == name)
    }

    /// The errno with the positive value `errno` (e.g. 22 for EINVAL).
    #[must_use]
    pub fn from_errno(errno: i64) -> Option<Self> {
        Self::ALL.into_iter().find(|e| *e as i64 == errno)
    }

    /// The errno a hypercall's return value names: `ret` is `-errno`.
    /// `None` for 0, positive values and values not in the ABI.
    #[must_use]
    pub fn from_return(ret: i64) -> Option<Self> {
        if ret < 0 { Self::from_errno(ret.checked_neg()?) } else { None }
    }
}

impl core::fmt::Display for Errno {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// aarch64 SMCCC function id base: fast call, SMC64, owner 6 (vendor
/// hypervisor service). The command number is the low byte.
pub const SMCCC_BASE: u64 = 0xC600_0000;
/// What an unknown function id returns on aarch64 (SMCCC NOT_SUPPORTED).
pub const SMCCC_NOT_SUPPORTED: i64 = -1;

/// Command numbers (x86_64: `rax`; aarch64: the low byte of the SMCCC
/// function id [`SMCCC_BASE`]` | nr`).
pub mod nr {
    /// DESTROY.
    pub const DESTROY: u32 = 0x80;
    /// IOAS_ALLOC.
    pub const IOAS_ALLOC: u32 = 0x81;
    /// IOAS_ALLOW_IOVAS.
    pub const IOAS_ALLOW_IOVAS: u32 = 0x82;
    /// IOAS_COPY.
    pub const IOAS_COPY: u32 = 0x83;
    /// IOAS_IOVA_RANGES.
    pub const IOAS_IOVA_RANGES: u32 = 0x84;
    /// IOAS_MAP.
    pub const IOAS_MAP: u32 = 0x85;
    /// IOAS_UNMAP.
    pub const IOAS_UNMAP: u32 = 0x86;
    /// OPTION.
    pub const OPTION: u32 = 0x87;
    /// GET_HW_INFO.
    pub const GET_HW_INFO: u32 = 0x8A;
    /// DEVICE_LIST.
    pub const DEVICE_LIST: u32 = 0xC0;
    /// DEVICE_ATTACH.
    pub const DEVICE_ATTACH: u32 = 0xC1;
    /// DEVICE_DETACH.
    pub const DEVICE_DETACH: u32 = 0xC2;
    /// DEVICE_RESV_IOVA_RANGES.
    pub const DEVICE_RESV_IOVA_RANGES: u32 = 0xC3;
    /// FAULT_READ.
    pub const FAULT_READ: u32 = 0xC4;
    /// CONSOLE_WRITE.
    pub const CONSOLE_WRITE: u32 = 0xC5;
    /// PARTITION_EXIT.
    pub const PARTITION_EXIT: u32 = 0xC6;
}

/// The largest `len` CONSOLE_WRITE accepts (Sluice's bound; more is
/// EINVAL).
pub const CONSOLE_WRITE_MAX: u32 = 4096;

/// Map and copy flags.
pub mod map_flags {
    /// Use the IOVA given instead of allocating one.
    pub const FIXED_IOVA: u32 = 1 << 0;
    /// The device may write.
    pub const WRITEABLE: u32 = 1 << 1;
    /// The device may read.
    pub const READABLE: u32 = 1 << 2;
    /// Every defined flag.
    pub const ALL: u32 = FIXED_IOVA | WRITEABLE | READABLE;
}

/// OPTION ids and ops.
pub mod option {
    /// Pin accounting mode.
    pub const RLIMIT_MODE: u32 = 0;
    /// Leaves larger than 4 KiB.
    pub const HUGE_PAGES: u32 = 1;
    /// Set the option.
    pub const OP_SET: u16 = 0;
    /// Read the option.
    pub const OP_GET: u16 = 1;
}

/// GET_HW_INFO data types.
pub mod hw_info_type {
    /// `VtdHwInfo`.
    pub const INTEL_VTD: u32 = 1;
    /// `SmmuV3HwInfo`.
    pub const ARM_SMMUV3: u32 = 2;
}

/// `device_info.reason` and fault reasons.
pub mod fault_reason {
    /// Nothing mapped at the IOVA.
    pub const NOT_PRESENT: u32 = 1;
    /// Write to a read-only mapping.
    pub const WRITE_TO_READ_ONLY: u32 = 2;
    /// Read from a write-only mapping.
    pub const READ_FROM_WRITE_ONLY: u32 = 3;
    /// Anything else the IOMMU reported.
    pub const OTHER: u32 = 4;
    /// `fault_record.flags`: the access was a read.
    pub const FLAG_READ: u32 = 1;
    /// `fault_record.flags`: the access was a write.
    pub const FLAG_WRITE: u32 = 2;
    /// `fault_record.flags` (Sluice): not a DMA access but a notice. With
    /// reason [`OTHER`] and IOVA 0 it says the device faulted more often
    /// than its partition's fault limit allows, so the hypervisor switched
    /// its PCI bus mastering off: it makes no DMA any more, until the
    /// hypervisor restarts.
    pub const FLAG_BUS_MASTER_OFF: u32 = 1 << 31;
}

/// Reserved-region types of `resv_range.type`.
pub mod resv_type {
    /// Interrupt (MSI) window.
    pub const MSI: u32 = 1;
    /// Must stay identity-mapped (RMRR).
    pub const DIRECT: u32 = 2;
    /// Beyond the IOMMU's input width.
    pub const APERTURE: u32 = 3;
    /// Beyond the device's DMA address width.
    pub const DMA_LIMIT: u32 = 4;
    /// Anything else the platform forbids.
    pub const RESERVED: u32 = 5;
}

macro_rules! abi_struct {
    ($(#[$doc:meta])* $name:ident { $($(#[$fdoc:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$doc])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable)]
        pub struct $name {
            $($(#[$fdoc])* pub $field: $ty,)*
        }
    };
}

abi_struct!(
    /// `struct iova_range`: an inclusive range.
    IovaRange { start: u64, last: u64 }
);
abi_struct!(
    /// 0x80 DESTROY.
    Destroy { size: u32, id: u32 }
);
abi_struct!(
    /// 0x81 IOAS_ALLOC.
    IoasAlloc { size: u32, flags: u32, out_ioas_id: u32 }
);
abi_struct!(
    /// 0x82 IOAS_ALLOW_IOVAS.
    IoasAllowIovas { size: u32, ioas_id: u32, num_iovas: u32, reserved: u32, allowed_iovas: u64 }
);
abi_struct!(
    /// 0x83 IOAS_COPY.
    IoasCopy { size: u32, flags: u32, dst_ioas_id: u32, src_ioas_id: u32, length: u64, dst_iova: u64, src_iova: u64 }
);
abi_struct!(
    /// 0x84 IOAS_IOVA_RANGES.
    IoasIovaRanges {
        size: u32,
        ioas_id: u32,
        num_iovas: u32,
        reserved: u32,
        allowed_iovas: u64,
        out_iova_alignment: u64,
    }
);
abi_struct!(
    /// 0x85 IOAS_MAP.
    IoasMap { size: u32, flags: u32, ioas_id: u32, reserved: u32, gpa: u64, length: u64, iova: u64 }
);
abi_struct!(
    /// 0x86 IOAS_UNMAP.
    IoasUnmap { size: u32, ioas_id: u32, iova: u64, length: u64 }
);
abi_struct!(
    /// 0x87 OPTION.
    OptionCmd { size: u32, option_id: u32, op: u16, reserved: u16, object_id: u32, val64: u64 }
);
abi_struct!(
    /// 0x8A GET_HW_INFO.
    GetHwInfo {
        size: u32,
        flags: u32,
        dev_id: u32,
        data_len: u32,
        data_gpa: u64,
        out_data_type: u32,
        out_max_pasid_log2: u8,
        reserved: [u8; 3],
        out_capabilities: u64,
    }
);
abi_struct!(
    /// GET_HW_INFO data for VT-d (`struct iommu_hw_info_vtd`).
    VtdHwInfo { flags: u32, reserved: u32, cap_reg: u64, ecap_reg: u64 }
);
abi_struct!(
    /// GET_HW_INFO data for SMMUv3 (`struct iommu_hw_info_arm_smmuv3`).
    SmmuV3HwInfo { flags: u32, reserved: u32, idr: [u32; 6], iidr: u32, aidr: u32 }
);
abi_struct!(
    /// 0xC0 DEVICE_LIST.
    DeviceList { size: u32, num_devices: u32, devices: u64 }
);
abi_struct!(
    /// `struct device_info`.
    DeviceInfo { dev_id: u32, iommu_id: u32, rid: u32, attached_pt: u32, dma_bits: u32, reserved: u32 }
);
abi_struct!(
    /// 0xC1 DEVICE_ATTACH.
    DeviceAttach { size: u32, flags: u32, dev_id: u32, pt_id: u32 }
);
abi_struct!(
    /// 0xC2 DEVICE_DETACH.
    DeviceDetach { size: u32, dev_id: u32 }
);
abi_struct!(
    /// 0xC3 DEVICE_RESV_IOVA_RANGES.
    DeviceResvIovaRanges { size: u32, dev_id: u32, num_iovas: u32, reserved: u32, resv_iovas: u64 }
);
abi_struct!(
    /// `struct resv_range`.
    ResvRange { start: u64, last: u64, kind: u32, reserved: u32 }
);
abi_struct!(
    /// 0xC4 FAULT_READ.
    FaultRead { size: u32, flags: u32, num_faults: u32, reserved: u32, faults: u64, out_lost: u64 }
);
abi_struct!(
    /// `struct fault_record`.
    FaultRecord { dev_id: u32, reason: u32, iova: u64, flags: u32, reserved: u32 }
);
abi_struct!(
    /// 0xC5 CONSOLE_WRITE.
    ConsoleWrite { size: u32, len: u32, buf: u64 }
);
abi_struct!(
    /// 0xC6 PARTITION_EXIT.
    PartitionExit { size: u32, code: u32 }
);

/// One command of the ABI: its number, name and the sizes the framing
/// rules need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommandInfo {
    /// Command number.
    pub nr: u32,
    /// ABI name in lower case (hvsim's spelling).
    pub name: &'static str,
    /// Smallest `size` accepted.
    pub min_size: u32,
    /// Size of the struct this hypervisor knows.
    pub size: u32,
}

const fn cmd(nr: u32, name: &'static str, min_size: u32, size: usize) -> CommandInfo {
    CommandInfo { nr, name, min_size, size: size as u32 }
}

/// Every command of ABI version 1.
pub const COMMANDS: [CommandInfo; 16] = [
    cmd(nr::DESTROY, "destroy", 8, size_of::<Destroy>()),
    cmd(nr::IOAS_ALLOC, "ioas_alloc", 12, size_of::<IoasAlloc>()),
    cmd(nr::IOAS_ALLOW_IOVAS, "ioas_allow_iovas", 24, size_of::<IoasAllowIovas>()),
    cmd(nr::IOAS_COPY, "ioas_copy", 40, size_of::<IoasCopy>()),
    cmd(nr::IOAS_IOVA_RANGES, "ioas_iova_ranges", 32, size_of::<IoasIovaRanges>()),
    cmd(nr::IOAS_MAP, "ioas_map", 40, size_of::<IoasMap>()),
    cmd(nr::IOAS_UNMAP, "ioas_unmap", 24, size_of::<IoasUnmap>()),
    cmd(nr::OPTION, "option", 24, size_of::<OptionCmd>()),
    cmd(nr::GET_HW_INFO, "get_hw_info", 32, size_of::<GetHwInfo>()),
    cmd(nr::DEVICE_LIST, "device_list", 16, size_of::<DeviceList>()),
    cmd(nr::DEVICE_ATTACH, "device_attach", 16, size_of::<DeviceAttach>()),
    cmd(nr::DEVICE_DETACH, "device_detach", 8, size_of::<DeviceDetach>()),
    cmd(nr::DEVICE_RESV_IOVA_RANGES, "device_resv_iova_ranges", 24, size_of::<DeviceResvIovaRanges>()),
    cmd(nr::FAULT_READ, "fault_read", 32, size_of::<FaultRead>()),
    cmd(nr::CONSOLE_WRITE, "console_write", 16, size_of::<ConsoleWrite>()),
    cmd(nr::PARTITION_EXIT, "partition_exit", 8, size_of::<PartitionExit>()),
];

/// A command struct: what its number is. `size_of::<Self>()` is the
/// size this ABI version knows; [`CommandInfo::min_size`] (from
/// [`command`]) the smallest accepted.
pub trait Command: FromBytes + IntoBytes + Immutable {
    /// The command number.
    const NR: u32;
}

macro_rules! commands {
    ($($ty:ident = $nr:ident),* $(,)?) => {
        $(impl Command for $ty {
            const NR: u32 = nr::$nr;
        })*
    };
}

commands!(
    Destroy = DESTROY,
    IoasAlloc = IOAS_ALLOC,
    IoasAllowIovas = IOAS_ALLOW_IOVAS,
    IoasCopy = IOAS_COPY,
    IoasIovaRanges = IOAS_IOVA_RANGES,
    IoasMap = IOAS_MAP,
    IoasUnmap = IOAS_UNMAP,
    OptionCmd = OPTION,
    GetHwInfo = GET_HW_INFO,
    DeviceList = DEVICE_LIST,
    DeviceAttach = DEVICE_ATTACH,
    DeviceDetach = DEVICE_DETACH,
    DeviceResvIovaRanges = DEVICE_RESV_IOVA_RANGES,
    FaultRead = FAULT_READ,
    ConsoleWrite = CONSOLE_WRITE,
    PartitionExit = PARTITION_EXIT,
);

/// The command with number `nr`, if ABI version 1 has one.
#[must_use]
pub fn command(nr: u32) -> Option<&'static CommandInfo> {
    COMMANDS.iter().find(|c| c.nr == nr)
}

#[cfg(test)]
mod tests {
    use core::mem::offset_of;

    use super::*;

    #[test]
    fn sizes_match_abi_md() {
        for c in &COMMANDS {
            assert!(c.min_size <= c.size, "{}", c.name);
        }
        let sizes: [(u32, usize); 16] = [
            (0x80, 8),
            (0x81, 12),
            (0x82, 24),
            (0x83, 40),
            (0x84, 32),
            (0x85, 40),
            (0x86, 24),
            (0x87, 24),
            (0x8A, 40),
            (0xC0, 16),
            (0xC1, 16),
            (0xC2, 8),
            (0xC3, 24),
            (0xC4, 32),
            (0xC5, 16),
            (0xC6, 8),
        ];
        for (nr, size) in sizes {
            assert_eq!(command(nr).unwrap().size as usize, size, "command {nr:#x}");
        }
        assert_eq!(command(0x8A).unwrap().min_size, 32);
        assert_eq!(command(0x88), None);
        assert_eq!(size_of::<IovaRange>(), 16);
        assert_eq!(size_of::<DeviceInfo>(), 24);
        assert_eq!(size_of::<ResvRange>(), 24);
        assert_eq!(size_of::<FaultRecord>(), 24);
        assert_eq!(size_of::<VtdHwInfo>(), 24);
        assert_eq!(size_of::<SmmuV3HwInfo>(), 40);
    }

    #[test]
    fn offsets_match_abi_md() {
        assert_eq!(offset_of!(IoasAllowIovas, allowed_iovas), 16);
        assert_eq!(
            (offset_of!(IoasCopy, length), offset_of!(IoasCopy, dst_iova), offset_of!(IoasCopy, src_iova)),
            (16, 24, 32)
        );
        assert_eq!(offset_of!(IoasIovaRanges, out_iova_alignment), 24);
        assert_eq!((offset_of!(IoasMap, gpa), offset_of!(IoasMap, length), offset_of!(IoasMap, iova)), (16, 24, 32));
        assert_eq!((offset_of!(IoasUnmap, iova), offset_of!(IoasUnmap, length)), (8, 16));
        assert_eq!(
            (offset_of!(OptionCmd, op), offset_of!(OptionCmd, object_id), offset_of!(OptionCmd, val64)),
            (8, 12, 16)
        );
        assert_eq!(
            (
                offset_of!(GetHwInfo, data_gpa),
                offset_of!(GetHwInfo, out_data_type),
                offset_of!(GetHwInfo, out_max_pasid_log2),
                offset_of!(GetHwInfo, reserved),
                offset_of!(GetHwInfo, out_capabilities)
            ),
            (16, 24, 28, 29, 32)
        );
        assert_eq!(offset_of!(DeviceList, devices), 8);
        assert_eq!(offset_of!(DeviceAttach, pt_id), 12);
        assert_eq!(offset_of!(DeviceResvIovaRanges, resv_iovas), 16);
        assert_eq!((offset_of!(FaultRead, faults), offset_of!(FaultRead, out_lost)), (16, 24));
        assert_eq!(offset_of!(ConsoleWrite, buf), 8);
        assert_eq!((offset_of!(DeviceInfo, attached_pt), offset_of!(DeviceInfo, dma_bits)), (12, 16));
        assert_eq!(offset_of!(ResvRange, kind), 16);
        assert_eq!((offset_of!(FaultRecord, iova), offset_of!(FaultRecord, flags)), (8, 16));
        assert_eq!((offset_of!(VtdHwInfo, cap_reg), offset_of!(VtdHwInfo, ecap_reg)), (8, 16));
        assert_eq!((offset_of!(SmmuV3HwInfo, idr), offset_of!(SmmuV3HwInfo, iidr)), (8, 32));
    }

    #[test]
    fn structs_parse_from_partition_bytes() {
        let mut bytes = [0u8; 40];
        bytes[0..4].copy_from_slice(&40u32.to_le_bytes());
        bytes[4..8].copy_from_slice(&(map_flags::READABLE | map_flags::WRITEABLE).to_le_bytes());
        bytes[8..12].copy_from_slice(&7u32.to_le_bytes());
        bytes[16..24].copy_from_slice(&0x20_0000u64.to_le_bytes());
        bytes[24..32].copy_from_slice(&0x1000u64.to_le_bytes());
        let m = IoasMap::read_from_bytes(&bytes).unwrap();
        assert_eq!((m.size, m.flags, m.ioas_id, m.gpa, m.length, m.iova), (40, 6, 7, 0x20_0000, 0x1000, 0));
        assert_eq!(m.as_bytes(), &bytes);
    }

    #[test]
    fn errno_values_and_names() {
        assert_eq!(Errno::EADDRINUSE as i32, 98);
        assert_eq!(Errno::EMSGSIZE.to_return(), -90);
        for e in Errno::ALL {
            assert_eq!(Errno::from_name(e.name()), Some(e));
        }
        assert_eq!(Errno::from_name("EWHATEVER"), None);
        for e in Errno::ALL {
            assert_eq!(Errno::from_return(e.to_return()), Some(e));
        }
        assert_eq!(Errno::from_return(0), None);
        assert_eq!(Errno::from_return(22), None);
        assert_eq!(Errno::from_return(-3), None);
        assert_eq!(Errno::from_return(i64::MIN), None);
    }

    #[test]
    fn command_trait_numbers_match_the_table() {
        fn check<C: Command>() {
            let info = command(C::NR).unwrap();
            assert_eq!(info.size as usize, size_of::<C>(), "{}", info.name);
        }
        check::<Destroy>();
        check::<IoasAlloc>();
        check::<IoasAllowIovas>();
        check::<IoasCopy>();
        check::<IoasIovaRanges>();
        check::<IoasMap>();
        check::<IoasUnmap>();
        check::<OptionCmd>();
        check::<GetHwInfo>();
        check::<DeviceList>();
        check::<DeviceAttach>();
        check::<DeviceDetach>();
        check::<DeviceResvIovaRanges>();
        check::<FaultRead>();
        check::<ConsoleWrite>();
        check::<PartitionExit>();
    }
}
