//! The cases, in the order they run. Each group says what state it
//! leaves for the next; ids are deterministic (lowest free first, as
//! iommufd's xarray), so they are printed.

use core::fmt;

use sluice_abi::{
    COMMANDS, CommandInfo, ConsoleWrite, DeviceAttach, DeviceDetach, DeviceList, DeviceResvIovaRanges, Errno, FaultRead, FaultRecord,
    GetHwInfo, IoasAllowIovas, IoasAlloc, IoasCopy, IoasIovaRanges, IoasMap, IoasUnmap, IovaRange, OptionCmd, PartitionExit, ResvRange,
    command, hw_info_type, layout, nr, option, resv_type,
};
use zerocopy::{FromBytes, IntoBytes};

use crate::{Arch, DMA_BITS, Env, FIXED, Line, R, RW, Ret, Sink, Suite, Tally, W, e, line, sized};

type S<'a, E, K> = Suite<'a, E, K>;

/// An IOAS id no partition has.
const NO_ID: u32 = 0xffff_ff00;
/// The largest struct the hypervisor scans (its E2BIG bound).
const MAX_STRUCT: u64 = 0x1_0000;

pub(crate) fn all<E: Env + ?Sized, K: Sink + ?Sized>(s: &mut S<'_, E, K>) {
    start(s);
    convention(s);
    framing(s);
    pointers(s);
    let a = ranges_and_attach(s);
    let h = ids(s, a);
    let h = conflicts(s, a, h);
    map_cases(s, a);
    unmap_cases(s, a);
    copy_cases(s, a);
    allow_cases(s, a);
    option_cases(s, a);
    hw_info_cases(s);
    list_cases(s);
    faults_and_dma(s, a);
    console_cases(s);
    sweeps(s);
    serve(s, a, h);
    cleanup(s, a);
}

// ----- formatting -----

struct Ranges<'a>(&'a [IovaRange]);

impl fmt::Display for Ranges<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, r) in self.0.iter().enumerate() {
            write!(f, "{}{:#x}-{:#x}", if i > 0 { "," } else { "" }, r.start, r.last)?;
        }
        f.write_str("]")
    }
}

struct Resv<'a>(&'a [ResvRange]);

impl fmt::Display for Resv<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, r) in self.0.iter().enumerate() {
            write!(f, "{}{:#x}-{:#x}:{}", if i > 0 { "," } else { "" }, r.start, r.last, r.kind)?;
        }
        f.write_str("]")
    }
}

struct Faults<'a>(&'a [FaultRecord]);

impl fmt::Display for Faults<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, r) in self.0.iter().enumerate() {
            write!(f, "{}{}:{}:{:#x}:{}", if i > 0 { "," } else { "" }, r.dev_id, r.reason, r.iova, r.flags)?;
        }
        f.write_str("]")
    }
}

const FULL: IovaRange = IovaRange { start: 0, last: u64::MAX };

/// The complement in `[0, U64_MAX]` of the union of `resv`: what
/// IOAS_IOVA_RANGES reports once the device is attached.
fn complement(resv: &[ResvRange]) -> ([IovaRange; 8], usize) {
    let mut sorted = [(0u64, 0u64); 8];
    let n = resv.len().min(8);
    for (slot, r) in sorted.iter_mut().zip(resv) {
        *slot = (r.start, r.last);
    }
    sorted[..n].sort_unstable();
    let mut out = [IovaRange::default(); 8];
    let mut k = 0;
    let mut next = Some(0u64);
    for &(start, last) in &sorted[..n] {
        if let Some(from) = next
            && start > from
            && k < 8
        {
            out[k] = IovaRange { start: from, last: start - 1 };
            k += 1;
        }
        next = match next {
            Some(from) => last.checked_add(1).map(|l| l.max(from)),
            None => None,
        };
    }
    if let Some(from) = next
        && k < 8
    {
        out[k] = IovaRange { start: from, last: u64::MAX };
        k += 1;
    }
    (out, k)
}

// ----- the groups -----

/// The partition as it starts: its RAM and its one blocked device; the
/// other partition's device id names nothing here.
fn start<E: Env + ?Sized, K: Sink + ?Sized>(s: &mut S<'_, E, K>) {
    let ram = s.l.ram.clone();
    let size = ram.end - ram.start;
    s.check(
        "start.ram",
        ram.start == layout::RAM_BASE && size >= crate::MIN_RAM,
        format_args!("ok base={:#x} mib={}", ram.start, size >> 20),
    );
    let (r, n, list) = s.device_list_at(s.l.arr);
    let d = list[0];
    let good = n == 1 && d.dev_id == s.dev && d.attached_pt == 0 && d.dma_bits == DMA_BITS && d.reserved == 0;
    s.case_and(
        "device_list.ok",
        r,
        Ret::Ok,
        good,
        "not one blocked device",
        format_args!(" num={n} devices=[{}:{}:{:#x}:{}:{}]", d.dev_id, d.iommu_id, d.rid, d.attached_pt, d.dma_bits),
    );
    let f = s.env.foreign_device();
    let mut row = s.row("ids.foreign_device");
    row.line.push(format_args!(" id={f}"));
    let dev = s.dev;
    let got = s.destroy(f);
    s.item(&mut row, "destroy", got, e(Errno::ENOENT));
    let got = s.attach(f, dev).0;
    s.item(&mut row, "attach", got, e(Errno::ENOENT));
    let got = s.attach(dev, f).0;
    s.item(&mut row, "attach_pt", got, e(Errno::ENOENT));
    let got = s.detach(f);
    s.item(&mut row, "detach", got, e(Errno::ENOENT));
    let got = s.resv(f, s.l.arr).0;
    s.item(&mut row, "resv", got, e(Errno::ENOENT));
    let got = s.cmd(GetHwInfo { dev_id: f, ..GetHwInfo::default() }).0;
    s.item(&mut row, "hw_info", got, e(Errno::ENOENT));
    let got = s.map(f, RW, s.l.buf, 0x1000, 0).0;
    s.item(&mut row, "map", got, e(Errno::ENOENT));
    s.end_row(row);
    let bad = f == dev;
    s.check("ids.foreign_is_not_ours", !bad, format_args!("ok"));
}

/// Command numbers without a command, and the registers of the calling
/// convention.
fn convention<E: Env + ?Sized, K: Sink + ?Sized>(s: &mut S<'_, E, K>) {
    let alloc = sized(IoasAlloc::default());
    let mut t = Tally::default();
    for n in 0..=0xffu32 {
        if command(n).is_some() {
            continue;
        }
        s.put(s.l.s, alloc.as_bytes());
        let got = s.raw(s.reg0(n), s.l.s);
        t.add(u64::from(n), got, e(Errno::ENOTTY));
    }
    s.sweep_line("nr.unknown", format_args!("numbers 0x00-0xff without a command:"), &t);
    let mut row = s.row("nr.iommufd_reserved");
    for n in [0x88, 0x89, 0x8b, 0x9f] {
        let got = s.raw(s.reg0(n), s.l.s);
        let mut key = Line::new();
        key.push(format_args!("{n:#x}"));
        s.item(&mut row, key.as_str(), got, e(Errno::ENOTTY));
    }
    s.end_row(row);
    let mmio = s.env.mmio();
    let got = s.raw(s.reg0(0x88), mmio);
    s.case("nr.unknown_struct_at_mmio", got, e(Errno::ENOTTY), format_args!(""));
    match s.arch {
        Arch::X86_64 => {
            s.put(s.l.s, alloc.as_bytes());
            let got = s.raw(1 << 32 | u64::from(nr::IOAS_ALLOC), s.l.s);
            s.case("conv.rax_bits_above_31", got, e(Errno::ENOTTY), format_args!(""));
            let got = s.raw(sluice_abi::SMCCC_BASE | u64::from(nr::IOAS_ALLOC), s.l.s);
            s.case("conv.smccc_function_id", got, e(Errno::ENOTTY), format_args!(""));
        }
        Arch::Aarch64 => {
            // SMCCC: the function id is w0; the upper half of x0 is ignored.
            s.put(s.l.s, alloc.as_bytes());
            let got = s.raw(0xffff_ffff_0000_0000 | s.reg0(nr::IOAS_ALLOC), s.l.s);
            let id = s.get_u64(s.l.s + 8) as u32;
            s.case("conv.x0_upper_half_ignored", got, Ret::Ok, format_args!(" out_ioas_id={id}"));
            if got == Ret::Ok {
                let r = s.destroy(id);
                s.must("setup.destroy", r);
            }
            for (name, reg0) in [
                ("conv.psci_version", 0x8400_0000u64),
                ("conv.beyond_command_byte", 0xC600_0100),
                ("conv.other_owner", 0xC500_0081),
                ("conv.smc32_id", 0x8600_0081),
            ] {
                // SMCCC NOT_SUPPORTED is -1, the same value as -EPERM:
                // compared as a raw value.
                s.put(s.l.s, alloc.as_bytes());
                let got = Ret::Raw(s.env.call(reg0, s.l.s));
                s.case(name, got, Ret::Raw(sluice_abi::SMCCC_NOT_SUPPORTED), format_args!(" (NOT_SUPPORTED)"));
            }
        }
    }
}

/// ABI.md's framing rules on IOAS_ALLOC, write-back of a short struct,
/// an unaligned struct.
fn framing<E: Env + ?Sized, K: Sink + ?Sized>(s: &mut S<'_, E, K>) {
    let mut row = s.row("framing.ioas_alloc");
    let mut ids_ok = true;
    let cases: [(&str, u32, &[u8], Ret); 8] = [
        ("0", 0, &[], e(Errno::EINVAL)),
        ("4", 4, &[], e(Errno::EINVAL)),
        ("11", 11, &[], e(Errno::EINVAL)),
        ("12", 12, &[], Ret::Ok),
        ("13z", 13, &[0], Ret::Ok),
        ("13nz", 13, &[0xff], e(Errno::E2BIG)),
        ("16z", 16, &[0; 4], Ret::Ok),
        ("24nz", 24, &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], e(Errno::E2BIG)),
    ];
    for (key, size, tail, want) in cases {
        let mut bytes = [0u8; 32];
        bytes[..4].copy_from_slice(&size.to_le_bytes());
        bytes[12..12 + tail.len()].copy_from_slice(tail);
        let n = 12 + tail.len();
        let mut out = [0u8; 32];
        let got = s.exchange(nr::IOAS_ALLOC, s.l.s, &bytes[..n], &mut out[..n]);
        s.item(&mut row, key, got, want);
        if got == Ret::Ok {
            let id = u32::from_le_bytes([out[8], out[9], out[10], out[11]]);
            ids_ok &= id == 2;
            let r = s.destroy(id);
            s.must("setup.destroy", r);
        }
    }
    // Big structs at the sweep area: a zero tail is accepted up to 64 KiB.
    let at = s.l.sweep;
    s.env.fill(at, 0x2_0000, 0);
    for (key, size, want) in [
        ("4096z", 4096u32, Ret::Ok),
        ("65536z", 0x1_0000, Ret::Ok),
        ("65537z", 0x1_0001, e(Errno::E2BIG)),
        ("4G", u32::MAX, e(Errno::EFAULT)),
    ] {
        let mut bytes = [0u8; 12];
        bytes[..4].copy_from_slice(&size.to_le_bytes());
        let mut out = [0u8; 12];
        let got = s.exchange(nr::IOAS_ALLOC, at, &bytes, &mut out);
        s.item(&mut row, key, got, want);
        if got == Ret::Ok {
            let id = u32::from_le_bytes([out[8], out[9], out[10], out[11]]);
            ids_ok &= id == 2;
            let r = s.destroy(id);
            s.must("setup.destroy", r);
        }
    }
    s.end_row(row);
    s.check("framing.ids_reused", ids_ok, format_args!("ok every accepted IOAS_ALLOC got id 2 (the lowest free)"));

    // A struct shorter than the known one (GET_HW_INFO's minimum is 32 of
    // 40): accepted, zero-extended, and only 32 bytes written back.
    let mut c = GetHwInfo { size: 32, dev_id: s.dev, ..GetHwInfo::default() };
    c.out_capabilities = 0x5a5a_5a5a_5a5a_5a5a;
    let (got, back) = s.cmd_at(s.l.s, c);
    let kept = back.out_capabilities == 0x5a5a_5a5a_5a5a_5a5a && back.out_data_type != 0;
    s.case_and(
        "framing.short_struct_write_back",
        got,
        Ret::Ok,
        kept,
        "wrote past size",
        format_args!(" size=32 data_len={} out_data_type={} bytes_32_40=kept", back.data_len, back.out_data_type),
    );

    let (got, back) = s.cmd_at(s.l.s + 3, sized(IoasAlloc::default()));
    s.case("framing.unaligned_struct", got, Ret::Ok, format_args!(" out_ioas_id={}", back.out_ioas_id));
    if got == Ret::Ok {
        let r = s.destroy(back.out_ioas_id);
        s.must("setup.destroy", r);
    }

    let (got, _) = s.cmd(IoasAlloc { size: 0, flags: 1, out_ioas_id: 0xdead_beef });
    s.case("ioas_alloc.flags", got, e(Errno::EOPNOTSUPP), format_args!(""));
    let (got, back) = s.cmd(IoasAlloc::default());
    s.case_and("ioas_alloc.ok", got, Ret::Ok, back.out_ioas_id == 2, "not id 2", format_args!(" out_ioas_id={}", back.out_ioas_id));
    let got = s.destroy(back.out_ioas_id);
    s.case("destroy.ok", got, Ret::Ok, format_args!(""));
    let got = s.destroy(back.out_ioas_id);
    s.case("destroy.again", got, e(Errno::ENOENT), format_args!(""));
}

/// A command's struct for the placement and size cases: bytes, and what
/// it returns when read correctly (no lasting effect).
fn baseline<E: Env + ?Sized, K: Sink + ?Sized>(s: &S<'_, E, K>, info: &CommandInfo) -> ([u8; 64], Option<Ret>) {
    let mut b = [0u8; 64];
    let mut put = |bytes: &[u8]| b[..bytes.len()].copy_from_slice(bytes);
    let want = match info.nr {
        nr::DESTROY => {
            put(sized(sluice_abi::Destroy { size: 0, id: NO_ID }).as_bytes());
            e(Errno::ENOENT)
        }
        nr::IOAS_ALLOC => {
            put(sized(IoasAlloc::default()).as_bytes());
            Ret::Ok
        }
        nr::IOAS_ALLOW_IOVAS => {
            put(sized(IoasAllowIovas { ioas_id: NO_ID, ..IoasAllowIovas::default() }).as_bytes());
            e(Errno::ENOENT)
        }
        nr::IOAS_COPY => {
            put(sized(IoasCopy { flags: R, dst_ioas_id: NO_ID, src_ioas_id: NO_ID, length: 0x1000, ..IoasCopy::default() }).as_bytes());
            e(Errno::ENOENT)
        }
        nr::IOAS_IOVA_RANGES => {
            put(sized(IoasIovaRanges { ioas_id: NO_ID, ..IoasIovaRanges::default() }).as_bytes());
            e(Errno::ENOENT)
        }
        nr::IOAS_MAP => {
            put(sized(IoasMap { flags: RW, ioas_id: NO_ID, gpa: s.l.buf, length: 0x1000, ..IoasMap::default() }).as_bytes());
            e(Errno::ENOENT)
        }
        nr::IOAS_UNMAP => {
            put(sized(IoasUnmap { ioas_id: NO_ID, length: u64::MAX, ..IoasUnmap::default() }).as_bytes());
            e(Errno::ENOENT)
        }
        nr::OPTION => {
            put(sized(OptionCmd { option_id: option::RLIMIT_MODE, op: option::OP_GET, ..OptionCmd::default() }).as_bytes());
            Ret::Ok
        }
        nr::GET_HW_INFO => {
            put(sized(GetHwInfo { dev_id: NO_ID, ..GetHwInfo::default() }).as_bytes());
            e(Errno::ENOENT)
        }
        nr::DEVICE_LIST => {
            put(sized(DeviceList::default()).as_bytes());
            e(Errno::EMSGSIZE)
        }
        nr::DEVICE_ATTACH => {
            put(sized(DeviceAttach { dev_id: NO_ID, pt_id: NO_ID, ..DeviceAttach::default() }).as_bytes());
            e(Errno::ENOENT)
        }
        nr::DEVICE_DETACH => {
            put(sized(DeviceDetach { size: 0, dev_id: NO_ID }).as_bytes());
            e(Errno::ENOENT)
        }
        nr::DEVICE_RESV_IOVA_RANGES => {
            put(sized(DeviceResvIovaRanges { dev_id: NO_ID, ..DeviceResvIovaRanges::default() }).as_bytes());
            e(Errno::ENOENT)
        }
        nr::FAULT_READ => {
            put(sized(FaultRead::default()).as_bytes());
            Ret::Ok
        }
        nr::CONSOLE_WRITE => {
            put(sized(ConsoleWrite::default()).as_bytes());
            Ret::Ok
        }
        nr::PARTITION_EXIT => {
            put(sized(PartitionExit::default()).as_bytes());
            // Read correctly it would end the partition: never run so.
            return (b, None);
        }
        _ => Ret::Ok,
    };
    (b, Some(want))
}

/// After an accepted IOAS_ALLOC at `at`, destroy what it made.
fn undo_alloc<E: Env + ?Sized, K: Sink + ?Sized>(s: &mut S<'_, E, K>, info: &CommandInfo, at: u64, got: Ret) {
    if info.nr == nr::IOAS_ALLOC && got == Ret::Ok {
        let id = s.get_u64(at.wrapping_add(8)) as u32;
        let r = s.destroy(id);
        s.must("setup.destroy", r);
    }
}

/// Every command's struct at MMIO, at and around both ends of RAM,
/// outside RAM, wrapping, unaligned.
fn pointers<E: Env + ?Sized, K: Sink + ?Sized>(s: &mut S<'_, E, K>) {
    let (ram, mmio) = (s.l.ram.clone(), s.env.mmio());
    for info in &COMMANDS {
        let (bytes, base) = baseline(s, info);
        let k = u64::from(info.size);
        let fault = e(Errno::EFAULT);
        let places: [(&str, u64, Option<Ret>); 11] = [
            ("mmio", mmio, Some(fault)),
            ("zero", 0, Some(fault)),
            ("below", ram.start - 4, Some(fault)),
            ("start", ram.start - 2, Some(fault)),
            ("first", ram.start, base),
            ("end", ram.end - k, base),
            ("over", ram.end - k + 1, Some(fault)),
            ("word", ram.end - 2, Some(fault)),
            ("past", ram.end, Some(fault)),
            ("wrap", u64::MAX - 1, Some(fault)),
            ("unaligned", s.l.s + 3, base),
        ];
        let mut name = Line::new();
        name.push(format_args!("ptr.{}", info.name));
        let mut row = s.row(name.as_str());
        for (key, at, want) in places {
            let Some(want) = want else { continue };
            let mut out = [0u8; 64];
            let n = k as usize;
            let got = s.exchange(info.nr, at, &bytes[..n], &mut out[..n]);
            s.item(&mut row, key, got, want);
            undo_alloc(s, info, at, got);
        }
        s.end_row(row);
    }
}

/// Where an array pointer can point: (key, pointer, result when the
/// array is read or written correctly) for an array of `len` bytes.
fn array_places(ram: &core::ops::Range<u64>, mmio: u64, len: u64, ok: Ret) -> [(&'static str, u64, Ret); 8] {
    let fault = e(Errno::EFAULT);
    [
        ("mmio", mmio, fault),
        ("zero", 0, fault),
        ("start", ram.start - 8, fault),
        ("first", ram.start, ok),
        ("end", ram.end - len, ok),
        ("over", ram.end - len + 1, fault),
        ("past", ram.end, fault),
        ("wrap", u64::MAX - 7, fault),
    ]
}

/// IOVA ranges before and after attach, reserved regions, attach and
/// detach. Leaves IOAS 2 attached (HWPT 3), which it returns.
fn ranges_and_attach<E: Env + ?Sized, K: Sink + ?Sized>(s: &mut S<'_, E, K>) -> u32 {
    let (ram, mmio, dev) = (s.l.ram.clone(), s.env.mmio(), s.dev);
    let a = s.alloc();
    let (r, n, list, align) = s.ranges_at(a, s.l.arr);
    let good = n == 1 && list[0] == FULL && align == 0x1000;
    s.case_and("ioas_iova_ranges.fresh", r, Ret::Ok, good, "not the full range", format_args!(" ioas={a} num={n} ranges={} align={align:#x}", Ranges(&list[..n.min(8)])));
    let c = IoasIovaRanges { size: 0, ioas_id: a, num_iovas: 0, reserved: 0, allowed_iovas: mmio, out_iova_alignment: 0 };
    let (r, back) = s.cmd(c);
    let good = back.num_iovas == 1 && back.out_iova_alignment == 0x1000;
    s.case_and("ioas_iova_ranges.emsgsize", r, e(Errno::EMSGSIZE), good, "count or alignment not written back", format_args!(" num={} align={:#x}", back.num_iovas, back.out_iova_alignment));
    let (r, _) = s.cmd(IoasIovaRanges { reserved: 1, ioas_id: a, num_iovas: 8, allowed_iovas: s.l.arr, ..IoasIovaRanges::default() });
    s.case("ioas_iova_ranges.reserved", r, e(Errno::EOPNOTSUPP), format_args!(""));
    let mut row = s.row("ioas_iova_ranges.array");
    for (key, at, want) in array_places(&ram, mmio, 16, Ret::Ok) {
        let r = s.cmd(IoasIovaRanges { ioas_id: a, num_iovas: 1, allowed_iovas: at, ..IoasIovaRanges::default() }).0;
        s.item(&mut row, key, r, want);
    }
    s.end_row(row);

    // The device's reserved regions.
    let (r, n, resv) = s.resv(dev, s.l.arr);
    let resv = &resv[..n.min(8)];
    let sorted = resv.windows(2).all(|w| (w[0].start, w[0].kind) <= (w[1].start, w[1].kind));
    let has = |start: u64, last: u64, kind: u32| resv.iter().any(|x| x.start == start && x.last == last && x.kind == kind);
    let limit = has(1 << DMA_BITS, u64::MAX, resv_type::DMA_LIMIT);
    let aperture = resv.iter().filter(|x| x.kind == resv_type::APERTURE && x.last == u64::MAX && x.start.is_power_of_two() && x.start >= 1 << 32).count() == 1;
    let msi = match s.arch {
        Arch::X86_64 => has(0xfee0_0000, 0xfeef_ffff, resv_type::MSI),
        Arch::Aarch64 => !resv.iter().any(|x| x.kind == resv_type::MSI),
    };
    let clean = resv.iter().all(|x| x.reserved == 0);
    let want_n = if s.arch == Arch::X86_64 { 3 } else { 2 };
    s.case_and(
        "device_resv_iova_ranges.ok",
        r,
        Ret::Ok,
        sorted && limit && aperture && msi && clean && n == want_n,
        "not DMA_LIMIT, APERTURE (and MSI on x86), sorted",
        format_args!(" num={n} ranges={}", Resv(resv)),
    );
    let mut saved = [ResvRange::default(); 8];
    saved[..resv.len()].copy_from_slice(resv);
    let resv_n = resv.len();
    let (r, back) = s.cmd(DeviceResvIovaRanges { dev_id: dev, num_iovas: 0, resv_iovas: mmio, ..DeviceResvIovaRanges::default() });
    s.case_and("device_resv_iova_ranges.emsgsize", r, e(Errno::EMSGSIZE), back.num_iovas as usize == resv_n, "total not written back", format_args!(" num={}", back.num_iovas));
    s.env.fill(s.l.arr, 0x100, 0xee);
    let (r, back) = s.cmd(DeviceResvIovaRanges { dev_id: dev, num_iovas: 1, resv_iovas: s.l.arr, ..DeviceResvIovaRanges::default() });
    let first: [ResvRange; 2] = s.read_array(s.l.arr, 2);
    let mut second = [0u8; 24];
    s.get(s.l.arr + 24, &mut second);
    let good = back.num_iovas as usize == resv_n && first[0] == saved[0] && second.iter().all(|b| *b == 0xee);
    s.case_and("device_resv_iova_ranges.short_array", r, e(Errno::EMSGSIZE), good, "not exactly one record written", format_args!(" num={} written=1", back.num_iovas));
    let (r, _) = s.cmd(DeviceResvIovaRanges { size: 0, dev_id: dev, num_iovas: 8, reserved: 1, resv_iovas: s.l.arr });
    s.case("device_resv_iova_ranges.reserved", r, e(Errno::EOPNOTSUPP), format_args!(""));
    let mut row = s.row("device_resv_iova_ranges.array");
    let len = 24 * resv_n as u64;
    for (key, at, want) in array_places(&ram, mmio, len, Ret::Ok) {
        let r = s.cmd(DeviceResvIovaRanges { dev_id: dev, num_iovas: 8, resv_iovas: at, ..DeviceResvIovaRanges::default() }).0;
        s.item(&mut row, key, r, want);
    }
    s.end_row(row);

    // Attach narrows the IOAS to the complement of the reserved regions.
    let (r, h) = s.attach(dev, a);
    s.case("device_attach.ok", r, Ret::Ok, format_args!(" pt_id={h}"));
    let (r, n, list) = s.device_list_at(s.l.arr);
    s.case_and("device_list.attached", r, Ret::Ok, n == 1 && list[0].attached_pt == h, "attached_pt is not the HWPT", format_args!(" num={n} pt={}", list[0].attached_pt));
    let (want, want_n) = complement(&saved[..resv_n]);
    let (r, n, list, _) = s.ranges_at(a, s.l.arr);
    s.case_and(
        "ioas_iova_ranges.attached",
        r,
        Ret::Ok,
        n == want_n && list[..n.min(8)] == want[..want_n],
        "not the complement of the reserved regions",
        format_args!(" num={n} ranges={}", Ranges(&list[..n.min(8)])),
    );
    let (r, pt) = s.attach(dev, a);
    s.case_and("device_attach.same_ioas", r, Ret::Ok, pt == h, "another HWPT", format_args!(" pt_id={pt}"));
    let (r, pt) = s.attach(dev, h);
    s.case_and("device_attach.to_hwpt", r, Ret::Ok, pt == h, "another HWPT", format_args!(" pt_id={pt}"));
    s.err_case("device_attach.flags", Errno::EOPNOTSUPP, |s| s.cmd(DeviceAttach { size: 0, flags: 1, dev_id: dev, pt_id: a }).0);
    s.err_case("device_attach.to_device", Errno::EINVAL, |s| s.attach(dev, dev).0);
    s.err_case("device_attach.to_zero", Errno::ENOENT, |s| s.attach(dev, 0).0);

    let r = s.detach(dev);
    s.case("device_detach.ok", r, Ret::Ok, format_args!(""));
    let (r, n, list, _) = s.ranges_at(a, s.l.arr);
    s.case_and("ioas_iova_ranges.detached", r, Ret::Ok, n == 1 && list[0] == FULL, "not widened again", format_args!(" num={n} ranges={}", Ranges(&list[..n.min(8)])));
    let r = s.destroy(h);
    s.case("device_detach.hwpt_freed", r, e(Errno::ENOENT), format_args!(" destroy({h})"));
    let r = s.detach(dev);
    s.case("device_detach.not_attached", r, Ret::Ok, format_args!(""));
    let (r, n, list) = s.device_list_at(s.l.arr);
    s.case_and("device_list.detached", r, Ret::Ok, n == 1 && list[0].attached_pt == 0, "still attached", format_args!(" pt={}", list[0].attached_pt));
    let (r, h2) = s.attach(dev, a);
    s.case_and("device_attach.again", r, Ret::Ok, h2 == h, "the freed id was not reused", format_args!(" pt_id={h2}"));
    a
}

/// Ids of every kind in every command that takes one. IOAS `a` is
/// attached through HWPT 3. Leaves one area in `a` at 0x70000.
fn ids<E: Env + ?Sized, K: Sink + ?Sized>(s: &mut S<'_, E, K>, a: u32) -> u32 {
    let dev = s.dev;
    let (_, n, list) = s.device_list_at(s.l.arr);
    let h = if n == 1 { list[0].attached_pt } else { 0 };
    let gone = s.alloc();
    let r = s.destroy(gone);
    s.must("setup.destroy", r);
    let r = s.map(a, RW | FIXED, s.l.buf + 0x3000, 0x1000, 0x7_0000).0;
    s.must("setup.map", r);
    s.track(a, 0x7_0000);
    let before = s.fingerprint();
    let nf = e(Errno::ENOENT);
    let kinds: [(&str, u32); 6] = [("zero", 0), ("max", u32::MAX), ("dev", dev), ("ioas", a), ("hwpt", h), ("gone", gone)];
    let ok = Ret::Ok;
    let busy = e(Errno::EBUSY);
    let unsupported = e(Errno::EOPNOTSUPP);
    // Per command, the result for each kind (None: not tried, it would
    // change something).
    let rows: [(IdOp, [Option<Ret>; 6]); 14] = [
        (IdOp::Destroy, [Some(nf), Some(nf), Some(busy), Some(busy), Some(busy), Some(nf)]),
        (IdOp::Map, [Some(nf), Some(nf), Some(nf), None, Some(nf), Some(nf)]),
        (IdOp::Unmap, [Some(nf); 6]),
        (IdOp::Ranges, [Some(nf), Some(nf), Some(nf), Some(ok), Some(nf), Some(nf)]),
        (IdOp::Allow, [Some(nf), Some(nf), Some(nf), Some(ok), Some(nf), Some(nf)]),
        (IdOp::CopyDst, [Some(nf), Some(nf), Some(nf), None, Some(nf), Some(nf)]),
        (IdOp::CopySrc, [Some(nf), Some(nf), Some(nf), None, Some(nf), Some(nf)]),
        (IdOp::Option, [Some(nf), Some(nf), Some(nf), Some(ok), Some(nf), Some(nf)]),
        (IdOp::HwInfo, [Some(nf), Some(nf), Some(ok), Some(nf), Some(nf), Some(nf)]),
        (IdOp::AttachDev, [Some(nf), Some(nf), Some(ok), Some(nf), Some(nf), Some(nf)]),
        (IdOp::AttachPt, [Some(nf), Some(nf), Some(e(Errno::EINVAL)), Some(ok), Some(ok), Some(nf)]),
        (IdOp::Detach, [Some(nf), Some(nf), None, Some(nf), Some(nf), Some(nf)]),
        (IdOp::Resv, [Some(nf), Some(nf), Some(ok), Some(nf), Some(nf), Some(nf)]),
        (IdOp::FaultReadFlags, [Some(ok), Some(unsupported), Some(unsupported), Some(unsupported), Some(unsupported), Some(unsupported)]),
    ];
    for (op, wants) in rows {
        let mut row = s.row(op.name());
        for ((key, x), want) in kinds.iter().zip(wants) {
            let Some(want) = want else { continue };
            let got = op.run(s, *x, a);
            s.item(&mut row, key, got, want);
        }
        s.end_row(row);
    }
    let same = s.fingerprint() == before;
    s.check("ids.nothing_changed", same, format_args!("ok"));

    // Every id from 0 to 64 and the top 64, in the commands that only
    // look.
    let classify = |x: u32| -> usize {
        if x == dev {
            0
        } else if x == a {
            1
        } else {
            2
        }
    };
    let ids = (0..=64u32).chain(u32::MAX - 64..=u32::MAX);
    let mut t = [Tally::default(); 4];
    for x in ids {
        let k = classify(x);
        let got = s.cmd(GetHwInfo { dev_id: x, ..GetHwInfo::default() }).0;
        t[0].add(u64::from(x), got, if k == 0 { Ret::Ok } else { nf });
        let got = s.resv(x, s.l.arr).0;
        t[1].add(u64::from(x), got, if k == 0 { Ret::Ok } else { nf });
        let got = s.ranges_at(x, s.l.arr).0;
        t[2].add(u64::from(x), got, if k == 1 { Ret::Ok } else { nf });
        let got = s.option(option::HUGE_PAGES, option::OP_GET, x, 0).0;
        t[3].add(u64::from(x), got, if k == 1 { Ret::Ok } else { nf });
    }
    for (name, t) in ["ids.get_hw_info", "ids.device_resv_iova_ranges", "ids.ioas_iova_ranges", "ids.option_huge_pages"].iter().zip(&t) {
        s.sweep_line(name, format_args!("ids 0-64 and 2^32-65..2^32-1:"), t);
    }
    h
}

/// The commands [`ids`] tries every kind of id in.
#[derive(Clone, Copy)]
enum IdOp {
    Destroy,
    Map,
    Unmap,
    Ranges,
    Allow,
    CopyDst,
    CopySrc,
    Option,
    HwInfo,
    AttachDev,
    AttachPt,
    Detach,
    Resv,
    FaultReadFlags,
}

impl IdOp {
    fn name(self) -> &'static str {
        match self {
            Self::Destroy => "ids.destroy",
            Self::Map => "ids.ioas_map",
            Self::Unmap => "ids.ioas_unmap",
            Self::Ranges => "ids.ioas_iova_ranges",
            Self::Allow => "ids.ioas_allow_iovas",
            Self::CopyDst => "ids.ioas_copy_dst",
            Self::CopySrc => "ids.ioas_copy_src",
            Self::Option => "ids.option_huge_pages",
            Self::HwInfo => "ids.get_hw_info",
            Self::AttachDev => "ids.device_attach_dev",
            Self::AttachPt => "ids.device_attach_pt",
            Self::Detach => "ids.device_detach",
            Self::Resv => "ids.device_resv_iova_ranges",
            Self::FaultReadFlags => "ids.fault_read_flags_not_ids",
        }
    }

    /// Run the command with `x` where the id goes (`a`: a live IOAS with
    /// an area at 0x70000, for the other id of COPY and ATTACH).
    fn run<E: Env + ?Sized, K: Sink + ?Sized>(self, s: &mut S<'_, E, K>, x: u32, a: u32) -> Ret {
        match self {
            Self::Destroy => s.destroy(x),
            Self::Map => s.map(x, RW, s.l.buf, 0x1000, 0).0,
            Self::Unmap => s.unmap(x, 0x0e00_0000, 0x1000).0,
            Self::Ranges => s.ranges_at(x, s.l.arr).0,
            Self::Allow => s.cmd(IoasAllowIovas { ioas_id: x, ..IoasAllowIovas::default() }).0,
            Self::CopyDst => s.copy(R, x, a, 0x1000, 0, 0x7_0000).0,
            Self::CopySrc => s.copy(R, a, x, 0x1000, 0, 0x7_0000).0,
            Self::Option => s.option(option::HUGE_PAGES, option::OP_GET, x, 0).0,
            Self::HwInfo => s.cmd(GetHwInfo { dev_id: x, ..GetHwInfo::default() }).0,
            Self::AttachDev => s.attach(x, a).0,
            Self::AttachPt => s.attach(s.dev, x).0,
            Self::Detach => s.detach(x),
            Self::Resv => s.resv(x, s.l.arr).0,
            Self::FaultReadFlags => s.cmd(FaultRead { flags: x, ..FaultRead::default() }).0,
        }
    }
}

/// Attach conflicts keep the old attachment; attach replaces; the old
/// automatic HWPT goes with its last device. Returns the HWPT the device
/// is attached through again at the end (in `a`).
fn conflicts<E: Env + ?Sized, K: Sink + ?Sized>(s: &mut S<'_, E, K>, a: u32, h: u32) -> u32 {
    let dev = s.dev;
    let b = s.alloc();
    let r = s.map(b, RW | FIXED, s.l.buf, 0x1000, 1 << DMA_BITS).0;
    s.case("ioas_map.beyond_dma_limit_unattached", r, Ret::Ok, format_args!(" ioas={b} iova={:#x}", 1u64 << DMA_BITS));
    s.err_case("device_attach.area_in_reserved", Errno::EADDRINUSE, |s| s.attach(dev, b).0);
    let r = s.unmap(b, 1 << DMA_BITS, 0x1000).0;
    s.must("setup.unmap", r);
    s.put(s.l.arr, IovaRange { start: 0x0f00_0000, last: 0x1fff_ffff }.as_bytes());
    let r = s.cmd(IoasAllowIovas { ioas_id: b, num_iovas: 1, allowed_iovas: s.l.arr, ..IoasAllowIovas::default() }).0;
    s.must("setup.allow_iovas", r);
    s.err_case("device_attach.allowed_in_reserved", Errno::EADDRINUSE, |s| s.attach(dev, b).0);
    let r = s.cmd(IoasAllowIovas { ioas_id: b, ..IoasAllowIovas::default() }).0;
    s.must("setup.allow_iovas", r);
    let (r, hb) = s.attach(dev, b);
    s.case("device_attach.replace", r, Ret::Ok, format_args!(" ioas={b} pt_id={hb}"));
    let (_, na, la, _) = s.ranges_at(a, s.l.arr);
    let widened = na == 1 && la[0] == FULL;
    let (_, nb, lb, _) = s.ranges_at(b, s.l.arr);
    let narrowed = nb >= 1 && lb[..nb.min(8)].iter().all(|x| x.last < 1 << DMA_BITS);
    s.check("device_attach.replace_moves_ranges", widened && narrowed, format_args!("ok old={} new={}", Ranges(&la[..na.min(8)]), Ranges(&lb[..nb.min(8)])));
    let r = s.destroy(h);
    s.case("device_attach.replaced_hwpt_freed", r, e(Errno::ENOENT), format_args!(" destroy({h})"));
    let (r, h2) = s.attach(dev, a);
    s.case("device_attach.back", r, Ret::Ok, format_args!(" pt_id={h2}"));
    let r = s.destroy(b);
    s.case("destroy.detached_ioas", r, Ret::Ok, format_args!(""));
    h2
}

/// IOAS_MAP: fixed and automatic, the ends of RAM, and every error in
/// ABI.md's order, each leaving the state as it was.
fn map_cases<E: Env + ?Sized, K: Sink + ?Sized>(s: &mut S<'_, E, K>, a: u32) {
    let (ram, mmio, buf) = (s.l.ram.clone(), s.env.mmio(), s.l.buf);
    let size = ram.end - ram.start;
    let (r, iova) = s.map(a, RW | FIXED, buf, 0x2000, 0x10_0000);
    s.case_and("ioas_map.fixed", r, Ret::Ok, iova == 0x10_0000, "another IOVA", format_args!(" iova={iova:#x}"));
    s.track(a, 0x10_0000);
    let (r, iova) = s.map(a, RW, buf + 0x2000, 0x1000, 0);
    s.case("ioas_map.auto", r, Ret::Ok, format_args!(" iova={iova:#x}"));
    s.track(a, iova);
    let (r, iova) = s.map(a, RW, buf, 0x20_0000, 0);
    s.case_and("ioas_map.auto_2m", r, Ret::Ok, iova % 0x20_0000 == 0, "not 2 MiB aligned", format_args!(" iova={iova:#x}"));
    let r = s.unmap(a, iova, 0x20_0000).0;
    s.must("setup.unmap", r);
    for (name, gpa, iova) in [("ioas_map.last_page_of_ram", ram.end - 0x1000, 0x3_0000u64), ("ioas_map.first_page_of_ram", ram.start, 0x4_0000)] {
        let r = s.map(a, RW | FIXED, gpa, 0x1000, iova).0;
        s.case(name, r, Ret::Ok, format_args!(""));
        let u = s.unmap(a, iova, 0x1000).0;
        s.must("setup.unmap", u);
    }
    let free = 0x5_0000u64;
    let cases: [(&str, Errno, u32, u32, u64, u64, u64); 31] = [
        ("ioas_map.flags_unknown", Errno::EOPNOTSUPP, a, RW | FIXED | 1 << 3, buf, 0x1000, free),
        ("ioas_map.iova_max", Errno::EOVERFLOW, a, RW | FIXED, buf, 0x1000, u64::MAX),
        ("ioas_map.length_max", Errno::EOVERFLOW, a, RW, buf, u64::MAX, 0),
        ("ioas_map.no_permission", Errno::EINVAL, a, FIXED, buf, 0x1000, free),
        ("ioas_map.unknown_ioas", Errno::ENOENT, 0x7fff, RW, buf, 0x1000, 0),
        ("ioas_map.gpa_wraps", Errno::EOVERFLOW, a, RW, u64::MAX - 0xfff, 0x2000, 0),
        ("ioas_map.length_zero", Errno::EINVAL, a, RW | FIXED, buf, 0, free),
        ("ioas_map.length_unaligned", Errno::EINVAL, a, RW | FIXED, buf, 0x1800, free),
        ("ioas_map.iova_unaligned", Errno::EINVAL, a, RW | FIXED, buf, 0x1000, free + 0x800),
        ("ioas_map.iova_wraps", Errno::EOVERFLOW, a, RW | FIXED, buf, 0x2000, 0xffff_ffff_ffff_f000),
        ("ioas_map.dma_limit", Errno::EINVAL, a, RW | FIXED, buf, 0x1000, 1 << DMA_BITS),
        ("ioas_map.across_dma_limit", Errno::EINVAL, a, RW | FIXED, buf, 0x2000, (1 << DMA_BITS) - 0x1000),
        ("ioas_map.msi_window", Errno::EINVAL, a, RW | FIXED, buf, 0x1000, 0xfee0_0000),
        ("ioas_map.aperture", Errno::EINVAL, a, RW | FIXED, buf, 0x1000, 1 << 50),
        ("ioas_map.overlap", Errno::EEXIST, a, RW | FIXED, buf, 0x1000, 0x10_1000),
        ("ioas_map.overlap_below", Errno::EEXIST, a, RW | FIXED, buf, 0x2000, 0x0f_f000),
        ("ioas_map.gpa_unaligned", Errno::EINVAL, a, RW | FIXED, buf + 0x800, 0x1000, free),
        ("ioas_map.gpa_mmio", Errno::EFAULT, a, RW | FIXED, mmio, 0x1000, free),
        ("ioas_map.gpa_zero", Errno::EFAULT, a, RW | FIXED, 0, 0x1000, free),
        ("ioas_map.gpa_past_ram", Errno::EFAULT, a, RW | FIXED, ram.end, 0x1000, free),
        ("ioas_map.gpa_across_ram_end", Errno::EFAULT, a, RW | FIXED, ram.end - 0x1000, 0x2000, free),
        ("ioas_map.gpa_across_ram_start", Errno::EFAULT, a, RW | FIXED, ram.start - 0x1000, 0x2000, free),
        ("ioas_map.pin_limit", Errno::ENOMEM, a, RW | FIXED, ram.start, size, 0x80_0000),
        ("ioas_map.pin_limit_auto", Errno::ENOMEM, a, R, ram.start, size, 0),
        ("ioas_map.order_flags_before_ioas", Errno::EOPNOTSUPP, 0x7fff, RW | 1 << 3, buf, 0x1000, 0),
        ("ioas_map.order_overflow_before_permission", Errno::EOVERFLOW, a, FIXED, buf, u64::MAX, free),
        ("ioas_map.order_permission_before_ioas", Errno::EINVAL, 0x7fff, FIXED, buf, 0x1000, free),
        ("ioas_map.order_ioas_before_length", Errno::ENOENT, 0x7fff, RW | FIXED, buf, 0, free),
        ("ioas_map.order_gpa_overflow_before_length", Errno::EOVERFLOW, a, RW | FIXED, u64::MAX - 0xfff, 0x1800, free),
        ("ioas_map.order_overlap_before_gpa", Errno::EEXIST, a, RW | FIXED, mmio, 0x1000, 0x10_0000),
        ("ioas_map.order_ram_before_pins", Errno::EFAULT, a, RW | FIXED, ram.start - 0x1000, size + 0x1000, 0x80_0000),
    ];
    for (name, want, ioas, flags, gpa, len, iova) in cases {
        s.err_case(name, want, |s| s.map(ioas, flags, gpa, len, iova).0);
    }
    s.err_case("ioas_map.reserved_field", Errno::EOPNOTSUPP, |s| {
        s.cmd(IoasMap { size: 0, flags: RW | FIXED, ioas_id: a, reserved: 1, gpa: buf, length: 0x1000, iova: free }).0
    });
    s.err_case("ioas_map.order_alignment_before_ram", Errno::EINVAL, |s| s.map(a, RW | FIXED, ram.end + 0x800, 0x1000, free).0);
    // 0x70000 (ids), 0x100000 (2 pages), the automatic one.
    s.pins_check("pins.after_map_errors", 4);
}

/// IOAS_UNMAP: whole areas only, iommufd's partial case, the errors.
fn unmap_cases<E: Env + ?Sized, K: Sink + ?Sized>(s: &mut S<'_, E, K>, a: u32) {
    let buf = s.l.buf;
    let cases: [(&str, Errno, u32, u64, u64); 8] = [
        ("ioas_unmap.half_area", Errno::ENOENT, a, 0x10_0000, 0x1000),
        ("ioas_unmap.inside_area", Errno::ENOENT, a, 0x10_1000, 0x1000),
        ("ioas_unmap.length_zero", Errno::EINVAL, a, 0x10_0000, 0),
        ("ioas_unmap.iova_max", Errno::EOVERFLOW, a, u64::MAX, 0x1000),
        ("ioas_unmap.length_max", Errno::EOVERFLOW, a, 0x1000, u64::MAX),
        ("ioas_unmap.wraps", Errno::EOVERFLOW, a, 0xffff_ffff_ffff_f000, 0x2000),
        ("ioas_unmap.unknown_ioas", Errno::ENOENT, 0x7fff, 0x10_0000, 0x2000),
        ("ioas_unmap.nothing_there", Errno::ENOENT, a, 0x0e00_0000, 0x1000),
    ];
    for (name, want, ioas, iova, len) in cases {
        s.err_case(name, want, |s| s.unmap(ioas, iova, len).0);
    }
    let (r, len) = s.unmap(a, 0x10_0000, 0x2000);
    s.untrack(a, 0x10_0000);
    let gone = !s.present(a, 0x10_0000);
    s.case_and("ioas_unmap.whole", r, Ret::Ok, len == 0x2000 && gone, "not all gone", format_args!(" length={len:#x}"));
    // A range that covers the first area whole and the second in part:
    // ENOENT, and the first is gone (iommufd's documented partial case).
    let r1 = s.map(a, RW | FIXED, buf, 0x1000, 0x20_0000).0;
    let r2 = s.map(a, RW | FIXED, buf + 0x1000, 0x2000, 0x20_1000).0;
    s.must("setup.map", r1);
    s.must("setup.map", r2);
    let (r, _) = s.unmap(a, 0x20_0000, 0x2000);
    let first = s.present(a, 0x20_0000);
    let second = s.present(a, 0x20_1000);
    s.case_and(
        "ioas_unmap.partial",
        r,
        e(Errno::ENOENT),
        !first && second,
        "not first gone, second kept",
        format_args!(" first={} second={}", if first { "present" } else { "gone" }, if second { "present" } else { "gone" }),
    );
    let (r, len) = s.unmap(a, 0x20_1000, 0x2000);
    s.case("ioas_unmap.rest", r, Ret::Ok, format_args!(" length={len:#x}"));
    let r1 = s.map(a, RW | FIXED, buf, 0x1000, 0x40_0000).0;
    let r2 = s.map(a, RW | FIXED, buf, 0x1000, 0x40_2000).0;
    s.must("setup.map", r1);
    s.must("setup.map", r2);
    let (r, len) = s.unmap(a, 0x40_0000, 0x3000);
    s.case_and("ioas_unmap.two_areas_and_a_gap", r, Ret::Ok, len == 0x2000, "wrong length", format_args!(" length={len:#x}"));
    let g = s.alloc();
    let (r, len) = s.unmap(g, 0, u64::MAX);
    s.case_and("ioas_unmap.all_of_nothing", r, Ret::Ok, len == 0, "not 0", format_args!(" length={len:#x}"));
    let r = s.destroy(g);
    s.must("setup.destroy", r);
    s.pins_check("pins.after_unmaps", 2);
}

/// One IOAS_COPY error case: name, errno, flags, dst, src, length,
/// dst_iova, src_iova.
type CopyCase = (&'static str, Errno, u32, u32, u32, u64, u64, u64);

/// IOAS_COPY: sub-ranges, fixed and automatic, the errors, pins shared
/// with the source until the last copy goes.
fn copy_cases<E: Env + ?Sized, K: Sink + ?Sized>(s: &mut S<'_, E, K>, a: u32) {
    let buf = s.l.buf;
    let r1 = s.map(a, RW | FIXED, buf + 0x1_0000, 0x4000, 0x30_0000).0;
    let r2 = s.map(a, R | FIXED, buf + 0x2_0000, 0x1000, 0x40_0000).0;
    s.must("setup.map", r1);
    s.must("setup.map", r2);
    s.track(a, 0x30_0000);
    s.track(a, 0x40_0000);
    let b = s.alloc();
    let (r, sub) = s.copy(RW, b, a, 0x2000, 0, 0x30_1000);
    s.case("ioas_copy.sub_range", r, Ret::Ok, format_args!(" dst_ioas={b} dst_iova={sub:#x}"));
    s.track(b, sub);
    let (r, fixed) = s.copy(RW | FIXED, b, a, 0x4000, 0x50_0000, 0x30_0000);
    s.case_and("ioas_copy.fixed", r, Ret::Ok, fixed == 0x50_0000, "another IOVA", format_args!(" dst_iova={fixed:#x}"));
    s.track(b, 0x50_0000);
    let cases: [CopyCase; 15] = [
        ("ioas_copy.past_area_end", Errno::ENOENT, R, b, a, 0x2000, 0, 0x30_3000),
        ("ioas_copy.nothing_there", Errno::ENOENT, R, b, a, 0x1000, 0, 0x31_0000),
        ("ioas_copy.length_zero", Errno::EINVAL, R, b, a, 0, 0, 0x30_0000),
        ("ioas_copy.length_unaligned", Errno::EINVAL, R, b, a, 0x800, 0, 0x30_0000),
        ("ioas_copy.length_max", Errno::EOVERFLOW, R, b, a, u64::MAX, 0, 0x30_0000),
        ("ioas_copy.src_iova_max", Errno::EOVERFLOW, R, b, a, 0x1000, 0, u64::MAX),
        ("ioas_copy.dst_iova_max", Errno::EOVERFLOW, R, b, a, 0x1000, u64::MAX, 0x30_0000),
        ("ioas_copy.flags_unknown", Errno::EOPNOTSUPP, R | 1 << 3, b, a, 0x1000, 0, 0x30_0000),
        ("ioas_copy.no_permission", Errno::EINVAL, 0, b, a, 0x1000, 0, 0x30_0000),
        ("ioas_copy.unknown_src", Errno::ENOENT, R, b, 0x7fff, 0x1000, 0, 0x30_0000),
        ("ioas_copy.unknown_dst", Errno::ENOENT, R, 0x7fff, a, 0x1000, 0, 0x30_0000),
        ("ioas_copy.dst_overlap", Errno::EEXIST, R | FIXED, b, a, 0x1000, 0x50_0000, 0x30_0000),
        ("ioas_copy.dst_reserved", Errno::EINVAL, R | FIXED, a, b, 0x1000, 1 << DMA_BITS, 0x50_0000),
        ("ioas_copy.dst_unaligned", Errno::EINVAL, R | FIXED, b, a, 0x1000, 0x60_0800, 0x30_0000),
        ("ioas_copy.writeable_from_read_only", Errno::EPERM, RW, b, a, 0x1000, 0, 0x40_0000),
    ];
    for (name, want, flags, dst, src, len, dst_iova, src_iova) in cases {
        s.err_case(name, want, |s| s.copy(flags, dst, src, len, dst_iova, src_iova).0);
    }
    let (r, ro) = s.copy(R, b, a, 0x1000, 0, 0x40_0000);
    s.case("ioas_copy.readable_from_read_only", r, Ret::Ok, format_args!(" dst_iova={ro:#x}"));
    s.track(b, ro);
    let (r, back) = s.copy(RW | FIXED, a, b, 0x1000, 0x80_0000, 0x50_0000);
    s.case("ioas_copy.into_attached_ioas", r, Ret::Ok, format_args!(" dst_iova={back:#x}"));
    s.track(a, 0x80_0000);
    // 2 before, 4 + 1 mapped here; copies pin nothing more.
    s.pins_check("pins.copies_share_pins", 7);
    let (r, len) = s.unmap(a, 0x30_0000, 0x4000);
    s.untrack(a, 0x30_0000);
    s.case("ioas_unmap.copy_source", r, Ret::Ok, format_args!(" length={len:#x}"));
    let kept = s.present(b, 0x50_0000) && s.present(b, sub) && s.present(a, 0x80_0000);
    s.check("ioas_copy.copies_outlive_source", kept, format_args!("ok"));
    s.pins_check("pins.held_by_copies", 7);
    let (r, len) = s.unmap(b, 0, u64::MAX);
    s.case_and("ioas_unmap.all", r, Ret::Ok, len == 0x7000, "not 7 pages", format_args!(" length={len:#x}"));
    let (r, _) = s.unmap(a, 0x80_0000, 0x1000);
    s.untrack(a, 0x80_0000);
    s.must("setup.unmap", r);
    s.pins_check("pins.released_with_last_copy", 3);
    let r = s.destroy(b);
    s.must("setup.destroy", r);
    let (r, _) = s.unmap(a, 0x40_0000, 0x1000);
    s.untrack(a, 0x40_0000);
    s.must("setup.unmap", r);
}

/// Put `ranges` at `at` and set IOAS `ioas`'s allowed list from there.
fn allow<E: Env + ?Sized, K: Sink + ?Sized>(s: &mut S<'_, E, K>, ioas: u32, at: u64, ranges: &[IovaRange]) -> Ret {
    for (i, r) in ranges.iter().enumerate() {
        s.put(at + 16 * i as u64, r.as_bytes());
    }
    s.cmd(IoasAllowIovas { ioas_id: ioas, num_iovas: ranges.len() as u32, allowed_iovas: at, ..IoasAllowIovas::default() }).0
}

/// Where an automatic one-page map in `ioas` lands (undone at once).
fn first_fit<E: Env + ?Sized, K: Sink + ?Sized>(s: &mut S<'_, E, K>, ioas: u32) -> u64 {
    let (r, iova) = s.map(ioas, RW, s.l.buf, 0x1000, 0);
    if r != Ret::Ok {
        return 0;
    }
    let u = s.unmap(ioas, iova, 0x1000).0;
    s.must("setup.unmap", u);
    iova
}

/// IOAS_ALLOW_IOVAS: the allocator stays inside the list, malformed lists
/// and bad arrays change nothing, reserved ranges of attached devices.
fn allow_cases<E: Env + ?Sized, K: Sink + ?Sized>(s: &mut S<'_, E, K>, a: u32) {
    let (ram, mmio, buf, arr) = (s.l.ram.clone(), s.env.mmio(), s.l.buf, s.l.arr);
    let c = s.alloc();
    let list = [IovaRange { start: 0x10_0000, last: 0x10_1fff }];
    let r = allow(s, c, arr, &list);
    s.case("ioas_allow_iovas.ok", r, Ret::Ok, format_args!(" ioas={c} ranges={}", Ranges(&list)));
    let (r1, i1) = s.map(c, RW, buf, 0x1000, 0);
    let (r2, i2) = s.map(c, RW, buf + 0x1000, 0x1000, 0);
    let ok = r1 == Ret::Ok && r2 == Ret::Ok && (i1, i2) == (0x10_0000, 0x10_1000);
    s.check("ioas_map.auto_inside_allowed", ok, format_args!("{r1} {r2} iovas={i1:#x},{i2:#x}"));
    s.err_case("ioas_map.auto_no_space", Errno::ENOSPC, |s| s.map(c, RW, buf + 0x2000, 0x1000, 0).0);
    let (r, n, l, _) = s.ranges_at(c, s.l.qarr);
    s.case_and("ioas_allow_iovas.ranges_unchanged", r, Ret::Ok, n == 1 && l[0] == FULL, "ranges changed", format_args!(" num={n}"));
    let (r, _) = s.unmap(c, 0, u64::MAX);
    s.must("setup.unmap", r);
    let bad: [(&str, Errno, &[IovaRange]); 4] = [
        ("ioas_allow_iovas.start_is_last", Errno::EINVAL, &[IovaRange { start: 0x20_0000, last: 0x20_0000 }]),
        ("ioas_allow_iovas.start_after_last", Errno::EINVAL, &[IovaRange { start: 0x20_1000, last: 0x20_0000 }]),
        (
            "ioas_allow_iovas.overlapping",
            Errno::EINVAL,
            &[IovaRange { start: 0x20_0000, last: 0x20_ffff }, IovaRange { start: 0x20_8000, last: 0x21_ffff }],
        ),
        ("ioas_allow_iovas.second_bad", Errno::EINVAL, &[IovaRange { start: 0x20_0000, last: 0x20_ffff }, IovaRange { start: 5, last: 5 }]),
    ];
    for (name, want, list) in bad {
        let r = allow(s, c, arr, list);
        let kept = first_fit(s, c) == 0x10_0000;
        s.case_and(name, r, e(want), kept, "the old list was replaced", format_args!(""));
    }
    let r = s.cmd(IoasAllowIovas { size: 0, ioas_id: c, num_iovas: 1, reserved: 1, allowed_iovas: arr }).0;
    let kept = first_fit(s, c) == 0x10_0000;
    s.case_and("ioas_allow_iovas.reserved", r, e(Errno::EOPNOTSUPP), kept, "the old list was replaced", format_args!(""));
    let r = allow(s, 0x7fff, arr, &list);
    s.case("ioas_allow_iovas.unknown_ioas", r, e(Errno::ENOENT), format_args!(""));
    // The array anywhere: the same list where it can be read.
    let mut row = s.row("ioas_allow_iovas.array");
    for (key, at, want) in array_places(&ram, mmio, 16, Ret::Ok) {
        s.put(at, list[0].as_bytes());
        let r = s.cmd(IoasAllowIovas { ioas_id: c, num_iovas: 1, allowed_iovas: at, ..IoasAllowIovas::default() }).0;
        let kept = first_fit(s, c) == 0x10_0000;
        s.item(&mut row, key, r, want);
        if !kept {
            row.line.push(format_args!("(!!list)"));
            row.bad += 1;
        }
    }
    s.end_row(row);
    s.err_case("ioas_allow_iovas.reserved_range_of_attached_device", Errno::EADDRINUSE, |s| {
        allow(s, a, arr, &[IovaRange { start: 0x0f00_0000, last: 0x1fff_ffff }])
    });
    let r = allow(s, c, arr, &[]);
    let at = first_fit(s, c);
    s.case_and("ioas_allow_iovas.cleared", r, Ret::Ok, at == 0x1000, "the list still applies", format_args!(" first_fit={at:#x}"));
    let r = s.destroy(c);
    s.must("setup.destroy", r);
}

/// OPTION: RLIMIT_MODE and HUGE_PAGES, every error.
fn option_cases<E: Env + ?Sized, K: Sink + ?Sized>(s: &mut S<'_, E, K>, a: u32) {
    use option::{HUGE_PAGES, OP_GET, OP_SET, RLIMIT_MODE};
    let (r, v) = s.option(RLIMIT_MODE, OP_GET, 0, 0);
    s.case_and("option.rlimit_mode_get", r, Ret::Ok, v == 1, "not 1", format_args!(" val64={v}"));
    s.err_case("option.rlimit_mode_set", Errno::EPERM, |s| s.option(RLIMIT_MODE, OP_SET, 0, 1).0);
    s.err_case("option.rlimit_mode_object", Errno::EOPNOTSUPP, |s| s.option(RLIMIT_MODE, OP_GET, a, 0).0);
    s.err_case("option.rlimit_mode_op", Errno::EOPNOTSUPP, |s| s.option(RLIMIT_MODE, 2, 0, 0).0);
    let (r, v) = s.option(HUGE_PAGES, OP_GET, a, 0);
    s.case_and("option.huge_pages_get", r, Ret::Ok, v == 1, "not 1", format_args!(" val64={v}"));
    s.err_case("option.huge_pages_off_while_mapped", Errno::EINVAL, |s| s.option(HUGE_PAGES, OP_SET, a, 0).0);
    let d = s.alloc();
    let r = s.option(HUGE_PAGES, OP_SET, d, 0).0;
    let (_, v0) = s.option(HUGE_PAGES, OP_GET, d, 0);
    s.case_and("option.huge_pages_off_fresh", r, Ret::Ok, v0 == 0, "still on", format_args!(" val64={v0}"));
    s.err_case("option.huge_pages_2", Errno::EINVAL, |s| s.option(HUGE_PAGES, OP_SET, d, 2).0);
    let r = s.option(HUGE_PAGES, OP_SET, d, 1).0;
    let (_, v1) = s.option(HUGE_PAGES, OP_GET, d, 0);
    s.case_and("option.huge_pages_on_again", r, Ret::Ok, v1 == 1, "still off", format_args!(" val64={v1}"));
    s.err_case("option.huge_pages_object_0", Errno::ENOENT, |s| s.option(HUGE_PAGES, OP_GET, 0, 0).0);
    s.err_case("option.huge_pages_op", Errno::EOPNOTSUPP, |s| s.option(HUGE_PAGES, 2, d, 0).0);
    s.err_case("option.unknown_option", Errno::EOPNOTSUPP, |s| s.option(2, OP_GET, d, 0).0);
    s.err_case("option.reserved", Errno::EOPNOTSUPP, |s| {
        s.cmd(OptionCmd { size: 0, option_id: HUGE_PAGES, op: OP_GET, reserved: 1, object_id: d, val64: 0 }).0
    });
    let r = s.destroy(d);
    s.must("setup.destroy", r);
}

/// GET_HW_INFO: the data and its length rules; prints the `hw` line.
fn hw_info_cases<E: Env + ?Sized, K: Sink + ?Sized>(s: &mut S<'_, E, K>) {
    let (ram, mmio, dev, data) = (s.l.ram.clone(), s.env.mmio(), s.dev, s.l.data);
    let (kind, len) = match s.arch {
        Arch::X86_64 => (hw_info_type::INTEL_VTD, 24u32),
        Arch::Aarch64 => (hw_info_type::ARM_SMMUV3, 40),
    };
    let hw = |data_len: u32, data_gpa: u64| GetHwInfo { dev_id: dev, data_len, data_gpa, ..GetHwInfo::default() };
    s.env.fill(data, 0x100, 0xaa);
    let (r, c) = s.cmd(hw(64, data));
    let mut bytes = [0u8; 64];
    s.get(data, &mut bytes);
    let good = c.data_len == len
        && c.out_data_type == kind
        && c.out_max_pasid_log2 == 0
        && c.out_capabilities == 0
        && bytes[..8].iter().all(|b| *b == 0)
        && bytes[len as usize..].iter().all(|b| *b == 0);
    s.case_and(
        "get_hw_info.ok",
        r,
        Ret::Ok,
        good,
        "wrong length, type, flags or fill",
        format_args!(" data_len={} out_data_type={} out_max_pasid_log2={} out_capabilities={} flags=0", c.data_len, c.out_data_type, c.out_max_pasid_log2, c.out_capabilities),
    );
    let mut reference = [0u8; 64];
    reference.copy_from_slice(&bytes);
    let mut l = Line::new();
    match s.arch {
        Arch::X86_64 => {
            let v = sluice_abi::VtdHwInfo::read_from_prefix(&bytes).map(|(v, _)| v).unwrap_or_default();
            l.push(format_args!("hw vtd cap={:#x} ecap={:#x}", v.cap_reg, v.ecap_reg));
        }
        Arch::Aarch64 => {
            let v = sluice_abi::SmmuV3HwInfo::read_from_prefix(&bytes).map(|(v, _)| v).unwrap_or_default();
            l.push(format_args!("hw smmuv3"));
            for (i, x) in v.idr.iter().enumerate() {
                l.push(format_args!(" idr{i}={x:#x}"));
            }
            l.push(format_args!(" iidr={:#x} aidr={:#x}", v.iidr, v.aidr));
        }
    }
    s.emit(&l);

    s.env.fill(data, 0x100, 0xaa);
    let (r, c) = s.cmd(hw(0, data));
    s.get(data, &mut bytes);
    let untouched = bytes.iter().all(|b| *b == 0xaa);
    s.case_and("get_hw_info.data_len_0", r, Ret::Ok, untouched && c.data_len == len, "data written", format_args!(" data_len={} untouched", c.data_len));
    let (r, c) = s.cmd(hw(8, data));
    s.get(data, &mut bytes);
    let good = bytes[..8] == reference[..8] && bytes[8..].iter().all(|b| *b == 0xaa) && c.data_len == len;
    s.case_and("get_hw_info.data_len_8", r, Ret::Ok, good, "not exactly 8 bytes written", format_args!(" data_len={} written=8", c.data_len));
    s.err_case("get_hw_info.flags", Errno::EOPNOTSUPP, |s| s.cmd(GetHwInfo { flags: 1, ..hw(0, 0) }).0);
    s.err_case("get_hw_info.reserved", Errno::EOPNOTSUPP, |s| s.cmd(GetHwInfo { reserved: [0, 1, 0], ..hw(0, 0) }).0);
    let mut row = s.row("get_hw_info.data");
    for (key, at, want) in array_places(&ram, mmio, u64::from(len), Ret::Ok) {
        let r = s.cmd(hw(len, at)).0;
        s.item(&mut row, key, r, want);
    }
    let r = s.cmd(hw(0, mmio)).0;
    s.item(&mut row, "len0_mmio", r, Ret::Ok);
    s.end_row(row);

    // data_len from 0 to 64 KiB and past it: the type's bytes, then zeros.
    let sweep = s.l.sweep;
    let mut t = Tally::default();
    let lens = (0..=72u32).chain([127, 128, 255, 256, 4095, 4096, 0xffff, 0x1_0000, 0x1_0001, 0x10_0000, u32::MAX]);
    let mut nlens = 0;
    for n in lens {
        nlens += 1;
        let fill = u64::from(n).min(0x1_0001) + 8;
        s.env.fill(sweep, fill, 0xaa);
        let (r, c) = s.cmd(hw(n, sweep));
        let want = if u64::from(n) > 0x1_0000 {
            if sweep.saturating_add(u64::from(n)) > ram.end { e(Errno::EFAULT) } else { e(Errno::EINVAL) }
        } else {
            Ret::Ok
        };
        let mut got = r;
        if r == Ret::Ok {
            let copied = n.min(len) as usize;
            let mut head = [0u8; 64];
            s.get(sweep, &mut head);
            let mut fine = head[..copied] == reference[..copied] && c.data_len == len;
            let mut at = u64::from(n.min(len));
            let mut chunk = [0u8; 256];
            while at < u64::from(n) {
                let k = (u64::from(n) - at).min(256) as usize;
                s.get(sweep + at, &mut chunk[..k]);
                fine &= chunk[..k].iter().all(|b| *b == 0);
                at += k as u64;
            }
            let mut guard = [0u8; 1];
            s.get(sweep + u64::from(n), &mut guard);
            fine &= guard[0] == 0xaa;
            if !fine {
                got = Ret::Raw(-999);
            }
        }
        t.add(u64::from(n), got, want);
    }
    s.sweep_line("get_hw_info.data_len", format_args!("{nlens} lengths 0..2^32-1:"), &t);
}

/// DEVICE_LIST's EMSGSIZE protocol and its array.
fn list_cases<E: Env + ?Sized, K: Sink + ?Sized>(s: &mut S<'_, E, K>) {
    let (ram, mmio) = (s.l.ram.clone(), s.env.mmio());
    let (r, c) = s.cmd(DeviceList { size: 0, num_devices: 0, devices: mmio });
    s.case_and("device_list.emsgsize", r, e(Errno::EMSGSIZE), c.num_devices == 1, "total not written back", format_args!(" num={}", c.num_devices));
    let mut row = s.row("device_list.array");
    for (key, at, want) in array_places(&ram, mmio, 24, Ret::Ok) {
        let r = s.cmd(DeviceList { size: 0, num_devices: 1, devices: at }).0;
        s.item(&mut row, key, r, want);
    }
    s.end_row(row);
}

/// Run a DMA; a device that does not answer is a broken case.
fn dma<E: Env + ?Sized, K: Sink + ?Sized>(s: &mut S<'_, E, K>, to_ram: bool, iova: u64, len: usize) {
    if s.env.dma(to_ram, iova, len).is_err() {
        s.check("dma.device", false, format_args!("the device did not complete a transfer to IOVA {iova:#x}"));
    }
}

/// Faults of the partition's own device, read back with FAULT_READ, and
/// what a failing FAULT_READ leaves; DMA through the partition's maps.
fn faults_and_dma<E: Env + ?Sized, K: Sink + ?Sized>(s: &mut S<'_, E, K>, a: u32) {
    let (ram, mmio, dev, buf, arr) = (s.l.ram.clone(), s.env.mmio(), s.dev, s.l.buf, s.l.arr);
    let (p, q, w) = (buf + 0x4_0000, buf + 0x4_1000, buf + 0x4_2000);
    let r1 = s.map(a, RW | FIXED, p, 0x1000, 0x50_0000).0;
    let r2 = s.map(a, R | FIXED, q, 0x1000, 0x50_1000).0;
    let r3 = s.map(a, W | FIXED, w, 0x1000, 0x50_2000).0;
    for r in [r1, r2, r3] {
        s.must("setup.map", r);
    }
    let (r, n, _, lost) = s.fault_read_at(4, arr);
    s.case_and("fault_read.none", r, Ret::Ok, n == 0 && lost == 0, "faults", format_args!(" num_faults={n} out_lost={lost}"));

    let mut pattern = [0u8; 64];
    for (i, b) in pattern.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(7) ^ 0xa5;
    }
    s.put(p, &pattern);
    s.env.fill(p + 0x100, 64, 0);
    dma(s, false, 0x50_0000, 64);
    dma(s, true, 0x50_0100, 64);
    let mut back = [0u8; 64];
    s.get(p + 0x100, &mut back);
    let (r, n, _, _) = s.fault_read_at(4, arr);
    s.check("dma.round_trip", back == pattern && r == Ret::Ok && n == 0, format_args!("ok 64 bytes RAM -> device -> RAM through IOVA 0x500000, num_faults={n}"));

    let expect_one = |s: &mut S<'_, E, K>, name: &str, want: FaultRecord, extra: bool| {
        let (r, n, list, lost) = s.fault_read_at(4, arr);
        let good = n == 1 && list[0] == want && lost == 0 && extra;
        s.case_and(name, r, Ret::Ok, good, "not exactly that one record", format_args!(" num_faults={n} faults={} out_lost={lost}", Faults(&list[..n.min(4)])));
    };
    let rec = |reason: u32, iova: u64, flags: u32| FaultRecord { dev_id: dev, reason, iova, flags, reserved: 0 };
    use sluice_abi::fault_reason::{FLAG_READ, FLAG_WRITE, NOT_PRESENT, READ_FROM_WRITE_ONLY, WRITE_TO_READ_ONLY};
    dma(s, true, 0x60_0000, 64);
    expect_one(s, "fault_read.unmapped_write", rec(NOT_PRESENT, 0x60_0000, FLAG_WRITE), true);
    s.env.fill(q, 64, 0x11);
    dma(s, true, 0x50_1000, 64);
    let mut qb = [0u8; 64];
    s.get(q, &mut qb);
    expect_one(s, "fault_read.write_to_read_only", rec(WRITE_TO_READ_ONLY, 0x50_1000, FLAG_WRITE), qb.iter().all(|b| *b == 0x11));
    dma(s, false, 0x50_2000, 64);
    expect_one(s, "fault_read.read_from_write_only", rec(READ_FROM_WRITE_ONLY, 0x50_2000, FLAG_READ), true);
    dma(s, false, 0x50_0000, 64);
    // The core folds a fault on the page, direction and reason of the
    // newest queued record into it (collected in between by a FAULT_READ
    // of none, so the unit's own compression plays no part).
    dma(s, true, 0x60_0000, 64);
    let r0 = s.fault_read_at(0, arr).0;
    s.must("setup.fault_read", r0);
    dma(s, true, 0x60_0000, 64);
    expect_one(s, "fault_read.same_page_folded", rec(NOT_PRESENT, 0x60_0000, FLAG_WRITE), true);

    // A pending record survives every failing FAULT_READ.
    dma(s, true, 0x61_0000, 64);
    let fr = |flags: u32, reserved: u32, num: u32, at: u64| FaultRead { size: 0, flags, num_faults: num, reserved, faults: at, out_lost: 0 };
    let mut row = s.row("fault_read.failures_consume_nothing");
    let tries: [(&str, FaultRead, Ret); 8] = [
        ("flags", fr(1, 0, 4, arr), e(Errno::EOPNOTSUPP)),
        ("reserved", fr(0, 1, 4, arr), e(Errno::EOPNOTSUPP)),
        ("mmio", fr(0, 0, 4, mmio), e(Errno::EFAULT)),
        ("zero", fr(0, 0, 4, 0), e(Errno::EFAULT)),
        ("start", fr(0, 0, 4, ram.start - 8), e(Errno::EFAULT)),
        ("over", fr(0, 0, 4, ram.end - 23), e(Errno::EFAULT)),
        ("wrap", fr(0, 0, 4, u64::MAX - 7), e(Errno::EFAULT)),
        ("num0", fr(0, 0, 0, mmio), Ret::Ok),
    ];
    for (key, c, want) in tries {
        let r = s.cmd(c).0;
        s.item(&mut row, key, r, want);
    }
    s.end_row(row);
    let (r, n, list, lost) = s.fault_read_at(4, ram.end - 24);
    let good = n == 1 && list[0] == rec(NOT_PRESENT, 0x61_0000, FLAG_WRITE) && lost == 0;
    s.case_and("fault_read.at_end_of_ram", r, Ret::Ok, good, "the record was lost", format_args!(" num_faults={n} faults={}", Faults(&list[..n.min(4)])));

    // Two records queued: the hypervisor collects a unit's records when
    // the partition next calls it (a FAULT_READ of none here). QEMU's
    // VT-d has one fault recording register and drops ("compresses") a
    // requester's next fault while one is pending, so two DMAs without a
    // call between them would leave one record there.
    dma(s, true, 0x60_0000, 64);
    let r0 = s.fault_read_at(0, arr).0;
    dma(s, true, 0x62_0000, 64);
    let (r1, n1, l1, _) = s.fault_read_at(1, arr);
    let (r2, n2, l2, _) = s.fault_read_at(4, arr);
    let good = r0 == Ret::Ok && r1 == Ret::Ok && r2 == Ret::Ok && n1 == 1 && n2 == 1 && l1[0].iova == 0x60_0000 && l2[0].iova == 0x62_0000;
    s.check("fault_read.oldest_first", good, format_args!("ok {} then {}", Faults(&l1[..n1.min(4)]), Faults(&l2[..n2.min(4)])));

    // Unmapped means unreachable, at once.
    s.env.fill(p, 0x1000, 0);
    let (r, _) = s.unmap(a, 0x50_0000, 0x1000);
    s.must("setup.unmap", r);
    dma(s, true, 0x50_0000, 64);
    let mut pb = [0u8; 64];
    s.get(p, &mut pb);
    expect_one(s, "dma.after_unmap", rec(NOT_PRESENT, 0x50_0000, FLAG_WRITE), pb.iter().all(|b| *b == 0));
    for iova in [0x50_1000, 0x50_2000] {
        let (r, _) = s.unmap(a, iova, 0x1000);
        s.must("setup.unmap", r);
    }
}

/// CONSOLE_WRITE: lengths and buffers anywhere.
fn console_cases<E: Env + ?Sized, K: Sink + ?Sized>(s: &mut S<'_, E, K>) {
    let (ram, mmio, con) = (s.l.ram.clone(), s.env.mmio(), s.l.con);
    // Console bytes: '~' lines ending in a newline, so the suite's own
    // lines stay whole on the console.
    s.env.fill(con, 0x1001, b'~');
    s.put(con + 0xfff, b"\n");
    s.put(ram.end - 1, b"\n");
    let cw = |len: u32, buf: u64| ConsoleWrite { size: 0, len, buf };
    let mut row = s.row("console_write");
    let tries: [(&str, ConsoleWrite, Ret); 11] = [
        ("len0_mmio", cw(0, mmio), Ret::Ok),
        ("len4096", cw(4096, con), Ret::Ok),
        ("len4097", cw(4097, con), e(Errno::EINVAL)),
        ("len_max", cw(u32::MAX, con), e(Errno::EINVAL)),
        ("mmio", cw(1, mmio), e(Errno::EFAULT)),
        ("zero", cw(1, 0), e(Errno::EFAULT)),
        ("start", cw(2, ram.start - 1), e(Errno::EFAULT)),
        ("end", cw(1, ram.end - 1), Ret::Ok),
        ("over", cw(2, ram.end - 1), e(Errno::EFAULT)),
        ("past", cw(1, ram.end), e(Errno::EFAULT)),
        ("wrap", cw(2, u64::MAX), e(Errno::EFAULT)),
    ];
    for (key, c, want) in tries {
        let r = s.cmd(c).0;
        s.item(&mut row, key, r, want);
    }
    s.end_row(row);
}

/// Every struct size from 0 to 72, then up to 64 KiB and beyond, for
/// every command: with a zero tail and with a non-zero last byte; and
/// structs ending at the last byte of RAM and one past it.
fn sweeps<E: Env + ?Sized, K: Sink + ?Sized>(s: &mut S<'_, E, K>) {
    let sizes = || {
        (0..=72u32).chain([96, 127, 128, 129, 255, 256, 257, 1023, 1024, 1025, 4095, 4096, 4097, 8192, 16384, 32768, 0xffff, 0x1_0000, 0x1_0001, 0x1_0008, 0x2_0000, u32::MAX])
    };
    let end_sizes = || (0..=72u32).chain([4095, 4096, 0x1_0000, 0x1_0001]);
    let (sweep, ram) = (s.l.sweep, s.l.ram.clone());
    s.env.fill(sweep, 0x2_0000, 0);
    // The end of RAM: zero, for structs that end there.
    s.env.fill(ram.end - 0x1_0008, 0x1_0008, 0);
    for info in &COMMANDS {
        // The whole 64-byte baseline is written each time: zero past the
        // struct, so no byte of another command's struct stays in a tail.
        let (bytes, base) = baseline(s, info);
        let mut t = Tally::default();
        let mut n = 0;
        for size in sizes() {
            n += 1;
            let mut b = bytes;
            b[..4].copy_from_slice(&size.to_le_bytes());
            // Zero tail.
            let want = framing_result(&ram, info, sweep, size, false, base);
            if let Some(want) = want {
                s.put(sweep, &b);
                let got = s.raw(s.reg0(info.nr), sweep);
                t.add(u64::from(size), got, want);
                undo_alloc(s, info, sweep, got);
            }
            // Non-zero last byte past the known struct.
            if u64::from(size) > u64::from(info.size) && u64::from(size) <= 0x2_0000 {
                let want = framing_result(&ram, info, sweep, size, true, base);
                if let Some(want) = want {
                    s.put(sweep, &b);
                    let last = sweep + u64::from(size) - 1;
                    s.put(last, &[1]);
                    let got = s.raw(s.reg0(info.nr), sweep);
                    s.put(last, &[0]);
                    t.add(u64::from(size), got, want);
                    undo_alloc(s, info, sweep, got);
                }
            }
        }
        let mut name = Line::new();
        name.push(format_args!("size.{}", info.name));
        s.sweep_line(name.as_str(), format_args!("{n} sizes:"), &t);

        let mut t = Tally::default();
        let mut n = 0;
        for size in end_sizes() {
            n += 1;
            let mut b = bytes;
            b[..4].copy_from_slice(&size.to_le_bytes());
            let span = u64::from(size).max(4);
            for at in [ram.end - span, ram.end - span + 1] {
                let Some(want) = framing_result(&ram, info, at, size, false, base) else { continue };
                s.put(at, &b);
                let got = s.raw(s.reg0(info.nr), at);
                t.add(at - (ram.end - span), got, want);
                undo_alloc(s, info, at, got);
                // Leave the end of RAM zero again.
                s.env.fill(at, (ram.end - at).min(b.len() as u64), 0);
            }
        }
        let mut name = Line::new();
        name.push(format_args!("size_at_ram_end.{}", info.name));
        s.sweep_line(name.as_str(), format_args!("{n} sizes, ending at and one past the end:"), &t);
    }
}

/// ABI.md's framing for a struct of `size` at `gpa` whose bytes past the
/// known struct are zero (or whose last byte is not, `dirty_tail`):
/// `None` when the command would run with its baseline (and that must not
/// happen: PARTITION_EXIT).
fn framing_result(ram: &core::ops::Range<u64>, info: &CommandInfo, gpa: u64, size: u32, dirty_tail: bool, base: Option<Ret>) -> Option<Ret> {
    let is_ram = |at: u64, len: u64| at >= ram.start && at.checked_add(len).is_some_and(|end| end <= ram.end);
    let size64 = u64::from(size);
    if !is_ram(gpa, 4) {
        return Some(e(Errno::EFAULT));
    }
    if size < info.min_size {
        return Some(e(Errno::EINVAL));
    }
    // Sluice: a struct longer than the known one must be RAM as a whole
    // (EFAULT), and is E2BIG past 64 KiB without being scanned.
    if size > info.size && !is_ram(gpa, size64) {
        return Some(e(Errno::EFAULT));
    }
    if size64 > MAX_STRUCT {
        return Some(e(Errno::E2BIG));
    }
    if !is_ram(gpa, size64.min(u64::from(info.size))) {
        return Some(e(Errno::EFAULT));
    }
    if dirty_tail {
        return Some(e(Errno::E2BIG));
    }
    base
}

/// The hypervisor still serves this partition after all of the above:
/// a fresh IOAS, attach, map, DMA both ways, unmap, back.
fn serve<E: Env + ?Sized, K: Sink + ?Sized>(s: &mut S<'_, E, K>, a: u32, h: u32) {
    let dev = s.dev;
    let p = s.l.buf + 0x5_0000;
    let f = s.alloc();
    let (r1, pt) = s.attach(dev, f);
    let (r2, _) = s.map(f, RW | FIXED, p, 0x1000, 0x70_0000);
    let mut pattern = [0u8; 128];
    for (i, b) in pattern.iter_mut().enumerate() {
        *b = (i as u8) ^ 0x3c;
    }
    s.put(p, &pattern);
    s.env.fill(p + 0x800, 128, 0);
    dma(s, false, 0x70_0000, 128);
    dma(s, true, 0x70_0800, 128);
    let mut back = [0u8; 128];
    s.get(p + 0x800, &mut back);
    let (r3, len) = s.unmap(f, 0x70_0000, 0x1000);
    let (r4, pt2) = s.attach(dev, a);
    let r5 = s.destroy(f);
    let (r6, n, _, _) = s.fault_read_at(4, s.l.arr);
    let ok = [r1, r2, r3, r4, r5, r6].iter().all(|r| *r == Ret::Ok) && back == pattern && len == 0x1000 && pt2 == h && n == 0;
    s.check("serve.after_everything", ok, format_args!("ok ioas={f} pt_id={pt}: attach, map, DMA both ways, unmap, re-attach pt_id={pt2}, destroy"));
}

/// Leave nothing behind: every area, the attachment, the IOAS, the pins.
fn cleanup<E: Env + ?Sized, K: Sink + ?Sized>(s: &mut S<'_, E, K>, a: u32) {
    let (r, len) = s.unmap(a, 0, u64::MAX);
    s.case_and("ioas_unmap.all_at_end", r, Ret::Ok, len == 0x2000, "not the 2 pages left", format_args!(" length={len:#x}"));
    let r = s.detach(s.dev);
    s.case("device_detach.at_end", r, Ret::Ok, format_args!(""));
    let r = s.destroy(a);
    s.case("destroy.at_end", r, Ret::Ok, format_args!(""));
    s.pins_check("pins.none_at_end", 0);
    let (r, n, list) = s.device_list_at(s.l.arr);
    s.case_and("device_list.at_end", r, Ret::Ok, n == 1 && list[0].attached_pt == 0, "still attached", format_args!(" pt={}", list[0].attached_pt));
    let l = line(format_args!("case end.partition_exit = PARTITION_EXIT runs last, from the program"));
    s.emit(&l);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resv(start: u64, last: u64) -> ResvRange {
        ResvRange { start, last, kind: 0, reserved: 0 }
    }

    #[test]
    fn complement_of_reserved_regions() {
        let (r, n) = complement(&[resv(1 << 28, u64::MAX), resv(0xfee0_0000, 0xfeef_ffff), resv(1 << 48, u64::MAX)]);
        assert_eq!(&r[..n], &[IovaRange { start: 0, last: (1 << 28) - 1 }]);
        let (r, n) = complement(&[resv(0x1000, 0x1fff), resv(0x1800, 0x2fff), resv(0x8000, 0x8fff)]);
        assert_eq!(
            &r[..n],
            &[IovaRange { start: 0, last: 0xfff }, IovaRange { start: 0x3000, last: 0x7fff }, IovaRange { start: 0x9000, last: u64::MAX }]
        );
        let (r, n) = complement(&[]);
        assert_eq!(&r[..n], &[FULL]);
        let (_, n) = complement(&[resv(0, u64::MAX)]);
        assert_eq!(n, 0);
    }

    #[test]
    fn framing_follows_abi_md() {
        let ram = 0x4000_0000..0x4080_0000;
        let alloc = command(nr::IOAS_ALLOC).unwrap();
        let hw = command(nr::GET_HW_INFO).unwrap();
        let base = Some(Ret::Ok);
        let at = 0x4041_0000;
        assert_eq!(framing_result(&ram, alloc, at, 0, false, base), Some(e(Errno::EINVAL)));
        assert_eq!(framing_result(&ram, alloc, at, 11, false, base), Some(e(Errno::EINVAL)));
        assert_eq!(framing_result(&ram, alloc, at, 12, false, base), base);
        assert_eq!(framing_result(&ram, alloc, at, 13, true, base), Some(e(Errno::E2BIG)));
        assert_eq!(framing_result(&ram, alloc, at, 0x1_0000, false, base), base);
        assert_eq!(framing_result(&ram, alloc, at, 0x1_0001, false, base), Some(e(Errno::E2BIG)));
        assert_eq!(framing_result(&ram, alloc, at, u32::MAX, false, base), Some(e(Errno::EFAULT)));
        // GET_HW_INFO accepts 32 of its 40 bytes.
        assert_eq!(framing_result(&ram, hw, at, 32, false, base), base);
        assert_eq!(framing_result(&ram, hw, at, 31, false, base), Some(e(Errno::EINVAL)));
        // At the end of RAM: the size word decides first, then the body.
        assert_eq!(framing_result(&ram, alloc, ram.end - 12, 12, false, base), base);
        assert_eq!(framing_result(&ram, alloc, ram.end - 11, 12, false, base), Some(e(Errno::EFAULT)));
        assert_eq!(framing_result(&ram, alloc, ram.end - 5, 5, false, base), Some(e(Errno::EINVAL)));
        assert_eq!(framing_result(&ram, alloc, ram.end - 3, 4, false, base), Some(e(Errno::EFAULT)));
        assert_eq!(framing_result(&ram, alloc, ram.end - 12, 16, false, base), Some(e(Errno::EFAULT)));
        // A command that must not run: no expectation.
        assert_eq!(framing_result(&ram, command(nr::PARTITION_EXIT).unwrap(), at, 8, false, None), None);
    }
}
