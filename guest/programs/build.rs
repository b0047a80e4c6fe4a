//! Link with the Sluice guest SDK's linker script. `sluice-guest`'s build
//! script sets `DEP_SLUICE_GUEST_LDSCRIPT` for bare-metal targets only, so
//! a host build (a stub, see `sluice_guest::entry!`) links normally.

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_SLUICE_GUEST_LDSCRIPT");
    if let Ok(script) = std::env::var("DEP_SLUICE_GUEST_LDSCRIPT") {
        println!("cargo:rerun-if-changed={script}");
        println!("cargo:rustc-link-arg-bins=-T{script}");
        println!("cargo:rustc-link-arg-bins=--no-pie");
    }
}
