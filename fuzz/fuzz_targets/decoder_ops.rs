//! Structured op sequences (`hvsim::fuzzops::Op`: alloc, map, unmap, copy,
//! allow, attach, detach, destroy, option, fault read, device list, resv
//! ranges, hw info, console, DMA) on hvsim's fuzz machine; every check of
//! `hvsim::fuzzops` after every op.

#![no_main]

use hvsim::fuzzops::{Op, run_ops};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|ops: Vec<Op>| {
    if let Err(e) = run_ops(&ops) {
        panic!("{e}");
    }
});
