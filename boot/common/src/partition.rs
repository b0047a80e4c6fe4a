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
//!
//! When a partition ends (exit or stop) the core resets it
//! ([`Hypervisor::reset_partition`]): its devices blocked with the
//! invalidations completed, its objects destroyed, its pins released, its
//! RAM zeroed. If its manifest entry allows `restarts`, its program is
//! loaded again and it starts over, with `StartInfo::resets` counting.
//!
//! After every exit the scheduler polls the IOMMUs' fault records; a device
//! that passed its partition's `fault_limit` gets its PCI bus mastering
//! switched off here (the core already told its partition).

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

/// Writes bytes into a partition's RAM at a GPA ([`Vcpu::restart`]).
pub type GuestWrite<'a> = dyn FnMut(u64, &[u8]) -> Result<(), String> + 'a;

/// One guest vCPU, as the scheduler drives it.
pub trait Vcpu {
    /// Run the guest until its next exit.
    fn run(&mut self) -> Exit;
    /// The hypercall's return value, for the instruction [`Exit::Hypercall`]
    /// stepped past.
    fn set_return(&mut self, value: i64);
    /// Put the vCPU back in its start state, entering `entry`; `write`
    /// writes the partition's (freshly zeroed) RAM if the start state needs
    /// anything there (x86_64: the guest's page tables).
    ///
    /// # Errors
    ///
    /// Writing the RAM failed.
    fn restart(&mut self, entry: u64, write: &mut GuestWrite<'_>) -> Result<(), String>;
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
    info.resets = hv.partition(p).resets();
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
    /// What starting it again takes.
    pub boot: Boot,
}

/// What [`create`] used to start a partition, kept for a restart and for
/// switching its devices' bus mastering off.
#[derive(Debug)]
pub struct Boot {
    /// Its program (an ELF) and the ELF machine.
    pub program: &'static [u8],
    /// ELF e_machine.
    pub machine: u16,
    /// Bytes of RAM.
    pub ram_size: u64,
    /// Its devices as the start info lists them.
    pub devices: Vec<StartDevice>,
    /// Restarts left.
    pub restarts: u32,
}

/// PCI config access the scheduler needs: bus mastering of a function
/// (segment, bus, device, function as in [`StartDevice::seg_bdf`]; one
/// segment, so the segment bits are left out).
pub trait BusMaster {
    /// Switch bus mastering of the function `seg_bdf` on or off.
    ///
    /// # Errors
    ///
    /// The function is not there.
    fn set_bus_master(&self, seg_bdf: u32, on: bool) -> Result<(), String>;
}

impl<A: ConfigRegionAccess> BusMaster for PciSegment<A> {
    fn set_bus_master(&self, seg_bdf: u32, on: bool) -> Result<(), String> {
        let bdf = Bdf::new(
            (seg_bdf >> 8) as u8,
            ((seg_bdf >> 3) & 0x1f) as u8,
            (seg_bdf & 7) as u8,
        );
        PciSegment::set_bus_master(self, bdf, on).map_err(|e| format!("{e:?}"))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Ready,
    Parked,
    Done,
}

/// Install the core's heap budget over the hypervisor heap
/// ([`crate::heap::CoreBudget`], less [`HEAP_MARGIN`]): from here on a
/// command that would outgrow the heap fails with ENOMEM instead of the
/// allocator panicking. Call once the platform is up, before partitions
/// are made.
pub fn install_heap_budget<U: Iommu, M: TableMemory, R: PhysMem>(hv: &mut Hypervisor<U, M, R>) {
    hv.set_heap_budget(alloc::boxed::Box::new(crate::heap::CoreBudget::new(HEAP_MARGIN)));
}

/// Heap kept out of the core's budget (`heap::CoreBudget`) for what the
/// platform allocates while partitions run (console lines, reports) and
/// for fragmentation.
pub const HEAP_MARGIN: usize = 256 * 1024;

/// Longest console line kept before it is printed anyway.
const LINE_MAX: usize = 200;

/// Run `parts` to the end (see the module docs for the order); `out`
/// prints one console line; `pci` switches quarantined devices' bus
/// mastering off. Returns how each ended, in order.
pub fn run_all<V: Vcpu, U: Iommu, M: TableMemory, R: PhysMem>(
    hv: &mut Hypervisor<U, M, R>,
    parts: &mut [Runnable<V>],
    pci: &dyn BusMaster,
    out: fn(Arguments<'_>),
) -> Vec<Ended> {
    let mut state: Vec<State> = parts.iter().map(|_| State::Ready).collect();
    let mut ended: Vec<Option<Ended>> = parts.iter().map(|_| None).collect();
    let mut lines: Vec<Vec<u8>> = parts.iter().map(|_| Vec::new()).collect();
    // Per device of the core: done switching it off, and its PCI address.
    let mut bus_off = vec![false; hv.devices().len()];
    let seg_bdf: Vec<Option<u32>> = hv
        .devices()
        .iter()
        .map(|d| {
            let run = parts.iter().find(|r| r.partition == d.partition)?;
            run.boot
                .devices
                .iter()
                .find(|s| s.dev_id == d.id)
                .map(|s| s.seg_bdf)
        })
        .collect();
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
        let Runnable {
            partition: p,
            name,
            vcpu,
            ..
        } = &mut parts[next];
        let p = *p;
        let name = name.clone();
        let name = name.as_str();
        let result = loop {
            let exit = vcpu.run();
            // Faults the partitions' devices made while it ran, before it
            // can ask for them.
            poll_faults(hv, &mut bus_off, &seg_bdf, pci, out);
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
        let Some(e) = result else {
            state[next] = State::Parked;
            continue;
        };
        match &e {
            Ended::Exited(code) => out(format_args!("[{name}] partition exited with code {code}")),
            Ended::Stopped(why) => out(format_args!(
                "[{name}] partition STOPPED by the hypervisor: {why}"
            )),
            Ended::NotStarted(_) => {}
        }
        // Nothing of it may stay reachable: reset it (devices blocked
        // first, RAM zeroed last), then maybe start it again.
        state[next] = State::Done;
        ended[next] = Some(e);
        match hv.reset_partition(p) {
            Ok(r) => {
                out(format_args!(
                    "[{name}] partition reset: {} devices blocked, {} IOAS destroyed, {} pinned pages released, {} KiB of RAM zeroed",
                    r.devices_blocked,
                    r.objects_destroyed,
                    r.pins_released,
                    r.bytes_scrubbed >> 10
                ));
                let run = &mut parts[next];
                if run.boot.restarts > 0 {
                    run.boot.restarts -= 1;
                    match restart(hv, run) {
                        Ok(entry) => {
                            out(format_args!(
                                "[{name}] partition starting again (reset {}, entry {entry:#x})",
                                hv.partition(p).resets()
                            ));
                            state[next] = State::Ready;
                            ended[next] = None;
                        }
                        Err(why) => {
                            out(format_args!("[{name}] partition NOT RESTARTED: {why}"));
                            ended[next] = Some(Ended::Stopped(format!("restart failed: {why}")));
                        }
                    }
                }
            }
            Err(e) => out(format_args!(
                "[{name}] partition reset FAILED ({e:?}): an IOMMU did not confirm; its RAM stays out of use"
            )),
        }
    }
    ended.into_iter().map(|e| e.unwrap_or_else(|| Ended::Stopped("never ended".into()))).collect()
}

/// Load `run`'s program into its freshly reset RAM, write its start
/// info, and put its vCPU back at the entry. Returns the entry.
fn restart<V: Vcpu, U: Iommu, M: TableMemory, R: PhysMem>(
    hv: &mut Hypervisor<U, M, R>,
    run: &mut Runnable<V>,
) -> Result<u64, String> {
    let p = run.partition;
    let entry = load_program(hv, p, run.boot.program, run.boot.machine)?;
    write_start_info(hv, p, &run.name, run.boot.ram_size, &run.boot.devices)?;
    run.vcpu.restart(entry, &mut |gpa, bytes| {
        hv.write_guest(p, gpa, bytes)
            .map_err(|e| format!("write {gpa:#x}: {e:?}"))
    })?;
    Ok(entry)
}

/// Poll the units' fault records into the partitions' queues and switch
/// bus mastering off for each device that was newly quarantined
/// (`bus_off`: per device index, done already).
fn poll_faults<U: Iommu, M: TableMemory, R: PhysMem>(
    hv: &mut Hypervisor<U, M, R>,
    bus_off: &mut [bool],
    seg_bdf: &[Option<u32>],
    pci: &dyn BusMaster,
    out: fn(Arguments<'_>),
) {
    hv.poll_faults();
    for (d, off) in bus_off.iter_mut().enumerate() {
        let dev = &hv.devices()[d];
        if dev.quarantined && !*off {
            *off = true;
            let name = hv.partition(dev.partition).name();
            match seg_bdf[d].map(|seg_bdf| (seg_bdf, pci.set_bus_master(seg_bdf, false))) {
                Some((seg_bdf, Ok(()))) => out(format_args!(
                    "[{name}] device {} ({:02x}:{:02x}.{}) passed the fault limit ({} fault records): bus mastering switched off",
                    dev.id,
                    (seg_bdf >> 8) & 0xff,
                    (seg_bdf >> 3) & 0x1f,
                    seg_bdf & 7,
                    dev.faults
                )),
                Some((_, Err(e))) => out(format_args!(
                    "[{name}] device {}: switching bus mastering off FAILED: {e}",
                    dev.id
                )),
                None => out(format_args!(
                    "[{name}] device {}: no PCI address to switch bus mastering off",
                    dev.id
                )),
            }
        }
    }
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
    pci: &dyn BusMaster,
    out: fn(Arguments<'_>),
) -> bool {
    let ended = run_all(hv, parts, pci, out);
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
    out(format_args!("sluice: core heap: {} bytes charged at the end, {} bytes of the heap free", hv.heap_charged(), crate::heap::free_bytes()));
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
/// start info written. Returns the partition's index, its entry point and
/// what a restart needs.
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
    programs: &[(&str, &'static [u8])],
    machine: u16,
    place: &dyn Fn(&PciFunction) -> Result<Placement, String>,
    stage: &mut dyn SecondStage,
    out: fn(Arguments<'_>),
) -> Result<(usize, u64, Boot), String> {
    let program = programs
        .iter()
        .find(|(n, _)| *n == spec.program)
        .map(|(_, b)| *b)
        .ok_or_else(|| format!("program {} is not in the image", spec.program))?;
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
    hv.set_fault_limit(p, spec.fault_limit);
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
    let boot = Boot {
        program,
        machine,
        ram_size: spec.ram_bytes,
        devices: start_devices,
        restarts: spec.restarts,
    };
    Ok((p, entry, boot))
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
