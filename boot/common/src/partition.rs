//! Guest partitions, the part both architectures share: loading a
//! partition's program (an ELF) into its RAM, the start info block, and the
//! scheduler that runs vCPUs and turns their exits into hypercalls, console
//! output and reports. The vCPU itself (an EL1 guest under stage 2 on
//! aarch64, an SVM guest with nested paging on x86_64) is behind [`Vcpu`].
//!
//! Scheduling, on one CPU: partitions run in manifest order, each until it
//! exits, is stopped, or parks. A partition parks by waiting for an
//! interrupt (`WFI` / `HLT`) — it has none, so this means "let the others
//! run": it resumes once every other partition has ended or parked too.
//! That is how the demo's partition B waits for A's attacks before it
//! checks its memory.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt::Arguments;

use elf::ElfBytes;
use elf::abi::{PT_LOAD, PF_X};
use elf::endian::LittleEndian;
use sluice_kernel::abi::{StartDevice, StartInfo, layout};
use sluice_kernel::hv::{DeviceConfig, Hypervisor, PartitionConfig, PhysMem, Region};
use sluice_kernel::hypercall::Outcome;
use sluice_kernel::iommu::Iommu;
use sluice_kernel::memmap::RamRange;
use sluice_kernel::pt::TableMemory;
use sluice_kernel::{Gpa, Hpa};
use sluice_manifest::PartitionSpec;
use sluice_pci::{Bdf, CommandRegister, ConfigRegionAccess, PciFunction, PciSegment};
use zerocopy::IntoBytes;

use crate::frames;

/// Why a vCPU stopped running the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    /// A hypercall: the command number and the GPA argument. The vCPU has
    /// already stepped past the instruction; [`Vcpu::set_return`] gives the
    /// result.
    Hypercall {
        /// Command number.
        nr: u64,
        /// The struct's guest-physical address.
        gpa: u64,
    },
    /// An access the partition's second stage does not allow: outside its
    /// RAM and its devices' registers.
    Fault {
        /// Guest-physical address.
        gpa: u64,
        /// A write (else a read or fetch).
        write: bool,
        /// An instruction fetch.
        fetch: bool,
    },
    /// The guest waits for an interrupt (`WFI`, `HLT`): it parks.
    Park,
    /// Anything else the hypervisor does not handle: the partition stops.
    Other(String),
}

/// One guest vCPU, as the scheduler drives it.
pub trait Vcpu {
    /// Run the guest until its next exit.
    fn run(&mut self) -> Exit;
    /// The hypercall's return value, for the instruction [`Exit::Hypercall`]
    /// stepped past.
    fn set_return(&mut self, value: i64);
    /// The guest's program counter now.
    fn pc(&self) -> u64;
    /// The guest's registers, for a report.
    fn dump(&self) -> String;
}

/// How a partition ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ended {
    /// PARTITION_EXIT with this code.
    Exited(u32),
    /// Stopped by the hypervisor, with the reason.
    Stopped(String),
    /// Never started, with the reason.
    NotStarted(String),
}

impl Ended {
    /// Exited with code 0.
    #[must_use]
    pub fn is_success(&self) -> bool {
        *self == Self::Exited(0)
    }
}

/// Load the ELF `program` into partition `p`'s RAM: every `PT_LOAD`
/// segment at its physical address (GPA), which must lie inside RAM at or
/// above [`layout::IMAGE_BASE_GPA`]; the rest of each segment stays zero
/// (partition RAM starts zeroed). Returns the entry point.
///
/// # Errors
///
/// Not an ELF for this machine, a segment outside the image area, the
/// entry outside an executable segment.
pub fn load_program<U: Iommu, M: TableMemory, R: PhysMem>(hv: &mut Hypervisor<U, M, R>, p: usize, program: &[u8], machine: u16) -> Result<u64, String> {
    let file = ElfBytes::<LittleEndian>::minimal_parse(program).map_err(|e| format!("not an ELF: {e}"))?;
    if file.ehdr.e_machine != machine {
        return Err(format!("ELF for machine {}, this is {machine}", file.ehdr.e_machine));
    }
    let segments = file.segments().ok_or("ELF without program headers")?;
    let mut entry_ok = false;
    let mut loaded = 0;
    for ph in segments.iter().filter(|ph| ph.p_type == PT_LOAD) {
        let start = ph.p_paddr;
        let end = start.checked_add(ph.p_memsz).ok_or("segment wraps")?;
        if start < layout::IMAGE_BASE_GPA || ph.p_filesz > ph.p_memsz || !hv.is_ram(p, start, ph.p_memsz.max(1)) {
            return Err(format!("segment {start:#x}..{end:#x} is outside the partition's image area (RAM from {:#x})", layout::IMAGE_BASE_GPA));
        }
        let offset = usize::try_from(ph.p_offset).map_err(|_| "segment offset")?;
        let len = usize::try_from(ph.p_filesz).map_err(|_| "segment size")?;
        let bytes = program.get(offset..offset.checked_add(len).ok_or("segment size")?).ok_or("segment past the end of the file")?;
        hv.write_guest(p, start, bytes).map_err(|e| format!("load {start:#x}: {e:?}"))?;
        if ph.p_flags & PF_X != 0 && (start..end).contains(&file.ehdr.e_entry) {
            entry_ok = true;
        }
        loaded += 1;
    }
    if loaded == 0 || !entry_ok {
        return Err(format!("entry {:#x} is in no executable segment ({loaded} segments)", file.ehdr.e_entry));
    }
    Ok(file.ehdr.e_entry)
}

/// Write the start info block for partition `p` at
/// [`layout::START_INFO_GPA`].
///
/// # Errors
///
/// More devices than the block holds, or the block is outside RAM.
pub fn write_start_info<U: Iommu, M: TableMemory, R: PhysMem>(
    hv: &mut Hypervisor<U, M, R>,
    p: usize,
    name: &str,
    ram_size: u64,
    devices: &[StartDevice],
) -> Result<(), String> {
    let mut info = StartInfo::new(p as u32, name, layout::RAM_BASE, ram_size);
    for d in devices {
        info.push_device(*d).map_err(|_| format!("more than {} devices", sluice_kernel::abi::START_MAX_DEVICES))?;
    }
    hv.write_guest(p, layout::START_INFO_GPA, info.as_bytes()).map_err(|e| format!("start info: {e:?}"))
}

/// A partition the scheduler runs.
#[derive(Debug)]
pub struct Runnable<V> {
    /// Index in the hypervisor.
    pub partition: usize,
    /// Name, for reports.
    pub name: String,
    /// Its vCPU.
    pub vcpu: V,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Ready,
    Parked,
    Done,
}

/// Longest console line kept before it is printed anyway.
const LINE_MAX: usize = 200;

/// Run `parts` to the end (see the module docs for the order); `out`
/// prints one console line. Returns how each ended, in order.
pub fn run_all<V: Vcpu, U: Iommu, M: TableMemory, R: PhysMem>(
    hv: &mut Hypervisor<U, M, R>,
    parts: &mut [Runnable<V>],
    out: fn(Arguments<'_>),
) -> Vec<Ended> {
    let mut state: Vec<State> = parts.iter().map(|_| State::Ready).collect();
    let mut ended: Vec<Option<Ended>> = parts.iter().map(|_| None).collect();
    let mut lines: Vec<Vec<u8>> = parts.iter().map(|_| Vec::new()).collect();
    loop {
        let next = match state.iter().position(|s| *s == State::Ready) {
            Some(i) => i,
            None if state.contains(&State::Parked) => {
                for s in state.iter_mut().filter(|s| **s == State::Parked) {
                    *s = State::Ready;
                }
                continue;
            }
            None => break,
        };
        let Runnable { partition: p, name, vcpu } = &mut parts[next];
        let p = *p;
        let result = loop {
            let exit = vcpu.run();
            // Faults the partitions' devices made while it ran, before it
            // can ask for them.
            hv.poll_faults();
            match exit {
                Exit::Hypercall { nr, gpa } => {
                    let outcome = hv.hypercall(p, nr, gpa);
                    flush_console(hv, p, name, &mut lines[next], out, false);
                    match outcome {
                        Outcome::Return(v) => vcpu.set_return(v),
                        Outcome::Exit(code) => break Some(Ended::Exited(code)),
                    }
                }
                Exit::Park => break None,
                Exit::Fault { gpa, write, fetch } => {
                    let what = if fetch { "instruction fetch" } else if write { "write" } else { "read" };
                    break Some(Ended::Stopped(format!(
                        "{what} at GPA {gpa:#x} (PC {:#x}), outside its RAM and its devices' registers\n{}",
                        vcpu.pc(),
                        vcpu.dump()
                    )));
                }
                Exit::Other(why) => break Some(Ended::Stopped(format!("{why} (PC {:#x})\n{}", vcpu.pc(), vcpu.dump()))),
            }
        };
        flush_console(hv, p, name, &mut lines[next], out, true);
        match result {
            None => state[next] = State::Parked,
            Some(e) => {
                match &e {
                    Ended::Exited(code) => out(format_args!("[{name}] partition exited with code {code}")),
                    Ended::Stopped(why) => {
                        out(format_args!("[{name}] partition STOPPED by the hypervisor: {why}"));
                    }
                    Ended::NotStarted(_) => {}
                }
                // Nothing of it may stay reachable: block its devices.
                for d in 0..hv.devices().len() {
                    if hv.devices()[d].partition == p {
                        let id = hv.devices()[d].id;
                        if let Err(err) = hv.detach(p, id) {
                            out(format_args!("[{name}] detach of device {id} failed: {err:?}"));
                        }
                    }
                }
                state[next] = State::Done;
                ended[next] = Some(e);
            }
        }
    }
    ended.into_iter().map(|e| e.unwrap_or_else(|| Ended::Stopped("never ended".into()))).collect()
}

/// Print what partition `p` wrote to its console, line by line, prefixed
/// with its name; a partial line waits for its end unless `all`.
fn flush_console<U: Iommu, M: TableMemory, R: PhysMem>(
    hv: &mut Hypervisor<U, M, R>,
    p: usize,
    name: &str,
    pending: &mut Vec<u8>,
    out: fn(Arguments<'_>),
    all: bool,
) {
    pending.extend(hv.partition_mut(p).take_console());
    // Up to and with the next newline, at most LINE_MAX bytes.
    while let Some(end) = pending.iter().position(|&b| b == b'\n').map(|nl| nl + 1).or((pending.len() >= LINE_MAX).then_some(LINE_MAX)) {
        let line: Vec<u8> = pending.drain(..end.min(LINE_MAX)).collect();
        print_line(name, &line, out);
    }
    if all && !pending.is_empty() {
        let line = core::mem::take(pending);
        print_line(name, &line, out);
    }
}

fn print_line(name: &str, line: &[u8], out: fn(Arguments<'_>)) {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches(['\n', '\r']);
    // Partition text is untrusted: no control characters reach the console.
    let clean: String = text.chars().map(|c| if c.is_control() { '.' } else { c }).collect();
    out(format_args!("[{name}] {clean}"));
}

/// Run `parts` ([`run_all`]), then print how each ended, with the ones
/// that never started (`not_started`: name and reason), and check the
/// core's invariants. Returns whether every partition started and exited
/// with code 0 and the invariants hold.
pub fn run_and_report<V: Vcpu, U: Iommu, M: TableMemory, R: PhysMem>(
    hv: &mut Hypervisor<U, M, R>,
    parts: &mut [Runnable<V>],
    not_started: &[(&str, String)],
    out: fn(Arguments<'_>),
) -> bool {
    let ended = run_all(hv, parts, out);
    hv.poll_faults();
    out(format_args!("sluice: partitions:"));
    let mut all_ok = not_started.is_empty();
    for (r, e) in parts.iter().zip(&ended) {
        all_ok &= e.is_success();
        match e {
            Ended::Exited(code) => out(format_args!("sluice:   {}: exited with code {code}", r.name)),
            Ended::Stopped(why) => out(format_args!("sluice:   {}: stopped: {}", r.name, why.lines().next().unwrap_or(""))),
            Ended::NotStarted(why) => out(format_args!("sluice:   {}: not started: {why}", r.name)),
        }
    }
    for (name, why) in not_started {
        out(format_args!("sluice:   {name}: not started: {why}"));
    }
    if let Err(e) = hv.check_invariants() {
        out(format_args!("sluice: core invariants BROKEN: {e}"));
        all_ok = false;
    }
    all_ok
}

/// A partition's second stage (aarch64 stage 2, x86_64 nested paging).
pub trait SecondStage {
    /// Map `[gpa, gpa + len)` to host-physical `hpa`, read-write: RAM, or
    /// a device's registers (`mmio`: Device / uncached).
    ///
    /// # Errors
    ///
    /// No memory for tables, or the range cannot be mapped.
    fn map(&mut self, gpa: u64, hpa: u64, len: u64, mmio: bool) -> Result<(), String>;
}

/// Where the platform puts one of a partition's PCI functions.
#[derive(Debug)]
pub struct Placement {
    /// IOMMU unit index.
    pub unit: usize,
    /// Requester id or StreamID on that unit.
    pub rid: u32,
    /// Platform reserved regions (MSI window, RMRRs).
    pub regions: Vec<Region>,
    /// Its assigned memory BARs: slot, CPU address, size.
    pub bars: Vec<(u8, u64, u64)>,
}

/// Make partition `spec`: check its program is in `programs` and each of
/// its devices is among `functions` (and where `place` puts it) before
/// anything is made; then its RAM (zeroed, at [`layout::RAM_BASE`]), the
/// partition and its devices in the core, `stage` mapping the RAM and the
/// devices' BARs (at their CPU addresses), memory decoding and bus
/// mastering on, the program loaded (`machine`: ELF e_machine) and the
/// start info written. Returns the partition's index and entry point.
///
/// # Errors
///
/// What is missing or failed, for the "partition NOT STARTED" report.
#[allow(clippy::too_many_arguments)]
pub fn create<U: Iommu, M: TableMemory, R: PhysMem, A: ConfigRegionAccess>(
    hv: &mut Hypervisor<U, M, R>,
    pci: &PciSegment<A>,
    functions: &[PciFunction],
    spec: &PartitionSpec,
    programs: &[(&str, &[u8])],
    machine: u16,
    place: &dyn Fn(&PciFunction) -> Result<Placement, String>,
    stage: &mut dyn SecondStage,
    out: fn(Arguments<'_>),
) -> Result<(usize, u64), String> {
    let program = programs.iter().find(|(n, _)| *n == spec.program).map(|(_, b)| *b).ok_or_else(|| format!("program {} is not in the image", spec.program))?;
    let mut devices = Vec::new();
    for a in spec.devices {
        let bdf = Bdf::new(a.bus, a.dev, a.func);
        let f = functions.iter().find(|f| f.segment == a.segment && f.bdf == bdf).ok_or_else(|| format!("device {a} does not exist on this machine"))?;
        let placed = place(f)?;
        let ram = layout::RAM_BASE..layout::RAM_BASE + spec.ram_bytes;
        if let Some(&(slot, cpu, _)) = placed.bars.iter().find(|&&(_, cpu, size)| cpu < ram.end && ram.start < cpu + size) {
            return Err(format!("device {a} BAR{slot} at {cpu:#x} overlaps the partition's RAM"));
        }
        devices.push((f, placed));
    }
    if spec.ram_host.is_some() {
        return Err("a fixed host RAM placement (ram_host) is not supported on this platform yet".into());
    }
    let pages = usize::try_from(spec.ram_bytes / 4096).map_err(|_| "RAM size")?;
    let hpa = frames::alloc_zeroed(pages).ok_or_else(|| format!("no {} MiB of RAM left", spec.ram_bytes >> 20))?;
    let cfg = PartitionConfig {
        name: spec.name.into(),
        ram: vec![RamRange { gpa: Gpa(layout::RAM_BASE), len: spec.ram_bytes, hpa: Hpa(hpa) }],
        pin_limit: spec.pin_limit,
        max_areas: 1 << 16,
    };
    let p = hv.add_partition(cfg).map_err(|e| format!("{e:?}"))?;
    stage.map(layout::RAM_BASE, hpa, spec.ram_bytes, false)?;
    let mut start_devices = Vec::new();
    for (f, placed) in devices {
        let is_edu = f.vendor_id == sluice_pci::edu::VENDOR_ID && f.device_id == sluice_pci::edu::DEVICE_ID;
        let dma_bits = if is_edu { 28 } else { 64 };
        let Placement { unit, rid, regions, bars } = placed;
        let id = hv.add_device(DeviceConfig { partition: p, unit, rid, dma_bits, regions }).map_err(|e| format!("device {}: {e:?}", f.bdf))?;
        for &(_, cpu, size) in &bars {
            stage.map(cpu, cpu, size.next_multiple_of(4096), true)?;
        }
        pci.update_command(f.bdf, CommandRegister::MEMORY_ENABLE | CommandRegister::BUS_MASTER_ENABLE, true)
            .map_err(|e| format!("device {}: {e:?}", f.bdf))?;
        let (bar0, bar0_size) = bars.iter().find(|b| b.0 == 0).map_or((0, 0), |&(_, cpu, size)| (cpu, size));
        start_devices.push(StartDevice {
            dev_id: id,
            seg_bdf: StartDevice::encode_seg_bdf(f.segment, f.bdf.bus(), f.bdf.dev(), f.bdf.func()),
            bar0_gpa: bar0,
            bar0_size,
            dma_bits,
            reserved: 0,
        });
        out(format_args!("[{}] device {} (requester/stream id {rid:#x} on IOMMU unit {unit}) as device {id}, BAR0 {bar0:#x}+{bar0_size:#x}", spec.name, f.bdf));
    }
    let entry = load_program(hv, p, program, machine)?;
    write_start_info(hv, p, spec.name, spec.ram_bytes, &start_devices)?;
    out(format_args!(
        "[{}] {} MiB RAM at GPA {:#x} (host {hpa:#x}), program {} ({} bytes, entry {entry:#x})",
        spec.name,
        spec.ram_bytes >> 20,
        layout::RAM_BASE,
        spec.program,
        program.len()
    ));
    Ok((p, entry))
}

/// The last line of a partitions run, from what the platform's `run`
/// returned (`Ok(all partitions exited 0)` or a bring-up error); whether
/// the run succeeded.
pub fn verdict(result: &Result<bool, String>, out: fn(Arguments<'_>)) -> bool {
    match result {
        Ok(true) => out(format_args!("sluice: every partition exited 0: every isolation check held")),
        Ok(false) => out(format_args!("sluice: FAILED: a partition did not start, was stopped or exited non-zero")),
        Err(e) => out(format_args!("sluice: platform bring-up FAILED: {e}")),
    }
    result == &Ok(true)
}
