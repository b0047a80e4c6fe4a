//! Driver for QEMU's `edu` test device (PCI 1234:11e8): a DMA engine with
//! a 4 KiB internal buffer, used to make real DMA go through the IOMMU.
//!
//! The buffer is not reachable through the BAR: QEMU's edu decodes only its
//! registers (an access anywhere else reads all-ones and is dropped). The
//! buffer's "address" 0x40000 is where it sits in the device's own DMA
//! address space, the address a transfer names on the device side. Data
//! gets into and out of it only by DMA: fill it with
//! [`Edu::dma_from_ram`], copy it out with [`Edu::dma_to_ram`].
//!
//! A transfer is timed by the device (about 100 ms of virtual time), so
//! both DMA calls poll for completion with a bounded wait.

pub mod fake;

use core::fmt;
use core::ptr;

use pci_types::CommandRegister;
use pci_types::ConfigRegionAccess;
use sluice_kernel::Iova;
use sluice_kernel::time::{Clock, wait_for};

use crate::Bdf;
use crate::enumerate::PciFunction;
use crate::segment::{PciError, PciSegment};

/// PCI vendor id (QEMU).
pub const VENDOR_ID: u16 = 0x1234;
/// PCI device id.
pub const DEVICE_ID: u16 = 0x11e8;
/// Size of BAR0.
pub const BAR0_SIZE: u64 = 1 << 20;
/// The identification register's value on QEMU (version 1.0).
pub const ID_VALUE: u32 = 0x0100_00ed;
/// Device-side address of the internal buffer.
pub const BUFFER_DEVICE_ADDR: u64 = 0x40000;
/// Length of the internal buffer.
pub const BUFFER_LEN: usize = 4096;
/// Address bits the device drives: it cuts every RAM-side address to them.
pub const DMA_ADDRESS_BITS: u32 = 28;
/// One past the highest IOVA the device can reach.
pub const DMA_LIMIT: u64 = 1 << DMA_ADDRESS_BITS;
/// How long QEMU takes for one transfer, in (virtual) microseconds.
pub const TRANSFER_TIME_US: u64 = 100_000;

/// Register offsets in BAR0.
pub mod regs {
    /// Identification, 32-bit, read-only: `0xMMmm00ed`.
    pub const ID: usize = 0x00;
    /// Liveness check, 32-bit: reads back the inverse of what was written.
    pub const LIVENESS: usize = 0x04;
    /// DMA source address, 64-bit.
    pub const DMA_SRC: usize = 0x80;
    /// DMA destination address, 64-bit.
    pub const DMA_DST: usize = 0x88;
    /// DMA byte count, 64-bit.
    pub const DMA_COUNT: usize = 0x90;
    /// DMA command, 64-bit; see [`super::cmd`].
    pub const DMA_CMD: usize = 0x98;
    /// Bytes of BAR0 that hold registers.
    pub const LEN: usize = 0x100;
}

/// Bits of the DMA command register.
pub mod cmd {
    /// Start a transfer; reads as one while it runs.
    pub const START: u64 = 1 << 0;
    /// Direction: set = device buffer to RAM, clear = RAM to device buffer.
    pub const TO_RAM: u64 = 1 << 1;
    /// Raise an interrupt when done.
    pub const IRQ: u64 = 1 << 2;
}

/// Register access to one edu's BAR0: the MMIO window on the target, a
/// model in host tests. Offsets are those of [`regs`], naturally aligned.
pub trait EduRegs {
    /// 32-bit read.
    fn read32(&self, offset: usize) -> u32;
    /// 32-bit write.
    fn write32(&self, offset: usize, value: u32);
    /// 64-bit read (DMA registers only).
    fn read64(&self, offset: usize) -> u64;
    /// 64-bit write (DMA registers only).
    fn write64(&self, offset: usize, value: u64);
}

impl<T: EduRegs + ?Sized> EduRegs for &T {
    fn read32(&self, offset: usize) -> u32 {
        (**self).read32(offset)
    }
    fn write32(&self, offset: usize, value: u32) {
        (**self).write32(offset, value);
    }
    fn read64(&self, offset: usize) -> u64 {
        (**self).read64(offset)
    }
    fn write64(&self, offset: usize, value: u64) {
        (**self).write64(offset, value);
    }
}

/// The registers of an edu reached through its mapped BAR0.
#[derive(Debug)]
pub struct EduMmio {
    base_va: usize,
}

impl EduMmio {
    /// Registers at `base_va`, the virtual address of the device's BAR0.
    ///
    /// # Safety
    ///
    /// `base_va .. base_va + regs::LEN` must be mapped as device (uncached)
    /// memory to an edu's BAR0, with memory decoding on, and stay so for the
    /// life of the returned value; nothing may use the range as ordinary
    /// memory meanwhile.
    ///
    /// # Panics
    ///
    /// If `base_va` is not 8-byte aligned.
    #[must_use]
    pub unsafe fn new(base_va: usize) -> Self {
        assert!(base_va % 8 == 0, "edu BAR0 at {base_va:#x} is misaligned");
        Self { base_va }
    }

    fn reg<T>(&self, offset: usize) -> usize {
        let width = size_of::<T>();
        assert!(offset % width == 0 && offset + width <= regs::LEN, "bad edu register {offset:#x}/{width}");
        self.base_va + offset
    }
}

impl EduRegs for EduMmio {
    fn read32(&self, offset: usize) -> u32 {
        let reg = ptr::with_exposed_provenance::<u32>(self.reg::<u32>(offset));
        // SAFETY: an aligned register inside the mapped register block
        // (`reg` checked it; `EduMmio::new`'s caller promised the mapping).
        unsafe { reg.read_volatile() }
    }

    fn write32(&self, offset: usize, value: u32) {
        let reg = ptr::with_exposed_provenance_mut::<u32>(self.reg::<u32>(offset));
        // SAFETY: as in `read32`.
        unsafe { reg.write_volatile(value) }
    }

    fn read64(&self, offset: usize) -> u64 {
        let reg = ptr::with_exposed_provenance::<u64>(self.reg::<u64>(offset));
        // SAFETY: as in `read32`; the device accepts 8-byte accesses to its
        // DMA registers.
        unsafe { reg.read_volatile() }
    }

    fn write64(&self, offset: usize, value: u64) {
        let reg = ptr::with_exposed_provenance_mut::<u64>(self.reg::<u64>(offset));
        // SAFETY: as in `read64`.
        unsafe { reg.write_volatile(value) }
    }
}

/// Which argument of a DMA request is wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadArgument {
    /// A transfer of zero bytes.
    ZeroLength,
    /// The range does not fit in the 4 KiB buffer.
    OutsideBuffer {
        /// Buffer offset.
        offset: usize,
        /// Length.
        len: usize,
    },
    /// The RAM side needs more than [`DMA_ADDRESS_BITS`] address bits: the
    /// device would silently DMA to another address.
    BeyondDmaLimit {
        /// First IOVA.
        iova: Iova,
        /// Length.
        len: usize,
    },
}

impl fmt::Display for BadArgument {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ZeroLength => f.write_str("zero-length transfer"),
            Self::OutsideBuffer { offset, len } => {
                write!(f, "buffer range {offset:#x}+{len:#x} exceeds the {BUFFER_LEN:#x}-byte buffer")
            }
            Self::BeyondDmaLimit { iova, len } => {
                write!(f, "IOVA range {iova:#x}+{len:#x} exceeds the {DMA_ADDRESS_BITS}-bit DMA limit")
            }
        }
    }
}

/// Why an edu operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EduError {
    /// The identification register does not name an edu.
    WrongId {
        /// Value read.
        found: u32,
    },
    /// The liveness register did not return the inverse of the value
    /// written.
    NotAlive {
        /// Value written.
        wrote: u32,
        /// Value read back.
        read: u32,
    },
    /// A transfer is still running (the device drops register writes
    /// meanwhile).
    Busy,
    /// The transfer did not finish in time; it may still run, so its RAM
    /// must stay mapped until [`Edu::wait_idle`] succeeds.
    Timeout,
    /// The request was refused before touching the device.
    BadArgument(BadArgument),
}

impl fmt::Display for EduError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WrongId { found } => write!(f, "edu: identification reads {found:#010x}"),
            Self::NotAlive { wrote, read } => {
                write!(f, "edu: liveness wrote {wrote:#010x}, read {read:#010x} (expected {:#010x})", !wrote)
            }
            Self::Busy => f.write_str("edu: a DMA transfer is still running"),
            Self::Timeout => f.write_str("edu: DMA transfer timed out"),
            Self::BadArgument(why) => write!(f, "edu: bad DMA argument: {why}"),
        }
    }
}

impl From<BadArgument> for EduError {
    fn from(why: BadArgument) -> Self {
        Self::BadArgument(why)
    }
}

/// Order this CPU's memory accesses against the device's DMA: RAM written
/// before a transfer starts is visible to it, and RAM read after it
/// finished holds its data.
///
/// On aarch64 this is `dmb osh`: the device is an outer-shareable observer
/// that `dmb ish` (what a SeqCst fence gives) does not cover.
fn dma_barrier() {
    #[cfg(target_arch = "aarch64")]
    // SAFETY: a data memory barrier only orders memory accesses; it reads
    // and writes no memory or register of its own.
    unsafe {
        core::arch::asm!("dmb osh", options(nostack, preserves_flags));
    }
    #[cfg(not(target_arch = "aarch64"))]
    core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
}

/// One edu device.
#[derive(Debug)]
pub struct Edu<R> {
    regs: R,
}

impl<R: EduRegs> Edu<R> {
    /// A driver over `regs`. The PCI side (memory decoding and bus
    /// mastering) is [`enable`]'s job.
    pub fn new(regs: R) -> Self {
        Self { regs }
    }

    /// The register accessor.
    pub fn regs(&self) -> &R {
        &self.regs
    }

    /// Check the identification register and that the liveness register
    /// inverts two patterns.
    ///
    /// # Errors
    ///
    /// [`EduError::WrongId`] (also what an absent device gives: all-ones)
    /// or [`EduError::NotAlive`].
    pub fn check(&self) -> Result<(), EduError> {
        let id = self.regs.read32(regs::ID);
        if id & 0xffff != ID_VALUE & 0xffff {
            return Err(EduError::WrongId { found: id });
        }
        for wrote in [0x5a5a_0ff0_u32, 0x0123_4567] {
            self.regs.write32(regs::LIVENESS, wrote);
            let read = self.regs.read32(regs::LIVENESS);
            if read != !wrote {
                return Err(EduError::NotAlive { wrote, read });
            }
        }
        Ok(())
    }

    /// Whether a transfer is running.
    pub fn is_busy(&self) -> bool {
        u64::from(self.regs.read32(regs::DMA_CMD)) & cmd::START != 0
    }

    /// Wait until no transfer runs.
    ///
    /// # Errors
    ///
    /// [`EduError::Timeout`].
    pub fn wait_idle<C: Clock + ?Sized>(&self, clock: &C, timeout_us: u64) -> Result<(), EduError> {
        wait_for(clock, timeout_us, || (!self.is_busy()).then_some(())).map_err(|_| EduError::Timeout)?;
        dma_barrier();
        Ok(())
    }

    /// Copy `len` bytes from the buffer at `buf_off` to RAM at `iova`, and
    /// wait for the transfer.
    ///
    /// # Errors
    ///
    /// [`EduError::BadArgument`], [`EduError::Busy`],
    /// [`EduError::Timeout`].
    pub fn dma_to_ram<C: Clock + ?Sized>(
        &self,
        buf_off: usize,
        iova: Iova,
        len: usize,
        clock: &C,
        timeout_us: u64,
    ) -> Result<(), EduError> {
        let device_addr = check_buffer(buf_off, len)?;
        check_iova(iova, len)?;
        self.transfer(device_addr, iova.raw(), len, cmd::TO_RAM, clock, timeout_us)
    }

    /// Copy `len` bytes from RAM at `iova` into the buffer at `buf_off`,
    /// and wait for the transfer.
    ///
    /// # Errors
    ///
    /// [`EduError::BadArgument`], [`EduError::Busy`],
    /// [`EduError::Timeout`].
    pub fn dma_from_ram<C: Clock + ?Sized>(
        &self,
        iova: Iova,
        buf_off: usize,
        len: usize,
        clock: &C,
        timeout_us: u64,
    ) -> Result<(), EduError> {
        let device_addr = check_buffer(buf_off, len)?;
        check_iova(iova, len)?;
        self.transfer(iova.raw(), device_addr, len, 0, clock, timeout_us)
    }

    fn transfer<C: Clock + ?Sized>(
        &self,
        src: u64,
        dst: u64,
        len: usize,
        direction: u64,
        clock: &C,
        timeout_us: u64,
    ) -> Result<(), EduError> {
        if self.is_busy() {
            return Err(EduError::Busy);
        }
        self.regs.write64(regs::DMA_SRC, src);
        self.regs.write64(regs::DMA_DST, dst);
        self.regs.write64(regs::DMA_COUNT, len as u64);
        dma_barrier();
        self.regs.write64(regs::DMA_CMD, cmd::START | direction);
        self.wait_idle(clock, timeout_us)
    }
}

/// The device-side address of `buf_off..buf_off + len` in the buffer.
fn check_buffer(buf_off: usize, len: usize) -> Result<u64, BadArgument> {
    if len == 0 {
        return Err(BadArgument::ZeroLength);
    }
    match buf_off.checked_add(len) {
        Some(end) if end <= BUFFER_LEN => Ok(BUFFER_DEVICE_ADDR + buf_off as u64),
        _ => Err(BadArgument::OutsideBuffer { offset: buf_off, len }),
    }
}

fn check_iova(iova: Iova, len: usize) -> Result<(), BadArgument> {
    match iova.checked_add(len as u64) {
        Some(end) if end.raw() <= DMA_LIMIT => Ok(()),
        _ => Err(BadArgument::BeyondDmaLimit { iova, len }),
    }
}

/// Why [`enable`] refused a function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnableError {
    /// The function is not an edu.
    NotEdu(Bdf),
    /// BAR0 is missing, not a memory BAR, smaller than [`BAR0_SIZE`] or
    /// has no address.
    Bar0Unusable(Bdf),
    /// Configuration access failed.
    Pci(PciError),
}

impl fmt::Display for EnableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotEdu(bdf) => write!(f, "PCI {bdf} is not an edu device"),
            Self::Bar0Unusable(bdf) => write!(f, "PCI {bdf}: edu BAR0 is missing or unassigned"),
            Self::Pci(e) => fmt::Display::fmt(e, f),
        }
    }
}

impl From<PciError> for EnableError {
    fn from(e: PciError) -> Self {
        Self::Pci(e)
    }
}

/// Prepare an enumerated edu for [`Edu`]: check it is one with a usable
/// BAR0, turn on memory decoding and bus mastering (the device does no DMA
/// without it), and return BAR0's bus address for the caller to map.
///
/// # Errors
///
/// [`EnableError`].
pub fn enable<A: ConfigRegionAccess>(segment: &PciSegment<A>, function: &PciFunction) -> Result<u64, EnableError> {
    let bdf = function.bdf;
    if function.vendor_id != VENDOR_ID || function.device_id != DEVICE_ID {
        return Err(EnableError::NotEdu(bdf));
    }
    let bar0 = function.bar(0).filter(|b| b.is_memory() && b.size >= BAR0_SIZE && b.is_assigned());
    let bar0 = bar0.ok_or(EnableError::Bar0Unusable(bdf))?;
    segment.update_command(bdf, CommandRegister::MEMORY_ENABLE | CommandRegister::BUS_MASTER_ENABLE, true)?;
    Ok(bar0.address)
}
