//! `kmain`: the Rust side of the boot, from the console to the self-test
//! and out through QEMU's isa-debug-exit.

use sluice_kernel::time::Clock;

use crate::bootinfo::{BootInfo, RawBoot};
use sluice_boot::cmdline_option;
use crate::platform::qemu_exit;
use crate::{partitions, console, cpu, exceptions, frames, heap, memory, paging, platform, selftest, tsc};

/// The Rust entry, called by `entry` on the boot stack with the loader's
/// eax (boot magic) and ebx (information structure address).
#[unsafe(no_mangle)]
extern "C" fn kmain(boot_magic: u32, info_pa: u64) -> ! {
    console::init();
    cpu::init();
    exceptions::init();
    paging::init_guard_page();
    println!();
    println!("Sluice {} (x86_64)", env!("CARGO_PKG_VERSION"));

    let raw = match RawBoot::parse(boot_magic, info_pa) {
        Ok(raw) => raw,
        Err(e) => {
            println!("boot: {e}");
            qemu_exit(false);
        }
    };
    let level = match cmdline_option(raw.cmdline_str(), "log") {
        Some("trace") => log::LevelFilter::Trace,
        Some("debug") => log::LevelFilter::Debug,
        Some("warn") => log::LevelFilter::Warn,
        Some("error") => log::LevelFilter::Error,
        Some("off") => log::LevelFilter::Off,
        _ => log::LevelFilter::Info,
    };
    console::init_logger(level);

    let boot = memory::init(&raw);
    let tsc = tsc::calibrate();
    report(&boot, info_pa, tsc);

    if let Some(what) = boot.option("crash") {
        crash(what);
        println!("crash: {what:?} did not stop the hypervisor");
        qemu_exit(false);
    }

    if let Err(e) = platform::smoke_check(&boot) {
        println!("sluice: platform check FAILED: {e}");
        qemu_exit(false);
    }

    if boot.option("selftest").is_some() {
        let result = selftest::run(&boot);
        println!("sluice: {} us since reset (TSC)", tsc::Tsc.now_us());
        match result {
            Ok(()) => {
                println!("sluice: self-test passed");
                qemu_exit(true)
            }
            Err(e) => {
                println!("sluice: self-test FAILED: {e}");
                qemu_exit(false)
            }
        }
    }
    let result = partitions::run(&boot);
    println!("sluice: {} us since reset (TSC)", tsc::Tsc.now_us());
    qemu_exit(sluice_boot::partition::verdict(&result, |line| println!("{line}")))
}

fn report(boot: &BootInfo, info_pa: u64, (hz, how): (u64, tsc::Calibration)) {
    println!("boot: {:?}, info at {info_pa:#x}, cmdline \"{}\"", boot.protocol, boot.cmdline);
    println!("memory map:");
    for r in &boot.memory_map {
        println!("  {:#014x}..{:#014x} {:>9} KiB  {}", r.base, r.base.saturating_add(r.len), r.len >> 10, r.kind_name());
    }
    let ram: u64 = boot.ram.iter().map(|&(_, len)| len).sum();
    let (image_start, image_end) = memory::image_range();
    println!("RAM {} MiB; image {image_start:#x}..{image_end:#x}; free RAM:", ram >> 20);
    for &(s, len) in &boot.free_ram {
        println!("  {:#014x}..{:#014x} {:>9} KiB", s, s + len, len >> 10);
    }
    match boot.rsdp_pa {
        Some(pa) => {
            // Signature (8), checksum (1), OEM id (6), revision (1).
            let rsdp = platform::phys_bytes(pa, 16);
            let text = |b: &[u8]| core::str::from_utf8(b).unwrap_or("?").trim_end().into();
            let (sig, oem): (alloc::string::String, alloc::string::String) = (text(&rsdp[..8]), text(&rsdp[9..15]));
            println!("acpi: RSDP at {pa:#x}: \"{sig}\", OEM \"{oem}\", revision {}", rsdp[15]);
        }
        None => println!("acpi: no RSDP from the loader"),
    }
    for &(base, len) in &boot.modules {
        println!("module: {base:#x}..{:#x}", base + len);
    }
    let free = frames::free_frames();
    println!("frames: {free} free ({} MiB) of {}", (free as u64 * frames::FRAME_BYTES) >> 20, frames::total_frames());
    let (used, total) = heap::stats();
    println!("heap: {} KiB used of {} KiB", used >> 10, total >> 10);
    let vendor = cpu::vendor();
    println!(
        "cpu: {}, SVM {}, NPT {}, NX {}, invariant TSC {}",
        core::str::from_utf8(&vendor).unwrap_or("?"),
        cpu::has_svm(),
        cpu::has_npt(),
        cpu::nx_enabled(),
        cpu::has_invariant_tsc()
    );
    println!("tsc: {}.{:03} MHz ({how:?})", hz / 1_000_000, (hz / 1_000) % 1_000);
}

/// `crash=...`: provoke an exception on purpose, to see (and test) the
/// exception report.
fn crash(what: &str) {
    println!("crash: provoking {what}");
    match what {
        "ud2" => {
            // SAFETY: ud2 raises #UD, whose handler reports and exits.
            unsafe { core::arch::asm!("ud2", options(nomem, nostack)) };
        }
        "pf" => {
            let mut value: u64;
            // SAFETY: reads an address no table maps (PML4 slot 128); the
            // #PF handler reports and exits.
            unsafe {
                core::arch::asm!("mov {0}, [{1}]", out(reg) value, in(reg) 0x0000_4000_dead_b000u64, options(nostack, readonly))
            };
            println!("crash: read {value:#x}?");
        }
        "gp" => {
            let mut value: u64;
            // SAFETY: a non-canonical address raises #GP; the handler
            // reports and exits.
            unsafe {
                core::arch::asm!("mov {0}, [{1}]", out(reg) value, in(reg) 0x8000_0000_0000_0000u64, options(nostack, readonly))
            };
            println!("crash: read {value:#x}?");
        }
        "stack" => {
            // SAFETY: pushes until the guard page under the boot stack is
            // hit: #PF cannot push its frame, so #DF runs on its IST stack,
            // reports and exits.
            unsafe { core::arch::asm!("2:", "push rax", "jmp 2b", options(noreturn)) };
        }
        "triple" => {
            let empty = x86_64::structures::DescriptorTablePointer { limit: 0, base: x86_64::VirtAddr::zero() };
            // SAFETY: deliberately leaves no usable IDT: the ud2 below then
            // cannot be delivered (#UD -> #GP -> #DF -> triple fault), and
            // with -no-reboot QEMU exits with status 0.
            unsafe { x86_64::instructions::tables::lidt(&empty) };
            // SAFETY: see above; nothing returns from here.
            unsafe { core::arch::asm!("ud2", options(nomem, nostack)) };
        }
        other => println!("crash: unknown option {other:?} (ud2, pf, gp, stack, triple)"),
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    eprintln!();
    eprintln!("!!! PANIC: {info}");
    qemu_exit(false)
}
