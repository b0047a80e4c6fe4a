//! One safe function per command of ABI version 1 (ABI.md).
//!
//! Each builds the command struct on the stack, sets `size` to the struct
//! this crate knows, issues the hypercall and returns the command's
//! outputs, or the errno. Arrays are passed as slices; their addresses
//! are their GPAs (identity map).
//!
//! List commands (IOAS_IOVA_RANGES, DEVICE_LIST, DEVICE_RESV_IOVA_RANGES)
//! return the number of entries on success and `Err(EMSGSIZE)` when the
//! slice is too short; the `*_count` functions ask for the total first.
//!
//! IOAS_MAP takes a GPA and length, not a slice: a device may read or
//! write that memory from then on, as any DMA buffer. Memory a device
//! writes should be read with volatile or raw-pointer accesses, never
//! through a reference held across the DMA.

use sluice_abi::{
    CONSOLE_WRITE_MAX, DeviceAttach, DeviceDetach, DeviceInfo, DeviceList, DeviceResvIovaRanges, Errno, FaultRead, FaultRecord,
    GetHwInfo, IoasAllowIovas, IoasAlloc, IoasCopy, IoasIovaRanges, IoasMap, IoasUnmap, IovaRange, OptionCmd, PartitionExit,
    ResvRange, SmmuV3HwInfo, VtdHwInfo, hw_info_type, map_flags, option,
};
use zerocopy::FromBytes;

use crate::hypercall::{call, gpa_of, gpa_of_mut};

/// A slice's length as the ABI's `u32` count (longer slices are offered
/// as `u32::MAX` entries: the hypervisor never writes more than it is
/// told).
fn count_of<T>(slice: &[T]) -> u32 {
    u32::try_from(slice.len()).unwrap_or(u32::MAX)
}

/// DESTROY (0x80): destroy the IOAS or HWPT `id`.
///
/// # Errors
///
/// ENOENT, EBUSY (a device id, or an HWPT in use), as ABI.md.
pub fn destroy(id: u32) -> Result<(), Errno> {
    let mut cmd = sluice_abi::Destroy { size: 0, id };
    // SAFETY: DESTROY names no arrays.
    unsafe { call(&mut cmd) }
}

/// IOAS_ALLOC (0x81): a new, empty IOAS; returns its id.
///
/// # Errors
///
/// ENOMEM (object limit).
pub fn ioas_alloc() -> Result<u32, Errno> {
    let mut cmd = IoasAlloc::default();
    // SAFETY: IOAS_ALLOC names no arrays.
    unsafe { call(&mut cmd) }?;
    Ok(cmd.out_ioas_id)
}

/// IOAS_ALLOW_IOVAS (0x82): replace the IOAS's allowed list with
/// `allowed` (empty: no list, everything allowed).
///
/// # Errors
///
/// ENOENT, EINVAL (bad range), EADDRINUSE (an area outside the new list),
/// as iommufd.
pub fn ioas_allow_iovas(ioas_id: u32, allowed: &[IovaRange]) -> Result<(), Errno> {
    let num_iovas = u32::try_from(allowed.len()).map_err(|_| Errno::EINVAL)?;
    let mut cmd = IoasAllowIovas { size: 0, ioas_id, num_iovas, reserved: 0, allowed_iovas: gpa_of(allowed) };
    // SAFETY: the hypervisor only reads the `num_iovas` ranges of
    // `allowed`, which is borrowed for the call.
    unsafe { call(&mut cmd) }
}

/// IOAS_COPY (0x83): map `length` bytes of `src_ioas_id` at `src_iova`
/// into `dst_ioas_id` too, sharing the pins. `dst_iova`: `Some` for a fixed
/// IOVA (FIXED_IOVA is added to `flags`), `None` to let the allocator
/// choose. `flags`: [`map_flags::READABLE`] / [`map_flags::WRITEABLE`].
/// Returns the destination IOVA.
///
/// # Errors
///
/// As iommufd, then EPERM for a writeable copy of a read-only source.
pub fn ioas_copy(
    dst_ioas_id: u32,
    src_ioas_id: u32,
    src_iova: u64,
    length: u64,
    dst_iova: Option<u64>,
    flags: u32,
) -> Result<u64, Errno> {
    let flags = if dst_iova.is_some() { flags | map_flags::FIXED_IOVA } else { flags };
    let mut cmd = IoasCopy { size: 0, flags, dst_ioas_id, src_ioas_id, length, dst_iova: dst_iova.unwrap_or(0), src_iova };
    // SAFETY: IOAS_COPY names no arrays.
    unsafe { call(&mut cmd) }?;
    Ok(cmd.dst_iova)
}

/// What IOAS_IOVA_RANGES reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IovaRanges {
    /// Ranges written (all of them).
    pub count: usize,
    /// `out_iova_alignment`.
    pub alignment: u64,
}

/// IOAS_IOVA_RANGES (0x84): the IOVA ranges usable in the IOAS, into
/// `out`.
///
/// # Errors
///
/// ENOENT; EMSGSIZE when `out` is shorter than the list (see
/// [`ioas_iova_range_count`]).
pub fn ioas_iova_ranges(ioas_id: u32, out: &mut [IovaRange]) -> Result<IovaRanges, Errno> {
    let mut cmd = IoasIovaRanges {
        size: 0,
        ioas_id,
        num_iovas: count_of(out),
        reserved: 0,
        allowed_iovas: gpa_of_mut(out),
        out_iova_alignment: 0,
    };
    // SAFETY: the hypervisor writes at most `num_iovas` ranges into `out`,
    // which is borrowed mutably for the call.
    unsafe { call(&mut cmd) }?;
    Ok(IovaRanges { count: cmd.num_iovas as usize, alignment: cmd.out_iova_alignment })
}

/// How many ranges [`ioas_iova_ranges`] would return.
///
/// # Errors
///
/// ENOENT.
pub fn ioas_iova_range_count(ioas_id: u32) -> Result<usize, Errno> {
    let mut cmd = IoasIovaRanges { size: 0, ioas_id, num_iovas: 0, reserved: 0, allowed_iovas: 0, out_iova_alignment: 0 };
    // SAFETY: `num_iovas` is 0: the hypervisor writes no range.
    count_result(unsafe { call(&mut cmd) }, cmd.num_iovas)
}

/// 0 entries asked for: `Ok` or EMSGSIZE both carry the total.
fn count_result(result: Result<(), Errno>, total: u32) -> Result<usize, Errno> {
    match result {
        Ok(()) | Err(Errno::EMSGSIZE) => Ok(total as usize),
        Err(e) => Err(e),
    }
}

/// IOAS_MAP (0x85): map `length` bytes of the partition's RAM at `gpa`
/// into the IOAS. `iova`: `Some` for a fixed IOVA (FIXED_IOVA is added to
/// `flags`), `None` for the allocator's choice. `flags`:
/// [`map_flags::READABLE`] / [`map_flags::WRITEABLE`]. Returns the IOVA.
///
/// # Errors
///
/// ABI.md's MAP order: EOPNOTSUPP, EOVERFLOW, EINVAL, ENOENT, EEXIST,
/// ENOSPC, EFAULT, ENOMEM (pin limit).
pub fn ioas_map(ioas_id: u32, gpa: u64, length: u64, iova: Option<u64>, flags: u32) -> Result<u64, Errno> {
    let flags = if iova.is_some() { flags | map_flags::FIXED_IOVA } else { flags };
    let mut cmd = IoasMap { size: 0, flags, ioas_id, reserved: 0, gpa, length, iova: iova.unwrap_or(0) };
    // SAFETY: IOAS_MAP names no arrays (the mapped RAM is only pinned; a
    // device may access it later, see the module docs).
    unsafe { call(&mut cmd) }?;
    Ok(cmd.iova)
}

/// IOAS_UNMAP (0x86): unmap the areas in `[iova, iova + length)`;
/// returns the bytes unmapped.
///
/// # Errors
///
/// ENOENT (nothing there, or a partial area), as iommufd.
pub fn ioas_unmap(ioas_id: u32, iova: u64, length: u64) -> Result<u64, Errno> {
    let mut cmd = IoasUnmap { size: 0, ioas_id, iova, length };
    // SAFETY: IOAS_UNMAP names no arrays.
    unsafe { call(&mut cmd) }?;
    Ok(cmd.length)
}

/// IOAS_UNMAP of everything (iova 0, length `u64::MAX`); returns the
/// bytes unmapped.
///
/// # Errors
///
/// ENOENT for an unknown IOAS.
pub fn ioas_unmap_all(ioas_id: u32) -> Result<u64, Errno> {
    ioas_unmap(ioas_id, 0, u64::MAX)
}

/// OPTION (0x87) GET: the value of option `option_id`
/// ([`option::RLIMIT_MODE`], [`option::HUGE_PAGES`]) of `object_id` (0
/// for global options).
///
/// # Errors
///
/// ENOENT, EOPNOTSUPP, EINVAL, as iommufd.
pub fn option_get(option_id: u32, object_id: u32) -> Result<u64, Errno> {
    let mut cmd = OptionCmd { size: 0, option_id, op: option::OP_GET, reserved: 0, object_id, val64: 0 };
    // SAFETY: OPTION names no arrays.
    unsafe { call(&mut cmd) }?;
    Ok(cmd.val64)
}

/// OPTION (0x87) SET.
///
/// # Errors
///
/// ENOENT, EOPNOTSUPP, EINVAL, EPERM (RLIMIT_MODE), as ABI.md.
pub fn option_set(option_id: u32, object_id: u32, val64: u64) -> Result<(), Errno> {
    let mut cmd = OptionCmd { size: 0, option_id, op: option::OP_SET, reserved: 0, object_id, val64 };
    // SAFETY: OPTION names no arrays.
    unsafe { call(&mut cmd) }
}

/// What GET_HW_INFO reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HwInfo {
    /// `data_len` written back: bytes of the type's data.
    pub data_len: u32,
    /// `out_data_type` ([`hw_info_type`]).
    pub data_type: u32,
    /// `out_max_pasid_log2`.
    pub max_pasid_log2: u8,
    /// `out_capabilities`.
    pub capabilities: u64,
}

/// GET_HW_INFO (0x8A): the IOMMU of device `dev_id`; its type-specific
/// data goes into `data` (zero-filled beyond what the type has).
///
/// # Errors
///
/// ENOENT (no such device), EINVAL, EOPNOTSUPP, as iommufd.
pub fn get_hw_info(dev_id: u32, data: &mut [u8]) -> Result<HwInfo, Errno> {
    let mut cmd = GetHwInfo {
        size: 0,
        flags: 0,
        dev_id,
        data_len: count_of(data),
        data_gpa: gpa_of_mut(data),
        out_data_type: 0,
        out_max_pasid_log2: 0,
        reserved: [0; 3],
        out_capabilities: 0,
    };
    // SAFETY: the hypervisor writes at most `data_len` bytes into `data`,
    // which is borrowed mutably for the call.
    unsafe { call(&mut cmd) }?;
    Ok(HwInfo {
        data_len: cmd.data_len,
        data_type: cmd.out_data_type,
        max_pasid_log2: cmd.out_max_pasid_log2,
        capabilities: cmd.out_capabilities,
    })
}

/// GET_HW_INFO's data, decoded by type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HwData {
    /// [`hw_info_type::INTEL_VTD`].
    Vtd(VtdHwInfo),
    /// [`hw_info_type::ARM_SMMUV3`].
    SmmuV3(SmmuV3HwInfo),
    /// A type this crate does not know.
    Other(u32),
}

/// [`get_hw_info`] with the data decoded.
///
/// # Errors
///
/// As [`get_hw_info`].
pub fn hw_info(dev_id: u32) -> Result<(HwInfo, HwData), Errno> {
    let mut data = [0u8; 64];
    let info = get_hw_info(dev_id, &mut data)?;
    let decoded = match info.data_type {
        hw_info_type::INTEL_VTD => VtdHwInfo::read_from_prefix(&data).map(|(v, _)| HwData::Vtd(v)).ok(),
        hw_info_type::ARM_SMMUV3 => SmmuV3HwInfo::read_from_prefix(&data).map(|(v, _)| HwData::SmmuV3(v)).ok(),
        _ => None,
    };
    Ok((info, decoded.unwrap_or(HwData::Other(info.data_type))))
}

/// DEVICE_LIST (0xC0): the partition's devices, into `out`; returns how
/// many.
///
/// # Errors
///
/// EMSGSIZE when `out` is too short (see [`device_count`]).
pub fn device_list(out: &mut [DeviceInfo]) -> Result<usize, Errno> {
    let mut cmd = DeviceList { size: 0, num_devices: count_of(out), devices: gpa_of_mut(out) };
    // SAFETY: the hypervisor writes at most `num_devices` records into
    // `out`, which is borrowed mutably for the call.
    unsafe { call(&mut cmd) }?;
    Ok(cmd.num_devices as usize)
}

/// How many devices the partition has.
///
/// # Errors
///
/// None expected; whatever DEVICE_LIST returns besides EMSGSIZE.
pub fn device_count() -> Result<usize, Errno> {
    let mut cmd = DeviceList { size: 0, num_devices: 0, devices: 0 };
    // SAFETY: `num_devices` is 0: the hypervisor writes no record.
    count_result(unsafe { call(&mut cmd) }, cmd.num_devices)
}

/// DEVICE_ATTACH (0xC1): attach (or re-attach) device `dev_id` to the
/// IOAS or HWPT `pt_id`; returns the HWPT id.
///
/// # Errors
///
/// ENOENT, EADDRINUSE (a reserved region conflicts), EINVAL, ENOMEM, as
/// iommufd attach.
pub fn device_attach(dev_id: u32, pt_id: u32) -> Result<u32, Errno> {
    let mut cmd = DeviceAttach { size: 0, flags: 0, dev_id, pt_id };
    // SAFETY: DEVICE_ATTACH names no arrays.
    unsafe { call(&mut cmd) }?;
    Ok(cmd.pt_id)
}

/// DEVICE_DETACH (0xC2): block device `dev_id` again (0 if it was not
/// attached).
///
/// # Errors
///
/// ENOENT.
pub fn device_detach(dev_id: u32) -> Result<(), Errno> {
    let mut cmd = DeviceDetach { size: 0, dev_id };
    // SAFETY: DEVICE_DETACH names no arrays.
    unsafe { call(&mut cmd) }
}

/// DEVICE_RESV_IOVA_RANGES (0xC3): the device's reserved regions, into
/// `out`; returns how many.
///
/// # Errors
///
/// ENOENT; EMSGSIZE when `out` is too short (see
/// [`device_resv_iova_range_count`]).
pub fn device_resv_iova_ranges(dev_id: u32, out: &mut [ResvRange]) -> Result<usize, Errno> {
    let mut cmd = DeviceResvIovaRanges { size: 0, dev_id, num_iovas: count_of(out), reserved: 0, resv_iovas: gpa_of_mut(out) };
    // SAFETY: the hypervisor writes at most `num_iovas` records into
    // `out`, which is borrowed mutably for the call.
    unsafe { call(&mut cmd) }?;
    Ok(cmd.num_iovas as usize)
}

/// How many reserved regions [`device_resv_iova_ranges`] would return.
///
/// # Errors
///
/// ENOENT.
pub fn device_resv_iova_range_count(dev_id: u32) -> Result<usize, Errno> {
    let mut cmd = DeviceResvIovaRanges { size: 0, dev_id, num_iovas: 0, reserved: 0, resv_iovas: 0 };
    // SAFETY: `num_iovas` is 0: the hypervisor writes no record.
    count_result(unsafe { call(&mut cmd) }, cmd.num_iovas)
}

/// What FAULT_READ returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Faults {
    /// Records written to the front of the slice, oldest first.
    pub count: usize,
    /// Records dropped (queue full) since the previous read.
    pub lost: u64,
}

/// FAULT_READ (0xC4): take the oldest fault records of the partition's
/// devices, at most `out.len()`.
///
/// # Errors
///
/// EFAULT (consumes no record).
pub fn fault_read(out: &mut [FaultRecord]) -> Result<Faults, Errno> {
    let mut cmd = FaultRead { size: 0, flags: 0, num_faults: count_of(out), reserved: 0, faults: gpa_of_mut(out), out_lost: 0 };
    // SAFETY: the hypervisor writes at most `num_faults` records into
    // `out`, which is borrowed mutably for the call.
    unsafe { call(&mut cmd) }?;
    Ok(Faults { count: cmd.num_faults as usize, lost: cmd.out_lost })
}

/// CONSOLE_WRITE (0xC5): write `bytes` to the partition's console, in
/// pieces of at most [`CONSOLE_WRITE_MAX`] bytes.
///
/// # Errors
///
/// The first piece's error; the pieces before it were written.
pub fn console_write(bytes: &[u8]) -> Result<(), Errno> {
    for piece in bytes.chunks(CONSOLE_WRITE_MAX as usize) {
        let mut cmd = sluice_abi::ConsoleWrite { size: 0, len: piece.len() as u32, buf: gpa_of(piece) };
        // SAFETY: the hypervisor only reads the `len` bytes of `piece`,
        // which is borrowed for the call.
        unsafe { call(&mut cmd) }?;
    }
    Ok(())
}

/// PARTITION_EXIT (0xC6): stop the partition with `code` (0 = success).
/// Never returns: should the hypervisor return anyway, the vCPU spins
/// (on the host: a panic saying so, for tests).
pub fn partition_exit(code: u32) -> ! {
    let mut cmd = PartitionExit { size: 0, code };
    // SAFETY: PARTITION_EXIT names no arrays.
    let result = unsafe { call(&mut cmd) };
    #[cfg(not(target_os = "none"))]
    panic!("PARTITION_EXIT({code}) returned {result:?}");
    #[cfg(target_os = "none")]
    {
        let _ = result;
        loop {
            core::hint::spin_loop();
        }
    }
}
