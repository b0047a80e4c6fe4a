//! The guest edu driver against the edu model the hypervisor's driver is
//! tested with (`sluice_pci::edu::fake::FakeEdu`, QEMU's behaviour where a
//! driver can tell), and `Edu::open` from a start-info block.

use sluice_guest::edu::{self, Edu, EduError, EduRegs};
use sluice_guest::time::Clock;
use sluice_guest::{StartDevice, StartInfo};
use sluice_kernel::Iova;
use sluice_pci::edu::fake::{FakeEdu, FakeEduClock};

const RAM: u64 = 0x10_0000;
const RAM_LEN: usize = 0x10000;

/// The guest driver's register trait over the model.
struct Regs<'a>(&'a FakeEdu);

impl EduRegs for Regs<'_> {
    fn read32(&self, offset: usize) -> u32 {
        sluice_pci::edu::EduRegs::read32(self.0, offset)
    }
    fn write32(&self, offset: usize, value: u32) {
        sluice_pci::edu::EduRegs::write32(self.0, offset, value);
    }
    fn read64(&self, offset: usize) -> u64 {
        sluice_pci::edu::EduRegs::read64(self.0, offset)
    }
    fn write64(&self, offset: usize, value: u64) {
        sluice_pci::edu::EduRegs::write64(self.0, offset, value);
    }
}

/// The guest's clock trait over the model's simulated time.
struct Time<'a>(FakeEduClock<'a>);

impl Clock for Time<'_> {
    fn now_us(&self) -> u64 {
        sluice_kernel::time::Clock::now_us(&self.0)
    }
    fn relax(&self) {
        sluice_kernel::time::Clock::relax(&self.0);
    }
}

fn driver(dev: &FakeEdu) -> Edu<Regs<'_>, Time<'_>> {
    Edu::new(Regs(dev), Time(dev.clock().with_step(1000)))
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

#[test]
fn check_passes_on_an_edu_and_fails_on_nothing() {
    let dev = FakeEdu::new(Iova(RAM), RAM_LEN);
    driver(&dev).check().unwrap();

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
    let absent = Edu::new(Absent, sluice_guest::time::ArchClock);
    assert_eq!(absent.check(), Err(EduError::WrongId(u32::MAX)));
}

#[test]
fn ram_to_buffer_to_ram_copies_the_bytes() {
    let dev = FakeEdu::new(Iova(RAM), RAM_LEN);
    let edu = driver(&dev);
    let data = pattern(300, 5);
    dev.write_ram(Iova(RAM + 0x1234), &data);
    edu.dma_from_ram(RAM + 0x1234, 0x100, data.len()).unwrap();
    assert_eq!(&dev.buffer()[0x100..0x100 + data.len()], &data[..]);
    edu.dma_to_ram(0x100, RAM + 0x8000, data.len()).unwrap();
    assert_eq!(dev.read_ram(Iova(RAM + 0x8000), data.len()), data);
    assert_eq!(dev.transfers(), 2);
    // Each wait took the device's transfer time, not a fixed poll count.
    assert!(dev.now_us() >= 2 * sluice_pci::edu::TRANSFER_TIME_US);
}

#[test]
fn a_stuck_transfer_times_out_and_a_busy_device_refuses() {
    let dev = FakeEdu::new(Iova(RAM), RAM_LEN);
    dev.set_stuck(true);
    let edu = driver(&dev).with_timeout_us(50_000);
    assert_eq!(edu.dma_to_ram(0, RAM, 16), Err(EduError::Timeout));
    assert!(edu.is_busy());
    assert_eq!(edu.start_dma_to_ram(0, RAM, 16), Err(EduError::Busy));
    dev.set_stuck(false);
    edu.with_timeout_us(1_000_000).wait_idle().unwrap();
}

#[test]
fn bad_arguments_never_reach_the_device() {
    let dev = FakeEdu::new(Iova(RAM), RAM_LEN);
    let edu = driver(&dev);
    assert_eq!(edu.dma_to_ram(0, RAM, 0), Err(EduError::BadBufferRange { offset: 0, len: 0 }));
    assert_eq!(edu.dma_to_ram(4000, RAM, 200), Err(EduError::BadBufferRange { offset: 4000, len: 200 }));
    assert_eq!(edu.dma_from_ram(RAM, usize::MAX, 2), Err(EduError::BadBufferRange { offset: usize::MAX, len: 2 }));
    let iova = edu::DMA_LIMIT - 8;
    assert_eq!(edu.dma_from_ram(iova, 0, 16), Err(EduError::BeyondDmaLimit { iova, len: 16 }));
    assert_eq!(edu.start_dma_to_ram(0, u64::MAX, 16), Err(EduError::BeyondDmaLimit { iova: u64::MAX, len: 16 }));
    assert_eq!(dev.register_writes(), 0);
    assert!(EduError::Timeout.to_string().contains("timed out"));
}

#[test]
fn open_uses_the_start_info_bar() {
    assert!(Edu::open(0).is_none(), "no start info on the host yet");
    let mut info = StartInfo::new(0, "A", 0x4000_0000, 8 << 20);
    let bar = StartDevice {
        dev_id: 1,
        seg_bdf: StartDevice::encode_seg_bdf(0, 0, 3, 0),
        bar0_gpa: 0xfea0_0000,
        bar0_size: edu::BAR0_SIZE,
        dma_bits: 28,
        reserved: 0,
    };
    info.push_device(bar).unwrap();
    info.push_device(StartDevice { bar0_gpa: 0, ..bar }).unwrap();
    info.push_device(StartDevice { bar0_size: 0x10, ..bar }).unwrap();
    info.push_device(StartDevice { bar0_gpa: 0xfea0_0004, ..bar }).unwrap();
    sluice_guest::host::set_start_info(Box::leak(Box::new(info)));
    // Only opened, never touched: the address is not mapped on the host.
    assert!(Edu::open(0).is_some());
    assert!(Edu::open(1).is_none(), "no BAR0");
    assert!(Edu::open(2).is_none(), "BAR0 smaller than the registers");
    assert!(Edu::open(3).is_none(), "misaligned BAR0");
    assert!(Edu::open(4).is_none(), "past num_devices");
    assert_eq!(sluice_guest::start_info().unwrap().name(), "A");
}
