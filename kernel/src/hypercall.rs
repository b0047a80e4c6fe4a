//! The hypercall decoder: framing, the per-command checks in iommufd's
//! order, and the write-back of outputs (shared/design/ABI.md).
//!
//! Partition memory is touched only through [`Hypervisor::read_guest`] and
//! [`Hypervisor::write_guest`], which refuse (EFAULT) any byte that is not
//! the calling partition's RAM. The command struct is read once.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::abi::{
    self, CommandInfo, ConsoleWrite, Destroy, DeviceAttach, DeviceDetach, DeviceInfo, DeviceList, DeviceResvIovaRanges, Errno, FaultRead,
    FaultRecord, GetHwInfo, IoasAlloc, IoasAllowIovas, IoasCopy, IoasIovaRanges, IoasMap, IoasUnmap, IovaRange, OptionCmd, PartitionExit,
    ResvRange, map_flags, option,
};
use crate::heap;
use crate::hv::{Hypervisor, MAX_ALLOWED, PhysMem};
use crate::iommu::Iommu;
use crate::iova::Range;
use crate::pt::{PAGE_SIZE, Perm, TableMemory};

/// Largest `size` a command struct may claim: the bytes past the known
/// struct are scanned for zeros, and this bounds that scan (Sluice only;
/// iommufd has no bound). Larger -> E2BIG.
pub const MAX_STRUCT_SIZE: u32 = 0x1_0000;
/// Longest CONSOLE_WRITE (Sluice only) -> EINVAL above.
pub const MAX_CONSOLE_WRITE: u32 = 4096;
/// Console bytes kept per partition until the platform takes them.
pub const CONSOLE_BUFFER: usize = 0x1_0000;

/// What a hypercall asks of the vCPU loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Resume the partition with this value in the result register (0 or
    /// -errno).
    Return(i64),
    /// PARTITION_EXIT: stop the partition with this code.
    Exit(u32),
}

/// The command number an aarch64 `HVC #0` function id stands for, or
/// `None` (SMCCC NOT_SUPPORTED) outside this ABI's range.
#[must_use]
pub fn smccc_command(function_id: u64) -> Option<u64> {
    // SMCCC passes the function id in W0: the upper half of x0 is ignored.
    let id = function_id as u32;
    (u64::from(id & !0xff) == abi::SMCCC_BASE).then_some(u64::from(id & 0xff))
}

/// The struct as copied in: `size` (first read), and its bytes,
/// zero-extended to the known size.
struct Frame {
    gpa: u64,
    size: u32,
    bytes: [u8; 64],
}

enum Stop {
    Err(Errno),
    Exit(u32),
}

impl From<Errno> for Stop {
    fn from(e: Errno) -> Self {
        Self::Err(e)
    }
}

fn perm_of(flags: u32) -> Perm {
    let mut perm = Perm::empty();
    if flags & map_flags::READABLE != 0 {
        perm |= Perm::READ;
    }
    if flags & map_flags::WRITEABLE != 0 {
        perm |= Perm::WRITE;
    }
    perm
}

impl<U: Iommu, M: TableMemory, R: PhysMem> Hypervisor<U, M, R> {
    /// Run command `nr` for partition `p` with its struct at `gpa`.
    pub fn hypercall(&mut self, p: usize, nr: u64, gpa: u64) -> Outcome {
        let res = self.dispatch(p, nr, gpa);
        self.settle_pending(p);
        match res {
            Ok(()) => Outcome::Return(0),
            Err(Stop::Err(e)) => Outcome::Return(e.to_return()),
            Err(Stop::Exit(code)) => {
                self.partition_mut(p).set_exit(code);
                Outcome::Exit(code)
            }
        }
    }

    fn frame(&self, p: usize, info: &CommandInfo, gpa: u64) -> Result<Frame, Errno> {
        let mut size = [0u8; 4];
        self.read_guest(p, gpa, &mut size)?;
        let size = u32::from_le_bytes(size);
        if size < info.min_size {
            return Err(Errno::EINVAL);
        }
        if size > info.size && !self.is_ram(p, gpa, u64::from(size)) {
            return Err(Errno::EFAULT);
        }
        if size > MAX_STRUCT_SIZE {
            return Err(Errno::E2BIG);
        }
        let mut bytes = [0u8; 64];
        let known = size.min(info.size) as usize;
        self.read_guest(p, gpa, &mut bytes[..known])?;
        // The tail past the known struct must be zero.
        let mut at = u64::from(info.size);
        let mut chunk = [0u8; 256];
        while at < u64::from(size) {
            let n = (u64::from(size) - at).min(chunk.len() as u64) as usize;
            self.read_guest(p, gpa + at, &mut chunk[..n])?;
            if chunk[..n].iter().any(|b| *b != 0) {
                return Err(Errno::E2BIG);
            }
            at += n as u64;
        }
        Ok(Frame { gpa, size, bytes })
    }

    /// Parse the frame as `T`, run `f`, and write the struct back when the
    /// command has outputs and succeeded (or failed with EMSGSIZE).
    fn run<T: FromBytes + IntoBytes + Immutable>(
        &mut self,
        p: usize,
        frame: &Frame,
        writes_back: bool,
        f: impl FnOnce(&mut Self, &mut T) -> Result<(), Stop>,
    ) -> Result<(), Stop> {
        let mut cmd = T::read_from_bytes(&frame.bytes[..size_of::<T>()]).map_err(|_| Errno::EINVAL)?;
        let res = f(self, &mut cmd);
        if writes_back && matches!(res, Ok(()) | Err(Stop::Err(Errno::EMSGSIZE))) {
            let n = (frame.size as usize).min(size_of::<T>());
            self.write_guest(p, frame.gpa, &cmd.as_bytes()[..n])?;
        }
        res
    }

    fn dispatch(&mut self, p: usize, nr: u64, gpa: u64) -> Result<(), Stop> {
        let info = u32::try_from(nr).ok().and_then(abi::command).ok_or(Errno::ENOTTY)?;
        let frame = self.frame(p, info, gpa)?;
        match info.nr {
            0x80 => self.run(p, &frame, false, |hv, c: &mut Destroy| Ok(hv.destroy(p, c.id)?)),
            0x81 => self.run(p, &frame, true, |hv, c: &mut IoasAlloc| {
                if c.flags != 0 {
                    return Err(Errno::EOPNOTSUPP.into());
                }
                c.out_ioas_id = hv.ioas_alloc(p)?;
                Ok(())
            }),
            0x82 => self.run(p, &frame, false, |hv, c: &mut IoasAllowIovas| Ok(hv.cmd_allow_iovas(p, c)?)),
            0x83 => self.run(p, &frame, true, |hv, c: &mut IoasCopy| {
                if c.flags & !map_flags::ALL != 0 {
                    return Err(Errno::EOPNOTSUPP.into());
                }
                if c.length == u64::MAX || c.src_iova == u64::MAX || c.dst_iova == u64::MAX {
                    return Err(Errno::EOVERFLOW.into());
                }
                let perm = perm_of(c.flags);
                if perm.is_empty() {
                    return Err(Errno::EINVAL.into());
                }
                let fixed = (c.flags & map_flags::FIXED_IOVA != 0).then_some(c.dst_iova);
                c.dst_iova = hv.ioas_copy(p, c.dst_ioas_id, c.src_ioas_id, c.length, fixed, c.src_iova, perm)?;
                Ok(())
            }),
            0x84 => self.run(p, &frame, true, |hv, c: &mut IoasIovaRanges| {
                if c.reserved != 0 {
                    return Err(Errno::EOPNOTSUPP.into());
                }
                // Written range by range: nothing is allocated.
                let id = c.ioas_id;
                let total = hv.partition(p).ioas(id).ok_or(Errno::ENOENT)?.usable_iter().count();
                let max = c.num_iovas as usize;
                hv.write_from(p, c.allowed_iovas, max, |part, _| {
                    part.ioas(id).into_iter().flat_map(|i| i.usable_iter()).map(|r| IovaRange { start: r.start, last: r.last })
                })?;
                c.num_iovas = total as u32;
                c.out_iova_alignment = PAGE_SIZE;
                if total > max { Err(Errno::EMSGSIZE.into()) } else { Ok(()) }
            }),
            0x85 => self.run(p, &frame, true, |hv, c: &mut IoasMap| {
                if c.flags & !map_flags::ALL != 0 || c.reserved != 0 {
                    return Err(Errno::EOPNOTSUPP.into());
                }
                if c.iova == u64::MAX || c.length == u64::MAX {
                    return Err(Errno::EOVERFLOW.into());
                }
                let perm = perm_of(c.flags);
                if perm.is_empty() {
                    return Err(Errno::EINVAL.into());
                }
                let fixed = (c.flags & map_flags::FIXED_IOVA != 0).then_some(c.iova);
                c.iova = hv.ioas_map(p, c.ioas_id, c.gpa, c.length, fixed, perm)?;
                Ok(())
            }),
            0x86 => self.run(p, &frame, true, |hv, c: &mut IoasUnmap| {
                c.length = hv.ioas_unmap(p, c.ioas_id, c.iova, c.length)?;
                Ok(())
            }),
            0x87 => self.run(p, &frame, true, |hv, c: &mut OptionCmd| Ok(hv.cmd_option(p, c)?)),
            0x8A => self.run(p, &frame, true, |hv, c: &mut GetHwInfo| Ok(hv.cmd_hw_info(p, c)?)),
            0xC0 => self.run(p, &frame, true, |hv, c: &mut DeviceList| {
                // By id, written one by one: nothing is allocated.
                let total = hv.partition(p).device_objects().count();
                let max = c.num_devices as usize;
                hv.write_from(p, c.devices, max, |part, devices| {
                    part.device_objects().map(|(_, d)| &devices[d]).map(|d| DeviceInfo {
                        dev_id: d.id,
                        iommu_id: d.unit as u32,
                        rid: d.rid,
                        attached_pt: d.attached.unwrap_or(0),
                        dma_bits: d.dma_bits,
                        reserved: 0,
                    })
                })?;
                c.num_devices = total as u32;
                if total > max { Err(Errno::EMSGSIZE.into()) } else { Ok(()) }
            }),
            0xC1 => self.run(p, &frame, true, |hv, c: &mut DeviceAttach| {
                if c.flags != 0 {
                    return Err(Errno::EOPNOTSUPP.into());
                }
                c.pt_id = hv.attach(p, c.dev_id, c.pt_id)?;
                Ok(())
            }),
            0xC2 => self.run(p, &frame, false, |hv, c: &mut DeviceDetach| Ok(hv.detach(p, c.dev_id)?)),
            0xC3 => self.run(p, &frame, true, |hv, c: &mut DeviceResvIovaRanges| {
                if c.reserved != 0 {
                    return Err(Errno::EOPNOTSUPP.into());
                }
                let d = hv.device_index(p, c.dev_id)?;
                let total = hv.devices()[d].regions.len();
                let max = c.num_iovas as usize;
                hv.write_from(p, c.resv_iovas, max, |_, devices| {
                    devices[d].regions.iter().map(|r| ResvRange { start: r.range.start, last: r.range.last, kind: r.kind, reserved: 0 })
                })?;
                c.num_iovas = total as u32;
                if total > max { Err(Errno::EMSGSIZE.into()) } else { Ok(()) }
            }),
            0xC4 => self.run(p, &frame, true, |hv, c: &mut FaultRead| {
                if c.flags != 0 || c.reserved != 0 {
                    return Err(Errno::EOPNOTSUPP.into());
                }
                let n = (c.num_faults as usize).min(hv.pending_faults(p));
                let bytes = (n * size_of::<FaultRecord>()) as u64;
                if n > 0 && (c.faults.checked_add(bytes).is_none() || !hv.is_ram(p, c.faults, bytes)) {
                    return Err(Errno::EFAULT.into());
                }
                // Written from the queue, then dropped from it: nothing is
                // allocated, and the array was checked to be RAM above.
                let written = hv.write_from(p, c.faults, n, |part, _| part.queued_faults())?;
                c.out_lost = hv.consume_faults(p, written);
                c.num_faults = written as u32;
                Ok(())
            }),
            0xC5 => self.run(p, &frame, false, |hv, c: &mut ConsoleWrite| {
                if c.len > MAX_CONSOLE_WRITE {
                    return Err(Errno::EINVAL.into());
                }
                // Every byte must be RAM before any is taken; then copied
                // through a small buffer (nothing is allocated here).
                if !hv.is_ram(p, c.buf, u64::from(c.len)) {
                    return Err(Errno::EFAULT.into());
                }
                let mut chunk = [0u8; 256];
                let mut at = 0u64;
                while at < u64::from(c.len) {
                    let n = (u64::from(c.len) - at).min(chunk.len() as u64) as usize;
                    hv.read_guest(p, c.buf + at, &mut chunk[..n])?;
                    hv.partition_mut(p).console_push(&chunk[..n], CONSOLE_BUFFER);
                    at += n as u64;
                }
                Ok(())
            }),
            0xC6 => self.run(p, &frame, false, |_, c: &mut PartitionExit| Err(Stop::Exit(c.code))),
            _ => Err(Errno::ENOTTY.into()),
        }
    }

    fn cmd_allow_iovas(&mut self, p: usize, c: &IoasAllowIovas) -> Result<(), Errno> {
        if c.reserved != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        self.partition(p).ioas(c.ioas_id).ok_or(Errno::ENOENT)?;
        // The heap: the tree of loaded ranges (scratch) and the list that
        // becomes the IOAS's. Asked for before the elements are read.
        let n = (c.num_iovas as usize).min(MAX_ALLOWED);
        self.grant(heap::btree::<u64, u64>(n) + heap::vec::<Range>(n))?;
        // Loaded in order, as iommufd does: the first bad element decides
        // the errno. The tree finds overlaps in O(log n) per element.
        let mut loaded: BTreeMap<u64, u64> = BTreeMap::new();
        for i in 0..u64::from(c.num_iovas) {
            let mut raw = [0u8; 16];
            let at = c.allowed_iovas.checked_add(i * 16).ok_or(Errno::EFAULT)?;
            self.read_guest(p, at, &mut raw)?;
            let r = IovaRange::read_from_bytes(&raw).map_err(|_| Errno::EFAULT)?;
            if r.start >= r.last {
                return Err(Errno::EINVAL);
            }
            let below = loaded.range(..=r.last).next_back().is_some_and(|(_, last)| *last >= r.start);
            if below {
                return Err(Errno::EINVAL);
            }
            if loaded.len() >= MAX_ALLOWED {
                return Err(Errno::ENOMEM);
            }
            loaded.insert(r.start, r.last);
        }
        let mut list = Vec::with_capacity(loaded.len());
        list.extend(loaded.into_iter().map(|(start, last)| Range { start, last }));
        self.ioas_set_allowed(p, c.ioas_id, list)
    }

    fn cmd_option(&mut self, p: usize, c: &mut OptionCmd) -> Result<(), Errno> {
        if c.reserved != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        match c.option_id {
            option::RLIMIT_MODE => {
                if c.object_id != 0 {
                    return Err(Errno::EOPNOTSUPP);
                }
                match c.op {
                    option::OP_GET => {
                        c.val64 = 1;
                        Ok(())
                    }
                    // Accounting is fixed by the partition's configuration.
                    option::OP_SET => Err(Errno::EPERM),
                    _ => Err(Errno::EOPNOTSUPP),
                }
            }
            option::HUGE_PAGES => {
                let on = self.huge_pages(p, c.object_id)?;
                match (c.op, c.val64) {
                    (option::OP_GET, _) => {
                        c.val64 = u64::from(on);
                        Ok(())
                    }
                    (option::OP_SET, 0 | 1) => self.set_huge_pages(p, c.object_id, c.val64 == 1),
                    (option::OP_SET, _) => Err(Errno::EINVAL),
                    _ => Err(Errno::EOPNOTSUPP),
                }
            }
            _ => Err(Errno::EOPNOTSUPP),
        }
    }

    fn cmd_hw_info(&mut self, p: usize, c: &mut GetHwInfo) -> Result<(), Errno> {
        if c.flags != 0 || c.reserved != [0; 3] {
            return Err(Errno::EOPNOTSUPP);
        }
        let d = self.device_index(p, c.dev_id)?;
        let info = self.units()[self.devices()[d].unit].info().hw_info;
        let copy = (c.data_len as usize).min(info.len);
        if c.data_len > 0 {
            if c.data_gpa.checked_add(u64::from(c.data_len)).is_none() || !self.is_ram(p, c.data_gpa, u64::from(c.data_len)) {
                return Err(Errno::EFAULT);
            }
            if c.data_len > MAX_STRUCT_SIZE {
                return Err(Errno::EINVAL);
            }
            self.write_guest(p, c.data_gpa, &info.data[..copy])?;
            let zeros = [0u8; 256];
            let mut at = copy as u64;
            while at < u64::from(c.data_len) {
                let n = (u64::from(c.data_len) - at).min(zeros.len() as u64) as usize;
                self.write_guest(p, c.data_gpa + at, &zeros[..n])?;
                at += n as u64;
            }
        }
        c.data_len = info.len as u32;
        c.out_data_type = info.kind;
        c.out_max_pasid_log2 = 0;
        c.out_capabilities = 0;
        Ok(())
    }
}
