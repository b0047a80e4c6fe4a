//! The VT-d self-test (`./qemu-run.sh x86_64 --selftest`).
//!
//! Brings up the platform the way the hypervisor will for partitions: ACPI
//! (DMAR, MCFG), PCI over ECAM, one [`VtdUnit`] per DRHD, the core's
//! [`Hypervisor`] on top, two partitions with one edu device each; then
//! the scenario shared with aarch64 ([`sluice_boot::selftest`]): DMA both
//! ways through A's HWPT, the fault after UNMAP, B's blocked device.
//! `tests/qemu/x86_64-selftest.sh` checks QEMU's own trace against the
//! `VTD-FAULT` lines printed here.
//!
//! `selftest=malformed` instead writes a reserved bit into a leaf entry on
//! purpose, to prove the harness notices malformed entries.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use sluice_boot::selftest::{self, BlockedDma, EDU_TIMEOUT_US, Isolation};
use sluice_kernel::Iova;
use sluice_kernel::hv::DeviceConfig;
use sluice_pci::edu::{self, Edu, EduMmio};

use crate::bootinfo::BootInfo;
use crate::machine::{self, Hv, Machine};
use crate::paging::{self, Cache};
use crate::tsc::Tsc;

/// Run the self-test; `Err` says what failed.
pub fn run(boot: &BootInfo) -> Result<(), String> {
    let malformed = boot.option("selftest") == Some("malformed");
    let Machine { mut hv, pci, functions, dmar } = Machine::bring_up(boot)?;
    let edus: Vec<_> = sluice_pci::find(&functions, edu::VENDOR_ID, edu::DEVICE_ID).cloned().collect();
    if edus.len() < 2 {
        return Err(format!("two edu devices needed, found {}", edus.len()));
    }

    let parts = selftest::add_partitions(&mut hv)?;
    let mut devs = Vec::new();
    for (k, f) in edus.iter().take(2).enumerate() {
        let rid = f.bdf.rid();
        let (unit, regions) = machine::placement(&dmar, &pci, f)?;
        let id = hv
            .add_device(DeviceConfig { partition: parts[k], unit, rid: u32::from(rid), dma_bits: 28, regions })
            .map_err(|e| format!("device {}: {e:?}", f.bdf))?;
        let bar0 = edu::enable(&pci, f).map_err(|e| format!("edu {}: {e}", f.bdf))?;
        paging::map_identity(bar0, edu::BAR0_SIZE, Cache::Mmio).map_err(|e| format!("map edu BAR0: {e:?}"))?;
        // SAFETY: BAR0 of this edu, mapped just above; only this test
        // drives the device.
        let dev = Edu::new(unsafe { EduMmio::new(bar0 as usize) });
        dev.check().map_err(|e| format!("edu {}: {e}", f.bdf))?;
        println!("selftest: edu {} rid {rid:#06x} -> unit {unit}, partition {}, device id {id}, BAR0 {bar0:#x}", f.bdf, ["A", "B"][k]);
        devs.push((dev, id));
    }
    let test = Isolation {
        parts,
        edu: [&devs[0].0, &devs[1].0],
        dev_ids: [devs[0].1, devs[1].1],
        clock: &Tsc,
        out: |line| println!("{line}"),
        blocked: BlockedDma::Faults,
    };
    let mapped = test.setup(&mut hv)?;
    if malformed {
        return corrupt_leaf(&mut hv, &devs[0].0, mapped.iova);
    }
    let unmaps = test.run(&mut hv, mapped, &mut |hv| hv.poll_faults())?;

    // What the units recorded, raw, for the harness to compare with QEMU.
    machine::report_faults(&mut hv);
    for (i, u) in hv.units().iter().enumerate() {
        let s = u.stats();
        println!(
            "selftest: unit {i}: invalidations: {} context, {} page-selective, {} domain-selective, {} global; {} waits, {} timeouts, {} faults, {} overflows",
            s.context_invalidations, s.iotlb_pages, s.iotlb_domain, s.iotlb_global, s.waits, s.timeouts, s.faults, s.overflows
        );
    }
    println!("selftest: unmaps={unmaps}");
    println!("selftest: PASS");
    Ok(())
}

/// `selftest=malformed`: set bit 11 (SNP, reserved when ECAP.SC is 0) in
/// the leaf mapping `iova` and DMA through it. QEMU must report the
/// malformed entry; the harness checks that it noticed.
fn corrupt_leaf(hv: &mut Hv, dev: &Edu<EduMmio>, iova: u64) -> Result<(), String> {
    let what = selftest::corrupt_leaf(hv, iova, 1 << 11)?;
    println!("selftest: malformed: set bit 11 in the {what}");
    dev.dma_from_ram(Iova(iova), 0, 64, &Tsc, EDU_TIMEOUT_US).map_err(|e| format!("edu DMA: {e}"))?;
    machine::report_faults(hv);
    Err("malformed-entry mode: this run is meant to be rejected".to_string())
}
