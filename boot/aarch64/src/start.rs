//! `kmain`: the Rust side of the boot, from the console to the self-test
//! and out through semihosting.

use aarch64_cpu::registers::{ID_AA64MMFR0_EL1, MIDR_EL1, Readable, SCTLR_EL2};
use sluice_kernel::time::Clock;

use crate::bootinfo::{BootInfo, DtbSource};
use sluice_boot::cmdline_option;
use crate::dt::{Devices, PciSpace, RawDt};
use crate::entry::QEMU_VIRT_RAM_BASE;
use crate::platform::exit;
use crate::{console, dt, frames, heap, memory, partitions, platform, selftest, timer};

/// Console base used only when the device tree names no PL011 (QEMU virt's
/// UART0); reported when used.
const FALLBACK_UART: (u64, u32) = (0x0900_0000, console::DEFAULT_UART_CLOCK_HZ);

/// The Rust entry, called by `entry` at EL2 with the MMU on (boot map), on
/// the boot stack, with x0 as the loader left it (DTB address or 0).
#[unsafe(no_mangle)]
extern "C" fn kmain(x0: u64) -> ! {
    let (dtb_pa, source) = if x0 != 0 { (x0, DtbSource::Register) } else { (QEMU_VIRT_RAM_BASE, DtbSource::QemuElfFallback) };
    let fdt = dt::open(dtb_pa);
    let raw = fdt.as_ref().ok().map(RawDt::parse);
    let (uart, clock) = raw.as_ref().and_then(|r| r.uart).unwrap_or(FALLBACK_UART);
    // SAFETY: the UART base comes from the device tree (or is QEMU virt's
    // UART0); the boot map covers it as Device memory; only the console uses
    // it.
    unsafe { console::init(uart, clock) };
    println!();
    println!("Sluice {} (aarch64, EL2)", env!("CARGO_PKG_VERSION"));
    let (fdt, raw) = match (fdt, raw) {
        (Ok(fdt), Some(raw)) => (fdt, raw),
        (Err(e), _) => {
            println!("boot: x0 = {x0:#x}: {e}");
            exit(false);
        }
        (Ok(_), None) => exit(false),
    };
    match source {
        DtbSource::Register => println!("boot: DTB at {dtb_pa:#x} (x0), {} bytes", raw.total_size),
        DtbSource::QemuElfFallback => {
            println!("boot: x0 = 0; DTB found at the start of RAM, {dtb_pa:#x} (QEMU ELF boot), {} bytes", raw.total_size);
        }
    }
    match raw.uart {
        Some((base, hz)) => println!(
            "console: PL011 at {base:#x} ({}), UARTCLK {hz} Hz",
            if raw.uart_from_stdout_path { "/chosen stdout-path" } else { "first arm,pl011 node" }
        ),
        None => println!("console: no PL011 in the device tree; FALLBACK {uart:#x} (QEMU virt UART0)"),
    }
    platform::set_psci(raw.psci);
    let level = match cmdline_option(raw.bootargs, "log") {
        Some("trace") => log::LevelFilter::Trace,
        Some("debug") => log::LevelFilter::Debug,
        Some("warn") => log::LevelFilter::Warn,
        Some("error") => log::LevelFilter::Error,
        Some("off") => log::LevelFilter::Off,
        _ => log::LevelFilter::Info,
    };
    console::init_logger(level);

    match memory::init_paging(&raw) {
        Ok(pages) => println!("paging: final EL2 map live ({pages} table pages): RAM Normal WB, 0..1 TiB Device-nGnRnE, stack guard"),
        Err(e) => {
            println!("paging: cannot build the final map: {e:?}");
            exit(false);
        }
    }
    let boot = memory::init(&raw, dtb_pa, source, || Devices::parse(&fdt));
    let timer = timer::calibrate();
    report(&boot, timer);

    if let Some(what) = boot.option("crash") {
        crash(what);
        println!("crash: {what:?} did not stop the hypervisor");
        exit(false);
    }

    if let Err(e) = platform::smoke_check(&boot) {
        println!("sluice: platform check FAILED: {e}");
        exit(false);
    }

    if boot.option("selftest").is_some() {
        let result = selftest::run(&boot);
        println!("sluice: {} us since reset (generic timer)", timer::GenericTimer.now_us());
        match result {
            Ok(()) => {
                println!("sluice: platform checks and the SMMUv3 self-test passed");
                exit(true)
            }
            Err(e) => {
                println!("sluice: self-test FAILED: {e}");
                exit(false)
            }
        }
    }
    let result = partitions::run(&boot);
    println!("sluice: {} us since reset (generic timer)", timer::GenericTimer.now_us());
    exit(sluice_boot::partition::verdict(&result, |line| println!("{line}")))
}

/// Called by `entry` instead of `kmain` when not entered at EL2 (MMU off,
/// relocated, .bss zeroed): say so on the device tree's PL011 and stop.
#[unsafe(no_mangle)]
extern "C" fn kmain_wrong_el(x0: u64, el: u64) -> ! {
    let dtb_pa = if x0 != 0 { x0 } else { QEMU_VIRT_RAM_BASE };
    let (uart, clock) = dt::open(dtb_pa).ok().and_then(|f| RawDt::parse(&f).uart).unwrap_or(FALLBACK_UART);
    // SAFETY: the device tree's PL011 (or QEMU virt's UART0); the MMU is
    // off, so it is accessed as device memory.
    unsafe { console::init(uart, clock) };
    println!();
    println!("sluice: entered at EL{el}, but the hypervisor needs EL2 (QEMU: -M virt,virtualization=on); stopping");
    exit(false)
}

fn report(boot: &BootInfo, (hz, how): (u64, timer::Calibration)) {
    let d = &boot.devices;
    println!("boot: model \"{}\", cmdline \"{}\"", d.model, boot.cmdline);
    let ram: u64 = boot.ram.iter().map(|&(_, len)| len).sum();
    for &(base, len) in &boot.ram {
        println!("memory: RAM      {:#014x}..{:#014x} {:>9} KiB", base, base + len, len >> 10);
    }
    for &(base, len) in &boot.reserved {
        println!("memory: reserved {:#014x}..{:#014x} {:>9} KiB", base, base + len, len >> 10);
    }
    let (image_start, image_end) = memory::image_range();
    println!(
        "RAM {} MiB; image {image_start:#x}..{image_end:#x}; DTB {:#x}..{:#x} ({:?}); free RAM:",
        ram >> 20,
        boot.dtb_pa,
        boot.dtb_pa + boot.dtb_len,
        boot.dtb_source
    );
    for &(s, len) in &boot.free_ram {
        println!("  {:#014x}..{:#014x} {:>9} KiB", s, s + len, len >> 10);
    }
    let free = frames::free_frames();
    println!("frames: {free} free ({} MiB) of {}", (free as u64 * frames::FRAME_BYTES) >> 20, frames::total_frames());
    let (used, total) = heap::stats();
    println!("heap: {} KiB used of {} KiB", used >> 10, total >> 10);

    for (i, s) in d.smmus.iter().enumerate() {
        let irqs: alloc::vec::Vec<alloc::string::String> = s
            .interrupts
            .iter()
            .map(|q| alloc::format!("{}={}", q.name.as_deref().unwrap_or("?"), q.gic_intid().map_or(-1, i64::from)))
            .collect();
        println!(
            "dt: smmu{i}: arm,smmu-v3 at {:#x} size {:#x}, phandle {:#x}, #iommu-cells {}, irqs [{}]{}",
            s.base,
            s.size,
            s.phandle.unwrap_or(0),
            s.iommu_cells,
            irqs.join(" "),
            if s.dma_coherent { ", dma-coherent" } else { "" }
        );
    }
    if d.smmus.is_empty() {
        println!("dt: no arm,smmu-v3 node");
    }
    for (i, h) in d.pci_hosts.iter().enumerate() {
        println!(
            "dt: pci{i}: ECAM {:#x} size {:#x}, segment {}, buses {}..={}, {} MMIO window(s)",
            h.ecam_base,
            h.ecam_size,
            h.segment,
            h.bus_start,
            h.bus_end,
            h.mmio_windows().count()
        );
        for w in &h.windows {
            let kind = match w.space {
                PciSpace::Config => "config",
                PciSpace::Io => "io",
                PciSpace::Mem32 => "mem32",
                PciSpace::Mem64 => "mem64",
            };
            println!(
                "dt: pci{i}:   {kind:<5}{} cpu {:#x} pci {:#x} size {:#x}",
                if w.prefetchable { " pref" } else { "     " },
                w.cpu_addr,
                w.pci_addr,
                w.size
            );
        }
        for e in &h.iommu_map {
            println!(
                "dt: pci{i}:   iommu-map rid {:#x}..{:#x} -> {} sid {:#x}",
                e.rid_base,
                e.rid_base + e.len,
                e.smmu_index.map_or(alloc::format!("phandle {:#x} (not an SMMUv3)", e.iommu_phandle), |s| alloc::format!("smmu{s}")),
                e.sid_base
            );
        }
    }
    if let Some(h) = d.pci_hosts.first()
        && let Some((smmu, sid)) = h.stream_id(0x0010)
    {
        println!("dt: pci0: requester 00:02.0 -> StreamID {sid:#x} on smmu{}", smmu.map_or(-1, |s| s as i64));
    }
    if d.pci_hosts.is_empty() {
        println!("dt: no pci-host-ecam-generic node");
    }
    match &d.gic {
        Some(g) => {
            let regs: alloc::vec::Vec<alloc::string::String> = g.regs.iter().map(|&(b, s)| alloc::format!("{b:#x}+{s:#x}")).collect();
            println!("dt: gic: {} (v{}) regs {}", g.compatible, g.version, regs.join(" "));
        }
        None => println!("dt: no GIC node"),
    }
    let pa_bits = match ID_AA64MMFR0_EL1.get() & 0xF {
        0 => 32,
        1 => 36,
        2 => 40,
        3 => 42,
        4 => 44,
        5 => 48,
        _ => 52,
    };
    println!("cpu: MIDR {:#010x}, PA {pa_bits} bits, SCTLR_EL2 {:#x}", MIDR_EL1.get(), SCTLR_EL2.get());
    println!("timer: {}.{:03} MHz ({how:?})", hz / 1_000_000, (hz / 1_000) % 1_000);
}

/// `crash=...`: provoke an exception on purpose, to see (and test) the
/// exception report.
fn crash(what: &str) {
    println!("crash: provoking {what}");
    match what {
        "brk" => {
            // SAFETY: brk raises a synchronous exception (EC 0x3C) whose
            // handler reports and exits.
            unsafe { core::arch::asm!("brk #0x5a", options(nomem, nostack)) };
        }
        "abort" => {
            let mut value: u64;
            // SAFETY: reads an address no table maps (L0 slot 128, 64 TiB);
            // the data abort handler reports and exits.
            unsafe {
                core::arch::asm!("ldr {0}, [{1}]", out(reg) value, in(reg) 0x0000_4000_dead_b000u64, options(nostack, readonly))
            };
            println!("crash: read {value:#x}?");
        }
        "stack" => {
            // SAFETY: stores below SP until the guard page under the boot
            // stack is hit. The exception entry then cannot push its frame
            // either and faults again, until SP has walked through the guard
            // page into the .bss below it (which it overwrites: the report
            // comes from that nested fault, FAR = the guard page). There is
            // no separate exception stack yet.
            unsafe { core::arch::asm!("2:", "str xzr, [sp, #-16]!", "b 2b", options(noreturn)) };
        }
        other => println!("crash: unknown option {other:?} (brk, abort, stack)"),
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    eprintln!();
    eprintln!("!!! PANIC: {info}");
    exit(false)
}
