//! The typed hypercall wrappers on the host, against a mock hypervisor
//! (`host::set_handler`): each sends the right number and a struct whose
//! `size` is the struct's and whose fields are what the wrapper's
//! arguments say, and returns what the hypervisor wrote back.

use std::cell::RefCell;
use std::ptr;
use std::rc::Rc;

use sluice_abi::*;
use sluice_guest::{hc, host};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// The struct at `gpa` as bytes (its size from the command table).
///
/// # Safety
///
/// `gpa` is the address of a live command struct of that size that
/// nothing else accesses meanwhile.
unsafe fn struct_bytes<'a>(nr: u32, gpa: u64) -> &'a mut [u8] {
    let size = command(nr).expect("a command of ABI v1").size as usize;
    // SAFETY: the caller's contract.
    unsafe { std::slice::from_raw_parts_mut(ptr::with_exposed_provenance_mut::<u8>(gpa as usize), size) }
}

/// Copy `records` to the output array at `gpa`.
fn write_array<T: IntoBytes + Immutable>(gpa: u64, records: &[T]) {
    let bytes = records.as_bytes();
    // SAFETY: the wrappers pass the address of a `&mut [T]` at least
    // `records.len()` long (the tests only write what the struct asked
    // for).
    unsafe { ptr::copy_nonoverlapping(bytes.as_ptr(), ptr::with_exposed_provenance_mut::<u8>(gpa as usize), bytes.len()) }
}

/// Read `n` records from the input array at `gpa`.
fn read_array<T: FromBytes>(gpa: u64, n: usize) -> Vec<T> {
    let len = n * size_of::<T>();
    // SAFETY: the wrappers pass the address of a live `&[T]` of `n`
    // elements.
    let bytes = unsafe { std::slice::from_raw_parts(ptr::with_exposed_provenance::<u8>(gpa as usize), len) };
    bytes.chunks_exact(size_of::<T>().max(1)).map(|c| T::read_from_bytes(c).unwrap()).collect()
}

type Log = Rc<RefCell<Vec<(u32, Vec<u8>)>>>;

/// Install a mock: `respond(nr, struct bytes)` may change the bytes and
/// returns the result. Every call is logged with the bytes as sent.
fn mock(mut respond: impl FnMut(u32, &mut [u8]) -> i64 + 'static) -> Log {
    let log: Log = Rc::default();
    let l = log.clone();
    host::set_handler(Some(Box::new(move |nr, gpa| {
        // SAFETY: the SDK passes its live command struct.
        let bytes = unsafe { struct_bytes(nr, gpa) };
        let size = u32::from_le_bytes(bytes[..4].try_into().unwrap());
        assert_eq!(size as usize, bytes.len(), "command {nr:#x}: size field");
        l.borrow_mut().push((nr, bytes.to_vec()));
        respond(nr, bytes)
    })));
    log
}

fn sent<T: FromBytes>(log: &Log, i: usize) -> (u32, T) {
    let (nr, bytes) = &log.borrow()[i];
    (*nr, T::read_from_bytes(bytes).unwrap())
}

fn edit<T: FromBytes + IntoBytes + Immutable>(bytes: &mut [u8], f: impl FnOnce(&mut T)) {
    let mut v = T::read_from_bytes(bytes).unwrap();
    f(&mut v);
    bytes.copy_from_slice(v.as_bytes());
}

#[test]
fn ioas_alloc_and_destroy() {
    let log = mock(|nr, b| {
        if nr == nr::IOAS_ALLOC {
            edit::<IoasAlloc>(b, |c| c.out_ioas_id = 7);
        }
        0
    });
    assert_eq!(hc::ioas_alloc(), Ok(7));
    hc::destroy(7).unwrap();
    assert_eq!(sent::<IoasAlloc>(&log, 0), (nr::IOAS_ALLOC, IoasAlloc { size: 12, flags: 0, out_ioas_id: 0 }));
    assert_eq!(sent::<Destroy>(&log, 1), (nr::DESTROY, Destroy { size: 8, id: 7 }));
}

#[test]
fn errors_come_back_as_errnos() {
    mock(|_, _| Errno::ENOENT.to_return());
    assert_eq!(hc::destroy(3), Err(Errno::ENOENT));
    for e in Errno::ALL {
        mock(move |_, _| e.to_return());
        assert_eq!(hc::device_detach(1), Err(e));
    }
}

#[test]
#[should_panic(expected = "not an errno of ABI v1")]
fn an_unknown_return_value_panics() {
    mock(|_, _| -3);
    let _ = hc::destroy(1);
}

#[test]
fn raw_hypercall_passes_number_and_address_through() {
    let seen = Rc::new(RefCell::new(None));
    let s = seen.clone();
    host::set_handler(Some(Box::new(move |nr, gpa| {
        *s.borrow_mut() = Some((nr, gpa));
        -25
    })));
    // SAFETY: the mock writes nothing.
    let ret = unsafe { sluice_guest::hypercall(0x99, 0xdead_0000) };
    assert_eq!(ret, -25);
    assert_eq!(*seen.borrow(), Some((0x99, 0xdead_0000)));
}

#[test]
fn call_sets_the_size_and_returns_outputs_on_error_too() {
    mock(|_, b| {
        edit::<DeviceList>(b, |c| c.num_devices = 5);
        Errno::EMSGSIZE.to_return()
    });
    let mut cmd = DeviceList { size: 999, num_devices: 0, devices: 0 };
    // SAFETY: num_devices is 0: nothing is written through `devices`.
    assert_eq!(unsafe { sluice_guest::call(&mut cmd) }, Err(Errno::EMSGSIZE));
    assert_eq!(cmd, DeviceList { size: 16, num_devices: 5, devices: 0 });
}

#[test]
fn ioas_map_fixed_and_automatic() {
    let log = mock(|_, b| {
        edit::<IoasMap>(b, |c| {
            if c.flags & map_flags::FIXED_IOVA == 0 {
                c.iova = 0x40_0000;
            }
        });
        0
    });
    let rw = map_flags::READABLE | map_flags::WRITEABLE;
    assert_eq!(hc::ioas_map(2, 0x4030_0000, 0x2000, None, rw), Ok(0x40_0000));
    assert_eq!(hc::ioas_map(2, 0x4030_0000, 0x1000, Some(0x8000), map_flags::READABLE), Ok(0x8000));
    assert_eq!(
        sent::<IoasMap>(&log, 0).1,
        IoasMap { size: 40, flags: rw, ioas_id: 2, reserved: 0, gpa: 0x4030_0000, length: 0x2000, iova: 0 }
    );
    assert_eq!(
        sent::<IoasMap>(&log, 1).1,
        IoasMap {
            size: 40,
            flags: map_flags::READABLE | map_flags::FIXED_IOVA,
            ioas_id: 2,
            reserved: 0,
            gpa: 0x4030_0000,
            length: 0x1000,
            iova: 0x8000
        }
    );
}

#[test]
fn ioas_unmap_returns_the_bytes_unmapped() {
    let log = mock(|_, b| {
        edit::<IoasUnmap>(b, |c| c.length = 0x3000);
        0
    });
    assert_eq!(hc::ioas_unmap(4, 0x1000, 0x3000), Ok(0x3000));
    assert_eq!(hc::ioas_unmap_all(4), Ok(0x3000));
    assert_eq!(sent::<IoasUnmap>(&log, 0).1, IoasUnmap { size: 24, ioas_id: 4, iova: 0x1000, length: 0x3000 });
    assert_eq!(sent::<IoasUnmap>(&log, 1).1, IoasUnmap { size: 24, ioas_id: 4, iova: 0, length: u64::MAX });
}

#[test]
fn ioas_copy_fixed_and_automatic() {
    let log = mock(|_, b| {
        edit::<IoasCopy>(b, |c| {
            if c.flags & map_flags::FIXED_IOVA == 0 {
                c.dst_iova = 0x9000;
            }
        });
        0
    });
    assert_eq!(hc::ioas_copy(3, 2, 0x1000, 0x1000, None, map_flags::READABLE), Ok(0x9000));
    assert_eq!(hc::ioas_copy(3, 2, 0x1000, 0x1000, Some(0x5000), map_flags::READABLE), Ok(0x5000));
    let (nr, c) = sent::<IoasCopy>(&log, 0);
    assert_eq!(nr, nr::IOAS_COPY);
    assert_eq!(
        c,
        IoasCopy {
            size: 40,
            flags: map_flags::READABLE,
            dst_ioas_id: 3,
            src_ioas_id: 2,
            length: 0x1000,
            dst_iova: 0,
            src_iova: 0x1000
        }
    );
    assert_eq!(sent::<IoasCopy>(&log, 1).1.flags, map_flags::READABLE | map_flags::FIXED_IOVA);
}

#[test]
fn allow_iovas_passes_the_array() {
    let seen = Rc::new(RefCell::new(Vec::new()));
    let s = seen.clone();
    let log = mock(move |_, b| {
        let c = IoasAllowIovas::read_from_bytes(b).unwrap();
        *s.borrow_mut() = read_array::<IovaRange>(c.allowed_iovas, c.num_iovas as usize);
        0
    });
    let ranges = [IovaRange { start: 0x1000, last: 0xffff }, IovaRange { start: 0x10_0000, last: 0x1f_ffff }];
    hc::ioas_allow_iovas(5, &ranges).unwrap();
    assert_eq!(*seen.borrow(), ranges);
    let c = sent::<IoasAllowIovas>(&log, 0).1;
    assert_eq!((c.size, c.ioas_id, c.num_iovas, c.reserved), (24, 5, 2, 0));
    hc::ioas_allow_iovas(5, &[]).unwrap();
    assert_eq!(sent::<IoasAllowIovas>(&log, 1).1.num_iovas, 0);
}

/// A mock list command: `total` records, EMSGSIZE when the array is
/// shorter (as ABI.md).
fn list_reply<T: IntoBytes + Immutable + Clone>(records: Vec<T>, n_in: u32, array: u64) -> (u32, i64) {
    let total = records.len() as u32;
    if n_in < total {
        return (total, Errno::EMSGSIZE.to_return());
    }
    write_array(array, &records);
    (total, 0)
}

#[test]
fn iova_ranges_and_its_count() {
    let ranges = vec![IovaRange { start: 0, last: 0xfedf_ffff }, IovaRange { start: 0xfef0_0000, last: u64::MAX }];
    let r = ranges.clone();
    mock(move |_, b| {
        let mut ret = 0;
        edit::<IoasIovaRanges>(b, |c| {
            let (total, e) = list_reply(r.clone(), c.num_iovas, c.allowed_iovas);
            c.num_iovas = total;
            c.out_iova_alignment = 4096;
            ret = e;
        });
        ret
    });
    assert_eq!(hc::ioas_iova_range_count(1), Ok(2));
    let mut out = [IovaRange::default(); 1];
    assert_eq!(hc::ioas_iova_ranges(1, &mut out), Err(Errno::EMSGSIZE));
    let mut out = [IovaRange::default(); 4];
    assert_eq!(hc::ioas_iova_ranges(1, &mut out), Ok(hc::IovaRanges { count: 2, alignment: 4096 }));
    assert_eq!(&out[..2], &ranges[..]);
    mock(|_, _| Errno::ENOENT.to_return());
    assert_eq!(hc::ioas_iova_range_count(9), Err(Errno::ENOENT));
}

#[test]
fn device_list_and_count() {
    let devices = vec![
        DeviceInfo { dev_id: 1, iommu_id: 0, rid: 0x18, attached_pt: 0, dma_bits: 28, reserved: 0 },
        DeviceInfo { dev_id: 2, iommu_id: 0, rid: 0x20, attached_pt: 3, dma_bits: 28, reserved: 0 },
    ];
    let d = devices.clone();
    let log = mock(move |_, b| {
        let mut ret = 0;
        edit::<DeviceList>(b, |c| {
            let (total, e) = list_reply(d.clone(), c.num_devices, c.devices);
            c.num_devices = total;
            ret = e;
        });
        ret
    });
    assert_eq!(hc::device_count(), Ok(2));
    assert_eq!(sent::<DeviceList>(&log, 0).1, DeviceList { size: 16, num_devices: 0, devices: 0 });
    let mut out = [DeviceInfo::default(); 2];
    assert_eq!(hc::device_list(&mut out), Ok(2));
    assert_eq!(out.to_vec(), devices);
    assert_eq!(hc::device_list(&mut out[..1]), Err(Errno::EMSGSIZE));
}

#[test]
fn attach_and_detach() {
    let log = mock(|nr, b| {
        if nr == nr::DEVICE_ATTACH {
            edit::<DeviceAttach>(b, |c| c.pt_id = 4);
        }
        0
    });
    assert_eq!(hc::device_attach(1, 2), Ok(4));
    hc::device_detach(1).unwrap();
    assert_eq!(sent::<DeviceAttach>(&log, 0), (nr::DEVICE_ATTACH, DeviceAttach { size: 16, flags: 0, dev_id: 1, pt_id: 2 }));
    assert_eq!(sent::<DeviceDetach>(&log, 1), (nr::DEVICE_DETACH, DeviceDetach { size: 8, dev_id: 1 }));
}

#[test]
fn reserved_ranges_and_their_count() {
    let resv = vec![
        ResvRange { start: 0xfee0_0000, last: 0xfeef_ffff, kind: resv_type::MSI, reserved: 0 },
        ResvRange { start: 1 << 28, last: u64::MAX, kind: resv_type::DMA_LIMIT, reserved: 0 },
    ];
    let r = resv.clone();
    let log = mock(move |_, b| {
        let mut ret = 0;
        edit::<DeviceResvIovaRanges>(b, |c| {
            let (total, e) = list_reply(r.clone(), c.num_iovas, c.resv_iovas);
            c.num_iovas = total;
            ret = e;
        });
        ret
    });
    assert_eq!(hc::device_resv_iova_range_count(1), Ok(2));
    let mut out = [ResvRange::default(); 3];
    assert_eq!(hc::device_resv_iova_ranges(1, &mut out), Ok(2));
    assert_eq!(&out[..2], &resv[..]);
    let c = sent::<DeviceResvIovaRanges>(&log, 1).1;
    assert_eq!((c.size, c.dev_id, c.num_iovas), (24, 1, 3));
}

#[test]
fn fault_read_returns_records_and_lost() {
    let rec = FaultRecord {
        dev_id: 1,
        reason: fault_reason::NOT_PRESENT,
        iova: 0x3000,
        flags: fault_reason::FLAG_WRITE,
        reserved: 0,
    };
    let log = mock(move |_, b| {
        edit::<FaultRead>(b, |c| {
            write_array(c.faults, &[rec]);
            c.num_faults = 1;
            c.out_lost = 2;
        });
        0
    });
    let mut out = [FaultRecord::default(); 4];
    assert_eq!(hc::fault_read(&mut out), Ok(hc::Faults { count: 1, lost: 2 }));
    assert_eq!(out[0], rec);
    let c = sent::<FaultRead>(&log, 0).1;
    assert_eq!((c.size, c.flags, c.num_faults, c.reserved, c.out_lost), (32, 0, 4, 0, 0));
}

#[test]
fn options() {
    let log = mock(|_, b| {
        edit::<OptionCmd>(b, |c| {
            if c.op == option::OP_GET {
                c.val64 = 1;
            }
        });
        0
    });
    assert_eq!(hc::option_get(option::RLIMIT_MODE, 0), Ok(1));
    hc::option_set(option::HUGE_PAGES, 3, 0).unwrap();
    assert_eq!(
        sent::<OptionCmd>(&log, 0).1,
        OptionCmd { size: 24, option_id: option::RLIMIT_MODE, op: option::OP_GET, reserved: 0, object_id: 0, val64: 0 }
    );
    assert_eq!(
        sent::<OptionCmd>(&log, 1).1,
        OptionCmd { size: 24, option_id: option::HUGE_PAGES, op: option::OP_SET, reserved: 0, object_id: 3, val64: 0 }
    );
}

#[test]
fn hw_info_decodes_vtd_and_smmuv3() {
    let vtd = VtdHwInfo { flags: 0, reserved: 0, cap_reg: 0x00d2_0082_0066_0462, ecap_reg: 0xf0_0f5e };
    let log = mock(move |_, b| {
        edit::<GetHwInfo>(b, |c| {
            write_array(c.data_gpa, &[vtd]);
            c.data_len = size_of::<VtdHwInfo>() as u32;
            c.out_data_type = hw_info_type::INTEL_VTD;
            c.out_capabilities = 1;
        });
        0
    });
    let (info, data) = hc::hw_info(1).unwrap();
    assert_eq!(info, hc::HwInfo { data_len: 24, data_type: hw_info_type::INTEL_VTD, max_pasid_log2: 0, capabilities: 1 });
    assert_eq!(data, hc::HwData::Vtd(vtd));
    let c = sent::<GetHwInfo>(&log, 0).1;
    assert_eq!((c.size, c.flags, c.dev_id, c.data_len), (40, 0, 1, 64));

    let smmu = SmmuV3HwInfo { flags: 0, reserved: 0, idr: [1, 2, 3, 4, 5, 6], iidr: 7, aidr: 8 };
    mock(move |_, b| {
        edit::<GetHwInfo>(b, |c| {
            write_array(c.data_gpa, &[smmu]);
            c.data_len = size_of::<SmmuV3HwInfo>() as u32;
            c.out_data_type = hw_info_type::ARM_SMMUV3;
        });
        0
    });
    assert_eq!(hc::hw_info(1).unwrap().1, hc::HwData::SmmuV3(smmu));
    mock(|_, b| {
        edit::<GetHwInfo>(b, |c| c.out_data_type = 9);
        0
    });
    assert_eq!(hc::hw_info(1).unwrap().1, hc::HwData::Other(9));
}

/// A console mock: collects what CONSOLE_WRITE sends, one entry per call.
fn console() -> Rc<RefCell<Vec<Vec<u8>>>> {
    let out: Rc<RefCell<Vec<Vec<u8>>>> = Rc::default();
    let o = out.clone();
    mock(move |nr, b| {
        assert_eq!(nr, nr::CONSOLE_WRITE);
        let c = ConsoleWrite::read_from_bytes(b).unwrap();
        assert!(c.len <= CONSOLE_WRITE_MAX);
        o.borrow_mut().push(read_array::<u8>(c.buf, c.len as usize));
        0
    });
    out
}

#[test]
fn console_write_is_cut_into_4096_byte_pieces() {
    let out = console();
    let text: Vec<u8> = (0..10_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    hc::console_write(&text).unwrap();
    let pieces = out.borrow();
    assert_eq!(pieces.iter().map(Vec::len).collect::<Vec<_>>(), [4096, 4096, 1808]);
    assert_eq!(pieces.concat(), text);
}

#[test]
fn println_is_one_write_per_short_line() {
    let out = console();
    sluice_guest::println!("device {} at {:#x}", 1, 0xfea0_0000u64);
    sluice_guest::print!("no newline");
    sluice_guest::println!();
    assert_eq!(
        *out.borrow(),
        vec![b"device 1 at 0xfea00000\n".to_vec(), b"no newline".to_vec(), b"\n".to_vec()]
    );
    out.borrow_mut().clear();
    let long = "x".repeat(600);
    sluice_guest::println!("{long}");
    let pieces = out.borrow();
    assert_eq!(pieces.iter().map(Vec::len).collect::<Vec<_>>(), [256, 256, 89]);
    assert_eq!(pieces.concat(), format!("{long}\n").into_bytes());
}

#[test]
fn console_errors_reach_fmt_write() {
    use std::fmt::Write as _;
    mock(|_, _| Errno::EFAULT.to_return());
    assert!(write!(sluice_guest::console::Console, "x").is_err());
    let mut buffered = sluice_guest::console::BufferedConsole::<8>::new();
    write!(buffered, "abc").unwrap();
    assert!(buffered.flush().is_err());
    // The error is reported once.
    assert!(buffered.flush().is_ok());
}

#[test]
#[should_panic(expected = "PARTITION_EXIT(3) returned Ok(())")]
fn partition_exit_sends_the_code() {
    mock(|nr, b| {
        assert_eq!(nr, nr::PARTITION_EXIT);
        assert_eq!(PartitionExit::read_from_bytes(b).unwrap(), PartitionExit { size: 8, code: 3 });
        0
    });
    hc::partition_exit(3);
}
