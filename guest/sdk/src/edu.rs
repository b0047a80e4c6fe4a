//! A driver for QEMU's `edu` test device (PCI 1234:11e8) as a partition
//! sees it: BAR0 mapped at the GPA the [`StartInfo`](crate::StartInfo)
//! names, memory decoding and bus mastering already on (the hypervisor's
//! job; a partition has no config space).
//!
//! edu copies between RAM (at an IOVA, through the partition's IOMMU
//! mapping) and its 4 KiB internal buffer, which sits at device address
//! 0x40000 and is not reachable through the BAR. A transfer takes about
//! 100 ms (QEMU's timer), so the DMA calls wait with a timeout.
//!
//! This is a guest-side twin of `sluice_pci::edu` (same registers and
//! checks, tested against that crate's device model). It does not reuse
//! it because `sluice-pci` depends on the hypervisor core, which needs
//! `alloc` (so a global allocator in every partition program) and names
//! addresses with the core's types.
//!
//! Register accesses are aligned 32- and 64-bit volatile loads and
//! stores, as the device (and, on aarch64, Device memory) requires.

use core::fmt;
use core::ptr;

use crate::time::{ArchClock, Clock, wait_for};

/// Size of BAR0.
pub const BAR0_SIZE: u64 = 1 << 20;
/// The identification register's low 16 bits on every edu.
pub const ID_LOW: u32 = 0x00ed;
/// Device-side address of the internal buffer.
pub const BUFFER_DEVICE_ADDR: u64 = 0x40000;
/// Length of the internal buffer.
pub const BUFFER_LEN: usize = 4096;
/// Address bits the device drives: it cuts every RAM-side address to them.
pub const DMA_ADDRESS_BITS: u32 = 28;
/// One past the highest IOVA the device can reach.
pub const DMA_LIMIT: u64 = 1 << DMA_ADDRESS_BITS;
/// The default bound on one transfer (QEMU takes about 100 ms).
pub const DEFAULT_TIMEOUT_US: u64 = 1_000_000;

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

/// Register access to one edu's BAR0. Offsets are those of [`regs`],
/// naturally aligned.
pub trait EduRegs {
    /// 32-bit read.
    fn read32(&self, offset: usize) -> u32;
    /// 32-bit write.
    fn write32(&self, offset: usize, value: u32);
    /// 64-bit read.
    fn read64(&self, offset: usize) -> u64;
    /// 64-bit write.
    fn write64(&self, offset: usize, value: u64);
}

/// BAR0 reached through the identity map.
#[derive(Debug)]
pub struct EduMmio {
    base: usize,
}

impl EduMmio {
    /// Registers at `bar0_gpa`.
    ///
    /// # Safety
    ///
    /// `bar0_gpa .. bar0_gpa + regs::LEN` must be an edu's BAR0 as the
    /// hypervisor mapped it into this partition (Device memory), for the
    /// life of the value, and nothing else may use the range.
    ///
    /// # Panics
    ///
    /// If `bar0_gpa` is not 8-byte aligned.
    #[must_use]
    pub unsafe fn new(bar0_gpa: u64) -> Self {
        assert!(bar0_gpa % 8 == 0, "edu BAR0 at {bar0_gpa:#x} is misaligned");
        Self { base: bar0_gpa as usize }
    }

    fn reg<T>(&self, offset: usize) -> usize {
        let width = size_of::<T>();
        assert!(offset % width == 0 && offset + width <= regs::LEN, "bad edu register {offset:#x}/{width}");
        self.base + offset
    }
}

impl EduRegs for EduMmio {
    fn read32(&self, offset: usize) -> u32 {
        let reg = ptr::with_exposed_provenance::<u32>(self.reg::<u32>(offset));
        // SAFETY: an aligned register inside BAR0 (`reg` checked the
        // offset; `EduMmio::new`'s caller promised the mapping).
        unsafe { reg.read_volatile() }
    }

    fn write32(&self, offset: usize, value: u32) {
        let reg = ptr::with_exposed_provenance_mut::<u32>(self.reg::<u32>(offset));
        // SAFETY: as in `read32`.
        unsafe { reg.write_volatile(value) }
    }

    fn read64(&self, offset: usize) -> u64 {
        let reg = ptr::with_exposed_provenance::<u64>(self.reg::<u64>(offset));
        // SAFETY: as in `read32`; edu accepts 8-byte accesses.
        unsafe { reg.read_volatile() }
    }

    fn write64(&self, offset: usize, value: u64) {
        let reg = ptr::with_exposed_provenance_mut::<u64>(self.reg::<u64>(offset));
        // SAFETY: as in `read64`.
        unsafe { reg.write_volatile(value) }
    }
}

/// Why an edu operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EduError {
    /// The identification register does not name an edu (all-ones: no
    /// device behind the BAR).
    WrongId(u32),
    /// The liveness register did not return the inverse of what was
    /// written.
    NotAlive {
        /// Written.
        wrote: u32,
        /// Read back.
        read: u32,
    },
    /// A transfer is still running.
    Busy,
    /// The transfer did not finish in time (it may still run: keep its
    /// RAM mapped until [`Edu::wait_idle`] succeeds).
    Timeout,
    /// Zero length, or the range leaves the 4 KiB buffer.
    BadBufferRange {
        /// Buffer offset.
        offset: usize,
        /// Length.
        len: usize,
    },
    /// The IOVA range needs more than [`DMA_ADDRESS_BITS`] bits.
    BeyondDmaLimit {
        /// First IOVA.
        iova: u64,
        /// Length.
        len: usize,
    },
}

impl fmt::Display for EduError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WrongId(id) => write!(f, "edu: identification reads {id:#010x}"),
            Self::NotAlive { wrote, read } => write!(f, "edu: liveness wrote {wrote:#010x}, read {read:#010x}"),
            Self::Busy => f.write_str("edu: a DMA transfer is still running"),
            Self::Timeout => f.write_str("edu: DMA transfer timed out"),
            Self::BadBufferRange { offset, len } => {
                write!(f, "edu: buffer range {offset:#x}+{len:#x} is empty or exceeds the {BUFFER_LEN:#x}-byte buffer")
            }
            Self::BeyondDmaLimit { iova, len } => {
                write!(f, "edu: IOVA range {iova:#x}+{len:#x} exceeds the {DMA_ADDRESS_BITS}-bit DMA limit")
            }
        }
    }
}

/// One edu device.
#[derive(Debug)]
pub struct Edu<R = EduMmio, C = ArchClock> {
    regs: R,
    clock: C,
    timeout_us: u64,
}

impl Edu {
    /// The edu that is device `index` of the partition's
    /// [`StartInfo`](crate::StartInfo) (the block the hypervisor passed at
    /// entry), on the CPU's clock. `None` before entry (host builds without
    /// `host::set_start_info`), for an index past `num_devices`,
    /// or when the device has no BAR0 of edu's size. Whether it is an edu
    /// is [`Edu::check`]'s business.
    #[must_use]
    pub fn open(index: usize) -> Option<Self> {
        let device = crate::start_info()?.devices().get(index)?;
        if device.bar0_gpa == 0 || device.bar0_gpa % 8 != 0 || device.bar0_size < regs::LEN as u64 {
            return None;
        }
        // SAFETY: the hypervisor mapped this device's BAR0 at `bar0_gpa`
        // for the partition's lifetime (the start-info contract), and the
        // range is at least the register block.
        let regs = unsafe { EduMmio::new(device.bar0_gpa) };
        Some(Self::new(regs, ArchClock))
    }
}

impl<R: EduRegs, C: Clock> Edu<R, C> {
    /// A driver over `regs`, waiting on `clock`.
    pub fn new(regs: R, clock: C) -> Self {
        Self { regs, clock, timeout_us: DEFAULT_TIMEOUT_US }
    }

    /// The same driver with another bound on each wait.
    #[must_use]
    pub fn with_timeout_us(self, timeout_us: u64) -> Self {
        Self { timeout_us, ..self }
    }

    /// The registers (for tests that poke the device directly).
    pub fn regs(&self) -> &R {
        &self.regs
    }

    /// Check the identification register and that the liveness register
    /// inverts two patterns.
    ///
    /// # Errors
    ///
    /// [`EduError::WrongId`], [`EduError::NotAlive`].
    pub fn check(&self) -> Result<(), EduError> {
        let id = self.regs.read32(regs::ID);
        if id & 0xffff != ID_LOW {
            return Err(EduError::WrongId(id));
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
    pub fn wait_idle(&self) -> Result<(), EduError> {
        wait_for(&self.clock, self.timeout_us, || (!self.is_busy()).then_some(())).map_err(|_| EduError::Timeout)?;
        dma_barrier();
        Ok(())
    }

    /// Start copying `len` bytes from the buffer at `buf_off` to RAM at
    /// `iova`; do not wait.
    ///
    /// # Errors
    ///
    /// [`EduError::BadBufferRange`], [`EduError::BeyondDmaLimit`],
    /// [`EduError::Busy`].
    pub fn start_dma_to_ram(&self, buf_off: usize, iova: u64, len: usize) -> Result<(), EduError> {
        let device_addr = check_buffer(buf_off, len)?;
        check_iova(iova, len)?;
        self.start(device_addr, iova, len, cmd::TO_RAM)
    }

    /// Start copying `len` bytes from RAM at `iova` into the buffer at
    /// `buf_off`; do not wait.
    ///
    /// # Errors
    ///
    /// As [`Self::start_dma_to_ram`].
    pub fn start_dma_from_ram(&self, iova: u64, buf_off: usize, len: usize) -> Result<(), EduError> {
        let device_addr = check_buffer(buf_off, len)?;
        check_iova(iova, len)?;
        self.start(iova, device_addr, len, 0)
    }

    /// Copy `len` bytes from the buffer at `buf_off` to RAM at `iova`, and
    /// wait for the transfer. A transfer the IOMMU blocks still completes
    /// (edu ignores DMA errors); the fault shows in FAULT_READ.
    ///
    /// # Errors
    ///
    /// As [`Self::start_dma_to_ram`], and [`EduError::Timeout`].
    pub fn dma_to_ram(&self, buf_off: usize, iova: u64, len: usize) -> Result<(), EduError> {
        self.start_dma_to_ram(buf_off, iova, len)?;
        self.wait_idle()
    }

    /// Copy `len` bytes from RAM at `iova` into the buffer at `buf_off`,
    /// and wait for the transfer.
    ///
    /// # Errors
    ///
    /// As [`Self::dma_to_ram`].
    pub fn dma_from_ram(&self, iova: u64, buf_off: usize, len: usize) -> Result<(), EduError> {
        self.start_dma_from_ram(iova, buf_off, len)?;
        self.wait_idle()
    }

    fn start(&self, src: u64, dst: u64, len: usize, direction: u64) -> Result<(), EduError> {
        if self.is_busy() {
            return Err(EduError::Busy);
        }
        self.regs.write64(regs::DMA_SRC, src);
        self.regs.write64(regs::DMA_DST, dst);
        self.regs.write64(regs::DMA_COUNT, len as u64);
        dma_barrier();
        self.regs.write64(regs::DMA_CMD, cmd::START | direction);
        Ok(())
    }
}

/// The device-side address of `buf_off..buf_off + len`.
fn check_buffer(buf_off: usize, len: usize) -> Result<u64, EduError> {
    match buf_off.checked_add(len) {
        Some(end) if len > 0 && end <= BUFFER_LEN => Ok(BUFFER_DEVICE_ADDR + buf_off as u64),
        _ => Err(EduError::BadBufferRange { offset: buf_off, len }),
    }
}

fn check_iova(iova: u64, len: usize) -> Result<(), EduError> {
    match iova.checked_add(len as u64) {
        Some(end) if end <= DMA_LIMIT => Ok(()),
        _ => Err(EduError::BeyondDmaLimit { iova, len }),
    }
}

/// Order this CPU's memory accesses against the device's DMA (RAM
/// written before a transfer starts is visible to it; RAM read after it
/// finished holds its data). aarch64: `dmb osh`, since the device is an
/// outer-shareable observer.
fn dma_barrier() {
    #[cfg(all(target_os = "none", target_arch = "aarch64"))]
    // SAFETY: a data memory barrier only orders memory accesses; it reads
    // and writes no memory or register of its own.
    unsafe {
        core::arch::asm!("dmb osh", options(nostack, preserves_flags));
    }
    #[cfg(not(all(target_os = "none", target_arch = "aarch64")))]
    core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
}
