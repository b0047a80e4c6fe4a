//! The edu driver against the fake device, and its PCI preparation.

use std::cell::Cell;

use sluice_kernel::Iova;
use sluice_kernel::time::Clock;
use sluice_pci::edu::fake::FakeEdu;
use sluice_pci::edu::{self, BadArgument, Edu, EduError, EduMmio, EduRegs, EnableError, regs};
use sluice_pci::fake::FakeConfigSpace;
use sluice_pci::{Bdf, PciError, PciSegment, config};

const RAM: Iova = Iova(0x10_0000);
const RAM_LEN: usize = 0x10000;
/// Generous: five transfer times.
const TIMEOUT: u64 = 5 * edu::TRANSFER_TIME_US;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

#[test]
fn check_passes_on_an_edu() {
    let dev = FakeEdu::new(RAM, RAM_LEN);
    Edu::new(&dev).check().unwrap();
}

/// Registers that read all-ones and drop writes: no device there.
struct Absent;

impl EduRegs for Absent {
    fn read32(&self, _: usize) -> u32 {
        u32::MAX
    }
    fn write32(&self, _: usize, _: u32) {}
    fn read64(&self, _: usize) -> u64 {
        u64::MAX
    }
    fn write64(&self, _: usize, _: u64) {}
}

/// Right id, but liveness reads back what was written.
struct Echo(Cell<u32>);

impl EduRegs for Echo {
    fn read32(&self, offset: usize) -> u32 {
        if offset == regs::ID { edu::ID_VALUE } else { self.0.get() }
    }
    fn write32(&self, _: usize, value: u32) {
        self.0.set(value);
    }
    fn read64(&self, _: usize) -> u64 {
        0
    }
    fn write64(&self, _: usize, _: u64) {}
}

/// Right id, but liveness reads a constant.
struct Constant;

impl EduRegs for Constant {
    fn read32(&self, offset: usize) -> u32 {
        if offset == regs::ID { edu::ID_VALUE } else { 0 }
    }
    fn write32(&self, _: usize, _: u32) {}
    fn read64(&self, _: usize) -> u64 {
        0
    }
    fn write64(&self, _: usize, _: u64) {}
}

#[test]
fn check_fails_on_a_missing_or_dead_device() {
    assert_eq!(Edu::new(Absent).check(), Err(EduError::WrongId { found: u32::MAX }));
    let err = Edu::new(Echo(Cell::new(0))).check().unwrap_err();
    assert_eq!(err, EduError::NotAlive { wrote: 0x5a5a_0ff0, read: 0x5a5a_0ff0 });
    assert_eq!(Edu::new(Constant).check(), Err(EduError::NotAlive { wrote: 0x5a5a_0ff0, read: 0 }));
}

#[test]
fn ram_to_buffer_to_ram_copies_the_bytes() {
    let dev = FakeEdu::new(RAM, RAM_LEN);
    let edu = Edu::new(&dev);
    let data = pattern(300, 7);
    let src = Iova(RAM.0 + 0x1234);
    let dst = Iova(RAM.0 + 0x8000);
    dev.write_ram(src, &data);

    edu.dma_from_ram(src, 0x100, data.len(), &dev.clock(), TIMEOUT).unwrap();
    assert!(dev.now_us() >= edu::TRANSFER_TIME_US, "finished before its time");
    assert_eq!(&dev.buffer()[0x100..0x100 + data.len()], &data[..]);
    assert!(dev.buffer()[..0x100].iter().all(|&b| b == 0), "bytes before the range");

    edu.dma_to_ram(0x100, dst, data.len(), &dev.clock(), TIMEOUT).unwrap();
    assert!(dev.now_us() >= 2 * edu::TRANSFER_TIME_US);
    assert_eq!(dev.read_ram(dst, data.len()), data);
    assert_eq!(dev.read_ram(Iova(dst.0 - 1), 1), [0], "byte before the destination");
    assert_eq!(dev.read_ram(Iova(dst.0 + data.len() as u64), 1), [0], "byte after the destination");
    assert_eq!((dev.transfers(), dev.dma_faults(), dev.range_errors()), (2, 0, 0));
}

#[test]
fn whole_buffer_to_ram() {
    let dev = FakeEdu::new(RAM, RAM_LEN);
    let data = pattern(edu::BUFFER_LEN, 99);
    dev.fill_buffer(0, &data);
    Edu::new(&dev).dma_to_ram(0, RAM, edu::BUFFER_LEN, &dev.clock(), TIMEOUT).unwrap();
    assert_eq!(dev.read_ram(RAM, edu::BUFFER_LEN), data);
    assert!(dev.read_ram(Iova(RAM.0 + 4096), 4096).iter().all(|&b| b == 0));
}

#[test]
fn last_byte_of_the_buffer_and_of_the_dma_range() {
    let top = Iova(edu::DMA_LIMIT - 1);
    let dev = FakeEdu::new(Iova(edu::DMA_LIMIT - 4096), 4096);
    dev.fill_buffer(4095, &[0xa5]);
    Edu::new(&dev).dma_to_ram(4095, top, 1, &dev.clock(), TIMEOUT).unwrap();
    assert_eq!(dev.read_ram(top, 1), [0xa5]);
}

#[test]
fn a_device_that_never_finishes_times_out_then_is_busy() {
    let dev = FakeEdu::new(RAM, RAM_LEN);
    dev.set_stuck(true);
    let edu = Edu::new(&dev);
    let timeout = 3 * edu::TRANSFER_TIME_US;
    assert_eq!(edu.dma_to_ram(0, RAM, 16, &dev.clock(), timeout), Err(EduError::Timeout));
    assert!(dev.now_us() >= timeout && dev.now_us() <= timeout + 2000, "waited {} us", dev.now_us());
    assert!(edu.is_busy());
    let writes = dev.register_writes();
    assert_eq!(edu.dma_from_ram(RAM, 0, 16, &dev.clock(), timeout), Err(EduError::Busy));
    assert_eq!(dev.register_writes(), writes, "a busy device is not written");
    assert_eq!(edu.wait_idle(&dev.clock(), 1000), Err(EduError::Timeout));
    dev.set_stuck(false);
    edu.wait_idle(&dev.clock(), 1000).unwrap();
    assert_eq!(dev.transfers(), 1);
}

#[test]
fn a_timeout_shorter_than_the_transfer_fires_and_the_data_still_lands() {
    let dev = FakeEdu::new(RAM, RAM_LEN);
    let data = pattern(64, 1);
    dev.fill_buffer(0x800, &data);
    let edu = Edu::new(&dev);
    let err = edu.dma_to_ram(0x800, RAM, 64, &dev.clock(), edu::TRANSFER_TIME_US / 2).unwrap_err();
    assert_eq!(err, EduError::Timeout);
    assert!(dev.read_ram(RAM, 64).iter().all(|&b| b == 0), "nothing copied yet");
    edu.wait_idle(&dev.clock(), TIMEOUT).unwrap();
    assert_eq!(dev.read_ram(RAM, 64), data);
}

/// A clock that never advances the device: only the deadline passes.
struct WallClock(Cell<u64>);

impl Clock for WallClock {
    fn now_us(&self) -> u64 {
        self.0.get()
    }
    fn relax(&self) {
        self.0.set(self.0.get() + 10_000);
    }
}

#[test]
fn completion_needs_device_time_not_just_polling() {
    let dev = FakeEdu::new(RAM, RAM_LEN);
    let clock = WallClock(Cell::new(0));
    assert_eq!(Edu::new(&dev).dma_to_ram(0, RAM, 8, &clock, TIMEOUT), Err(EduError::Timeout));
    assert_eq!(dev.transfers(), 0);
}

#[test]
fn bad_arguments_are_refused_before_touching_the_device() {
    let dev = FakeEdu::new(RAM, RAM_LEN);
    let edu = Edu::new(&dev);
    let c = dev.clock();
    let limit = edu::DMA_LIMIT;
    let cases: [(Result<(), EduError>, BadArgument); 8] = [
        (edu.dma_to_ram(0, RAM, 0, &c, TIMEOUT), BadArgument::ZeroLength),
        (edu.dma_from_ram(RAM, 0, 0, &c, TIMEOUT), BadArgument::ZeroLength),
        (edu.dma_to_ram(4090, RAM, 7, &c, TIMEOUT), BadArgument::OutsideBuffer { offset: 4090, len: 7 }),
        (edu.dma_from_ram(RAM, 4096, 1, &c, TIMEOUT), BadArgument::OutsideBuffer { offset: 4096, len: 1 }),
        (edu.dma_to_ram(usize::MAX, RAM, 2, &c, TIMEOUT), BadArgument::OutsideBuffer { offset: usize::MAX, len: 2 }),
        (edu.dma_to_ram(0, Iova(limit - 8), 9, &c, TIMEOUT), BadArgument::BeyondDmaLimit { iova: Iova(limit - 8), len: 9 }),
        (edu.dma_from_ram(Iova(limit), 0, 1, &c, TIMEOUT), BadArgument::BeyondDmaLimit { iova: Iova(limit), len: 1 }),
        (edu.dma_from_ram(Iova(u64::MAX), 0, 1, &c, TIMEOUT), BadArgument::BeyondDmaLimit { iova: Iova(u64::MAX), len: 1 }),
    ];
    for (result, why) in cases {
        assert_eq!(result, Err(EduError::BadArgument(why)));
    }
    assert_eq!(dev.register_writes(), 0);
    assert_eq!(dev.now_us(), 0, "no waiting either");
}

#[test]
fn the_buffer_is_not_mapped_in_the_bar() {
    // As on QEMU: only registers decode; the buffer's 0x40000 is a
    // device-side DMA address.
    let dev = FakeEdu::new(RAM, RAM_LEN);
    dev.fill_buffer(0, &[1, 2, 3, 4]);
    assert_eq!(dev.read32(0x40000), u32::MAX);
    dev.write32(0x40000, 0);
    assert_eq!(&dev.buffer()[..4], [1, 2, 3, 4]);
}

#[test]
fn error_messages() {
    let cases = [
        (EduError::WrongId { found: u32::MAX }, "edu: identification reads 0xffffffff"),
        (EduError::NotAlive { wrote: 1, read: 1 }, "edu: liveness wrote 0x00000001, read 0x00000001 (expected 0xfffffffe)"),
        (EduError::Busy, "edu: a DMA transfer is still running"),
        (EduError::Timeout, "edu: DMA transfer timed out"),
        (EduError::BadArgument(BadArgument::ZeroLength), "edu: bad DMA argument: zero-length transfer"),
        (
            EduError::BadArgument(BadArgument::OutsideBuffer { offset: 0xfff, len: 2 }),
            "edu: bad DMA argument: buffer range 0xfff+0x2 exceeds the 0x1000-byte buffer",
        ),
        (
            EduError::BadArgument(BadArgument::BeyondDmaLimit { iova: Iova(0x1000_0000), len: 1 }),
            "edu: bad DMA argument: IOVA range 0x10000000+0x1 exceeds the 28-bit DMA limit",
        ),
    ];
    for (error, text) in cases {
        assert_eq!(error.to_string(), text);
    }
}

#[derive(Clone)]
#[repr(C, align(4096))]
struct RegPage([u64; 32]);

#[test]
fn mmio_accessor_hits_the_register_offsets() {
    let mut page = RegPage([0; 32]);
    page.0[0] = u64::from(edu::ID_VALUE);
    {
        let base = (&raw mut page).expose_provenance();
        // SAFETY: `page` is 256 bytes of RAM standing in for the register
        // block; it outlives `mmio`, which is gone before `page` is read
        // directly again.
        let mmio = unsafe { EduMmio::new(base) };
        assert_eq!(mmio.read32(regs::ID), edu::ID_VALUE);
        mmio.write64(regs::DMA_DST, 0x0123_4567_89ab_cdef);
        mmio.write32(regs::LIVENESS, 0xdead_beef);
        assert_eq!(mmio.read64(regs::DMA_DST), 0x0123_4567_89ab_cdef);
    }
    assert_eq!(page.0[regs::DMA_DST / 8], 0x0123_4567_89ab_cdef);
    assert_eq!(page.0[0] >> 32, 0xdead_beef, "liveness is the upper half of the first u64");
}

#[test]
#[should_panic(expected = "bad edu register")]
fn mmio_accessor_stays_in_the_register_block() {
    let mut page = RegPage([0; 32]);
    let base = (&raw mut page).expose_provenance();
    // SAFETY: as above; the access is refused before memory is touched.
    let mmio = unsafe { EduMmio::new(base) };
    let _ = mmio.read32(regs::LEN);
}

fn edu_segment(bar0: Option<u64>) -> PciSegment<FakeConfigSpace> {
    let mut cfg = FakeConfigSpace::new(0);
    let f = cfg.add_endpoint(Bdf::new(0, 3, 0), edu::VENDOR_ID, edu::DEVICE_ID).mem32_bar(0, 1 << 20, false);
    if let Some(address) = bar0 {
        f.bar_address(0, address);
    }
    cfg.add_endpoint(Bdf::new(0, 4, 0), 0x1af4, 0x1000).mem32_bar(0, 1 << 20, false).bar_address(0, 0xfe00_0000);
    PciSegment::new(cfg, 0, 0, 0)
}

#[test]
fn enable_turns_on_decoding_and_bus_mastering() {
    let pci = edu_segment(Some(0xfea0_0000));
    let functions = pci.enumerate();
    let found: Vec<_> = sluice_pci::find(&functions, edu::VENDOR_ID, edu::DEVICE_ID).collect();
    assert_eq!(found.len(), 1);
    assert_eq!(edu::enable(&pci, found[0]), Ok(0xfea0_0000));
    assert_eq!(pci.access().peek(Bdf::new(0, 3, 0), config::COMMAND_STATUS) & 0x7, 0x6);
    assert_eq!(pci.access().peek(Bdf::new(0, 4, 0), config::COMMAND_STATUS) & 0x7, 0, "other device untouched");
}

#[test]
fn enable_refuses_other_devices_and_unassigned_bars() {
    let pci = edu_segment(None);
    let mut functions = pci.enumerate();
    assert_eq!(edu::enable(&pci, &functions[0]), Err(EnableError::Bar0Unusable(Bdf::new(0, 3, 0))));
    assert_eq!(edu::enable(&pci, &functions[1]), Err(EnableError::NotEdu(Bdf::new(0, 4, 0))));
    assert_eq!(pci.access().peek(Bdf::new(0, 3, 0), config::COMMAND_STATUS) & 0x7, 0);
    // Gone since enumeration.
    functions[0].bars[0].address = 0xfea0_0000;
    let mut cfg = FakeConfigSpace::new(0);
    cfg.add_endpoint(Bdf::new(0, 4, 0), 1, 2);
    let empty = PciSegment::new(cfg, 0, 0, 0);
    let err = edu::enable(&empty, &functions[0]).unwrap_err();
    assert_eq!(err, EnableError::Pci(PciError::NoFunction(Bdf::new(0, 3, 0))));
    assert_eq!(err.to_string(), "PCI 00:03.0: no function present");
    assert_eq!(EnableError::NotEdu(Bdf::new(0, 4, 0)).to_string(), "PCI 00:04.0 is not an edu device");
}
