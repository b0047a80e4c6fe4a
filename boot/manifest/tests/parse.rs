//! The manifest parser: the sample manifests, every field, and every
//! error (kind, line, partition and message).

use sluice_manifest::{DeviceAddr, ErrorKind, ManifestError, parse};

const PROGRAMS: &[&str] = &["demo-a", "demo-b", "hello"];

fn err(text: &str) -> ManifestError {
    match parse(text, PROGRAMS) {
        Ok(m) => panic!("accepted:\n{text}\n{m:?}"),
        Err(e) => e,
    }
}

/// The error has this kind, line, partition label, and message.
#[track_caller]
fn assert_err(text: &str, kind: ErrorKind, line: Option<usize>, partition: Option<&str>, message: &str) {
    let e = err(text);
    assert_eq!(e.kind, kind, "{e}");
    assert_eq!(e.line, line, "{e}");
    assert_eq!(e.partition.as_deref(), partition, "{e}");
    assert_eq!(e.message, message, "{e}");
}

/// Two valid partitions; `extra` is appended to the second.
fn two(extra: &str) -> String {
    format!(
        "[[partition]]\nname = \"A\"\nram = \"8M\"\ndevices = [\"00:03.0\"]\nprogram = \"demo-a\"\n\n\
         [[partition]]\nname = \"B\"\nram = \"8M\"\nprogram = \"demo-b\"\n{extra}"
    )
}

#[test]
fn the_sample_manifests_parse() {
    for (file, devs) in [("x86_64.toml", [(3, 4)]), ("aarch64.toml", [(2, 3)])] {
        let path = format!("{}/../../manifests/{file}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap();
        let m = parse(&text, &["demo-a", "demo-b"]).unwrap_or_else(|e| panic!("{}", e.at(&path)));
        assert_eq!(m.partitions.len(), 2);
        let (a, b) = (&m.partitions[0], &m.partitions[1]);
        assert_eq!((a.name.as_str(), b.name.as_str()), ("A", "B"));
        assert_eq!((a.ram_bytes, b.ram_bytes), (8 << 20, 8 << 20));
        assert_eq!((a.pin_limit, b.pin_limit), (1024, 1024));
        assert_eq!((a.program.as_str(), b.program.as_str()), ("demo-a", "demo-b"));
        assert_eq!(a.devices, [DeviceAddr::new(0, 0, devs[0].0, 0)]);
        assert_eq!(b.devices, [DeviceAddr::new(0, 0, devs[0].1, 0)]);
        assert_eq!((a.ram_host, b.ram_host), (None, None));
    }
}

#[test]
fn every_field_and_default() {
    let text = "\
# comment
[[partition]]
name = \"big_one-1.x\"
ram = \"1G\"
ram_host = 0x8000_0000
devices = [\"0001:2a:1f.7\", \"00:03.0\"]
pin_limit = 0
program = \"hello\"

[[partition]]
name = \"b\"
ram = 4194304
program = \"demo-b\"

[[partition]]
name = \"c\"
ram = \"6144k\"
ram_host = 0x4000_0000
devices = []
program = \"demo-a\"
";
    let m = parse(text, PROGRAMS).unwrap();
    let p = &m.partitions;
    assert_eq!(p.len(), 3);
    assert_eq!(p[0].name, "big_one-1.x");
    assert_eq!(p[0].ram_bytes, 1 << 30);
    assert_eq!(p[0].ram_host, Some(0x8000_0000));
    assert_eq!(p[0].devices, [DeviceAddr::new(1, 0x2a, 0x1f, 7), DeviceAddr::new(0, 0, 3, 0)]);
    assert_eq!(p[0].pin_limit, 0);
    assert_eq!(p[0].program, "hello");
    assert_eq!(p[0].line, 2);
    assert_eq!((p[1].ram_bytes, p[1].pin_limit, p[1].line), (4 << 20, 1024, 10));
    assert!(p[1].devices.is_empty());
    // 0x4000_0000 + 6 MiB ends below partition 0's 0x8000_0000.
    assert_eq!((p[2].ram_bytes, p[2].ram_host, p[2].pin_limit), (6 << 20, Some(0x4000_0000), 1536));
}

#[test]
fn syntax_errors() {
    assert_err("[[partition]\nname = \"A\"\n", ErrorKind::Syntax, Some(1), None, "unclosed array table, expected `]`");
    assert_err(
        "[[partition]]\nname = 3\nram = \"8M\"\nprogram = \"demo-a\"\n",
        ErrorKind::Syntax,
        Some(2),
        Some("partition #0"),
        "invalid type: integer `3`, expected a string",
    );
    assert_err(
        &two("pin_limit = \"many\""),
        ErrorKind::Syntax,
        Some(11),
        Some("partition \"B\""),
        "invalid type: string \"many\", expected i64",
    );
    assert_err("partition = 3\n", ErrorKind::Syntax, Some(1), None, "invalid type: integer `3`, expected a sequence");
}

#[test]
fn unknown_keys() {
    assert_err(
        &two("colour = \"red\""),
        ErrorKind::UnknownKey,
        Some(11),
        Some("partition \"B\""),
        "unknown field `colour`, expected one of `name`, `ram`, `ram_host`, `devices`, `pin_limit`, `program`, `restarts`, `fault_limit`",
    );
    assert_err(
        &format!("version = 1\n{}", two("")),
        ErrorKind::UnknownKey,
        Some(1),
        None,
        "unknown field `version`, expected `partition`",
    );
    // A typo in the first partition is reported in that partition.
    let text = two("").replace("devices =", "device =");
    assert_err(
        &text,
        ErrorKind::UnknownKey,
        Some(4),
        Some("partition \"A\""),
        "unknown field `device`, expected one of `name`, `ram`, `ram_host`, `devices`, `pin_limit`, `program`, `restarts`, `fault_limit`",
    );
}

#[test]
fn missing_keys_and_partitions() {
    assert_err(
        "",
        ErrorKind::NoPartitions,
        None,
        None,
        "no partitions: the manifest needs at least one [[partition]] table",
    );
    assert_err(
        "[[partition]]\nram = \"8M\"\nprogram = \"demo-a\"\n",
        ErrorKind::MissingKey,
        Some(1),
        Some("partition #0"),
        "missing `name` (a unique name, e.g. name = \"A\")",
    );
    assert_err(
        &two("").replace("ram = \"8M\"\nprogram = \"demo-b\"", "program = \"demo-b\""),
        ErrorKind::MissingKey,
        Some(7),
        Some("partition \"B\""),
        "missing `ram` (its RAM size, e.g. ram = \"8M\")",
    );
    assert_err(
        &two("").replace("program = \"demo-b\"\n", ""),
        ErrorKind::MissingKey,
        Some(7),
        Some("partition \"B\""),
        "missing `program` (the program it runs, e.g. program = \"demo-a\")",
    );
}

#[test]
fn names() {
    let with_b = |name: &str| two("").replace("name = \"B\"", &format!("name = \"{name}\""));
    assert_err(&with_b(""), ErrorKind::BadName, Some(8), Some("partition #1"), "`name` is empty");
    let long = "x".repeat(32);
    assert_err(
        &with_b(&long),
        ErrorKind::BadName,
        Some(8),
        Some("partition #1"),
        &format!("name \"{long}\" is 32 bytes long; at most 31 are allowed"),
    );
    assert!(parse(&with_b(&"x".repeat(31)), PROGRAMS).is_ok());
    assert_err(
        &with_b("A B"),
        ErrorKind::BadName,
        Some(8),
        Some("partition #1"),
        "name \"A B\" has the character ' '; use A-Z, a-z, 0-9, '_', '-' and '.'",
    );
    assert_err(
        &with_b("A"),
        ErrorKind::DuplicateName,
        Some(8),
        Some("partition \"A\""),
        "name \"A\" is already used by the partition on line 1",
    );
}

#[test]
fn ram_sizes() {
    let with_ram = |ram: &str| two("").replace("ram = \"8M\"\nprogram = \"demo-b\"", &format!("ram = {ram}\nprogram = \"demo-b\""));
    let bad = |ram: &str, message: &str| assert_err(&with_ram(ram), ErrorKind::BadRam, Some(9), Some("partition \"B\""), message);
    bad("\"0\"", "ram is zero");
    bad("0", "ram is zero");
    bad("\"0M\"", "ram is zero");
    bad("\"3M\"", "ram \"3M\" (0x300000 bytes) is not a multiple of 2 MiB");
    bad("\"5000K\"", "ram \"5000K\" (0x4e2000 bytes) is not a multiple of 2 MiB");
    bad("4097", "ram 4097 (0x1001 bytes) is not a multiple of 2 MiB");
    bad("\"2M\"", "ram \"2M\" is under the minimum of 4 MiB (2 MiB of start-up area below the program, 2 MiB for it)");
    bad("\"2G\"", "ram \"2G\" is over the maximum of 1024 MiB");
    bad("\"99999999999999G\"", "ram \"99999999999999G\" is over the maximum of 1024 MiB");
    bad("\"99999999999999999999999\"", "ram \"99999999999999999999999\" is over the maximum of 1024 MiB");
    bad("-4", "ram -4 is negative");
    let malformed = |s: &str| format!("ram \"{s}\" is not a size: use a number of bytes, or a number with K, M or G (e.g. \"8M\")");
    for s in ["8MB", "M", "", "8 M", "0x800000", "8T", "-8M", "8.5M"] {
        bad(&format!("\"{s}\""), &malformed(s));
    }
    bad("8.5", "ram must be a size such as \"8M\" or a number of bytes, not a float");
    bad("[8]", "ram must be a size such as \"8M\" or a number of bytes, not a array");
    for ok in ["\"4M\"", "\"1G\"", "\"1024M\"", "\"4096k\"", "\"6m\"", "\"1g\"", "4194304"] {
        assert!(parse(&with_ram(ok), PROGRAMS).is_ok(), "{ok}");
    }
}

#[test]
fn host_ram() {
    let a = |host: &str| {
        two("ram_host = 0x1_0000_0000").replace("[[partition]]\nname = \"A\"", &format!("[[partition]]\nname = \"A\"\nram_host = {host}"))
    };
    assert!(parse(&a("0x1_0080_0000"), PROGRAMS).is_ok(), "adjacent ranges do not overlap");
    assert!(parse(&a("0xff80_0000"), PROGRAMS).is_ok());
    assert!(parse(&a("0xf_ffff_ff80_0000"), PROGRAMS).is_ok(), "ends exactly at 2^52");
    assert_err(
        &a("0x1_0060_0000"),
        ErrorKind::RamHostOverlap,
        Some(12),
        Some("partition \"B\""),
        "host RAM 0x100000000..0x100800000 overlaps partition \"A\"'s host RAM 0x100600000..0x100e00000 (line 1)",
    );
    assert_err(
        &a("0xffa0_0000"),
        ErrorKind::RamHostOverlap,
        Some(12),
        Some("partition \"B\""),
        "host RAM 0x100000000..0x100800000 overlaps partition \"A\"'s host RAM 0xffa00000..0x100200000 (line 1)",
    );
    assert_err(&a("-2097152"), ErrorKind::BadRamHost, Some(3), Some("partition \"A\""), "ram_host -2097152 is negative");
    assert_err(
        &a("0x1000"),
        ErrorKind::BadRamHost,
        Some(3),
        Some("partition \"A\""),
        "ram_host 0x1000 is not a multiple of 2 MiB",
    );
    assert_err(
        &a("0xf_ffff_ffe0_0000"),
        ErrorKind::BadRamHost,
        Some(3),
        Some("partition \"A\""),
        "ram_host 0xfffffffe00000 + ram 0x800000 ends beyond the 52-bit physical address space",
    );
}

#[test]
fn devices() {
    let with_b = |devs: &str| two(&format!("devices = {devs}"));
    let bad = |devs: &str, kind: ErrorKind, message: &str| assert_err(&with_b(devs), kind, Some(11), Some("partition \"B\""), message);
    let malformed = |s: &str| format!("device \"{s}\" is not a PCI address: use \"BB:DD.F\" or \"SSSS:BB:DD.F\" (hex), e.g. \"00:03.0\"");
    for s in ["0:03.0", "00:3.0", "00:03", "00:03.00", "000:00:03.0", "00:00:00:03.0", "0g:03.0", "00:03.x", "", "00.03.0", "+0:03.0"]
    {
        bad(&format!("[\"{s}\"]"), ErrorKind::BadDevice, &malformed(s));
    }
    bad("[\"00:20.0\"]", ErrorKind::BadDevice, "device \"00:20.0\": device number 0x20 is over 0x1f");
    bad("[\"00:03.8\"]", ErrorKind::BadDevice, "device \"00:03.8\": function 8 is over 7");
    bad("[\"00:04.0\", \"0000:00:04.0\"]", ErrorKind::DuplicateDevice, "device 0000:00:04.0 is listed twice");
    bad(
        "[\"0000:00:03.0\"]",
        ErrorKind::DuplicateDevice,
        "device 0000:00:03.0 is already given to partition \"A\" (line 4)",
    );
    bad(
        "[\"00:04.0\", \"00:04.1\", \"00:04.2\", \"00:04.3\", \"00:04.4\", \"00:04.5\", \"00:04.6\", \"00:04.7\", \"00:05.0\"]",
        ErrorKind::TooManyDevices,
        "9 devices; a partition has at most 8",
    );
    bad("[3]", ErrorKind::Syntax, "invalid type: integer `3`, expected a string");
    let m = parse(&with_b("[\"00:04.0\", \"00:04.1\", \"00:04.2\", \"00:04.3\", \"00:04.4\", \"00:04.5\", \"00:04.6\", \"FFFF:Ab:1F.7\"]"), PROGRAMS)
        .unwrap();
    assert_eq!(m.partitions[1].devices.len(), 8);
    assert_eq!(m.partitions[1].devices[7], DeviceAddr::new(0xffff, 0xab, 0x1f, 7));
}

#[test]
fn pin_limits() {
    assert_err(&two("pin_limit = -1"), ErrorKind::BadPinLimit, Some(11), Some("partition \"B\""), "pin_limit -1 is negative");
    let m = parse(&two("pin_limit = 5"), PROGRAMS).unwrap();
    assert_eq!((m.partitions[0].pin_limit, m.partitions[1].pin_limit), (2048, 5));
}

#[test]
fn programs() {
    let with_b = |program: &str| two("").replace("program = \"demo-b\"", &format!("program = \"{program}\""));
    assert_err(&with_b(""), ErrorKind::UnknownProgram, Some(10), Some("partition \"B\""), "`program` is empty");
    assert_err(
        &with_b("demo-c"),
        ErrorKind::UnknownProgram,
        Some(10),
        Some("partition \"B\""),
        "program \"demo-c\" is unknown; known programs: demo-a, demo-b, hello",
    );
    let e = parse(&two(""), &[]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::UnknownProgram);
    assert_eq!(e.message, "program \"demo-a\" is unknown: this build knows no programs");
}

#[test]
fn errors_print_with_line_partition_and_path() {
    let e = err(&two("devices = [\"00:03.0\"]"));
    assert_eq!(
        e.to_string(),
        "line 11: partition \"B\": device 0000:00:03.0 is already given to partition \"A\" (line 4)"
    );
    assert_eq!(
        e.at("manifests/x86_64.toml"),
        "manifests/x86_64.toml:11: partition \"B\": device 0000:00:03.0 is already given to partition \"A\" (line 4)"
    );
    let e = err("");
    assert_eq!(e.at("m.toml"), "m.toml: no partitions: the manifest needs at least one [[partition]] table");
    let _: &dyn std::error::Error = &e;
}

#[test]
fn restarts_and_fault_limit() {
    let base = "[[partition]]\nname = \"A\"\nram = \"4M\"\nprogram = \"demo-a\"\n";
    let m = parse(base, &["demo-a"]).unwrap();
    assert_eq!(
        (m.partitions[0].restarts, m.partitions[0].fault_limit),
        (0, sluice_manifest::DEFAULT_FAULT_LIMIT)
    );
    let m = parse(
        &format!("{base}restarts = 2\nfault_limit = 0\n"),
        &["demo-a"],
    )
    .unwrap();
    assert_eq!(
        (m.partitions[0].restarts, m.partitions[0].fault_limit),
        (2, 0)
    );
    for (extra, kind) in [
        ("restarts = -1", ErrorKind::BadRestarts),
        ("restarts = 1001", ErrorKind::BadRestarts),
        ("fault_limit = -5", ErrorKind::BadFaultLimit),
    ] {
        let e = parse(&format!("{base}{extra}\n"), &["demo-a"]).unwrap_err();
        assert_eq!((e.kind, e.line), (kind, Some(5)), "{extra}");
    }
}
