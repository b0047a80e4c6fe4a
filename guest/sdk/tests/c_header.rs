//! `include/sluice.h` against `sluice-abi`: a C program (compiled with
//! the host's `cc`, or `$CC`) prints `sizeof` of every struct, `offsetof`
//! and `sizeof` of every field, and every constant; each number must equal
//! Rust's `size_of` / `offset_of!` / constant. The Rust table must cover
//! every byte of every struct (the field sizes add up to the struct's
//! size, and these structs have no padding), so a field added, removed or
//! moved on either side fails the test. The program also calls every
//! inline hypercall function (behind a branch that never runs), so the
//! header's inline assembly is assembled for the host's architecture.
//!
//! Skipped, with a message, only when no C compiler can be run.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::mem::offset_of;
use std::path::{Path, PathBuf};
use std::process::Command;

use sluice_abi::*;

struct Field {
    c: &'static str,
    offset: usize,
    size: usize,
}

struct Struct {
    rust: &'static str,
    c: &'static str,
    size: usize,
    fields: Vec<Field>,
}

/// `abi_struct!(RustType => "c_struct" { rust_field [=> "c_field"], ... })`
macro_rules! abi_struct {
    ($ty:ident => $c:literal { $($f:ident $(=> $cf:literal)?),* $(,)? }) => {
        Struct {
            rust: stringify!($ty),
            c: $c,
            size: size_of::<$ty>(),
            fields: vec![$(Field {
                c: abi_struct!(@name $f $(, $cf)?),
                offset: offset_of!($ty, $f),
                size: size_of_val(&<$ty>::default().$f),
            }),*],
        }
    };
    (@name $f:ident) => { stringify!($f) };
    (@name $f:ident, $cf:literal) => { $cf };
}

fn structs() -> Vec<(Option<u32>, Struct)> {
    vec![
        (None, abi_struct!(IovaRange => "sluice_iova_range" { start, last })),
        (Some(nr::DESTROY), abi_struct!(Destroy => "sluice_destroy" { size, id })),
        (Some(nr::IOAS_ALLOC), abi_struct!(IoasAlloc => "sluice_ioas_alloc" { size, flags, out_ioas_id })),
        (
            Some(nr::IOAS_ALLOW_IOVAS),
            abi_struct!(IoasAllowIovas => "sluice_ioas_allow_iovas" {
                size, ioas_id, num_iovas, reserved => "__reserved", allowed_iovas
            }),
        ),
        (
            Some(nr::IOAS_COPY),
            abi_struct!(IoasCopy => "sluice_ioas_copy" {
                size, flags, dst_ioas_id, src_ioas_id, length, dst_iova, src_iova
            }),
        ),
        (
            Some(nr::IOAS_IOVA_RANGES),
            abi_struct!(IoasIovaRanges => "sluice_ioas_iova_ranges" {
                size, ioas_id, num_iovas, reserved => "__reserved", allowed_iovas, out_iova_alignment
            }),
        ),
        (
            Some(nr::IOAS_MAP),
            abi_struct!(IoasMap => "sluice_ioas_map" {
                size, flags, ioas_id, reserved => "__reserved", gpa, length, iova
            }),
        ),
        (Some(nr::IOAS_UNMAP), abi_struct!(IoasUnmap => "sluice_ioas_unmap" { size, ioas_id, iova, length })),
        (
            Some(nr::OPTION),
            abi_struct!(OptionCmd => "sluice_option" {
                size, option_id, op, reserved => "__reserved", object_id, val64
            }),
        ),
        (
            Some(nr::GET_HW_INFO),
            abi_struct!(GetHwInfo => "sluice_get_hw_info" {
                size, flags, dev_id, data_len, data_gpa, out_data_type, out_max_pasid_log2,
                reserved => "__reserved", out_capabilities
            }),
        ),
        (None, abi_struct!(VtdHwInfo => "sluice_hw_info_vtd" { flags, reserved => "__reserved", cap_reg, ecap_reg })),
        (
            None,
            abi_struct!(SmmuV3HwInfo => "sluice_hw_info_arm_smmuv3" {
                flags, reserved => "__reserved", idr, iidr, aidr
            }),
        ),
        (Some(nr::DEVICE_LIST), abi_struct!(DeviceList => "sluice_device_list" { size, num_devices, devices })),
        (
            None,
            abi_struct!(DeviceInfo => "sluice_device_info" {
                dev_id, iommu_id, rid, attached_pt, dma_bits, reserved => "__reserved"
            }),
        ),
        (Some(nr::DEVICE_ATTACH), abi_struct!(DeviceAttach => "sluice_device_attach" { size, flags, dev_id, pt_id })),
        (Some(nr::DEVICE_DETACH), abi_struct!(DeviceDetach => "sluice_device_detach" { size, dev_id })),
        (
            Some(nr::DEVICE_RESV_IOVA_RANGES),
            abi_struct!(DeviceResvIovaRanges => "sluice_device_resv_iova_ranges" {
                size, dev_id, num_iovas, reserved => "__reserved", resv_iovas
            }),
        ),
        (None, abi_struct!(ResvRange => "sluice_resv_range" { start, last, kind => "type", reserved => "__reserved" })),
        (
            Some(nr::FAULT_READ),
            abi_struct!(FaultRead => "sluice_fault_read" {
                size, flags, num_faults, reserved => "__reserved", faults, out_lost
            }),
        ),
        (
            None,
            abi_struct!(FaultRecord => "sluice_fault_record" {
                dev_id, reason, iova, flags, reserved => "__reserved"
            }),
        ),
        (Some(nr::CONSOLE_WRITE), abi_struct!(ConsoleWrite => "sluice_console_write" { size, len, buf })),
        (Some(nr::PARTITION_EXIT), abi_struct!(PartitionExit => "sluice_partition_exit" { size, code })),
        (
            None,
            abi_struct!(StartDevice => "sluice_start_device" {
                dev_id, seg_bdf, bar0_gpa, bar0_size, dma_bits, reserved
            }),
        ),
        (
            None,
            abi_struct!(StartInfo => "sluice_start_info" {
                magic, version, partition, num_devices, ram_base, ram_size, name, devices, resets, reserved
            }),
        ),
    ]
}

fn constants() -> Vec<(&'static str, i128)> {
    let mut c: Vec<(&'static str, i128)> = vec![
        ("SLUICE_ABI_VERSION", 1),
        ("SLUICE_SMCCC_BASE", SMCCC_BASE.into()),
        ("SLUICE_SMCCC_NOT_SUPPORTED", SMCCC_NOT_SUPPORTED.into()),
        ("SLUICE_MAP_FIXED_IOVA", map_flags::FIXED_IOVA.into()),
        ("SLUICE_MAP_WRITEABLE", map_flags::WRITEABLE.into()),
        ("SLUICE_MAP_READABLE", map_flags::READABLE.into()),
        ("SLUICE_OPTION_RLIMIT_MODE", option::RLIMIT_MODE.into()),
        ("SLUICE_OPTION_HUGE_PAGES", option::HUGE_PAGES.into()),
        ("SLUICE_OPTION_OP_SET", option::OP_SET.into()),
        ("SLUICE_OPTION_OP_GET", option::OP_GET.into()),
        ("SLUICE_HW_INFO_TYPE_INTEL_VTD", hw_info_type::INTEL_VTD.into()),
        ("SLUICE_HW_INFO_TYPE_ARM_SMMUV3", hw_info_type::ARM_SMMUV3.into()),
        ("SLUICE_FAULT_NOT_PRESENT", fault_reason::NOT_PRESENT.into()),
        ("SLUICE_FAULT_WRITE_TO_READ_ONLY", fault_reason::WRITE_TO_READ_ONLY.into()),
        ("SLUICE_FAULT_READ_FROM_WRITE_ONLY", fault_reason::READ_FROM_WRITE_ONLY.into()),
        ("SLUICE_FAULT_OTHER", fault_reason::OTHER.into()),
        ("SLUICE_FAULT_FLAG_READ", fault_reason::FLAG_READ.into()),
        ("SLUICE_FAULT_FLAG_WRITE", fault_reason::FLAG_WRITE.into()),
        (
            "SLUICE_FAULT_FLAG_BUS_MASTER_OFF",
            fault_reason::FLAG_BUS_MASTER_OFF.into(),
        ),
        ("SLUICE_RESV_MSI", resv_type::MSI.into()),
        ("SLUICE_RESV_DIRECT", resv_type::DIRECT.into()),
        ("SLUICE_RESV_APERTURE", resv_type::APERTURE.into()),
        ("SLUICE_RESV_DMA_LIMIT", resv_type::DMA_LIMIT.into()),
        ("SLUICE_RESV_RESERVED", resv_type::RESERVED.into()),
        ("SLUICE_CONSOLE_WRITE_MAX", CONSOLE_WRITE_MAX.into()),
        ("SLUICE_START_INFO_MAGIC", START_INFO_MAGIC.into()),
        ("SLUICE_START_INFO_VERSION", START_INFO_VERSION.into()),
        ("SLUICE_START_MAX_DEVICES", START_MAX_DEVICES as i128),
        ("SLUICE_START_NAME_LEN", START_NAME_LEN as i128),
        ("SLUICE_RAM_BASE", layout::RAM_BASE.into()),
        ("SLUICE_RAM_ALIGN", layout::RAM_ALIGN.into()),
        ("SLUICE_RAM_MIN_SIZE", layout::RAM_MIN_SIZE.into()),
        ("SLUICE_RAM_MAX_SIZE", layout::RAM_MAX_SIZE.into()),
        ("SLUICE_START_INFO_GPA", layout::START_INFO_GPA.into()),
        ("SLUICE_PAGE_TABLES_GPA", layout::PAGE_TABLES_GPA.into()),
        ("SLUICE_PAGE_TABLES_END_GPA", layout::PAGE_TABLES_END_GPA.into()),
        ("SLUICE_STACK_BOTTOM_GPA", layout::STACK_BOTTOM_GPA.into()),
        ("SLUICE_STACK_TOP_GPA", layout::STACK_TOP_GPA.into()),
        ("SLUICE_IMAGE_BASE_GPA", layout::IMAGE_BASE_GPA.into()),
    ];
    // Every command number, named as in ABI.md.
    for cmd in &COMMANDS {
        let name: &'static str = format!("SLUICE_{}", cmd.name.to_uppercase()).leak();
        c.push((name, cmd.nr.into()));
    }
    for e in Errno::ALL {
        let name: &'static str = format!("SLUICE_{}", e.name()).leak();
        c.push((name, e as i128));
    }
    c
}

fn c_program(structs: &[(Option<u32>, Struct)], constants: &[(&str, i128)]) -> String {
    let mut p = String::from("#include \"sluice.h\"\n#include <stdio.h>\n\nint main(int argc, char **argv)\n{\n");
    p.push_str("\t(void)argv;\n\tif (argc > 1000) {\n");
    for (nr, s) in structs {
        if nr.is_some() {
            let call = s.c.strip_prefix("sluice_").unwrap();
            writeln!(p, "\t\tstruct {c} {call}_cmd = {{ 0 }};\n\t\t(void)sluice_{call}(&{call}_cmd);", c = s.c).unwrap();
        }
    }
    p.push_str("\t\tsluice_puts_n(\"x\", 1);\n\t\tsluice_exit(1);\n\t}\n");
    for (_, s) in structs {
        writeln!(p, "\tprintf(\"S {c} %zu\\n\", sizeof(struct {c}));", c = s.c).unwrap();
        for f in &s.fields {
            writeln!(
                p,
                "\tprintf(\"F {c}.{f} %zu %zu\\n\", offsetof(struct {c}, {f}), sizeof(((struct {c} *)0)->{f}));",
                c = s.c,
                f = f.c
            )
            .unwrap();
        }
    }
    for (name, _) in constants {
        writeln!(p, "\tprintf(\"C {name} %lld\\n\", (long long)({name}));").unwrap();
    }
    p.push_str("\treturn 0;\n}\n");
    p
}

fn compiler() -> Option<String> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    Command::new(&cc).arg("--version").output().ok().filter(|o| o.status.success()).map(|_| cc)
}

fn header_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("include")
}

#[test]
fn rust_table_covers_every_byte_and_every_command() {
    let structs = structs();
    for (_, s) in &structs {
        let mut fields: Vec<_> = s.fields.iter().collect();
        fields.sort_by_key(|f| f.offset);
        let mut at = 0;
        for f in fields {
            assert_eq!(f.offset, at, "{}.{}: a gap or overlap before it", s.rust, f.c);
            at += f.size;
        }
        assert_eq!(at, s.size, "{}: the fields do not cover the struct", s.rust);
    }
    let mut nrs: Vec<u32> = structs.iter().filter_map(|(nr, _)| *nr).collect();
    nrs.sort_unstable();
    let mut all: Vec<u32> = COMMANDS.iter().map(|c| c.nr).collect();
    all.sort_unstable();
    assert_eq!(nrs, all, "every command struct is in the table");
}

#[test]
fn c_header_matches_rust() {
    let Some(cc) = compiler() else {
        eprintln!("SKIPPED c_header_matches_rust: no C compiler (`cc`, or $CC) could be run");
        return;
    };
    let structs = structs();
    let constants = constants();
    let dir = std::env::temp_dir().join(format!("sluice-c-header-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("layout.c");
    let exe = dir.join("layout");
    std::fs::write(&src, c_program(&structs, &constants)).unwrap();
    let out = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O1", "-I"])
        .arg(header_dir())
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .output()
        .expect("run the C compiler");
    assert!(out.status.success(), "{cc} failed on {}:\n{}", src.display(), String::from_utf8_lossy(&out.stderr));
    let run = Command::new(&exe).output().expect("run the C program");
    assert!(run.status.success(), "the C program failed");
    let stdout = String::from_utf8(run.stdout).unwrap();

    let mut c: BTreeMap<String, Vec<i128>> = BTreeMap::new();
    for line in stdout.lines() {
        let mut words = line.split_whitespace();
        let (_kind, key) = (words.next().unwrap(), words.next().unwrap());
        c.insert(key.to_string(), words.map(|w| w.parse().unwrap()).collect());
    }
    let mut expected: BTreeMap<String, Vec<i128>> = BTreeMap::new();
    for (_, s) in &structs {
        expected.insert(s.c.to_string(), vec![s.size as i128]);
        for f in &s.fields {
            expected.insert(format!("{}.{}", s.c, f.c), vec![f.offset as i128, f.size as i128]);
        }
    }
    for (name, value) in &constants {
        expected.insert((*name).to_string(), vec![*value]);
    }
    let mut mismatches = Vec::new();
    for (key, want) in &expected {
        match c.get(key) {
            Some(got) if got == want => {}
            got => mismatches.push(format!("{key}: Rust {want:?}, C {got:?}")),
        }
    }
    assert!(mismatches.is_empty(), "sluice.h differs from sluice-abi:\n{}", mismatches.join("\n"));
    assert_eq!(c.len(), expected.len());
    let fields: usize = structs.iter().map(|(_, s)| s.fields.len()).sum();
    eprintln!("sluice.h: {} structs, {fields} fields, {} constants match sluice-abi", structs.len(), constants.len());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_header_is_valid_cplusplus_too() {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".to_string());
    if !Command::new(&cxx).arg("--version").output().is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED the_header_is_valid_cplusplus_too: no C++ compiler (`c++`, or $CXX)");
        return;
    }
    let out = Command::new(&cxx)
        .args(["-std=c++11", "-Wall", "-Wextra", "-Werror", "-fsyntax-only", "-x", "c++", "-I"])
        .arg(header_dir())
        .arg(header_dir().join("sluice.h"))
        .output()
        .expect("run the C++ compiler");
    assert!(out.status.success(), "{cxx}:\n{}", String::from_utf8_lossy(&out.stderr));
}
