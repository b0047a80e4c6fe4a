//! Link the image with linker/aarch64.ld as a static PIE that relocates
//! itself (the arm64 `Image` may be loaded at any 2 MiB-aligned address),
//! and embed the partitions of the manifest with their programs.

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // Only the bare-metal image gets the script; a host build of this crate
    // (a stub `main`) keeps the default link.
    if env::var("TARGET").as_deref() != Ok("aarch64-unknown-none") {
        return;
    }
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let script = manifest.join("../../linker/aarch64.ld");
    let script = script.canonicalize().unwrap_or(script);
    println!("cargo:rerun-if-changed={}", script.display());
    println!("cargo:rustc-link-arg-bins=-T{}", script.display());
    // aarch64-unknown-none compiles with the static relocation model (code
    // is PC-relative, adrp/add); pointers stored in data become
    // R_AARCH64_RELATIVE entries in a static PIE, which `entry.rs` applies
    // itself. `-z notext` allows them in read-only sections (vtables,
    // format tables): the image is mapped writable while they are applied.
    // `--apply-dynamic-relocs` also writes the link-time values in place, so
    // the ELF loaded at its link address works before (and without) the
    // relocation pass, and the entry code can read its own link address.
    for arg in ["-pie", "--no-dynamic-linker", "-z", "notext", "--apply-dynamic-relocs", "-z", "norelro"] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
    // The partitions: the manifest checked, their programs built and
    // embedded (OUT_DIR/partitions.rs).
    sluice_manifest::embed::build_script("aarch64-unknown-none");
}
