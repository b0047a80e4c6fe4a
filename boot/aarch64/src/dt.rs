//! The flattened device tree (`fdt` crate), turned into plain owned types.
//!
//! Two steps, as for x86_64's boot information: [`RawDt::parse`] runs
//! before the heap exists (memory, reservations, command line, console,
//! PSCI) and keeps fixed-size arrays and borrows of the DTB;
//! [`Devices::parse`] runs once the heap works and collects what the
//! self-test needs: SMMUv3 units, PCIe ECAM hosts (windows, `iommu-map`),
//! the GIC. The DTB itself stays reserved (never given to the frame
//! allocator), so it can be parsed again at any time with [`open`].

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use fdt::Fdt;
use fdt::node::FdtNode;

use crate::bootinfo::Fixed;

/// The DTB header magic (big-endian).
pub const FDT_MAGIC: u32 = 0xd00d_feed;
/// Largest DTB accepted.
pub const MAX_DTB_BYTES: usize = 2 << 20;

/// Why the device tree cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DtError {
    /// No DTB address.
    Missing,
    /// The word at the address is not the FDT magic.
    BadMagic { pa: u64, word: u32 },
    /// Total size out of range.
    BadSize { pa: u64, size: u32 },
    /// The `fdt` crate rejected it.
    Invalid,
}

impl fmt::Display for DtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => f.write_str("no device tree address"),
            Self::BadMagic { pa, word } => write!(f, "no FDT magic at {pa:#x} (found {word:#010x})"),
            Self::BadSize { pa, size } => write!(f, "FDT at {pa:#x} has a bad total size {size:#x}"),
            Self::Invalid => f.write_str("the FDT is malformed"),
        }
    }
}

/// Read a big-endian u32 from the start of `b`.
fn be32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}

/// `cells` big-endian 32-bit cells at the start of `b` as one number.
fn cells_value(b: &[u8], cells: usize) -> Option<u64> {
    let mut v = 0u64;
    for i in 0..cells {
        v = (v << 32) | u64::from(be32(b.get(i * 4..)?)?);
    }
    Some(v)
}

/// The DTB at `pa` (identity-mapped, never written while the hypervisor
/// runs).
pub fn open(pa: u64) -> Result<Fdt<'static>, DtError> {
    if pa == 0 {
        return Err(DtError::Missing);
    }
    // SAFETY: the caller passes the DTB address the loader gave (or QEMU's
    // documented location); its 4 KiB-aligned page lies in the boot map, and
    // the header is 40 bytes, 8-byte aligned per the boot protocol.
    let header = unsafe { core::slice::from_raw_parts(pa as *const u8, 8) };
    let magic = be32(header).unwrap_or(0);
    if magic != FDT_MAGIC {
        return Err(DtError::BadMagic { pa, word: magic });
    }
    let size = be32(&header[4..]).unwrap_or(0);
    if (size as usize) < 40 || size as usize > MAX_DTB_BYTES {
        return Err(DtError::BadSize { pa, size });
    }
    // SAFETY: as above; the DTB is `size` bytes, stays in place and is
    // kept out of the frame allocator, so nothing writes it.
    let bytes = unsafe { core::slice::from_raw_parts(pa as *const u8, size as usize) };
    Fdt::new(bytes).map_err(|_| DtError::Invalid)
}

/// How PSCI is called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PsciConduit {
    /// `smc #0` (what QEMU virt emulates with virtualization=on).
    Smc,
    /// `hvc #0` (would trap to ourselves at EL2: not used).
    Hvc,
}

/// What the early boot needs from the device tree.
#[derive(Debug)]
pub struct RawDt {
    /// RAM: `(base, len)` from every memory node.
    pub memory: Fixed<(u64, u64), 32>,
    /// `/memreserve/` entries and `/reserved-memory` children with a `reg`:
    /// `(start, end)`.
    pub reserved: Fixed<(u64, u64), 32>,
    /// `/chosen bootargs`.
    pub bootargs: &'static str,
    /// The console PL011: `(base, clock Hz)`.
    pub uart: Option<(u64, u32)>,
    /// Whether the UART came from `stdout-path` (else the first `arm,pl011`).
    pub uart_from_stdout_path: bool,
    /// PSCI conduit, when a PSCI node exists.
    pub psci: Option<PsciConduit>,
    /// The DTB's total size in bytes.
    pub total_size: usize,
}

fn first_reg(node: FdtNode<'_, '_>) -> Option<(u64, u64)> {
    let r = node.reg()?.next()?;
    Some((r.starting_address as u64, r.size.unwrap_or(0) as u64))
}

fn has_compatible(node: FdtNode<'_, '_>, what: &[&str]) -> bool {
    node.compatible().is_some_and(|c| c.all().any(|s| what.contains(&s)))
}

fn prop_u32(node: FdtNode<'_, '_>, name: &str) -> Option<u32> {
    be32(node.property(name)?.value)
}

impl RawDt {
    /// Read the early-boot items from `fdt`.
    #[must_use]
    pub fn parse(fdt: &Fdt<'static>) -> Self {
        let mut raw = Self {
            memory: Fixed::new(),
            reserved: Fixed::new(),
            bootargs: "",
            uart: None,
            uart_from_stdout_path: false,
            psci: None,
            total_size: fdt.total_size(),
        };
        for node in fdt.all_nodes() {
            let is_memory = node.property("device_type").and_then(|p| p.as_str()) == Some("memory");
            if is_memory && let Some(regs) = node.reg() {
                for r in regs {
                    let len = r.size.unwrap_or(0) as u64;
                    if len != 0 {
                        raw.memory.push((r.starting_address as u64, len));
                    }
                }
            }
            if has_compatible(node, &["arm,psci-1.0", "arm,psci-0.2", "arm,psci"]) {
                raw.psci = match node.property("method").and_then(|p| p.as_str()) {
                    Some("smc") => Some(PsciConduit::Smc),
                    Some("hvc") => Some(PsciConduit::Hvc),
                    _ => None,
                };
            }
        }
        for r in fdt.memory_reservations() {
            let start = r.address() as u64;
            raw.reserved.push((start, start + r.size() as u64));
        }
        if let Some(rm) = fdt.find_node("/reserved-memory") {
            for child in rm.children() {
                if let Some(regs) = child.reg() {
                    for r in regs {
                        let start = r.starting_address as u64;
                        raw.reserved.push((start, start + r.size.unwrap_or(0) as u64));
                    }
                }
            }
        }
        if let Some(chosen) = fdt.find_node("/chosen") {
            raw.bootargs = chosen.property("bootargs").and_then(|p| p.as_str()).unwrap_or("");
            let stdout = chosen.property("stdout-path").and_then(|p| p.as_str()).map(|s| s.split(':').next().unwrap_or(s));
            if let Some(node) = stdout.and_then(|path| fdt.find_node(path))
                && has_compatible(node, &["arm,pl011"])
                && let Some((base, _)) = first_reg(node)
            {
                raw.uart = Some((base, uart_clock(fdt, node)));
                raw.uart_from_stdout_path = true;
            }
        }
        if raw.uart.is_none()
            && let Some(node) = fdt.find_compatible(&["arm,pl011"])
            && let Some((base, _)) = first_reg(node)
        {
            raw.uart = Some((base, uart_clock(fdt, node)));
        }
        raw
    }
}

/// The PL011's UARTCLK: `clock-frequency` of the node its first `clocks`
/// phandle names, or [`DEFAULT_UART_CLOCK_HZ`](crate::console::DEFAULT_UART_CLOCK_HZ).
fn uart_clock(fdt: &Fdt<'static>, node: FdtNode<'_, '_>) -> u32 {
    prop_u32(node, "clocks")
        .and_then(|ph| fdt.find_phandle(ph))
        .and_then(|clk| prop_u32(clk, "clock-frequency"))
        .unwrap_or(crate::console::DEFAULT_UART_CLOCK_HZ)
}

/// One interrupt specifier of a device node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interrupt {
    /// Its `interrupt-names` entry, if any.
    pub name: Option<String>,
    /// The raw cells (GIC: type (0 SPI, 1 PPI), number, flags).
    pub cells: Vec<u32>,
}

impl Interrupt {
    /// The GIC INTID of a 3-cell GIC specifier (SPI n -> 32 + n, PPI n ->
    /// 16 + n).
    #[must_use]
    pub fn gic_intid(&self) -> Option<u32> {
        match self.cells.as_slice() {
            [0, n, _] => Some(32 + n),
            [1, n, _] => Some(16 + n),
            _ => None,
        }
    }
}

/// An `arm,smmu-v3` node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmmuNode {
    /// Register base (physical).
    pub base: u64,
    /// Register window size.
    pub size: u64,
    /// Its phandle (what `iommu-map` entries refer to).
    pub phandle: Option<u32>,
    /// `#iommu-cells` (1 for SMMUv3: the StreamID).
    pub iommu_cells: u32,
    /// Interrupts (QEMU: eventq, priq, cmdq-sync, gerror).
    pub interrupts: Vec<Interrupt>,
    /// `dma-coherent` present.
    pub dma_coherent: bool,
}

/// Address space of a PCI `ranges` entry (phys.hi bits 25:24).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PciSpace {
    /// Configuration space (not expected in `ranges`).
    Config,
    /// I/O space.
    Io,
    /// 32-bit memory.
    Mem32,
    /// 64-bit memory.
    Mem64,
}

/// One `ranges` window of a PCIe host bridge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciWindow {
    /// CPU physical address.
    pub cpu_addr: u64,
    /// PCI bus address.
    pub pci_addr: u64,
    /// Bytes.
    pub size: u64,
    /// Address space.
    pub space: PciSpace,
    /// Prefetchable (phys.hi bit 30).
    pub prefetchable: bool,
}

/// One `iommu-map` entry: requester ids `rid_base..rid_base+len` map to
/// StreamIDs `sid_base..` of an IOMMU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IommuMapEntry {
    /// First requester id (bus << 8 | devfn).
    pub rid_base: u32,
    /// The IOMMU's phandle.
    pub iommu_phandle: u32,
    /// Index into [`Devices::smmus`] of that IOMMU, when it is an SMMUv3.
    pub smmu_index: Option<usize>,
    /// First StreamID.
    pub sid_base: u32,
    /// Number of ids.
    pub len: u32,
}

/// A `pci-host-ecam-generic` node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciHost {
    /// ECAM base (the node's `reg`).
    pub ecam_base: u64,
    /// ECAM size.
    pub ecam_size: u64,
    /// `linux,pci-domain` (the PCI segment), 0 when absent.
    pub segment: u16,
    /// First bus (`bus-range`).
    pub bus_start: u8,
    /// Last bus.
    pub bus_end: u8,
    /// `ranges`: the windows (I/O and memory).
    pub windows: Vec<PciWindow>,
    /// `iommu-map`.
    pub iommu_map: Vec<IommuMapEntry>,
    /// `iommu-map-mask`, when present.
    pub iommu_map_mask: Option<u32>,
    /// `dma-coherent` present.
    pub dma_coherent: bool,
}

impl PciHost {
    /// The memory windows (32- and 64-bit), without I/O.
    pub fn mmio_windows(&self) -> impl Iterator<Item = &PciWindow> {
        self.windows.iter().filter(|w| matches!(w.space, PciSpace::Mem32 | PciSpace::Mem64))
    }

    /// The StreamID and SMMU index for requester id `rid`, per `iommu-map`.
    #[must_use]
    pub fn stream_id(&self, rid: u16) -> Option<(Option<usize>, u32)> {
        let rid = u32::from(rid) & self.iommu_map_mask.unwrap_or(0xFFFF_FFFF);
        self.iommu_map
            .iter()
            .find(|e| rid >= e.rid_base && rid - e.rid_base < e.len)
            .map(|e| (e.smmu_index, e.sid_base + (rid - e.rid_base)))
    }
}

/// The interrupt controller node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GicNode {
    /// First compatible string (`arm,gic-v3`, `arm,cortex-a15-gic`, ...).
    pub compatible: String,
    /// 3 for GICv3/v4, 2 for GICv2.
    pub version: u8,
    /// Every `reg` entry: GICv3 distributor, redistributor region(s), ...;
    /// GICv2 distributor, CPU interface, ...
    pub regs: Vec<(u64, u64)>,
}

/// A PL011 UART node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UartNode {
    /// Register base.
    pub base: u64,
    /// Register window size.
    pub size: u64,
}

/// The devices the hypervisor drives, from the device tree.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Devices {
    /// `model` of the root node.
    pub model: String,
    /// SMMUv3 units, in tree order.
    pub smmus: Vec<SmmuNode>,
    /// PCIe ECAM host bridges, in tree order.
    pub pci_hosts: Vec<PciHost>,
    /// The GIC.
    pub gic: Option<GicNode>,
    /// Every PL011.
    pub uarts: Vec<UartNode>,
}

fn interrupts(fdt: &Fdt<'static>, node: FdtNode<'_, '_>) -> Vec<Interrupt> {
    let Some(prop) = node.property("interrupts") else { return Vec::new() };
    let parent = prop_u32(node, "interrupt-parent")
        .and_then(|ph| fdt.find_phandle(ph))
        .or_else(|| fdt.find_node("/").and_then(|root| prop_u32(root, "interrupt-parent")).and_then(|ph| fdt.find_phandle(ph)));
    let cells = parent.and_then(|p| prop_u32(p, "#interrupt-cells")).unwrap_or(3).max(1) as usize;
    let mut names = node.property("interrupt-names").map(|p| p.value.split(|&b| b == 0)).into_iter().flatten();
    prop.value
        .chunks_exact(cells * 4)
        .map(|spec| Interrupt {
            name: names.next().and_then(|n| core::str::from_utf8(n).ok()).map(ToString::to_string),
            cells: spec.chunks_exact(4).filter_map(be32).collect(),
        })
        .collect()
}

fn pci_host(fdt: &Fdt<'static>, node: FdtNode<'_, '_>, smmus: &[SmmuNode]) -> Option<PciHost> {
    let (ecam_base, ecam_size) = first_reg(node)?;
    let (bus_start, bus_end) = match node.property("bus-range").map(|p| p.value) {
        Some(v) => (be32(v).unwrap_or(0) as u8, be32(v.get(4..).unwrap_or(&[])).unwrap_or(0xFF) as u8),
        None => (0, ((ecam_size >> 20).clamp(1, 256) - 1) as u8),
    };
    // Child addresses: this node's #address-cells (3 for PCI); parent
    // addresses: the root's (host bridges sit at the root in practice).
    let child_cells = prop_u32(node, "#address-cells").unwrap_or(3) as usize;
    let size_cells = prop_u32(node, "#size-cells").unwrap_or(2) as usize;
    let parent_cells = fdt.find_node("/").and_then(|r| prop_u32(r, "#address-cells")).unwrap_or(2) as usize;
    let entry = (child_cells + parent_cells + size_cells) * 4;
    let mut windows = Vec::new();
    if let Some(ranges) = node.property("ranges") {
        for e in ranges.value.chunks_exact(entry) {
            let hi = be32(e)?;
            let pci_addr = cells_value(&e[4..], child_cells - 1)?;
            let cpu_addr = cells_value(&e[child_cells * 4..], parent_cells)?;
            let size = cells_value(&e[(child_cells + parent_cells) * 4..], size_cells)?;
            let space = match (hi >> 24) & 3 {
                0 => PciSpace::Config,
                1 => PciSpace::Io,
                2 => PciSpace::Mem32,
                _ => PciSpace::Mem64,
            };
            windows.push(PciWindow { cpu_addr, pci_addr, size, space, prefetchable: hi & (1 << 30) != 0 });
        }
    }
    let mut iommu_map = Vec::new();
    if let Some(map) = node.property("iommu-map") {
        let mut rest = map.value;
        while rest.len() >= 16 {
            let rid_base = be32(rest)?;
            let phandle = be32(&rest[4..])?;
            let target = fdt.find_phandle(phandle);
            let cells = target.and_then(|t| prop_u32(t, "#iommu-cells")).unwrap_or(1) as usize;
            let need = (3 + cells) * 4;
            if rest.len() < need {
                break;
            }
            let sid_base = be32(&rest[8..])?;
            let len = be32(&rest[8 + cells * 4..])?;
            let smmu_index = smmus.iter().position(|s| s.phandle == Some(phandle));
            iommu_map.push(IommuMapEntry { rid_base, iommu_phandle: phandle, smmu_index, sid_base, len });
            rest = &rest[need..];
        }
    }
    Some(PciHost {
        ecam_base,
        ecam_size,
        segment: prop_u32(node, "linux,pci-domain").unwrap_or(0) as u16,
        bus_start,
        bus_end,
        windows,
        iommu_map,
        iommu_map_mask: prop_u32(node, "iommu-map-mask"),
        dma_coherent: node.property("dma-coherent").is_some(),
    })
}

impl Devices {
    /// Collect the devices from `fdt` (needs the heap).
    #[must_use]
    pub fn parse(fdt: &Fdt<'static>) -> Self {
        let mut d = Self {
            model: fdt.find_node("/").and_then(|r| r.property("model")).and_then(|p| p.as_str()).unwrap_or("").into(),
            ..Self::default()
        };
        for node in fdt.all_nodes() {
            if has_compatible(node, &["arm,smmu-v3"])
                && let Some((base, size)) = first_reg(node)
            {
                d.smmus.push(SmmuNode {
                    base,
                    size,
                    phandle: prop_u32(node, "phandle").or_else(|| prop_u32(node, "linux,phandle")),
                    iommu_cells: prop_u32(node, "#iommu-cells").unwrap_or(1),
                    interrupts: interrupts(fdt, node),
                    dma_coherent: node.property("dma-coherent").is_some(),
                });
            }
            if has_compatible(node, &["arm,pl011"])
                && let Some((base, size)) = first_reg(node)
            {
                d.uarts.push(UartNode { base, size });
            }
            if d.gic.is_none() && node.property("interrupt-controller").is_some() {
                let compat = node.compatible().map(|c| c.first()).unwrap_or("");
                let version = match compat {
                    "arm,gic-v3" | "arm,gic-v4" => Some(3),
                    "arm,cortex-a15-gic" | "arm,gic-400" | "arm,cortex-a9-gic" | "arm,cortex-a7-gic" => Some(2),
                    _ => None,
                };
                if let Some(version) = version {
                    let regs = node
                        .reg()
                        .map(|r| r.map(|m| (m.starting_address as u64, m.size.unwrap_or(0) as u64)).collect())
                        .unwrap_or_default();
                    d.gic = Some(GicNode { compatible: compat.into(), version, regs });
                }
            }
        }
        // PCI hosts after the SMMUs: their iommu-map refers to them.
        for node in fdt.all_nodes() {
            if has_compatible(node, &["pci-host-ecam-generic"])
                && let Some(host) = pci_host(fdt, node, &d.smmus)
            {
                d.pci_hosts.push(host);
            }
        }
        d
    }
}
