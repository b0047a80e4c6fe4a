//! A model of QEMU's edu for host tests, with its own RAM and clock.
//!
//! It behaves as QEMU 10's `hw/misc/edu.c` does where the driver can tell:
//! only the registers decode (the buffer is reachable by DMA alone),
//! register writes are dropped while a transfer runs, a command write
//! without the start bit is ignored, a 32-bit write to a DMA register sets
//! all 64 bits, the RAM-side address is cut to 28 bits, and a transfer
//! finishes only after [`super::TRANSFER_TIME_US`] of simulated time. Time
//! moves only when a waiter relaxes on [`FakeEdu::clock`] or a test calls
//! [`FakeEdu::advance`], so the driver is tested against a device that
//! answers only while someone waits.

use alloc::vec;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};

use sluice_kernel::Iova;
use sluice_kernel::time::Clock;

use super::{BUFFER_DEVICE_ADDR, BUFFER_LEN, DMA_LIMIT, EduRegs, ID_VALUE, TRANSFER_TIME_US, cmd, regs};

#[derive(Debug)]
struct State {
    liveness: u32,
    src: u64,
    dst: u64,
    count: u64,
    command: u64,
    started_at_us: u64,
    buffer: [u8; BUFFER_LEN],
    ram_base: u64,
    ram: Vec<u8>,
    stuck: bool,
    transfers: u32,
    dma_faults: u32,
    range_errors: u32,
    register_writes: u32,
}

/// A fake edu with `ram_len` bytes of RAM at IOVA `ram_base`.
#[derive(Debug)]
pub struct FakeEdu {
    state: RefCell<State>,
    now_us: Cell<u64>,
}

/// A clock over a [`FakeEdu`]'s simulated time: each
/// [`Clock::relax`] advances it by `step_us` and lets the device run.
#[derive(Debug)]
pub struct FakeEduClock<'a> {
    device: &'a FakeEdu,
    step_us: u64,
}

impl FakeEduClock<'_> {
    /// The same clock with another step.
    #[must_use]
    pub fn with_step(self, step_us: u64) -> Self {
        Self { step_us, ..self }
    }
}

impl Clock for FakeEduClock<'_> {
    fn now_us(&self) -> u64 {
        self.device.now_us()
    }

    fn relax(&self) {
        self.device.advance(self.step_us);
    }
}

impl FakeEdu {
    /// A device at time 0 whose DMA reaches `ram_len` zeroed bytes at
    /// `ram_base`.
    #[must_use]
    pub fn new(ram_base: Iova, ram_len: usize) -> Self {
        Self {
            state: RefCell::new(State {
                liveness: 0,
                src: 0,
                dst: 0,
                count: 0,
                command: 0,
                started_at_us: 0,
                buffer: [0; BUFFER_LEN],
                ram_base: ram_base.raw(),
                ram: vec![0; ram_len],
                stuck: false,
                transfers: 0,
                dma_faults: 0,
                range_errors: 0,
                register_writes: 0,
            }),
            now_us: Cell::new(0),
        }
    }

    /// Make transfers never finish (`true`), or finish again.
    pub fn set_stuck(&self, stuck: bool) {
        self.state.borrow_mut().stuck = stuck;
    }

    /// Simulated time.
    #[must_use]
    pub fn now_us(&self) -> u64 {
        self.now_us.get()
    }

    /// Let `us` microseconds pass; a transfer that is due completes.
    pub fn advance(&self, us: u64) {
        self.now_us.set(self.now_us.get() + us);
        self.step();
    }

    /// A clock that advances 1 ms per relax.
    #[must_use]
    pub fn clock(&self) -> FakeEduClock<'_> {
        FakeEduClock { device: self, step_us: 1000 }
    }

    /// Copy `bytes` into the fake RAM at `iova` (test setup).
    ///
    /// # Panics
    ///
    /// If the range is not inside the fake RAM.
    pub fn write_ram(&self, iova: Iova, bytes: &[u8]) {
        let mut s = self.state.borrow_mut();
        let at = ram_index(&s, iova.raw(), bytes.len()).expect("outside the fake RAM");
        s.ram[at..at + bytes.len()].copy_from_slice(bytes);
    }

    /// The fake RAM's bytes at `iova`.
    ///
    /// # Panics
    ///
    /// If the range is not inside the fake RAM.
    #[must_use]
    pub fn read_ram(&self, iova: Iova, len: usize) -> Vec<u8> {
        let s = self.state.borrow();
        let at = ram_index(&s, iova.raw(), len).expect("outside the fake RAM");
        s.ram[at..at + len].to_vec()
    }

    /// The internal buffer (a back door: the real device has no path to
    /// it but DMA).
    #[must_use]
    pub fn buffer(&self) -> Vec<u8> {
        self.state.borrow().buffer.to_vec()
    }

    /// Set bytes of the internal buffer (back door).
    ///
    /// # Panics
    ///
    /// If the range is outside the buffer.
    pub fn fill_buffer(&self, offset: usize, bytes: &[u8]) {
        self.state.borrow_mut().buffer[offset..offset + bytes.len()].copy_from_slice(bytes);
    }

    /// Transfers completed so far.
    #[must_use]
    pub fn transfers(&self) -> u32 {
        self.state.borrow().transfers
    }

    /// Transfers whose RAM side fell outside the fake RAM (nothing copied).
    #[must_use]
    pub fn dma_faults(&self) -> u32 {
        self.state.borrow().dma_faults
    }

    /// Transfers whose device side fell outside the buffer (QEMU logs a
    /// guest error; nothing copied here).
    #[must_use]
    pub fn range_errors(&self) -> u32 {
        self.state.borrow().range_errors
    }

    /// Register writes so far, including dropped ones.
    #[must_use]
    pub fn register_writes(&self) -> u32 {
        self.state.borrow().register_writes
    }

    fn step(&self) {
        let now = self.now_us.get();
        let mut s = self.state.borrow_mut();
        if s.command & cmd::START == 0 || s.stuck || now - s.started_at_us < TRANSFER_TIME_US {
            return;
        }
        let to_ram = s.command & cmd::TO_RAM != 0;
        let (device_side, ram_side) = if to_ram { (s.src, s.dst) } else { (s.dst, s.src) };
        let len = s.count as usize;
        let buffer_at = device_side
            .checked_sub(BUFFER_DEVICE_ADDR)
            .map(|off| off as usize)
            .filter(|off| off.checked_add(len).is_some_and(|end| end <= BUFFER_LEN));
        let ram_at = ram_index(&s, ram_side & (DMA_LIMIT - 1), len);
        match (buffer_at, ram_at) {
            (None, _) => s.range_errors += 1,
            (Some(_), None) => s.dma_faults += 1,
            (Some(b), Some(r)) => {
                let s = &mut *s;
                if to_ram {
                    s.ram[r..r + len].copy_from_slice(&s.buffer[b..b + len]);
                } else {
                    s.buffer[b..b + len].copy_from_slice(&s.ram[r..r + len]);
                }
            }
        }
        s.command &= !cmd::START;
        s.transfers += 1;
    }

    fn read(&self, offset: usize) -> u64 {
        let s = self.state.borrow();
        match offset {
            regs::ID => u64::from(ID_VALUE),
            regs::LIVENESS => u64::from(s.liveness),
            regs::DMA_SRC => s.src,
            regs::DMA_DST => s.dst,
            regs::DMA_COUNT => s.count,
            regs::DMA_CMD => s.command,
            _ => u64::MAX,
        }
    }

    fn write(&self, offset: usize, value: u64) {
        let now = self.now_us.get();
        let mut s = self.state.borrow_mut();
        s.register_writes += 1;
        let running = s.command & cmd::START != 0;
        match offset {
            regs::LIVENESS => s.liveness = !(value as u32),
            regs::DMA_SRC if !running => s.src = value,
            regs::DMA_DST if !running => s.dst = value,
            regs::DMA_COUNT if !running => s.count = value,
            regs::DMA_CMD if !running && value & cmd::START != 0 => {
                s.command = value;
                s.started_at_us = now;
            }
            _ => {}
        }
    }
}

/// Index into the fake RAM of `len` bytes at `addr`, if they are inside it.
fn ram_index(s: &State, addr: u64, len: usize) -> Option<usize> {
    let off = usize::try_from(addr.checked_sub(s.ram_base)?).ok()?;
    (off.checked_add(len)? <= s.ram.len()).then_some(off)
}

impl EduRegs for FakeEdu {
    fn read32(&self, offset: usize) -> u32 {
        assert!(offset % 4 == 0, "misaligned edu access at {offset:#x}");
        self.read(offset) as u32
    }

    fn write32(&self, offset: usize, value: u32) {
        assert!(offset % 4 == 0, "misaligned edu access at {offset:#x}");
        // Only the liveness register and the DMA registers take 32-bit
        // writes; a DMA register takes the value zero-extended.
        self.write(offset, u64::from(value));
    }

    fn read64(&self, offset: usize) -> u64 {
        assert!(offset % 8 == 0, "misaligned edu access at {offset:#x}");
        // QEMU answers 8-byte reads only at 0x80 and above.
        if offset < regs::DMA_SRC { u64::MAX } else { self.read(offset) }
    }

    fn write64(&self, offset: usize, value: u64) {
        assert!(offset % 8 == 0, "misaligned edu access at {offset:#x}");
        if offset >= regs::DMA_SRC {
            self.write(offset, value);
        } else {
            self.state.borrow_mut().register_writes += 1;
        }
    }
}
