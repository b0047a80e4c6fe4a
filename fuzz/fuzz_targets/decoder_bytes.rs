//! Raw bytes as hypercall records (number, struct bytes placed anywhere in
//! or across the end of the caller's RAM, pointers anywhere), memory writes
//! and DMAs, by both partitions of hvsim's fuzz machine; every check of
//! `hvsim::fuzzops` after every step.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = hvsim::fuzzops::run_bytes(data) {
        panic!("{e}");
    }
});
