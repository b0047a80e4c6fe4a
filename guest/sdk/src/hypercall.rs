//! The hypercall instruction (ABI.md, "Calling convention").

use core::ptr;

use sluice_abi::{Command, Errno};

/// The guest-physical address of `value`: its address, since the
/// partition runs identity mapped (GPA = VA). The pointer's provenance is
/// exposed, so the hypervisor (which the compiler cannot see) may access
/// the value through the address.
#[must_use]
pub fn gpa_of<T: ?Sized>(value: &T) -> u64 {
    ptr::from_ref(value).cast::<u8>().expose_provenance() as u64
}

/// [`gpa_of`] for a value the hypervisor will write.
#[must_use]
pub fn gpa_of_mut<T: ?Sized>(value: &mut T) -> u64 {
    ptr::from_mut(value).cast::<u8>().expose_provenance() as u64
}

/// Issue hypercall `nr` with the command struct at `gpa` and return what
/// the hypervisor returned: 0 or `-errno` (aarch64: -1, SMCCC
/// NOT_SUPPORTED, for a function id outside the ABI's range, which this
/// function never makes since it ORs `nr` into [`sluice_abi::SMCCC_BASE`]).
///
/// x86_64: `vmmcall` with `rax = nr`, `rdi = gpa`, result in `rax`.
/// aarch64: `hvc #0` with `x0 = 0xC600_0000 | nr`, `x1 = gpa`, result in
/// `x0`; `x1..x3` are clobbered.
///
/// This is the raw form for tests of the hypervisor's error paths (bad
/// addresses, short or oversized structs, unknown numbers); [`crate::hc`]
/// has a safe function per command.
///
/// # Safety
///
/// The hypervisor may write to the struct at `gpa` (its output fields)
/// and to every array the struct names (output arrays, up to the lengths
/// in the struct). Those bytes must not be in use by the program as
/// anything it still relies on (no live references to them other than
/// the caller's own `&mut`, nothing the compiler keeps in registers).
/// Addresses that are not the partition's RAM are harmless: the
/// hypervisor answers EFAULT.
#[must_use]
pub unsafe fn hypercall(nr: u32, gpa: u64) -> i64 {
    arch_hypercall(nr, gpa)
}

#[cfg(all(target_os = "none", target_arch = "x86_64"))]
fn arch_hypercall(nr: u32, gpa: u64) -> i64 {
    let ret: u64;
    // SAFETY: `vmmcall` exits to the hypervisor, which returns in rax and
    // changes no other register (ABI.md). It may read and write memory,
    // which the default (no `nomem`/`readonly`) asm options allow for;
    // which memory is this call's caller's contract (`hypercall`).
    unsafe {
        core::arch::asm!("vmmcall", inlateout("rax") u64::from(nr) => ret, in("rdi") gpa, options(nostack));
    }
    ret as i64
}

#[cfg(all(target_os = "none", target_arch = "aarch64"))]
fn arch_hypercall(nr: u32, gpa: u64) -> i64 {
    let ret: u64;
    // SAFETY: `hvc #0` traps to the hypervisor, which returns in x0 and
    // may clobber x1..x3 (declared as outputs). It may read and write
    // memory, which the default asm options allow for; which memory is
    // this call's caller's contract (`hypercall`).
    unsafe {
        core::arch::asm!(
            "hvc #0",
            inlateout("x0") sluice_abi::SMCCC_BASE | u64::from(nr) => ret,
            inlateout("x1") gpa => _,
            lateout("x2") _,
            lateout("x3") _,
            options(nostack),
        );
    }
    ret as i64
}

/// The hypercall instruction with `reg0` in the first register as given
/// (x86_64 `rax`, aarch64 `x0`: no SMCCC base is added) and `gpa` in the
/// second; returns the first register afterwards. For tests of the
/// calling convention itself ([`crate::raw::RawRam::hypercall`]).
///
/// # Safety
///
/// As for [`hypercall`], for whatever command `reg0` names.
pub(crate) unsafe fn raw_hypercall(reg0: u64, gpa: u64) -> i64 {
    arch_raw(reg0, gpa)
}

#[cfg(all(target_os = "none", target_arch = "x86_64"))]
fn arch_raw(reg0: u64, gpa: u64) -> i64 {
    let ret: u64;
    // SAFETY: as in `arch_hypercall`; `rax` holds `reg0` unchanged.
    unsafe {
        core::arch::asm!("vmmcall", inlateout("rax") reg0 => ret, in("rdi") gpa, options(nostack));
    }
    ret as i64
}

#[cfg(all(target_os = "none", target_arch = "aarch64"))]
fn arch_raw(reg0: u64, gpa: u64) -> i64 {
    let ret: u64;
    // SAFETY: as in `arch_hypercall`; `x0` holds `reg0` unchanged.
    unsafe {
        core::arch::asm!(
            "hvc #0",
            inlateout("x0") reg0 => ret,
            inlateout("x1") gpa => _,
            lateout("x2") _,
            lateout("x3") _,
            options(nostack),
        );
    }
    ret as i64
}

#[cfg(not(target_os = "none"))]
fn arch_raw(reg0: u64, gpa: u64) -> i64 {
    match crate::raw::decode_register(reg0) {
        Some(nr) => host::dispatch(nr, gpa),
        None => Errno::ENOTTY.to_return(),
    }
}

#[cfg(all(target_os = "none", not(any(target_arch = "x86_64", target_arch = "aarch64"))))]
compile_error!("sluice-guest supports x86_64 and aarch64 partitions only");

#[cfg(not(target_os = "none"))]
fn arch_hypercall(nr: u32, gpa: u64) -> i64 {
    host::dispatch(nr, gpa)
}

/// Turn a hypercall's return value into a `Result`.
///
/// # Panics
///
/// If `ret` is neither 0 nor `-errno` of an errno of the ABI: the
/// hypervisor broke the ABI, and a test should say so loudly.
pub(crate) fn to_result(nr: u32, ret: i64) -> Result<(), Errno> {
    if ret == 0 {
        return Ok(());
    }
    match Errno::from_return(ret) {
        Some(e) => Err(e),
        None => panic!("hypercall {nr:#x} returned {ret}, which is not an errno of ABI v1"),
    }
}

/// Issue the command `cmd` after setting its `size` field to the size of
/// the struct, and return 0 as `Ok`, `-errno` as `Err`. The output fields
/// the hypervisor writes back are in `cmd` afterwards, also on error
/// (EMSGSIZE writes the required count back).
///
/// # Safety
///
/// As for [`hypercall`]: every output array `cmd` names (by GPA and
/// length) must be memory the hypervisor may write, and every input array
/// memory it may read. Commands without array fields (DESTROY, IOAS_ALLOC,
/// IOAS_COPY, IOAS_MAP, IOAS_UNMAP, OPTION, DEVICE_ATTACH, DEVICE_DETACH,
/// PARTITION_EXIT) have no such condition.
///
/// # Panics
///
/// If the hypervisor returns a value that is not 0 or an ABI errno.
pub unsafe fn call<C: Command>(cmd: &mut C) -> Result<(), Errno> {
    let size = size_of::<C>() as u32;
    cmd.as_mut_bytes()[..4].copy_from_slice(&size.to_le_bytes());
    // SAFETY: the caller's contract for the arrays `cmd` names; the
    // struct itself is borrowed mutably for the call.
    let ret = unsafe { hypercall(C::NR, gpa_of_mut(cmd)) };
    to_result(C::NR, ret)
}

/// Host builds only: where hypercalls go when there is no hypervisor.
#[cfg(not(target_os = "none"))]
pub mod host {
    use core::cell::RefCell;
    use std::boxed::Box;

    /// A hypercall handler: gets the command number and the address of
    /// the struct (a host pointer, exposed with
    /// [`core::ptr::with_exposed_provenance`] semantics) and returns what
    /// the hypervisor would.
    pub type Handler = Box<dyn FnMut(u32, u64) -> i64>;

    std::thread_local! {
        static HANDLER: RefCell<Option<Handler>> = const { RefCell::new(None) };
    }

    /// Install the handler for this thread's hypercalls; returns the one
    /// it replaces.
    pub fn set_handler(handler: Option<Handler>) -> Option<Handler> {
        HANDLER.with(|h| h.replace(handler))
    }

    pub(crate) fn dispatch(nr: u32, gpa: u64) -> i64 {
        HANDLER.with(|h| {
            let mut handler = h.borrow_mut();
            let handler = handler.as_mut().expect("sluice-guest on the host: no hypercall handler installed (host::set_handler)");
            handler(nr, gpa)
        })
    }

    pub use crate::rt::host_set_start_info as set_start_info;
}
