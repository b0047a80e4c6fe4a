//! The hypercall ABI, version 1 (shared/design/ABI.md): command numbers,
//! command structs and records, byte for byte as a partition lays them out
//! (little-endian, `repr(C)`, offsets checked by tests), and the errnos.
//!
//! The structs follow Linux iommufd's uAPI where ABI.md says so. Parsing
//! partition bytes goes through `zerocopy`, never through pointer casts.

// zerocopy's derives generate helper types without `Debug`; every struct
// declared here derives `Debug` itself.
#![allow(missing_debug_implementations)]

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
}

/// aarch64 SMCCC function id base: fast call, SMC64, owner 6 (vendor
/// hypervisor service). The command number is the low byte.
pub const SMCCC_BASE: u64 = 0xC600_0000;
/// What an unknown function id returns on aarch64 (SMCCC NOT_SUPPORTED).
pub const SMCCC_NOT_SUPPORTED: i64 = -1;

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
    cmd(0x80, "destroy", 8, size_of::<Destroy>()),
    cmd(0x81, "ioas_alloc", 12, size_of::<IoasAlloc>()),
    cmd(0x82, "ioas_allow_iovas", 24, size_of::<IoasAllowIovas>()),
    cmd(0x83, "ioas_copy", 40, size_of::<IoasCopy>()),
    cmd(0x84, "ioas_iova_ranges", 32, size_of::<IoasIovaRanges>()),
    cmd(0x85, "ioas_map", 40, size_of::<IoasMap>()),
    cmd(0x86, "ioas_unmap", 24, size_of::<IoasUnmap>()),
    cmd(0x87, "option", 24, size_of::<OptionCmd>()),
    cmd(0x8A, "get_hw_info", 32, size_of::<GetHwInfo>()),
    cmd(0xC0, "device_list", 16, size_of::<DeviceList>()),
    cmd(0xC1, "device_attach", 16, size_of::<DeviceAttach>()),
    cmd(0xC2, "device_detach", 8, size_of::<DeviceDetach>()),
    cmd(0xC3, "device_resv_iova_ranges", 24, size_of::<DeviceResvIovaRanges>()),
    cmd(0xC4, "fault_read", 32, size_of::<FaultRead>()),
    cmd(0xC5, "console_write", 16, size_of::<ConsoleWrite>()),
    cmd(0xC6, "partition_exit", 8, size_of::<PartitionExit>()),
];

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
    }
}
