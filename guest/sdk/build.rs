//! Hand the linker script for the target to the program crates that
//! depend on this one: `links = "sluice_guest"` turns the `ldscript`
//! metadata below into `DEP_SLUICE_GUEST_LDSCRIPT` in their build
//! scripts (see the crate docs). Host builds get no script.

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    if os != "none" {
        return;
    }
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let script = match arch.as_str() {
        "x86_64" | "aarch64" => manifest.join(format!("link-{arch}.ld")),
        other => panic!("sluice-guest: no linker script for {other}"),
    };
    println!("cargo:rerun-if-changed={}", script.display());
    println!("cargo:ldscript={}", script.display());
}
