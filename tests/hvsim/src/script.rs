//! The script language of shared/design/HVSIM.md: machine statements,
//! calls with expectations, simulated DMA, memory and walks.

use std::collections::HashMap;
use std::fmt::Write as _;

use sluice_kernel::abi::{self, Errno, resv_type};
use sluice_kernel::hv::{DeviceConfig, Hypervisor, PartitionConfig, Region};
use sluice_kernel::hypercall::Outcome;
use sluice_kernel::iova::Range;
use sluice_kernel::memmap::RamRange;
use sluice_kernel::pt::VecTableMemory;
use sluice_kernel::{Gpa, Hpa};

use crate::sim::{SimRam, SimUnit, UnitKind};

/// The core on the simulated machine.
pub type Hv = Hypervisor<SimUnit, VecTableMemory, SimRam>;

/// Where table pages live in the simulated host-physical space.
pub const TABLE_BASE: u64 = 0x10_0000_0000;
/// Where partition RAM starts in the simulated host-physical space.
pub const RAM_BASE: u64 = 0x40_0000_0000;
const GIB: u64 = 1 << 30;

/// The result of one statement: a status (`ok`, `err NAME`, `fault`,
/// `fail`) and named output fields.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reply {
    /// `ok`, `err EINVAL`, `fault`, `fail ...`.
    pub status: String,
    /// Output fields, in print order.
    pub fields: Vec<(String, String)>,
}

impl Reply {
    fn ok() -> Self {
        Self { status: "ok".into(), fields: Vec::new() }
    }

    fn with(mut self, name: &str, value: String) -> Self {
        self.fields.push((name.into(), value));
        self
    }

    /// The line `run` prints.
    #[must_use]
    pub fn line(&self) -> String {
        let mut s = self.status.clone();
        for (k, v) in &self.fields {
            let _ = write!(s, " {k}={v}");
        }
        s
    }
}

fn hex(v: u64) -> String {
    format!("{v:#x}")
}

fn hex_bytes(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Parse a number: decimal or 0x hex.
pub fn number(s: &str) -> Option<u64> {
    if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(&h.replace('_', ""), 16).ok()
    } else {
        s.replace('_', "").parse().ok()
    }
}

fn parse_hex(s: &str) -> Result<Vec<u8>, String> {
    if s.len() % 2 != 0 {
        return Err(format!("odd number of hex digits in {s}"));
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|_| format!("bad hex {s}"))).collect()
}

/// Whether two printed values are equal: `data` as bytes, everything else
/// token by token with numbers compared by value.
#[must_use]
pub fn same_value(field: &str, want: &str, got: &str) -> bool {
    if field == "data" {
        return want.eq_ignore_ascii_case(got);
    }
    fn tokens(s: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut cur = String::new();
        for c in s.chars() {
            if c.is_ascii_alphanumeric() || c == '_' {
                cur.push(c);
            } else {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                out.push(c.to_string());
            }
        }
        if !cur.is_empty() {
            out.push(cur);
        }
        out
    }
    let (a, b) = (tokens(want), tokens(got));
    a.len() == b.len()
        && a.iter().zip(&b).all(|(x, y)| match (number(x), number(y)) {
            (Some(m), Some(n)) => m == n,
            _ => x == y,
        })
}

/// Field layout of a command struct: (name, offset, width in bytes).
fn layout(name: &str) -> Option<&'static [(&'static str, usize, usize)]> {
    Some(match name {
        "destroy" => &[("size", 0, 4), ("id", 4, 4)],
        "ioas_alloc" => &[("size", 0, 4), ("flags", 4, 4), ("out_ioas_id", 8, 4)],
        "ioas_allow_iovas" => &[("size", 0, 4), ("ioas_id", 4, 4), ("num_iovas", 8, 4), ("__reserved", 12, 4), ("allowed_iovas", 16, 8)],
        "ioas_copy" => &[
            ("size", 0, 4),
            ("flags", 4, 4),
            ("dst_ioas_id", 8, 4),
            ("src_ioas_id", 12, 4),
            ("length", 16, 8),
            ("dst_iova", 24, 8),
            ("src_iova", 32, 8),
        ],
        "ioas_iova_ranges" => &[
            ("size", 0, 4),
            ("ioas_id", 4, 4),
            ("num_iovas", 8, 4),
            ("__reserved", 12, 4),
            ("allowed_iovas", 16, 8),
            ("out_iova_alignment", 24, 8),
        ],
        "ioas_map" => &[
            ("size", 0, 4),
            ("flags", 4, 4),
            ("ioas_id", 8, 4),
            ("__reserved", 12, 4),
            ("gpa", 16, 8),
            ("length", 24, 8),
            ("iova", 32, 8),
        ],
        "ioas_unmap" => &[("size", 0, 4), ("ioas_id", 4, 4), ("iova", 8, 8), ("length", 16, 8)],
        "option" => &[("size", 0, 4), ("option_id", 4, 4), ("op", 8, 2), ("__reserved", 10, 2), ("object_id", 12, 4), ("val64", 16, 8)],
        "get_hw_info" => &[
            ("size", 0, 4),
            ("flags", 4, 4),
            ("dev_id", 8, 4),
            ("data_len", 12, 4),
            ("data_gpa", 16, 8),
            ("out_data_type", 24, 4),
            ("out_max_pasid_log2", 28, 1),
            ("__reserved", 29, 3),
            ("out_capabilities", 32, 8),
        ],
        "device_list" => &[("size", 0, 4), ("num_devices", 4, 4), ("devices", 8, 8)],
        "device_attach" => &[("size", 0, 4), ("flags", 4, 4), ("dev_id", 8, 4), ("pt_id", 12, 4)],
        "device_detach" => &[("size", 0, 4), ("dev_id", 4, 4)],
        "device_resv_iova_ranges" => &[("size", 0, 4), ("dev_id", 4, 4), ("num_iovas", 8, 4), ("__reserved", 12, 4), ("resv_iovas", 16, 8)],
        "fault_read" => &[
            ("size", 0, 4),
            ("flags", 4, 4),
            ("num_faults", 8, 4),
            ("__reserved", 12, 4),
            ("faults", 16, 8),
            ("out_lost", 24, 8),
        ],
        "console_write" => &[("size", 0, 4), ("len", 4, 4), ("buf", 8, 8)],
        "partition_exit" => &[("size", 0, 4), ("code", 4, 4)],
        _ => return None,
    })
}

/// The array or buffer pointer of a command, its count field, the
/// element size and the default count.
fn array_of(cmd: &str) -> Option<(&'static str, &'static str, usize, u64)> {
    Some(match cmd {
        "ioas_allow_iovas" => ("allowed_iovas", "num_iovas", 16, 0),
        "ioas_iova_ranges" => ("allowed_iovas", "num_iovas", 16, 16),
        "device_list" => ("devices", "num_devices", 24, 16),
        "device_resv_iova_ranges" => ("resv_iovas", "num_iovas", 24, 16),
        "fault_read" => ("faults", "num_faults", 24, 16),
        "get_hw_info" => ("data_gpa", "data_len", 1, 64),
        "console_write" => ("buf", "len", 1, 0),
        _ => return None,
    })
}

/// Output fields printed after a call, in order.
fn outputs(cmd: &str) -> &'static [&'static str] {
    match cmd {
        "ioas_alloc" => &["out_ioas_id"],
        "ioas_copy" => &["dst_iova"],
        "ioas_iova_ranges" => &["num_iovas", "allowed_iovas", "out_iova_alignment"],
        "ioas_map" => &["iova"],
        "ioas_unmap" => &["length"],
        "option" => &["val64"],
        "get_hw_info" => &["data_len", "out_data_type", "out_max_pasid_log2", "out_capabilities", "data"],
        "device_list" => &["num_devices", "devices"],
        "device_attach" => &["pt_id"],
        "device_resv_iova_ranges" => &["num_iovas", "resv_iovas"],
        "fault_read" => &["num_faults", "faults", "out_lost"],
        _ => &[],
    }
}

fn main_output(cmd: &str) -> Option<&'static str> {
    match cmd {
        "ioas_alloc" => Some("out_ioas_id"),
        "ioas_map" => Some("iova"),
        "ioas_copy" => Some("dst_iova"),
        "device_attach" => Some("pt_id"),
        _ => None,
    }
}

fn named_value(field: &str, v: &str) -> Option<u64> {
    let one = |n: &str| -> Option<u64> {
        match (field, n) {
            ("flags", "fixed") => Some(1),
            ("flags", "write") => Some(2),
            ("flags", "read") => Some(4),
            ("op", "set") => Some(0),
            ("op", "get") => Some(1),
            ("option_id", "rlimit_mode") => Some(0),
            ("option_id", "huge_pages") => Some(1),
            _ => number(n),
        }
    };
    v.split('|').map(one).try_fold(0u64, |acc, x| x.map(|x| acc | x))
}

#[derive(Debug)]
struct SimPartition {
    index: usize,
    scratch: u64,
    ram_end: u64,
}

#[derive(Clone, Copy, Debug)]
struct SimDevice {
    index: usize,
    id: u32,
}

/// One script's machine and variables.
#[derive(Debug)]
pub struct Sim {
    /// The core.
    pub hv: Hv,
    units: HashMap<String, usize>,
    parts: HashMap<String, SimPartition>,
    devices: HashMap<String, SimDevice>,
    vars: HashMap<String, u64>,
    next_hpa: u64,
}

impl Default for Sim {
    fn default() -> Self {
        Self::new()
    }
}

type Args<'a> = Vec<(&'a str, String)>;

impl Sim {
    /// An empty machine.
    #[must_use]
    pub fn new() -> Self {
        Self {
            hv: Hypervisor::new(Vec::new(), VecTableMemory::new(Hpa(TABLE_BASE)), SimRam::default()),
            units: HashMap::new(),
            parts: HashMap::new(),
            devices: HashMap::new(),
            vars: HashMap::new(),
            next_hpa: RAM_BASE,
        }
    }

    fn subst(&self, v: &str) -> Result<String, String> {
        if let Some(name) = v.strip_prefix('$') {
            return self.vars.get(name).map(|x| hex(*x)).ok_or_else(|| format!("unknown variable ${name}"));
        }
        Ok(v.to_string())
    }

    fn args<'a>(&self, toks: &[&'a str]) -> Result<(Args<'a>, Option<&'a str>), String> {
        let mut out = Vec::new();
        let mut as_var = None;
        let mut i = 0;
        while i < toks.len() {
            if toks[i] == "as" {
                as_var = Some(*toks.get(i + 1).ok_or("`as` needs a name")?);
                i += 2;
                continue;
            }
            let (k, v) = toks[i].split_once('=').ok_or_else(|| format!("expected name=value, got {}", toks[i]))?;
            out.push((k, self.subst(v)?));
            i += 1;
        }
        Ok((out, as_var))
    }

    /// Run one statement (without its expectation).
    pub fn statement(&mut self, line: &str) -> Result<Reply, String> {
        let toks: Vec<&str> = line.split_whitespace().collect();
        let Some(&first) = toks.first() else { return Err("empty statement".into()) };
        match first {
            "iommu" => self.iommu(&toks[1..]),
            "partition" => self.partition(&toks[1..]),
            "device" => self.device(&toks[1..]),
            "dma" => self.dma(&toks[1..]),
            "mem" => self.mem(&toks[1..]),
            "walk" => self.walk(&toks[1..]),
            "reset" => self.reset(&toks[1..]),
            "invariants" => Ok(match self.invariants() {
                Ok(()) => Reply::ok(),
                Err(e) => Reply { status: format!("fail {e}"), fields: Vec::new() },
            }),
            p if self.parts.contains_key(p) => {
                let cmd = toks.get(1).ok_or("a call needs a command")?;
                self.call(p, cmd, &toks[2..])
            }
            other => Err(format!("unknown statement or partition `{other}`")),
        }
    }

    fn iommu(&mut self, toks: &[&str]) -> Result<Reply, String> {
        let name = *toks.first().ok_or("iommu needs a name")?;
        let (args, _) = self.args(&toks[1..])?;
        let get = |k: &str| args.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        let num = |k: &str, d: u64| -> Result<u64, String> { get(k).map_or(Ok(d), |v| number(v).ok_or_else(|| format!("bad {k}={v}"))) };
        let leaves = |k: &str| -> Result<Vec<u64>, String> {
            let v = get(k).unwrap_or("2m,1g");
            v.split(',')
                .filter(|s| !s.is_empty() && *s != "none")
                .map(|s| match s {
                    "2m" => Ok(0x20_0000),
                    "1g" => Ok(0x4000_0000),
                    _ => Err(format!("bad leaf size {s}")),
                })
                .collect()
        };
        let (kind, sizes) = match get("kind") {
            Some("vtd") => (UnitKind::Vtd { aw: num("aw", 48)? as u32, caching_mode: num("caching_mode", 0)? != 0 }, leaves("superpages")?),
            Some("smmuv3") => (
                UnitKind::SmmuV3 { stage: num("stage", 2)? as u8, ias: num("ias", 48)? as u32, oas: num("oas", 44)? as u32 },
                leaves("blocks")?,
            ),
            other => return Err(format!("iommu kind={other:?}: vtd or smmuv3")),
        };
        let unit = SimUnit::new(kind, &sizes)?;
        let idx = self.hv.add_unit(unit);
        self.units.insert(name.into(), idx);
        Ok(Reply::ok())
    }

    fn partition(&mut self, toks: &[&str]) -> Result<Reply, String> {
        let name = *toks.first().ok_or("partition needs a name")?;
        let (args, _) = self.args(&toks[1..])?;
        let mut ram = Vec::new();
        let mut pin_limit = u64::MAX;
        let mut max_areas = sluice_kernel::hv::DEFAULT_MAX_AREAS;
        let mut fault_limit = sluice_kernel::hv::DEFAULT_FAULT_LIMIT;
        for (k, v) in &args {
            match *k {
                "ram" => {
                    for part in v.split(',') {
                        let (s, l) = part.split_once(':').ok_or_else(|| format!("ram range {part}: START:SIZE"))?;
                        let (gpa, len) = (number(s).ok_or("bad ram start")?, number(l).ok_or("bad ram size")?);
                        let base = self.next_hpa.div_ceil(GIB) * GIB;
                        let hpa = base + (gpa % GIB);
                        self.next_hpa = hpa.checked_add(len).ok_or("ram too large")?;
                        ram.push(RamRange { gpa: Gpa(gpa), len, hpa: Hpa(hpa) });
                    }
                }
                "pin_limit" => pin_limit = number(v).ok_or("bad pin_limit")?,
                "max_areas" => max_areas = number(v).ok_or("bad max_areas")?,
                "fault_limit" => fault_limit = number(v).ok_or("bad fault_limit")?,
                _ => return Err(format!("unknown partition field {k}")),
            }
        }
        let top = ram.iter().max_by_key(|r| r.gpa).ok_or("partition needs ram=")?;
        let ram_end = top.gpa.raw() + top.len;
        let scratch = ram_end - 4096;
        let index = self
            .hv
            .add_partition(PartitionConfig {
                name: name.into(),
                ram,
                pin_limit,
                max_areas,
            })
            .map_err(|e| format!("{e:?}"))?;
        self.hv.set_fault_limit(index, fault_limit);
        self.parts.insert(
            name.into(),
            SimPartition {
                index,
                scratch,
                ram_end,
            },
        );
        Ok(Reply::ok())
    }

    fn device(&mut self, toks: &[&str]) -> Result<Reply, String> {
        let name = *toks.first().ok_or("device needs a name")?;
        let (args, _) = self.args(&toks[1..])?;
        let get = |k: &str| args.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
        let part = get("partition").ok_or("device needs partition=")?;
        let p = self.parts.get(&part).ok_or_else(|| format!("unknown partition {part}"))?.index;
        let unit_name = get("iommu").ok_or("device needs iommu=")?;
        let unit = *self.units.get(&unit_name).ok_or_else(|| format!("unknown iommu {unit_name}"))?;
        let rid = number(&get("rid").ok_or("device needs rid=")?).ok_or("bad rid")? as u32;
        let dma_bits = get("dma_bits").map_or(Ok(64), |v| number(&v).ok_or("bad dma_bits"))? as u32;
        let mut regions = Vec::new();
        if matches!(self.hv.units()[unit].kind(), UnitKind::Vtd { .. }) {
            regions.push(Region { range: Range { start: 0xfee0_0000, last: 0xfeef_ffff }, kind: resv_type::MSI });
        }
        if let Some(list) = get("resv") {
            for r in list.split(',').filter(|s| !s.is_empty()) {
                let (range, kind) = r.split_once(':').ok_or_else(|| format!("resv {r}: START-LAST:TYPE"))?;
                let (s, l) = range.split_once('-').ok_or_else(|| format!("resv {r}: START-LAST:TYPE"))?;
                let kind = match kind {
                    "msi" => resv_type::MSI,
                    "direct" => resv_type::DIRECT,
                    "reserved" => resv_type::RESERVED,
                    _ => return Err(format!("resv type {kind}: msi, direct or reserved")),
                };
                let range = Range::new(number(s).ok_or("bad resv start")?, number(l).ok_or("bad resv last")?).ok_or("resv start > last")?;
                regions.push(Region { range, kind });
            }
        }
        if !(1..=64).contains(&dma_bits) {
            return Err(format!("dma_bits={dma_bits}: 1..=64"));
        }
        let id = self.hv.add_device(DeviceConfig { partition: p, unit, rid, dma_bits, regions }).map_err(|e| format!("{e:?}"))?;
        let index = self.hv.devices().len() - 1;
        self.devices.insert(name.into(), SimDevice { index, id });
        Ok(Reply::ok())
    }

    /// Write `bytes` at `gpa` where the partition has RAM; skip the rest.
    fn place(&mut self, p: usize, gpa: u64, bytes: &[u8]) {
        for (i, chunk) in bytes.chunks(1).enumerate() {
            let _ = self.hv.write_guest(p, gpa.wrapping_add(i as u64), chunk);
        }
    }

    fn call(&mut self, pname: &str, cmd: &str, toks: &[&str]) -> Result<Reply, String> {
        let part = &self.parts[pname];
        let (p, scratch, ram_end) = (part.index, part.scratch, part.ram_end);
        let (args, as_var) = self.args(toks)?;
        if cmd == "raw" {
            let get = |k: &str| args.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
            let nr = number(&get("nr").ok_or("raw needs nr=")?).ok_or("bad nr")?;
            let bytes = parse_hex(&get("hex").unwrap_or_default())?;
            let at = get("struct_gpa").map_or(Ok(scratch), |v| number(&v).ok_or("bad struct_gpa"))?;
            self.place(p, at, &bytes);
            let outcome = self.hv.hypercall(p, nr, at);
            self.debug_invariants(cmd);
            return Ok(match outcome {
                Outcome::Return(0) | Outcome::Exit(_) => Reply::ok(),
                Outcome::Return(e) => Reply { status: errno_status(e), fields: Vec::new() },
            });
        }
        let info = abi::COMMANDS.iter().find(|c| c.name == cmd).ok_or_else(|| format!("unknown command {cmd}"))?;
        let fields = layout(cmd).expect("every command has a layout");
        let known = info.size as usize;
        let mut bytes = vec![0u8; known];
        let set = |bytes: &mut [u8], name: &str, v: u64| -> Result<(), String> {
            let (_, off, w) = fields.iter().find(|(n, _, _)| *n == name).ok_or_else(|| format!("{cmd} has no field {name}"))?;
            bytes[*off..*off + *w].copy_from_slice(&v.to_le_bytes()[..*w]);
            Ok(())
        };
        set(&mut bytes, "size", known as u64)?;
        let array = array_of(cmd);
        let arr_gpa = scratch + 0x100;
        let given = |k: &str| args.iter().any(|(n, _)| *n == k);
        let badptr = args.iter().any(|(n, v)| *n == "badptr" && v != "0");
        if let Some((ptr, count, _, default)) = array {
            if !given(ptr) {
                set(&mut bytes, ptr, if badptr { ram_end.max(0x1000) } else { arr_gpa })?;
            }
            if !given(count) {
                set(&mut bytes, count, default)?;
            }
        }
        let mut tail = Vec::new();
        let mut size_given = false;
        let mut struct_gpa = scratch;
        for (k, v) in &args {
            match *k {
                "dev" => {
                    let d = self.devices.get(v.as_str()).ok_or_else(|| format!("unknown device {v}"))?;
                    set(&mut bytes, "dev_id", u64::from(d.id))?;
                }
                "ranges" => {
                    let mut list = Vec::new();
                    for r in v.split(',').filter(|s| !s.is_empty()) {
                        let (s, l) = r.split_once('-').ok_or_else(|| format!("range {r}: S-L"))?;
                        list.extend_from_slice(&number(s).ok_or("bad range start")?.to_le_bytes());
                        list.extend_from_slice(&number(l).ok_or("bad range last")?.to_le_bytes());
                    }
                    self.place(p, arr_gpa, &list);
                    if !given("num_iovas") {
                        set(&mut bytes, "num_iovas", (list.len() / 16) as u64)?;
                    }
                }
                "tail" => tail = parse_hex(v)?,
                "badptr" => {}
                "struct_gpa" => struct_gpa = number(v).ok_or("bad struct_gpa")?,
                name => {
                    let value = named_value(name, v).ok_or_else(|| format!("bad value {name}={v}"))?;
                    let name = if name == "reserved" { "__reserved" } else { name };
                    if name == "size" {
                        size_given = true;
                    }
                    set(&mut bytes, name, value)?;
                }
            }
        }
        if !tail.is_empty() && !size_given {
            set(&mut bytes, "size", (known + tail.len()) as u64)?;
        }
        bytes.extend_from_slice(&tail);
        self.place(p, struct_gpa, &bytes);
        let outcome = self.hv.hypercall(p, u64::from(info.nr), struct_gpa);
        self.debug_invariants(cmd);
        let mut reply = match outcome {
            Outcome::Return(0) => Reply::ok(),
            Outcome::Exit(code) => return Ok(Reply::ok().with("code", hex(u64::from(code)))),
            Outcome::Return(e) => Reply { status: errno_status(e), fields: Vec::new() },
        };
        if reply.status != "ok" && reply.status != "err EMSGSIZE" {
            return Ok(reply);
        }
        // Read the struct back as the partition would.
        let mut back = bytes[..known].to_vec();
        let _ = self.hv.read_guest(p, struct_gpa, &mut back);
        let get = |name: &str, buf: &[u8]| -> u64 {
            let (_, off, w) = fields.iter().find(|(n, _, _)| *n == name).expect("output field in layout");
            let mut v = [0u8; 8];
            v[..*w].copy_from_slice(&buf[*off..*off + *w]);
            u64::from_le_bytes(v)
        };
        for out in outputs(cmd) {
            let value = match *out {
                "allowed_iovas" | "resv_iovas" | "devices" | "faults" | "data" => {
                    let (ptr, count, elem, _) = array.expect("array commands");
                    let n_in = get(count, &bytes);
                    let n_out = get(count, &back);
                    let n = if *out == "faults" { n_out } else { n_in.min(n_out) };
                    let at = get(ptr, &back);
                    let mut raw = vec![0u8; (n as usize).min(1 << 16) * elem];
                    if self.hv.read_guest(p, at, &mut raw).is_err() {
                        raw.clear();
                    }
                    format_array(out, &raw)
                }
                name => hex(get(name, &back)),
            };
            reply = reply.with(out, value);
        }
        if let (Some(var), Some(main)) = (as_var, main_output(cmd)) {
            if reply.status == "ok" {
                self.vars.insert(var.into(), get(main, &back));
            }
        }
        Ok(reply)
    }

    fn device_named(&self, name: &str) -> Result<SimDevice, String> {
        self.devices.get(name).copied().ok_or_else(|| format!("unknown device {name}"))
    }

    /// `reset PARTITION`: the hypervisor's partition reset (devices
    /// blocked, objects destroyed, pins released, RAM zeroed).
    fn reset(&mut self, toks: &[&str]) -> Result<Reply, String> {
        let name = *toks.first().ok_or("reset needs a partition")?;
        let p = self
            .parts
            .get(name)
            .ok_or_else(|| format!("unknown partition {name}"))?
            .index;
        let r = match self.hv.reset_partition(p) {
            Ok(r) => Reply::ok()
                .with("devices", r.devices_blocked.to_string())
                .with("objects", r.objects_destroyed.to_string())
                .with("pins", r.pins_released.to_string())
                .with("scrubbed", hex(r.bytes_scrubbed)),
            Err(e) => Reply {
                status: format!("err {e:?}"),
                fields: Vec::new(),
            },
        };
        self.debug_invariants("reset");
        Ok(r)
    }

    fn dma(&mut self, toks: &[&str]) -> Result<Reply, String> {
        let dev = self.device_named(toks.first().ok_or("dma needs a device")?)?;
        let write = match toks.get(1) {
            Some(&"read") => false,
            Some(&"write") => true,
            _ => return Err("dma DEVICE read|write".into()),
        };
        let (args, _) = self.args(&toks[2..])?;
        let get = |k: &str| args.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
        let iova = number(&get("iova").ok_or("dma needs iova=")?).ok_or("bad iova")?;
        let data = get("data").map(|d| parse_hex(&d)).transpose()?;
        let len = match get("len") {
            Some(l) => number(&l).ok_or("bad len")?,
            None => data.as_ref().map_or(0, |d| d.len() as u64),
        };
        if len == 0 || len > 1 << 24 {
            return Err("dma len must be 1..=16 MiB".into());
        }
        let d = &self.hv.devices()[dev.index];
        let (unit, rid) = (d.unit, d.rid);
        if d.quarantined {
            // The platform switched its bus mastering off: the request
            // never reaches the IOMMU.
            return Ok(Reply {
                status: "blocked".into(),
                fields: Vec::new(),
            });
        }
        let m = self.hv.machine();
        let Ok(pieces) = m.units[unit].dma(rid, iova, len, write, m.mem) else {
            // The fault interrupt: the platform drains the unit's records
            // into the partitions' queues as they happen, so records from
            // several units keep their order.
            self.hv.poll_faults();
            return Ok(Reply { status: "fault".into(), fields: Vec::new() });
        };
        let mut buf = vec![0u8; len as usize];
        if write {
            let src = data.unwrap_or_default();
            for (i, b) in buf.iter_mut().enumerate() {
                *b = src.get(i).copied().unwrap_or(0);
            }
        }
        let mut off = 0usize;
        for (pa, n) in pieces {
            let n = n as usize;
            if write {
                sluice_kernel::hv::PhysMem::write(m.ram, Hpa(pa), &buf[off..off + n]);
            } else {
                sluice_kernel::hv::PhysMem::read(&*m.ram, Hpa(pa), &mut buf[off..off + n]);
            }
            off += n;
        }
        Ok(if write { Reply::ok() } else { Reply::ok().with("data", hex_bytes(&buf)) })
    }

    fn mem(&mut self, toks: &[&str]) -> Result<Reply, String> {
        let pname = *toks.first().ok_or("mem needs a partition")?;
        let p = self.parts.get(pname).ok_or_else(|| format!("unknown partition {pname}"))?.index;
        let (args, _) = self.args(&toks[2..])?;
        let get = |k: &str| args.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
        let gpa = number(&get("gpa").ok_or("mem needs gpa=")?).ok_or("bad gpa")?;
        match toks.get(1) {
            Some(&"read") => {
                let len = number(&get("len").ok_or("mem read needs len=")?).ok_or("bad len")?;
                if len > 1 << 24 {
                    return Err("mem read len at most 16 MiB".into());
                }
                let mut buf = vec![0u8; len as usize];
                Ok(match self.hv.read_guest(p, gpa, &mut buf) {
                    Ok(()) => Reply::ok().with("data", hex_bytes(&buf)),
                    Err(e) => Reply { status: format!("err {}", e.name()), fields: Vec::new() },
                })
            }
            Some(&"write") => {
                let data = parse_hex(&get("data").ok_or("mem write needs data=")?)?;
                Ok(match self.hv.write_guest(p, gpa, &data) {
                    Ok(()) => Reply::ok(),
                    Err(e) => Reply { status: format!("err {}", e.name()), fields: Vec::new() },
                })
            }
            _ => Err("mem PARTITION read|write".into()),
        }
    }

    fn walk(&mut self, toks: &[&str]) -> Result<Reply, String> {
        let dev = self.device_named(toks.first().ok_or("walk needs a device")?)?;
        let (args, _) = self.args(&toks[1..])?;
        let iova = args.iter().find(|(n, _)| *n == "iova").and_then(|(_, v)| number(v)).ok_or("walk needs iova=")?;
        let d = &self.hv.devices()[dev.index];
        let Some(domain) = self.hv.units()[d.unit].context(d.rid).copied() else {
            return Ok(Reply { status: "fault".into(), fields: Vec::new() });
        };
        Ok(match SimUnit::walk(&domain, iova, self.hv.table_memory()) {
            Ok(w) => {
                let perm = match (w.read, w.write) {
                    (true, true) => "rw",
                    (true, false) => "r",
                    (false, true) => "w",
                    (false, false) => "none",
                };
                Reply::ok().with("page_size", hex(w.page_size)).with("perm", perm.into())
            }
            Err(_) => Reply { status: "fault".into(), fields: Vec::new() },
        })
    }

    /// In debug builds (tests), every hypercall a script makes is followed
    /// by the invariant check: the core's always, the units' view too while
    /// no invalidation has failed (a failed one leaves stale IOTLB entries
    /// on purpose: that is why their pages stay pinned). A broken invariant
    /// panics, naming the command.
    pub fn debug_invariants(&self, after: &str) {
        if cfg!(debug_assertions) {
            let r = if self.hv.iommu_failures() == 0 { self.invariants() } else { self.hv.check_invariants() };
            if let Err(e) = r {
                panic!("invariant broken after `{after}`: {e}");
            }
        }
    }

    /// The core's invariants plus the simulated hardware's view: every
    /// device's context is what the core says, and the IOTLB holds only
    /// entries of live domains that the tables still translate that way.
    pub fn invariants(&self) -> Result<(), String> {
        self.hv.check_invariants()?;
        let mut live = Vec::new();
        for (i, d) in self.hv.devices().iter().enumerate() {
            let want = self.hv.device_domain(i);
            let have = self.hv.units()[d.unit].context(d.rid).copied();
            if want != have {
                return Err(format!("device {} of partition {}: unit context {have:?}, core says {want:?}", d.id, d.partition));
            }
            if let Some(dom) = want {
                live.push((d.unit, dom));
            }
        }
        for (u, unit) in self.hv.units().iter().enumerate() {
            for (tag, page) in unit.iotlb_entries() {
                let Some((_, dom)) = live.iter().find(|(lu, dom)| *lu == u && dom.tag == tag) else {
                    return Err(format!("unit {u}: IOTLB entry for dead domain tag {tag} at {page:#x}"));
                };
                if SimUnit::walk(dom, page, self.hv.table_memory()).is_err() {
                    return Err(format!("unit {u}: stale IOTLB entry, tag {tag} IOVA {page:#x} is no longer mapped"));
                }
            }
        }
        Ok(())
    }
}

fn errno_status(ret: i64) -> String {
    let name = i32::try_from(-ret)
        .ok()
        .and_then(|n| Errno::ALL.into_iter().find(|e| *e as i32 == n))
        .map_or_else(|| format!("E{}", -ret), |e| e.name().to_string());
    format!("err {name}")
}

fn format_array(kind: &str, raw: &[u8]) -> String {
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
    match kind {
        "data" => hex_bytes(raw),
        "allowed_iovas" => raw.chunks_exact(16).map(|e| format!("{:#x}-{:#x}", u64_at(e, 0), u64_at(e, 8))).collect::<Vec<_>>().join(","),
        "resv_iovas" => raw
            .chunks_exact(24)
            .map(|e| format!("{:#x}-{:#x}:{:#x}", u64_at(e, 0), u64_at(e, 8), u32_at(e, 16)))
            .collect::<Vec<_>>()
            .join(","),
        "devices" => raw
            .chunks_exact(24)
            .map(|e| format!("{:#x}:{:#x}:{:#x}:{:#x}:{:#x}", u32_at(e, 0), u32_at(e, 4), u32_at(e, 8), u32_at(e, 12), u32_at(e, 16)))
            .collect::<Vec<_>>()
            .join(","),
        "faults" => raw
            .chunks_exact(24)
            .map(|e| format!("{:#x}:{:#x}:{:#x}:{:#x}", u32_at(e, 0), u32_at(e, 4), u64_at(e, 8), u32_at(e, 16)))
            .collect::<Vec<_>>()
            .join(","),
        _ => String::new(),
    }
}

/// One line of a script, split.
#[derive(Debug)]
pub struct Line<'a> {
    /// 1-based line number.
    pub number: usize,
    /// The statement.
    pub statement: &'a str,
    /// The expectation after `=>`, if any.
    pub expect: Option<&'a str>,
}

/// The statements of a script (comments and blank lines dropped).
pub fn lines(text: &str) -> Vec<Line<'_>> {
    text.lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let l = l.split('#').next().unwrap_or("").trim();
            if l.is_empty() {
                return None;
            }
            let (statement, expect) = match l.split_once("=>") {
                Some((s, e)) => (s.trim(), Some(e.trim())),
                None => (l, None),
            };
            Some(Line { number: i + 1, statement, expect })
        })
        .collect()
}

/// Compare a reply with an expectation; `Err` says what differs.
pub fn check(sim: &Sim, expect: &str, reply: &Reply) -> Result<(), String> {
    let toks: Vec<&str> = expect.split_whitespace().collect();
    let (status, i) = match toks.first() {
        Some(&"err") => (format!("err {}", toks.get(1).ok_or("`err` needs an errno name")?), 2),
        Some(s) => ((*s).to_string(), 1),
        None => return Err("empty expectation".into()),
    };
    let got_status = reply.status.split_whitespace().take(if status.starts_with("err") { 2 } else { 1 }).collect::<Vec<_>>().join(" ");
    if got_status != status {
        return Err(format!("expected {expect}, got {}", reply.line()));
    }
    for t in &toks[i..] {
        let (k, v) = t.split_once('=').ok_or_else(|| format!("expected name=value in expectation, got {t}"))?;
        let v = sim.subst(v)?;
        match reply.fields.iter().find(|(n, _)| n == k) {
            Some((_, got)) if same_value(k, &v, got) => {}
            _ => return Err(format!("expected {expect}, got {}", reply.line())),
        }
    }
    Ok(())
}

/// Counts of a `check` run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Expectations that held.
    pub passed: usize,
    /// Expectations that did not, and lines that could not run.
    pub failed: usize,
}

/// Run a script; print one line per statement (`run`) or one per
/// expectation (`check`) through `out`.
pub fn run_script(name: &str, text: &str, check_mode: bool, out: &mut dyn FnMut(String)) -> Tally {
    let mut sim = Sim::new();
    let mut tally = Tally::default();
    for line in lines(text) {
        match sim.statement(line.statement) {
            Err(e) => {
                tally.failed += 1;
                out(format!("FAIL {name}:{}: {e}", line.number));
            }
            Ok(reply) => {
                if !check_mode {
                    out(reply.line());
                } else if let Some(expect) = line.expect {
                    match check(&sim, expect, &reply) {
                        Ok(()) => {
                            tally.passed += 1;
                            out(format!("PASS {name}:{}", line.number));
                        }
                        Err(e) => {
                            tally.failed += 1;
                            out(format!("FAIL {name}:{}: {e}", line.number));
                        }
                    }
                }
            }
        }
    }
    tally
}
