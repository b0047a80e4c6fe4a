//! The SMMUv3 self-test (`./qemu-run.sh aarch64 --selftest`): not written
//! yet. It will bring up the platform the way the hypervisor will for
//! partitions: the SMMUv3 units and PCIe host from [`BootInfo::devices`],
//! the core's `Hypervisor` on top, edu devices DMAing through it.

use alloc::string::String;

use crate::bootinfo::BootInfo;

/// Run the self-test; `Err` says what failed.
pub fn run(boot: &BootInfo) -> Result<(), String> {
    log::info!(
        "selftest: not written yet ({} SMMU(s), {} PCIe host(s) found)",
        boot.devices.smmus.len(),
        boot.devices.pci_hosts.len()
    );
    Ok(())
}
