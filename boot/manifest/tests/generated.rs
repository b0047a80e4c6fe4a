//! `Manifest::to_rust`: its output for the sample manifests is kept in
//! `tests/golden/` and `include!`d here, so the generated code is compiled
//! against the real `PartitionSpec`; the tests check that the output still
//! equals those files (run with `SLUICE_BLESS=1` to rewrite them after an
//! intended change) and that the compiled tables hold what the parser read.

use std::path::{Path, PathBuf};

use sluice_manifest::{DeviceAddr, Manifest, PartitionSpec, parse};

mod x86_64 {
    include!("golden/x86_64.rs");
}
mod aarch64 {
    include!("golden/aarch64.rs");
}
mod full {
    include!("golden/full.rs");
}

const PROGRAMS: &[&str] = &["demo-a", "demo-b", "hello \"quoted\""];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// (manifest, golden file, the table compiled from the golden file)
fn cases() -> [(PathBuf, PathBuf, &'static [PartitionSpec]); 3] {
    let r = root();
    [
        (r.join("../../manifests/x86_64.toml"), r.join("tests/golden/x86_64.rs"), x86_64::PARTITIONS),
        (r.join("../../manifests/aarch64.toml"), r.join("tests/golden/aarch64.rs"), aarch64::PARTITIONS),
        (r.join("tests/data/full.toml"), r.join("tests/golden/full.rs"), full::PARTITIONS),
    ]
}

fn load(path: &Path) -> Manifest {
    let text = std::fs::read_to_string(path).unwrap();
    parse(&text, PROGRAMS).unwrap_or_else(|e| panic!("{}", e.at(&path.display().to_string())))
}

#[test]
fn generated_code_equals_the_golden_files() {
    let bless = std::env::var_os("SLUICE_BLESS").is_some();
    for (manifest, golden, _) in cases() {
        let code = load(&manifest).to_rust();
        if bless {
            std::fs::write(&golden, &code).unwrap();
        }
        let want = std::fs::read_to_string(&golden).unwrap();
        assert_eq!(code, want, "{} is out of date: run with SLUICE_BLESS=1", golden.display());
    }
}

#[test]
fn compiled_tables_hold_the_manifest() {
    for (manifest, _, table) in cases() {
        let m = load(&manifest);
        assert_eq!(table.len(), m.partitions.len());
        for (spec, p) in table.iter().zip(&m.partitions) {
            assert_eq!(spec.name, p.name);
            assert_eq!(spec.ram_bytes, p.ram_bytes);
            assert_eq!(spec.ram_host, p.ram_host);
            assert_eq!(spec.devices, &p.devices[..]);
            assert_eq!(spec.pin_limit, p.pin_limit);
            assert_eq!(spec.program, p.program);
        }
    }
    let c = &full::PARTITIONS[2];
    assert_eq!(c.devices, [DeviceAddr::new(0, 0xff, 0, 1)]);
    assert_eq!(full::PARTITIONS[1].program, "hello \"quoted\"");
    assert_eq!(full::PARTITIONS[1].pin_limit, 1024);
    assert_eq!(full::PARTITIONS[0].ram_host, Some(0x8000_0000));
}
