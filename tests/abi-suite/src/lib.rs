//! The ABI suite: every hypercall of ABI version 1 (shared/design/ABI.md),
//! its success and error paths, as a fixed list of cases that print one
//! deterministic line each.
//!
//! The same cases run in two environments, behind [`Env`]:
//!
//! - in a partition under the real hypervisor (QEMU, both architectures):
//!   `guest/programs/src/bin/abi-suite.rs` makes real hypercalls;
//! - on hvsim (`hvsim abi-suite --arch ARCH`): the real core on a
//!   simulated machine built like the QEMU one.
//!
//! `tests/qemu/abi.sh` compares the two transcripts line by line. A line
//! holds only numbers that are the same in both environments (ids, IOVAs,
//! errnos, GPAs relative to nothing the environments place differently);
//! what cannot agree (GET_HW_INFO's register values) is printed on lines
//! starting with `hw `, which the harness compares with what QEMU's
//! device model returned instead.
//!
//! Transcript lines:
//!
//! - `case GROUP.NAME = RESULT [details]`: one case, or a row of cases
//!   (`key:RESULT ...`); RESULT is `ok`, `err ENAME` or `ret N` (a return
//!   value that is no errno: SMCCC NOT_SUPPORTED on aarch64);
//! - `sweep NAME = ...`: a loop (sizes 0 to 64 KiB and beyond, ids, command
//!   numbers), summarised as counts per result;
//! - `hw ...`: GET_HW_INFO's data (compared apart);
//! - `suite: cases=N lines=M broken=K`: the last line.
//!
//! Each case also checks its result against what ABI.md prescribes (and
//! that a failed command wrote nothing back and, where it matters, changed
//! nothing). A case that does not hold gets ` !! ...` appended and counts
//! in `broken`; the program then exits non-zero.
//!
//! The suite works in a fixed part of the partition's RAM ([`Layout`]):
//! from [`WORK_OFFSET`] to the end, and the first page of RAM (unused by
//! the start-up contract). It needs [`MIN_RAM`] of RAM, a pin limit of
//! [`PIN_LIMIT`] pages, one device with a [`DMA_BITS`]-bit DMA limit
//! (QEMU's edu) and another partition owning a device whose id
//! ([`Env::foreign_device`]) this partition does not have.
#![no_std]
#![forbid(unsafe_code)]
// zerocopy's derives in sluice-abi.
#![allow(missing_debug_implementations)]

mod cases;
mod line;

use core::fmt;
use core::ops::Range;

pub use line::{LINE_CAP, Line, line};
use sluice_abi::{Command, Errno};
use zerocopy::{FromBytes, IntoBytes};

/// Where the suite's work range starts in the partition's RAM (below it:
/// the start-up area and the program image).
pub const WORK_OFFSET: u64 = 0x40_0000;
/// The RAM the suite needs (the manifests give 8 MiB).
pub const MIN_RAM: u64 = 0x80_0000;
/// The partition's pin limit in pages, as the manifests set it.
pub const PIN_LIMIT: u64 = 1024;
/// The DMA address width of the partition's device (QEMU's edu).
pub const DMA_BITS: u32 = 28;

/// The range of RAM the suite reads and writes besides the first page:
/// `[ram.start + WORK_OFFSET, ram.end)`.
#[must_use]
pub fn work_range(ram: &Range<u64>) -> Range<u64> {
    ram.start + WORK_OFFSET..ram.end
}

/// The architecture: it decides the calling convention's cases and what
/// GET_HW_INFO returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// x86_64: `rax` holds the command number.
    X86_64,
    /// aarch64: `x0` holds an SMCCC function id.
    Aarch64,
}

impl Arch {
    /// The first-register value for command `nr`.
    #[must_use]
    pub const fn command_register(self, nr: u32) -> u64 {
        match self {
            Self::X86_64 => nr as u64,
            Self::Aarch64 => sluice_abi::SMCCC_BASE | nr as u64,
        }
    }
}

/// A DMA the environment could not run (the device did not answer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaError;

/// What the suite needs from where it runs.
pub trait Env {
    /// The architecture.
    fn arch(&self) -> Arch;
    /// The partition's RAM (GPAs).
    fn ram(&self) -> Range<u64>;
    /// The GPA of the partition's device's register BAR (MMIO).
    fn mmio(&self) -> u64;
    /// The id of the partition's device.
    fn device(&self) -> u32;
    /// An id another partition's device has there, which this partition
    /// has no object for when the suite starts.
    fn foreign_device(&self) -> u32;
    /// A hypercall: `reg0` in the first register exactly as given (see
    /// [`Arch::command_register`]), the struct's GPA in the second;
    /// returns the first register afterwards.
    fn call(&mut self, reg0: u64, gpa: u64) -> i64;
    /// Read RAM the suite owns (the first page and [`work_range`]).
    fn read(&mut self, gpa: u64, buf: &mut [u8]);
    /// Write RAM the suite owns.
    fn write(&mut self, gpa: u64, data: &[u8]);
    /// Set `len` bytes of RAM the suite owns to `byte`.
    fn fill(&mut self, gpa: u64, len: u64, byte: u8);
    /// The device copies `len` bytes (at most 4096): `to_ram`, its buffer
    /// to RAM at `iova`; else RAM at `iova` into its buffer (QEMU's edu:
    /// a transfer the IOMMU refuses still completes; it shows as a fault
    /// record).
    ///
    /// # Errors
    ///
    /// The device did not complete the transfer.
    fn dma(&mut self, to_ram: bool, iova: u64, len: usize) -> Result<(), DmaError>;
}

/// Where the transcript goes: one call per line, without the newline.
pub trait Sink {
    /// One line.
    fn line(&mut self, text: &str);
}

/// How a run went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Expectations checked.
    pub cases: u32,
    /// Lines printed, the summary line included.
    pub lines: u32,
    /// Expectations that did not hold (0 on a correct hypervisor).
    pub broken: u32,
}

/// Run every case against `env`, printing the transcript to `sink`.
pub fn run<E: Env + ?Sized, S: Sink + ?Sized>(env: &mut E, sink: &mut S) -> Summary {
    let mut s = Suite::new(env, sink);
    cases::all(&mut s);
    let mut sum = s.sum;
    sum.lines += 1;
    let l = line(format_args!("suite: cases={} lines={} broken={}", sum.cases, sum.lines, sum.broken));
    s.sink.line(l.as_str());
    sum
}

/// What a hypercall returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ret {
    /// 0.
    Ok,
    /// `-errno` of an ABI errno.
    Err(Errno),
    /// Anything else (aarch64: SMCCC NOT_SUPPORTED, -1).
    Raw(i64),
}

impl Ret {
    /// From the first register's value.
    #[must_use]
    pub fn from_return(v: i64) -> Self {
        if v == 0 { Self::Ok } else { Errno::from_return(v).map_or(Self::Raw(v), Self::Err) }
    }

    /// The short form used in rows: `ok`, `EINVAL`, `-1`.
    #[must_use]
    pub fn short(self) -> Short {
        Short(self)
    }
}

impl fmt::Display for Ret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ok => f.write_str("ok"),
            Self::Err(e) => write!(f, "err {}", e.name()),
            Self::Raw(v) => write!(f, "ret {v}"),
        }
    }
}

/// [`Ret::short`].
#[derive(Clone, Copy, Debug)]
pub struct Short(Ret);

impl fmt::Display for Short {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Ret::Ok => f.write_str("ok"),
            Ret::Err(e) => f.write_str(e.name()),
            Ret::Raw(v) => write!(f, "{v}"),
        }
    }
}

/// `Ret::Err(e)`, shorter.
const fn e(errno: Errno) -> Ret {
    Ret::Err(errno)
}

/// The suite's places in the partition's RAM.
#[derive(Clone, Debug)]
struct Layout {
    ram: Range<u64>,
    work: Range<u64>,
    /// The first page of RAM.
    first: Range<u64>,
    /// Command structs.
    s: u64,
    /// Arrays of the cases.
    arr: u64,
    /// Arrays of the state queries ([`Suite::fingerprint`]).
    qarr: u64,
    /// GET_HW_INFO data.
    data: u64,
    /// CONSOLE_WRITE bytes (4 KiB + 1).
    con: u64,
    /// Structs of the size sweeps (128 KiB).
    sweep: u64,
    /// Memory mapped for devices (2 MiB, 2 MiB aligned).
    buf: u64,
}

impl Layout {
    fn new(ram: Range<u64>) -> Self {
        let work = work_range(&ram);
        let w = work.start;
        Self {
            first: ram.start..ram.start + 0x1000,
            ram,
            work,
            s: w,
            arr: w + 0x1000,
            qarr: w + 0x1800,
            data: w + 0x2000,
            con: w + 0x4000,
            sweep: w + 0x1_0000,
            buf: w + 0x20_0000,
        }
    }
}

/// Counts of results, for the sweeps.
#[derive(Clone, Copy, Debug, Default)]
struct Tally {
    kinds: [(Option<Ret>, u32); 10],
    calls: u32,
    bad: u32,
    first_bad: Option<(u64, Ret, Ret)>,
}

impl Tally {
    fn add(&mut self, at: u64, got: Ret, want: Ret) {
        self.calls += 1;
        if got != want {
            self.bad += 1;
            if self.first_bad.is_none() {
                self.first_bad = Some((at, got, want));
            }
        }
        for k in &mut self.kinds {
            match k.0 {
                Some(r) if r == got => {
                    k.1 += 1;
                    return;
                }
                None => {
                    *k = (Some(got), 1);
                    return;
                }
                _ => {}
            }
        }
    }

    fn write(&self, l: &mut Line) {
        l.push(format_args!("calls={}", self.calls));
        for (r, n) in self.kinds.iter().filter_map(|(r, n)| r.map(|r| (r, *n))) {
            l.push(format_args!(" {}={n}", r.short()));
        }
        if let Some((at, got, want)) = self.first_bad {
            l.push(format_args!(" !! {} unexpected, first at {at:#x}: {} not {}", self.bad, got.short(), want.short()));
        }
    }
}

/// A row of cases on one line: `case NAME = key:RESULT ...`.
struct Row {
    line: Line,
    items: u32,
    bad: u32,
}

/// The running suite.
struct Suite<'a, E: ?Sized, S: ?Sized> {
    env: &'a mut E,
    sink: &'a mut S,
    l: Layout,
    arch: Arch,
    dev: u32,
    sum: Summary,
    /// IOAS ids whose ranges and options [`Self::fingerprint`] covers.
    live: [u32; 8],
    /// Areas [`Self::fingerprint`] probes: (IOAS, IOVA).
    tracked: [(u32, u64); 16],
}

/// Map flags.
const R: u32 = sluice_abi::map_flags::READABLE;
const W: u32 = sluice_abi::map_flags::WRITEABLE;
const RW: u32 = R | W;
const FIXED: u32 = sluice_abi::map_flags::FIXED_IOVA;

impl<'a, E: Env + ?Sized, S: Sink + ?Sized> Suite<'a, E, S> {
    fn new(env: &'a mut E, sink: &'a mut S) -> Self {
        let l = Layout::new(env.ram());
        let (arch, dev) = (env.arch(), env.device());
        Self { env, sink, l, arch, dev, sum: Summary::default(), live: [0; 8], tracked: [(0, 0); 16] }
    }

    // ----- the transcript -----

    fn emit(&mut self, l: &Line) {
        self.sum.lines += 1;
        if l.overflowed() {
            self.sum.broken += 1;
        }
        self.sink.line(l.as_str());
    }

    /// One case: `case NAME = GOT DETAIL`, checked against `want`.
    fn case(&mut self, name: &str, got: Ret, want: Ret, detail: fmt::Arguments<'_>) -> bool {
        let mut l = line(format_args!("case {name} = {got}{detail}"));
        self.sum.cases += 1;
        let ok = got == want;
        if !ok {
            self.sum.broken += 1;
            l.push(format_args!(" !! expected {want}"));
        }
        self.emit(&l);
        ok
    }

    /// A case that is a statement: `case NAME = TEXT`, `!! FAILED` when
    /// it does not hold.
    fn check(&mut self, name: &str, ok: bool, text: fmt::Arguments<'_>) -> bool {
        let mut l = line(format_args!("case {name} = {text}"));
        self.sum.cases += 1;
        if !ok {
            self.sum.broken += 1;
            l.push(format_args!(" !! FAILED"));
        }
        self.emit(&l);
        ok
    }

    /// A case with a note appended to its line when `extra` is false.
    fn case_and(&mut self, name: &str, got: Ret, want: Ret, extra: bool, what: &str, detail: fmt::Arguments<'_>) -> bool {
        let mut l = line(format_args!("case {name} = {got}{detail}"));
        self.sum.cases += 1;
        let ok = got == want && extra;
        if got != want {
            l.push(format_args!(" !! expected {want}"));
        }
        if !extra {
            l.push(format_args!(" !! {what}"));
        }
        if !ok {
            self.sum.broken += 1;
        }
        self.emit(&l);
        ok
    }

    fn row(&self, name: &str) -> Row {
        Row { line: line(format_args!("case {name} =")), items: 0, bad: 0 }
    }

    fn item(&mut self, row: &mut Row, key: &str, got: Ret, want: Ret) {
        row.items += 1;
        row.line.push(format_args!(" {key}:{}", got.short()));
        if got != want {
            row.bad += 1;
            row.line.push(format_args!("(!!{})", want.short()));
        }
    }

    fn end_row(&mut self, row: Row) {
        self.sum.cases += row.items;
        self.sum.broken += row.bad;
        self.emit(&row.line);
    }

    fn sweep_line(&mut self, name: &str, what: fmt::Arguments<'_>, t: &Tally) {
        let mut l = line(format_args!("sweep {name} = {what} "));
        t.write(&mut l);
        self.sum.cases += t.calls;
        self.sum.broken += t.bad;
        self.emit(&l);
    }

    /// A setup step that must work; only a failure prints.
    fn must(&mut self, what: &str, got: Ret) -> bool {
        if got == Ret::Ok {
            return true;
        }
        self.case(what, got, Ret::Ok, format_args!(""))
    }

    // ----- the suite's RAM -----

    /// The parts of `[gpa, gpa + len)` in the suite's RAM, as (start, end).
    fn owned_parts(&self, gpa: u64, len: u64) -> [Option<(u64, u64)>; 2] {
        let end = gpa.saturating_add(len);
        let part = |r: &Range<u64>| {
            let (s, e) = (gpa.max(r.start), end.min(r.end));
            (s < e).then_some((s, e))
        };
        [part(&self.l.first), part(&self.l.work)]
    }

    /// Write the bytes of `data` that fall in the suite's RAM (the rest is
    /// MMIO, outside RAM, or RAM the suite leaves alone).
    fn put(&mut self, gpa: u64, data: &[u8]) {
        for (s, e) in self.owned_parts(gpa, data.len() as u64).into_iter().flatten() {
            self.env.write(s, &data[(s - gpa) as usize..(e - gpa) as usize]);
        }
    }

    /// Read the bytes of `buf` that fall in the suite's RAM; the others
    /// keep their value.
    fn get(&mut self, gpa: u64, buf: &mut [u8]) {
        for (s, e) in self.owned_parts(gpa, buf.len() as u64).into_iter().flatten() {
            self.env.read(s, &mut buf[(s - gpa) as usize..(e - gpa) as usize]);
        }
    }

    fn get_u64(&mut self, gpa: u64) -> u64 {
        let mut b = [0u8; 8];
        self.get(gpa, &mut b);
        u64::from_le_bytes(b)
    }

    fn read_array<T: FromBytes + IntoBytes + Default + Copy, const N: usize>(&mut self, gpa: u64, n: usize) -> [T; N] {
        let mut out = [T::default(); N];
        for (i, slot) in out.iter_mut().enumerate().take(n.min(N)) {
            let mut v = T::default();
            self.get(gpa + (i * size_of::<T>()) as u64, v.as_mut_bytes());
            *slot = v;
        }
        out
    }

    // ----- hypercalls -----

    fn reg0(&self, nr: u32) -> u64 {
        self.arch.command_register(nr)
    }

    fn raw(&mut self, reg0: u64, gpa: u64) -> Ret {
        Ret::from_return(self.env.call(reg0, gpa))
    }

    /// Put `bytes` at `gpa`, run command `nr` on them and read back into
    /// `out` (as long as `bytes`) what the hypervisor left there. A failed
    /// command (other than EMSGSIZE) must not have written anything back:
    /// that is checked here for every call.
    fn exchange(&mut self, nr: u32, gpa: u64, bytes: &[u8], out: &mut [u8]) -> Ret {
        self.put(gpa, bytes);
        let r = self.raw(self.reg0(nr), gpa);
        out.copy_from_slice(bytes);
        self.get(gpa, out);
        if matches!(r, Ret::Err(e) if e != Errno::EMSGSIZE) && out != bytes {
            let l = line(format_args!("case writeback.on_error = command {nr:#x} at {gpa:#x} failed with {r} but changed its struct !! FAILED"));
            self.sum.cases += 1;
            self.sum.broken += 1;
            self.emit(&l);
        }
        r
    }

    /// Run command `c` (its `size` as given) with its struct at `gpa`;
    /// returns the result and the struct as the hypervisor left it.
    fn cmd_at<T: Command + Copy>(&mut self, gpa: u64, c: T) -> (Ret, T) {
        let mut out = c;
        let r = self.exchange(T::NR, gpa, c.as_bytes(), out.as_mut_bytes());
        (r, out)
    }

    /// Run command `c` with `size` set to its struct's size, at the usual
    /// place.
    fn cmd<T: Command + Copy>(&mut self, c: T) -> (Ret, T) {
        let c = sized(c);
        self.cmd_at(self.l.s, c)
    }

    // ----- the commands, typed -----

    fn alloc(&mut self) -> u32 {
        let (r, c) = self.cmd(sluice_abi::IoasAlloc::default());
        self.must("setup.ioas_alloc", r);
        self.add_live(c.out_ioas_id);
        c.out_ioas_id
    }

    fn destroy(&mut self, id: u32) -> Ret {
        let r = self.cmd(sluice_abi::Destroy { size: 0, id }).0;
        if r == Ret::Ok {
            self.drop_live(id);
        }
        r
    }

    fn attach(&mut self, dev_id: u32, pt_id: u32) -> (Ret, u32) {
        let (r, c) = self.cmd(sluice_abi::DeviceAttach { size: 0, flags: 0, dev_id, pt_id });
        (r, c.pt_id)
    }

    fn detach(&mut self, dev_id: u32) -> Ret {
        self.cmd(sluice_abi::DeviceDetach { size: 0, dev_id }).0
    }

    fn map(&mut self, ioas_id: u32, flags: u32, gpa: u64, length: u64, iova: u64) -> (Ret, u64) {
        let (r, c) = self.cmd(sluice_abi::IoasMap { size: 0, flags, ioas_id, reserved: 0, gpa, length, iova });
        (r, c.iova)
    }

    fn unmap(&mut self, ioas_id: u32, iova: u64, length: u64) -> (Ret, u64) {
        let (r, c) = self.cmd(sluice_abi::IoasUnmap { size: 0, ioas_id, iova, length });
        (r, c.length)
    }

    #[allow(clippy::too_many_arguments)]
    fn copy(&mut self, flags: u32, dst: u32, src: u32, length: u64, dst_iova: u64, src_iova: u64) -> (Ret, u64) {
        let (r, c) = self.cmd(sluice_abi::IoasCopy { size: 0, flags, dst_ioas_id: dst, src_ioas_id: src, length, dst_iova, src_iova });
        (r, c.dst_iova)
    }

    fn option(&mut self, option_id: u32, op: u16, object_id: u32, val64: u64) -> (Ret, u64) {
        let (r, c) = self.cmd(sluice_abi::OptionCmd { size: 0, option_id, op, reserved: 0, object_id, val64 });
        (r, c.val64)
    }

    /// IOAS_IOVA_RANGES into `at` (up to 8 ranges): result, count written
    /// back, the ranges, the alignment.
    fn ranges_at(&mut self, ioas_id: u32, at: u64) -> (Ret, usize, [sluice_abi::IovaRange; 8], u64) {
        let c = sluice_abi::IoasIovaRanges { size: 0, ioas_id, num_iovas: 8, reserved: 0, allowed_iovas: at, out_iova_alignment: 0 };
        let (r, c) = self.cmd(c);
        let n = c.num_iovas as usize;
        let list = if r == Ret::Ok { self.read_array(at, n) } else { [sluice_abi::IovaRange::default(); 8] };
        (r, n, list, c.out_iova_alignment)
    }

    fn resv(&mut self, dev_id: u32, at: u64) -> (Ret, usize, [sluice_abi::ResvRange; 8]) {
        let c = sluice_abi::DeviceResvIovaRanges { size: 0, dev_id, num_iovas: 8, reserved: 0, resv_iovas: at };
        let (r, c) = self.cmd(c);
        let n = c.num_iovas as usize;
        let list = if r == Ret::Ok { self.read_array(at, n) } else { [sluice_abi::ResvRange::default(); 8] };
        (r, n, list)
    }

    fn device_list_at(&mut self, at: u64) -> (Ret, usize, [sluice_abi::DeviceInfo; 4]) {
        let (r, c) = self.cmd(sluice_abi::DeviceList { size: 0, num_devices: 4, devices: at });
        let n = c.num_devices as usize;
        let list = if r == Ret::Ok { self.read_array(at, n) } else { [sluice_abi::DeviceInfo::default(); 4] };
        (r, n, list)
    }

    fn fault_read_at(&mut self, num: u32, at: u64) -> (Ret, usize, [sluice_abi::FaultRecord; 4], u64) {
        let c = sluice_abi::FaultRead { size: 0, flags: 0, num_faults: num, reserved: 0, faults: at, out_lost: 0 };
        let (r, c) = self.cmd(c);
        let n = c.num_faults as usize;
        let list = if r == Ret::Ok { self.read_array(at, n) } else { [sluice_abi::FaultRecord::default(); 4] };
        (r, n, list, c.out_lost)
    }

    // ----- state: what a failed command must leave alone -----

    fn add_live(&mut self, id: u32) {
        if let Some(slot) = self.live.iter_mut().find(|x| **x == 0) {
            *slot = id;
        }
    }

    fn drop_live(&mut self, id: u32) {
        for x in &mut self.live {
            if *x == id {
                *x = 0;
            }
        }
        for t in &mut self.tracked {
            if t.0 == id {
                *t = (0, 0);
            }
        }
    }

    fn track(&mut self, ioas: u32, iova: u64) {
        if let Some(slot) = self.tracked.iter_mut().find(|t| t.0 == 0) {
            *slot = (ioas, iova);
        }
    }

    fn untrack(&mut self, ioas: u32, iova: u64) {
        for t in &mut self.tracked {
            if *t == (ioas, iova) {
                *t = (0, 0);
            }
        }
    }

    /// Whether an area of `ioas` covers `iova`: a FIXED map of one page
    /// there is EEXIST; if it succeeds it is undone.
    fn present(&mut self, ioas: u32, iova: u64) -> bool {
        let (r, _) = self.map(ioas, RW | FIXED, self.l.buf, 0x1000, iova);
        match r {
            Ret::Err(Errno::EEXIST) => true,
            Ret::Ok => {
                let (u, _) = self.unmap(ioas, iova, 0x1000);
                self.must("setup.present_probe_unmap", u);
                false
            }
            other => {
                self.case("setup.present_probe", other, e(Errno::EEXIST), format_args!(" ioas={ioas} iova={iova:#x}"));
                false
            }
        }
    }

    /// A digest of what the partition can observe without changing it:
    /// its device list, the ranges and HUGE_PAGES of the live IOASes, and
    /// whether each tracked area is still there.
    fn fingerprint(&mut self) -> u64 {
        let mut h = Fnv::new();
        let (r, n, list) = self.device_list_at(self.l.qarr);
        h.ret(r);
        h.u64(n as u64);
        for d in &list[..n.min(4)] {
            h.bytes(d.as_bytes());
        }
        for id in self.live {
            if id == 0 {
                continue;
            }
            let (r, n, list, align) = self.ranges_at(id, self.l.qarr);
            h.ret(r);
            h.u64(n as u64 ^ align);
            for x in &list[..n.min(8)] {
                h.bytes(x.as_bytes());
            }
            let (r, v) = self.option(sluice_abi::option::HUGE_PAGES, sluice_abi::option::OP_GET, id, 0);
            h.ret(r);
            h.u64(v);
        }
        for (ioas, iova) in self.tracked {
            if ioas != 0 {
                h.u64(u64::from(self.present(ioas, iova)));
            }
        }
        h.0
    }

    /// A case that must fail with `want` and leave the observable state
    /// ([`Self::fingerprint`]) as it was.
    fn err_case(&mut self, name: &str, want: Errno, f: impl FnOnce(&mut Self) -> Ret) -> bool {
        let before = self.fingerprint();
        let got = f(self);
        let same = self.fingerprint() == before;
        self.case_and(name, got, e(want), same, "state changed", format_args!(""))
    }

    /// The pin count is `pages`: a map of `PIN_LIMIT - pages` pages works
    /// and one more page is ENOMEM (in a scratch IOAS, of any RAM: pins
    /// count at MAP time, no device sees it).
    fn pins_check(&mut self, name: &str, pages: u64) {
        let p = self.alloc();
        let room = PIN_LIMIT - pages;
        let (fits, iova) = self.map(p, R, self.l.ram.start, room * 0x1000, 0);
        if fits == Ret::Ok {
            let (u, _) = self.unmap(p, iova, room * 0x1000);
            self.must("setup.pins_unmap", u);
        }
        let (over, _) = self.map(p, R, self.l.ram.start, (room + 1) * 0x1000, 0);
        let r = self.destroy(p);
        self.must("setup.pins_destroy", r);
        let ok = fits == Ret::Ok && over == e(Errno::ENOMEM);
        self.check(name, ok, format_args!("pinned={pages} (map of {room} more pages: {fits}; one more: {over})"));
    }
}

/// `c` with its `size` field set to the struct's size.
fn sized<T: Command>(mut c: T) -> T {
    c.as_mut_bytes()[..4].copy_from_slice(&(size_of::<T>() as u32).to_le_bytes());
    c
}

/// FNV-1a, for [`Suite::fingerprint`].
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn bytes(&mut self, b: &[u8]) {
        for x in b {
            self.0 = (self.0 ^ u64::from(*x)).wrapping_mul(0x100_0000_01b3);
        }
    }

    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }

    fn ret(&mut self, r: Ret) {
        let v = match r {
            Ret::Ok => 0,
            Ret::Err(e) => e as i64,
            Ret::Raw(v) => v,
        };
        self.u64(v as u64);
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::string::String;
    use std::vec;
    use std::vec::Vec;

    use super::*;

    /// A "hypervisor" that answers every call with `answer` and touches
    /// nothing: the suite must see that it is broken.
    struct Fake {
        ram: Vec<u8>,
        answer: i64,
        calls: u64,
    }

    const BASE: u64 = sluice_abi::layout::RAM_BASE;

    impl Env for Fake {
        fn arch(&self) -> Arch {
            Arch::X86_64
        }
        fn ram(&self) -> Range<u64> {
            BASE..BASE + MIN_RAM
        }
        fn mmio(&self) -> u64 {
            0xfe80_0000
        }
        fn device(&self) -> u32 {
            1
        }
        fn foreign_device(&self) -> u32 {
            2
        }
        fn call(&mut self, _reg0: u64, _gpa: u64) -> i64 {
            self.calls += 1;
            self.answer
        }
        fn read(&mut self, gpa: u64, buf: &mut [u8]) {
            let at = (gpa - BASE) as usize;
            buf.copy_from_slice(&self.ram[at..at + buf.len()]);
        }
        fn write(&mut self, gpa: u64, data: &[u8]) {
            let at = (gpa - BASE) as usize;
            self.ram[at..at + data.len()].copy_from_slice(data);
        }
        fn fill(&mut self, gpa: u64, len: u64, byte: u8) {
            let at = (gpa - BASE) as usize;
            self.ram[at..at + len as usize].fill(byte);
        }
        fn dma(&mut self, _to_ram: bool, _iova: u64, _len: usize) -> Result<(), DmaError> {
            Ok(())
        }
    }

    struct Lines(Vec<String>);

    impl Sink for Lines {
        fn line(&mut self, text: &str) {
            self.0.push(text.into());
        }
    }

    #[test]
    fn a_hypervisor_that_says_yes_or_no_to_everything_is_caught() {
        for answer in [0, Errno::EINVAL.to_return(), -1] {
            let mut env = Fake { ram: vec![0; MIN_RAM as usize], answer, calls: 0 };
            let mut sink = Lines(Vec::new());
            let sum = run(&mut env, &mut sink);
            assert!(sum.broken > 100, "answer {answer}: only {} broken", sum.broken);
            assert_eq!(sum.lines as usize, sink.0.len());
            assert!(env.calls > 5000);
            assert!(sink.0.last().unwrap().starts_with("suite: cases="));
            assert!(sink.0.iter().all(|l| l.len() <= LINE_CAP));
        }
    }
}
