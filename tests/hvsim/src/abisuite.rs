//! `hvsim abi-suite --arch x86_64|aarch64`: the ABI suite
//! (`sluice-abi-suite`) through the real core on a simulated machine
//! built like the QEMU machine `tests/qemu/abi.sh` boots with
//! `manifests/tests/abi-ARCH.toml`, so that both print the same
//! transcript:
//!
//! - the IOMMU as the hypervisor configures QEMU's: x86_64 one VT-d unit
//!   with 4-level (48-bit) tables and 2 MiB / 1 GiB leaves (q35,
//!   `intel-iommu,aw-bits=48`, DMAR host address width 48); aarch64 one
//!   SMMUv3 in stage 2 with IAS = OAS = 44 bits (QEMU virt's SMMUv3 has
//!   OAS 44; the driver uses it for both);
//! - three partitions as in the manifest, each with 8 MiB of RAM at GPA
//!   0x4000_0000 and a pin limit of 1024 pages: `suite` with one edu,
//!   `wild` with none, `witness` with two;
//! - edu devices as the boot code makes them: 28-bit DMA, requester ids
//!   (= StreamIDs) of their PCI slots (q35 00:03.0-00:05.0, virt
//!   00:02.0-00:04.0), on x86_64 the MSI window as a reserved region;
//! - the calling convention of the vCPU glue: x86_64 passes `rax` whole,
//!   aarch64 decodes the SMCCC function id and answers NOT_SUPPORTED (-1)
//!   outside the ABI's range; pending IOMMU faults are collected before
//!   every hypercall, as the scheduler does after every exit;
//! - the edu's DMA (a 4 KiB buffer, copies through the simulated IOMMU; a
//!   refused transfer moves nothing and leaves a fault record).

use std::ops::Range;

use sluice_abi_suite::{Arch, DmaError, Env, Sink, Summary};
use sluice_kernel::abi::{layout, resv_type};
use sluice_kernel::hv::{DeviceConfig, Hypervisor, PartitionConfig, PhysMem, Region};
use sluice_kernel::hypercall::{Outcome, smccc_command};
use sluice_kernel::iova::Range as IovaRange;
use sluice_kernel::memmap::RamRange;
use sluice_kernel::pt::VecTableMemory;
use sluice_kernel::{Gpa, Hpa};

use crate::script::{Hv, RAM_BASE, TABLE_BASE};
use crate::sim::{SimRam, SimUnit, UnitKind};

/// RAM of every partition (the manifests' `ram = "8M"`).
pub const RAM_SIZE: u64 = 8 << 20;
/// GiB.
const GIB: u64 = 1 << 30;

/// The machine for one architecture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Architecture.
    pub arch: Arch,
    /// The unit.
    pub unit: UnitKind,
    /// Requester ids of the suite's device and the witness's two.
    pub rids: [u32; 3],
    /// Where the suite's device's BAR0 is (only: not RAM).
    pub mmio: u64,
}

impl Config {
    /// QEMU's machine for `arch` as `tests/qemu/abi.sh` boots it.
    #[must_use]
    pub fn qemu(arch: Arch) -> Self {
        match arch {
            Arch::X86_64 => Self {
                arch,
                unit: UnitKind::Vtd { aw: 48, caching_mode: false },
                // q35: 00:03.0, 00:04.0, 00:05.0.
                rids: [0x18, 0x20, 0x28],
                mmio: 0xfe90_0000,
            },
            Arch::Aarch64 => Self {
                arch,
                unit: UnitKind::SmmuV3 { stage: 2, ias: 44, oas: 44 },
                // virt: 00:02.0, 00:03.0, 00:04.0 (00:01.0 is the NIC).
                rids: [0x10, 0x18, 0x20],
                mmio: 0x1000_0000,
            },
        }
    }
}

/// The simulated machine with the suite's partition as the caller.
#[derive(Debug)]
pub struct SimEnv {
    /// The core.
    pub hv: Hv,
    arch: Arch,
    mmio: u64,
    /// Partition indices: suite, wild, witness.
    pub parts: [usize; 3],
    /// Global device indices: the suite's, the witness's two.
    pub devices: [usize; 3],
    edu: Box<[u8; 4096]>,
    /// PARTITION_EXIT's code, if the suite's partition exited.
    pub exited: Option<u32>,
    /// Console bytes the suite's partition wrote.
    pub console: Vec<u8>,
}

impl SimEnv {
    /// Build the machine of `cfg`.
    ///
    /// # Errors
    ///
    /// The core refused the configuration.
    pub fn new(cfg: &Config) -> Result<Self, String> {
        let unit = SimUnit::new(cfg.unit, &[0x20_0000, 0x4000_0000])?;
        let mut hv: Hv = Hypervisor::new(vec![unit], VecTableMemory::new(Hpa(TABLE_BASE)), SimRam::default());
        let mut parts = [0; 3];
        for (i, name) in ["suite", "wild", "witness"].into_iter().enumerate() {
            let hpa = RAM_BASE + i as u64 * GIB;
            let ram = vec![RamRange { gpa: Gpa(layout::RAM_BASE), len: RAM_SIZE, hpa: Hpa(hpa) }];
            let cfgp = PartitionConfig { name: name.into(), ram, pin_limit: sluice_abi_suite::PIN_LIMIT, max_areas: 1 << 16 };
            parts[i] = hv.add_partition(cfgp).map_err(|e| format!("{e:?}"))?;
        }
        let regions = match cfg.arch {
            Arch::X86_64 => vec![Region { range: IovaRange { start: 0xfee0_0000, last: 0xfeef_ffff }, kind: resv_type::MSI }],
            Arch::Aarch64 => Vec::new(),
        };
        let mut devices = [0; 3];
        for (i, (&rid, p)) in cfg.rids.iter().zip([parts[0], parts[2], parts[2]]).enumerate() {
            let dc = DeviceConfig { partition: p, unit: 0, rid, dma_bits: sluice_abi_suite::DMA_BITS, regions: regions.clone() };
            hv.add_device(dc).map_err(|e| format!("{e:?}"))?;
            devices[i] = hv.devices().len() - 1;
        }
        Ok(Self { hv, arch: cfg.arch, mmio: cfg.mmio, parts, devices, edu: Box::new([0; 4096]), exited: None, console: Vec::new() })
    }

    fn p(&self) -> usize {
        self.parts[0]
    }
}

impl Env for SimEnv {
    fn arch(&self) -> Arch {
        self.arch
    }

    fn ram(&self) -> Range<u64> {
        layout::RAM_BASE..layout::RAM_BASE + RAM_SIZE
    }

    fn mmio(&self) -> u64 {
        self.mmio
    }

    fn device(&self) -> u32 {
        self.hv.devices()[self.devices[0]].id
    }

    fn foreign_device(&self) -> u32 {
        self.hv.devices()[self.devices[2]].id
    }

    fn call(&mut self, reg0: u64, gpa: u64) -> i64 {
        assert!(self.exited.is_none(), "the suite called the hypervisor after PARTITION_EXIT");
        self.hv.poll_faults();
        let nr = match self.arch {
            Arch::X86_64 => Some(reg0),
            Arch::Aarch64 => smccc_command(reg0),
        };
        let Some(nr) = nr else { return sluice_kernel::abi::SMCCC_NOT_SUPPORTED };
        let p = self.p();
        let ret = match self.hv.hypercall(p, nr, gpa) {
            Outcome::Return(v) => v,
            Outcome::Exit(code) => {
                self.exited = Some(code);
                0
            }
        };
        let bytes = self.hv.partition_mut(p).take_console();
        self.console.extend(bytes);
        ret
    }

    fn read(&mut self, gpa: u64, buf: &mut [u8]) {
        let p = self.p();
        self.hv.read_guest(p, gpa, buf).unwrap_or_else(|e| panic!("the suite read {gpa:#x}+{:#x}: {e:?}", buf.len()));
    }

    fn write(&mut self, gpa: u64, data: &[u8]) {
        let p = self.p();
        self.hv.write_guest(p, gpa, data).unwrap_or_else(|e| panic!("the suite wrote {gpa:#x}+{:#x}: {e:?}", data.len()));
    }

    fn fill(&mut self, gpa: u64, len: u64, byte: u8) {
        let chunk = [byte; 4096];
        let mut at = gpa;
        while at < gpa + len {
            let n = (gpa + len - at).min(4096);
            self.write(at, &chunk[..n as usize]);
            at += n;
        }
    }

    fn dma(&mut self, to_ram: bool, iova: u64, len: usize) -> Result<(), DmaError> {
        if len == 0 || len > 4096 {
            return Err(DmaError);
        }
        let d = &self.hv.devices()[self.devices[0]];
        let (unit, rid) = (d.unit, d.rid);
        let m = self.hv.machine();
        match m.units[unit].dma(rid, iova, len as u64, to_ram, m.mem) {
            Ok(pieces) => {
                let mut off = 0usize;
                for (pa, n) in pieces {
                    let n = n as usize;
                    if to_ram {
                        PhysMem::write(m.ram, Hpa(pa), &self.edu[off..off + n]);
                    } else {
                        PhysMem::read(&*m.ram, Hpa(pa), &mut self.edu[off..off + n]);
                    }
                    off += n;
                }
            }
            // edu completes a refused transfer all the same; the fault
            // reaches the partition as on the machine (the fault
            // interrupt: drained as it happens).
            Err(_) => self.hv.poll_faults(),
        }
        Ok(())
    }
}

/// Lines to stdout.
#[derive(Debug, Default)]
pub struct Stdout;

impl Sink for Stdout {
    fn line(&mut self, text: &str) {
        println!("{text}");
    }
}

/// Lines into a vector.
#[derive(Debug, Default)]
pub struct Collect(pub Vec<String>);

impl Sink for Collect {
    fn line(&mut self, text: &str) {
        self.0.push(text.to_string());
    }
}

/// What [`run`] found besides the suite's own summary.
#[derive(Debug)]
pub struct Outcomes {
    /// The suite's summary.
    pub summary: Summary,
    /// Problems of the machine after the run (invariants, the other
    /// partitions' devices no longer blocked, an exit).
    pub problems: Vec<String>,
}

/// Run the suite on the machine of `cfg`, lines to `sink`.
///
/// # Errors
///
/// The machine could not be built.
pub fn run(cfg: &Config, sink: &mut dyn Sink) -> Result<Outcomes, String> {
    let mut env = SimEnv::new(cfg)?;
    let summary = sluice_abi_suite::run(&mut env, sink);
    let mut problems = Vec::new();
    if let Some(code) = env.exited {
        problems.push(format!("the suite's partition exited with code {code} during the run"));
    }
    if let Err(e) = env.hv.check_invariants() {
        problems.push(format!("core invariants: {e}"));
    }
    for &d in &env.devices[1..] {
        let dev = &env.hv.devices()[d];
        if dev.attached.is_some() {
            problems.push(format!("the witness's device {} (rid {:#x}) is attached", dev.id, dev.rid));
        }
    }
    for &p in &env.parts[1..] {
        if env.hv.partition(p).pinned() != 0 {
            problems.push(format!("partition {p} has pins"));
        }
    }
    Ok(Outcomes { summary, problems })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_suite_holds_on_both_machines_and_is_deterministic() {
        for arch in [Arch::X86_64, Arch::Aarch64] {
            let cfg = Config::qemu(arch);
            let mut a = Collect::default();
            let out = run(&cfg, &mut a).unwrap();
            let broken: Vec<&String> = a.0.iter().filter(|l| l.contains("!!")).collect();
            assert!(broken.is_empty(), "{arch:?}: {broken:#?}");
            assert_eq!(out.summary.broken, 0);
            assert!(out.problems.is_empty(), "{:?}", out.problems);
            assert_eq!(out.summary.lines as usize, a.0.len());
            let mut b = Collect::default();
            run(&cfg, &mut b).unwrap();
            assert_eq!(a.0, b.0, "{arch:?}: two runs differ");
        }
    }

    #[test]
    fn a_different_machine_gives_a_different_transcript() {
        // The comparison with QEMU can fail: a 39-bit VT-d unit, or
        // another requester id, changes lines.
        let base = Config::qemu(Arch::X86_64);
        let mut a = Collect::default();
        run(&base, &mut a).unwrap();
        for cfg in [Config { unit: UnitKind::Vtd { aw: 39, caching_mode: false }, ..base.clone() }, Config { rids: [0x30, 0x20, 0x28], ..base.clone() }] {
            let mut b = Collect::default();
            run(&cfg, &mut b).unwrap();
            assert_ne!(a.0, b.0, "{cfg:?}");
        }
    }
}
