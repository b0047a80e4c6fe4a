//! The TOML parser, its checks and the Rust code generator (feature
//! `parse`).
//!
//! Two passes over the text with `toml` + `serde`: a lenient one that
//! finds where each `[[partition]]` table starts and what it is called
//! (so that any later error can name its partition), and a strict one
//! (`deny_unknown_fields`, every value with its span) whose result is then
//! checked field by field, partition by partition, in file order. The
//! first problem found is the error.

use core::fmt;
use std::collections::BTreeMap;
use std::format;
use std::string::{String, ToString};
use std::vec::Vec;

use serde::Deserialize;
use sluice_abi::{START_MAX_DEVICES, START_NAME_LEN, layout};
use toml::Spanned;

use crate::DeviceAddr;

/// What is wrong with a manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Not TOML, or a value of the wrong type.
    Syntax,
    /// A key this format does not have.
    UnknownKey,
    /// `name`, `ram` or `program` is missing.
    MissingKey,
    /// No `[[partition]]` table.
    NoPartitions,
    /// An empty or too long name, or one with other characters than
    /// A-Z a-z 0-9 `_` `-` `.`.
    BadName,
    /// Two partitions with the same name.
    DuplicateName,
    /// A RAM size that is malformed, zero, not a multiple of 2 MiB, under
    /// 4 MiB or over 1 GiB.
    BadRam,
    /// A `ram_host` that is negative, not 2 MiB aligned, or whose RAM
    /// would end beyond 52-bit physical addresses.
    BadRamHost,
    /// Two partitions' fixed host RAM ranges overlap.
    RamHostOverlap,
    /// A malformed PCI address.
    BadDevice,
    /// A device listed twice, in one partition or in two.
    DuplicateDevice,
    /// More devices than the start-info block holds (8).
    TooManyDevices,
    /// A negative `pin_limit`.
    BadPinLimit,
    /// A `restarts` that is negative or above 1000.
    BadRestarts,
    /// A negative `fault_limit`.
    BadFaultLimit,
    /// An empty program name, or one the build does not know.
    UnknownProgram,
}

/// A manifest error: what, where (1-based line), in which partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestError {
    /// The kind of problem.
    pub kind: ErrorKind,
    /// The line it is on, when known.
    pub line: Option<usize>,
    /// The partition it is in: `partition "A"`, or `partition #1` (index
    /// from 0) when it has no usable name.
    pub partition: Option<String>,
    /// What is wrong, in words.
    pub message: String,
}

impl ManifestError {
    /// The error prefixed by the manifest's path, as a compiler prints
    /// it: `manifests/x86_64.toml:7: partition "B": ...`.
    #[must_use]
    pub fn at(&self, path: &str) -> String {
        match self.line {
            Some(line) => format!("{path}:{line}: {}", Located(self, false)),
            None => format!("{path}: {}", Located(self, false)),
        }
    }
}

/// Display helper: with or without the line.
struct Located<'a>(&'a ManifestError, bool);

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = self.0;
        if let (true, Some(line)) = (self.1, e.line) {
            write!(f, "line {line}: ")?;
        }
        if let Some(p) = &e.partition {
            write!(f, "{p}: ")?;
        }
        f.write_str(&e.message)
    }
}

impl fmt::Display for ManifestError {
    /// `line 7: partition "B": device 0000:00:03.0 is already ...`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Located(self, true).fmt(f)
    }
}

impl std::error::Error for ManifestError {}

/// A checked manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// The partitions, in file order (the first is partition 0).
    pub partitions: Vec<Partition>,
}

/// One checked partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// Unique name, 1..=31 characters of A-Z a-z 0-9 `_` `-` `.`.
    pub name: String,
    /// Bytes of RAM.
    pub ram_bytes: u64,
    /// Fixed host-physical RAM base.
    pub ram_host: Option<u64>,
    /// PCI functions, in manifest order.
    pub devices: Vec<DeviceAddr>,
    /// Pages the partition may pin.
    pub pin_limit: u64,
    /// The program it runs.
    pub program: String,
    /// Times it is reset and started again when it ends.
    pub restarts: u32,
    /// Fault records one device may cause before its bus mastering is
    /// switched off; 0: no limit.
    pub fault_limit: u64,
    /// The line of its `[[partition]]` header.
    pub line: usize,
}

/// One past the highest physical address either architecture can have
/// (x86_64 MAXPHYADDR and Arm FEAT_LPA both top out at 52 bits).
const MAX_PHYS: u64 = 1 << 52;

/// Most `restarts` a partition may ask for.
const MAX_RESTARTS: u32 = 1000;

/// Pass 1: where the partitions are and what they are called.
#[derive(Deserialize)]
struct Loose {
    #[serde(default)]
    partition: Vec<Spanned<toml::Table>>,
}

/// Pass 2: the exact format.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Strict {
    #[serde(default)]
    partition: Vec<Spanned<RawPartition>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPartition {
    name: Option<Spanned<String>>,
    ram: Option<Spanned<toml::Value>>,
    ram_host: Option<Spanned<i64>>,
    devices: Option<Spanned<Vec<Spanned<String>>>>,
    pin_limit: Option<Spanned<i64>>,
    program: Option<Spanned<String>>,
    restarts: Option<Spanned<i64>>,
    fault_limit: Option<Spanned<i64>>,
}

/// Where each partition starts, for naming the partition of an error.
struct Outline<'a> {
    text: &'a str,
    /// (start offset, label) per partition, in file order.
    starts: Vec<(usize, String)>,
}

impl Outline<'_> {
    fn line(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
    }

    /// The label of the partition an offset is in (the last one that
    /// starts at or before it).
    fn partition_at(&self, offset: usize) -> Option<String> {
        self.starts.iter().rev().find(|(start, _)| *start <= offset).map(|(_, label)| label.clone())
    }
}

fn label(index: usize, name: Option<&str>) -> String {
    match name {
        Some(name) if check_name(name).is_ok() => format!("partition \"{name}\""),
        _ => format!("partition #{index}"),
    }
}

fn toml_error(kind: ErrorKind, e: &toml::de::Error, outline: Option<&Outline<'_>>, text: &str) -> ManifestError {
    let offset = e.span().map(|s| s.start);
    let kind = if e.message().starts_with("unknown field") { ErrorKind::UnknownKey } else { kind };
    let line = offset.map(|o| Outline { text, starts: Vec::new() }.line(o));
    let partition = outline.zip(offset).and_then(|(o, off)| o.partition_at(off));
    ManifestError { kind, line, partition, message: e.message().trim_end().to_string() }
}

/// Parse and check a manifest. `known_programs`: the programs this build
/// can put in a partition.
///
/// # Errors
///
/// The first problem, in file order ([`ManifestError`]).
pub fn parse(text: &str, known_programs: &[&str]) -> Result<Manifest, ManifestError> {
    let loose: Loose = toml::from_str(text).map_err(|e| toml_error(ErrorKind::Syntax, &e, None, text))?;
    let outline = Outline {
        text,
        starts: loose
            .partition
            .iter()
            .enumerate()
            .map(|(i, t)| (t.span().start, label(i, t.get_ref().get("name").and_then(toml::Value::as_str))))
            .collect(),
    };
    let strict: Strict = toml::from_str(text).map_err(|e| toml_error(ErrorKind::Syntax, &e, Some(&outline), text))?;
    if strict.partition.is_empty() {
        return Err(ManifestError {
            kind: ErrorKind::NoPartitions,
            line: None,
            partition: None,
            message: "no partitions: the manifest needs at least one [[partition]] table".to_string(),
        });
    }
    let mut checker = Checker { outline: &outline, known_programs, partitions: Vec::new(), device_owner: BTreeMap::new() };
    for (index, raw) in strict.partition.into_iter().enumerate() {
        checker.partition(index, raw)?;
    }
    Ok(Manifest { partitions: checker.partitions })
}

struct Checker<'a> {
    outline: &'a Outline<'a>,
    known_programs: &'a [&'a str],
    partitions: Vec<Partition>,
    /// Device -> (partition index, line).
    device_owner: BTreeMap<DeviceAddr, (usize, usize)>,
}

impl Checker<'_> {
    fn partition(&mut self, index: usize, raw: Spanned<RawPartition>) -> Result<(), ManifestError> {
        let header = raw.span().start;
        let raw = raw.into_inner();
        let header_line = self.outline.line(header);
        let who = label(index, raw.name.as_ref().map(|n| n.get_ref().as_str()));
        let err = |kind: ErrorKind, offset: usize, message: String| ManifestError {
            kind,
            line: Some(self.outline.line(offset)),
            partition: Some(who.clone()),
            message,
        };
        let missing = |key: &str, what: &str| err(ErrorKind::MissingKey, header, format!("missing `{key}` ({what})"));

        // name
        let name = raw.name.ok_or_else(|| missing("name", "a unique name, e.g. name = \"A\""))?;
        check_name(name.get_ref()).map_err(|m| err(ErrorKind::BadName, name.span().start, m))?;
        if let Some(other) = self.partitions.iter().find(|p| p.name == *name.get_ref()) {
            return Err(err(
                ErrorKind::DuplicateName,
                name.span().start,
                format!("name \"{}\" is already used by the partition on line {}", other.name, other.line),
            ));
        }

        // ram
        let ram = raw.ram.ok_or_else(|| missing("ram", "its RAM size, e.g. ram = \"8M\""))?;
        let ram_bytes = ram_size(ram.get_ref()).map_err(|m| err(ErrorKind::BadRam, ram.span().start, m))?;

        // ram_host
        let ram_host = match raw.ram_host {
            None => None,
            Some(host) => {
                let at = host.span().start;
                let base = *host.get_ref();
                let base = u64::try_from(base).map_err(|_| err(ErrorKind::BadRamHost, at, format!("ram_host {base} is negative")))?;
                if base % layout::RAM_ALIGN != 0 {
                    return Err(err(ErrorKind::BadRamHost, at, format!("ram_host {base:#x} is not a multiple of 2 MiB")));
                }
                let end = base.checked_add(ram_bytes).filter(|&end| end <= MAX_PHYS).ok_or_else(|| {
                    err(
                        ErrorKind::BadRamHost,
                        at,
                        format!("ram_host {base:#x} + ram {ram_bytes:#x} ends beyond the 52-bit physical address space"),
                    )
                })?;
                if let Some(other) = self.partitions.iter().find(|p| p.ram_host.is_some_and(|b| b < end && base < b + p.ram_bytes)) {
                    let b = other.ram_host.unwrap_or_default();
                    return Err(err(
                        ErrorKind::RamHostOverlap,
                        at,
                        format!(
                            "host RAM {base:#x}..{end:#x} overlaps partition \"{}\"'s host RAM {b:#x}..{:#x} (line {})",
                            other.name,
                            b + other.ram_bytes,
                            other.line
                        ),
                    ));
                }
                Some(base)
            }
        };

        // devices
        let mut devices = Vec::new();
        if let Some(list) = raw.devices {
            let list_at = list.span().start;
            let list = list.into_inner();
            if list.len() > START_MAX_DEVICES {
                return Err(err(
                    ErrorKind::TooManyDevices,
                    list_at,
                    format!("{} devices; a partition has at most {START_MAX_DEVICES}", list.len()),
                ));
            }
            for text in list {
                let at = text.span().start;
                let line = self.outline.line(at);
                let dev = parse_bdf(text.get_ref()).map_err(|m| err(ErrorKind::BadDevice, at, m))?;
                if devices.contains(&dev) {
                    return Err(err(ErrorKind::DuplicateDevice, at, format!("device {dev} is listed twice")));
                }
                if let Some(&(owner, owner_line)) = self.device_owner.get(&dev) {
                    return Err(err(
                        ErrorKind::DuplicateDevice,
                        at,
                        format!(
                            "device {dev} is already given to partition \"{}\" (line {owner_line})",
                            self.partitions[owner].name
                        ),
                    ));
                }
                self.device_owner.insert(dev, (index, line));
                devices.push(dev);
            }
        }

        // pin_limit
        let pin_limit = match raw.pin_limit {
            None => ram_bytes / 4096,
            Some(limit) => u64::try_from(*limit.get_ref())
                .map_err(|_| err(ErrorKind::BadPinLimit, limit.span().start, format!("pin_limit {} is negative", limit.get_ref())))?,
        };

        // restarts, fault_limit
        let restarts = match raw.restarts {
            None => 0,
            Some(r) => u32::try_from(*r.get_ref())
                .ok()
                .filter(|&r| r <= MAX_RESTARTS)
                .ok_or_else(|| {
                    err(
                        ErrorKind::BadRestarts,
                        r.span().start,
                        format!("restarts {} is not in 0..={MAX_RESTARTS}", r.get_ref()),
                    )
                })?,
        };
        let fault_limit = match raw.fault_limit {
            None => crate::DEFAULT_FAULT_LIMIT,
            Some(l) => u64::try_from(*l.get_ref()).map_err(|_| {
                err(
                    ErrorKind::BadFaultLimit,
                    l.span().start,
                    format!("fault_limit {} is negative", l.get_ref()),
                )
            })?,
        };

        // program
        let program = raw.program.ok_or_else(|| missing("program", "the program it runs, e.g. program = \"demo-a\""))?;
        let at = program.span().start;
        let program = program.into_inner();
        if program.is_empty() {
            return Err(err(ErrorKind::UnknownProgram, at, "`program` is empty".to_string()));
        }
        if !self.known_programs.contains(&program.as_str()) {
            let message = if self.known_programs.is_empty() {
                format!("program \"{program}\" is unknown: this build knows no programs")
            } else {
                format!("program \"{program}\" is unknown; known programs: {}", self.known_programs.join(", "))
            };
            return Err(err(ErrorKind::UnknownProgram, at, message));
        }

        self.partitions.push(Partition {
            name: name.into_inner(),
            ram_bytes,
            ram_host,
            devices,
            pin_limit,
            program,
            restarts,
            fault_limit,
            line: header_line,
        });
        Ok(())
    }
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("`name` is empty".to_string());
    }
    if name.len() >= START_NAME_LEN {
        return Err(format!("name \"{name}\" is {} bytes long; at most {} are allowed", name.len(), START_NAME_LEN - 1));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))) {
        return Err(format!("name \"{name}\" has the character {c:?}; use A-Z, a-z, 0-9, '_', '-' and '.'"));
    }
    Ok(())
}

/// A RAM size: an integer (bytes) or a string of digits with an optional
/// K, M or G (powers of 1024), checked against the layout's bounds.
fn ram_size(value: &toml::Value) -> Result<u64, String> {
    let (bytes, shown) = match value {
        toml::Value::Integer(n) => {
            let n = u64::try_from(*n).map_err(|_| format!("ram {n} is negative"))?;
            (Some(n), n.to_string())
        }
        toml::Value::String(s) => (parse_size(s)?, format!("\"{s}\"")),
        other => return Err(format!("ram must be a size such as \"8M\" or a number of bytes, not a {}", other.type_str())),
    };
    let Some(bytes) = bytes else {
        return Err(format!("ram {shown} is over the maximum of {} MiB", layout::RAM_MAX_SIZE >> 20));
    };
    if bytes == 0 {
        return Err("ram is zero".to_string());
    }
    if bytes % layout::RAM_ALIGN != 0 {
        return Err(format!("ram {shown} ({bytes:#x} bytes) is not a multiple of 2 MiB"));
    }
    if bytes < layout::RAM_MIN_SIZE {
        return Err(format!(
            "ram {shown} is under the minimum of {} MiB (2 MiB of start-up area below the program, 2 MiB for it)",
            layout::RAM_MIN_SIZE >> 20
        ));
    }
    if bytes > layout::RAM_MAX_SIZE {
        return Err(format!("ram {shown} is over the maximum of {} MiB", layout::RAM_MAX_SIZE >> 20));
    }
    Ok(bytes)
}

/// `Ok(None)`: well formed but beyond `u64`.
fn parse_size(s: &str) -> Result<Option<u64>, String> {
    let malformed = || format!("ram \"{s}\" is not a size: use a number of bytes, or a number with K, M or G (e.g. \"8M\")");
    let (digits, shift) = match s.as_bytes().last() {
        Some(b'K' | b'k') => (&s[..s.len() - 1], 10),
        Some(b'M' | b'm') => (&s[..s.len() - 1], 20),
        Some(b'G' | b'g') => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed());
    }
    Ok(digits.parse::<u64>().ok().and_then(|n| n.checked_mul(1 << shift)))
}

/// `BB:DD.F` or `SSSS:BB:DD.F`, hex, with exactly those digit counts.
fn parse_bdf(s: &str) -> Result<DeviceAddr, String> {
    let malformed = || format!("device \"{s}\" is not a PCI address: use \"BB:DD.F\" or \"SSSS:BB:DD.F\" (hex), e.g. \"00:03.0\"");
    let hex = |part: &str, digits: usize| {
        (part.len() == digits && part.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| u32::from_str_radix(part, 16).ok())
            .flatten()
            .ok_or_else(malformed)
    };
    let parts: Vec<&str> = s.split(':').collect();
    let (segment, bus, devfn) = match parts.as_slice() {
        [bus, devfn] => (0, hex(bus, 2)?, *devfn),
        [segment, bus, devfn] => (hex(segment, 4)?, hex(bus, 2)?, *devfn),
        _ => return Err(malformed()),
    };
    let (dev, func) = devfn.split_once('.').ok_or_else(malformed)?;
    let (dev, func) = (hex(dev, 2)?, hex(func, 1)?);
    if dev > 0x1f {
        return Err(format!("device \"{s}\": device number {dev:#x} is over 0x1f"));
    }
    if func > 7 {
        return Err(format!("device \"{s}\": function {func} is over 7"));
    }
    Ok(DeviceAddr { segment: segment as u16, bus: bus as u8, dev: dev as u8, func: func as u8 })
}

impl Manifest {
    /// Rust source defining `pub static PARTITIONS: &[sluice_manifest::PartitionSpec]`
    /// with every partition, for a build script to write to `OUT_DIR` and
    /// the image to `include!` (the including crate depends on
    /// `sluice-manifest`).
    #[must_use]
    pub fn to_rust(&self) -> String {
        let mut s = String::from(
            "// Generated by sluice-manifest (Manifest::to_rust) from the partition manifest. Do not edit.\n\
             pub static PARTITIONS: &[sluice_manifest::PartitionSpec] = &[\n",
        );
        for p in &self.partitions {
            s.push_str("    sluice_manifest::PartitionSpec {\n");
            s.push_str(&format!("        name: {:?},\n", p.name));
            s.push_str(&format!("        ram_bytes: {:#x},\n", p.ram_bytes));
            match p.ram_host {
                Some(h) => s.push_str(&format!("        ram_host: Some({h:#x}),\n")),
                None => s.push_str("        ram_host: None,\n"),
            }
            s.push_str("        devices: &[");
            for (i, d) in p.devices.iter().enumerate() {
                if i > 0 {
                    s.push_str(", ");
                }
                s.push_str(&format!(
                    "sluice_manifest::DeviceAddr {{ segment: {:#x}, bus: {:#x}, dev: {:#x}, func: {} }}",
                    d.segment, d.bus, d.dev, d.func
                ));
            }
            s.push_str("],\n");
            s.push_str(&format!("        pin_limit: {},\n", p.pin_limit));
            s.push_str(&format!("        program: {:?},\n", p.program));
            s.push_str(&format!("        restarts: {},\n", p.restarts));
            s.push_str(&format!("        fault_limit: {},\n", p.fault_limit));
            s.push_str("    },\n");
        }
        s.push_str("];\n");
        s
    }
}
