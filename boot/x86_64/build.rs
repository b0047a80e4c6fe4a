//! Link the image with linker/x86_64.ld as a fixed-address (non-PIE) ELF.

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // Only the bare-metal image gets the script; a host build of this crate
    // (which cannot work anyway) keeps the default link.
    if env::var("TARGET").as_deref() != Ok("x86_64-unknown-none") {
        return;
    }
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let script = manifest.join("../../linker/x86_64.ld");
    let script = script.canonicalize().unwrap_or(script);
    println!("cargo:rerun-if-changed={}", script.display());
    println!("cargo:rustc-link-arg-bins=-T{}", script.display());
    // x86_64-unknown-none links static-PIE by default; nothing would apply
    // its dynamic relocations. The boot code runs at its link address, so
    // link a plain fixed-address executable (PIC code links fine into it).
    println!("cargo:rustc-link-arg-bins=--no-pie");
    // The partitions: the manifest checked, their programs built and
    // embedded (OUT_DIR/partitions.rs).
    sluice_manifest::embed::build_script("x86_64-unknown-none");
}
