//! For the boot crates' build scripts: read the manifest, build the
//! partition programs it names for the image's target, and write the Rust
//! source the image includes (`PARTITIONS` and `PROGRAMS`).
//!
//! The manifest is `manifests/<arch>.toml` at the repository root, or the
//! file `SLUICE_MANIFEST` names. Programs are the binaries of
//! `guest/programs` (`src/bin/<name>.rs`) and `hello` (`guest/hello`).
//! They are built with a nested `cargo build --release` into their own
//! target directory (`<target dir>/guests`), so the outer build's lock and
//! flags do not get in the way.

extern crate std;

use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::string::{String, ToString};
use std::vec::Vec;
use std::{format, println};

/// The programs the repository at `root` can build: name and package.
#[must_use]
pub fn known_programs(root: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir(root.join("guest/programs/src/bin")) {
        let mut names: Vec<String> = dir
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".rs")).map(ToString::to_string))
            .collect();
        names.sort();
        out.extend(names.into_iter().map(|n| (n, "sluice-guest-programs".to_string())));
    }
    out.push(("hello".to_string(), "sluice-guest-hello".to_string()));
    out
}

/// Everything a boot crate's build script does for partitions, for
/// `target` (`x86_64-unknown-none` or `aarch64-unknown-none`): panics with
/// a clear message when the manifest is wrong or a program does not build
/// (the build fails), else writes `OUT_DIR/partitions.rs`.
///
/// # Panics
///
/// On any error: that is how a build script fails the build.
pub fn build_script(target: &str) {
    let crate_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = crate_dir.join("../..").canonicalize().expect("the repository root");
    let arch = target.split('-').next().unwrap_or(target);
    println!("cargo:rerun-if-env-changed=SLUICE_MANIFEST");
    let path = env::var("SLUICE_MANIFEST").map_or_else(|_| root.join(format!("manifests/{arch}.toml")), PathBuf::from);
    println!("cargo:rerun-if-changed={}", path.display());
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("partition manifest {}: {e}", path.display()));
    let known = known_programs(&root);
    let names: Vec<&str> = known.iter().map(|(n, _)| n.as_str()).collect();
    let manifest = crate::parse(&text, &names).unwrap_or_else(|e| panic!("\n\n{}\n", e.at(&path.display().to_string())));

    // Everything the programs are built from: the SDK and programs, the
    // ABI crate, and the ABI suite's case library (guest/programs' bin
    // abi-suite depends on it).
    for dir in ["guest", "abi", "tests/abi-suite"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    let target_dir = env::var("CARGO_TARGET_DIR").map_or_else(|_| root.join("target"), PathBuf::from).join("guests");
    let mut wanted: Vec<&(String, String)> = Vec::new();
    for p in &manifest.partitions {
        if let Some(k) = known.iter().find(|(n, _)| *n == p.program)
            && !wanted.contains(&k)
        {
            wanted.push(k);
        }
    }
    let mut programs = String::from("pub static PROGRAMS: &[(&str, &[u8])] = &[\n");
    for (name, package) in wanted {
        build_program(&root, &target_dir, target, package, name);
        let elf = target_dir.join(target).join("release").join(name);
        writeln!(programs, "    ({name:?}, include_bytes!({:?})),", elf.display().to_string()).expect("write to a String");
    }
    programs.push_str("];\n");
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let source = format!(
        "// From {} (sluice-manifest::embed). Do not edit.\n{}\n{programs}",
        path.display(),
        manifest.to_rust()
    );
    std::fs::write(out.join("partitions.rs"), source).expect("write partitions.rs");
}

fn build_program(root: &Path, target_dir: &Path, target: &str, package: &str, bin: &str) {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args(["build", "--release", "--locked", "-q", "--target", target, "-p", package, "--bin", bin, "--target-dir"])
        .arg(target_dir);
    // The outer build's flags and wrappers (clippy, coverage) are not the
    // program's.
    for var in ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "RUSTC_WRAPPER", "RUSTC_WORKSPACE_WRAPPER", "CARGO_TARGET_DIR", "CARGO_BUILD_TARGET"] {
        cmd.env_remove(var);
    }
    let status = cmd.status().unwrap_or_else(|e| panic!("cannot run cargo for partition program {bin}: {e}"));
    assert!(status.success(), "partition program {bin} ({package}) does not build for {target}");
}
