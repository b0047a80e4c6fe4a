//! The fuzz targets' harness (`hvsim::fuzzops`, used by `fuzz/`) run on
//! its seeds and on hand-written op sequences, and every input the fuzzers
//! found that broke something, replayed through the same harness.

use hvsim::fuzzops::{Id, Num, Op, P, Ptr, Q, Who, bytes_seeds, call_record, dma_record, run_bytes, run_ops};

#[test]
fn bytes_seeds_pass_every_check() {
    for (i, seed) in bytes_seeds().iter().enumerate() {
        if let Err(e) = run_bytes(seed) {
            panic!("seed {i}: {e}");
        }
    }
}

#[test]
fn empty_inputs_tear_down_cleanly() {
    run_bytes(&[]).unwrap();
    run_ops(&[]).unwrap();
}

#[test]
fn an_op_sequence_through_every_command_passes_every_check() {
    use Num::{Gig, Huge, Page, Top};
    let ops = [
        Op::Alloc { who: Who::P, flags: false },
        Op::Attach { who: Who::P, dev: Id(2), pt: Id(5) },
        Op::Attach { who: Who::P, dev: Id(3), pt: Id(5) },
        Op::Map { who: Who::P, ioas: Id(5), flags: 6, gpa: Huge(1), len: Huge(2), iova: Page(0) },
        Op::Map { who: Who::P, ioas: Id(5), flags: 3, gpa: Page(0xfff), len: Page(2), iova: Gig(3) },
        Op::Copy { who: Who::P, dst: Id(4), src: Id(5), flags: 4, len: Page(1), src_iova: Gig(3), dst_iova: Page(0) },
        Op::Dma { dev: 1, write: true, iova: Gig(3), off: 0xff0, len: 0x20 },
        Op::Dma { dev: 2, write: false, iova: Gig(3), off: 0, len: 0x2000 },
        Op::Dma { dev: 0, write: false, iova: Gig(3), off: 0, len: 4 },
        Op::FaultRead { who: Who::P, num: 4, ptr: Ptr::Array },
        Op::Allow { who: Who::P, ioas: Id(7), ranges: vec![(Page(1), Huge(1)), (Huge(8), Top(1))], ptr: Ptr::Array, count: None },
        Op::IovaRanges { who: Who::P, ioas: Id(5), num: 1, ptr: Ptr::Array },
        Op::ResvRanges { who: Who::P, dev: Id(1), num: 8, ptr: Ptr::Place(4, -24) },
        Op::HwInfo { who: Who::Q, dev: Id(2), len: 64, ptr: Ptr::Array, short: true },
        Op::DeviceList { who: Who::Q, num: 1, ptr: Ptr::Array },
        Op::OptionCall { who: Who::P, option_id: 1, op: 0, object: Id(4), val: 0 },
        Op::Console { who: Who::Q, len: 12, ptr: Ptr::Array },
        Op::Unmap { who: Who::P, ioas: Id(5), iova: Gig(3), len: Page(2) },
        Op::Dma { dev: 1, write: true, iova: Gig(3), off: 0, len: 1 },
        Op::Detach { who: Who::P, dev: Id(2) },
        Op::Destroy { who: Who::P, id: Id(5) },
        Op::Detach { who: Who::P, dev: Id(3) },
        Op::UnmapAll { who: Who::P, ioas: Id(5) },
        Op::Destroy { who: Who::P, id: Id(5) },
    ];
    run_ops(&ops).unwrap();
}

#[test]
fn the_record_encoders_reach_both_partitions() {
    let mut input = call_record(Q, 1, 0, 0, 1, 0, &[]);
    input.extend(call_record(P, 1, 4, -4, 1, 0, &[]));
    input.extend(dma_record(3, false, 0x1000, 16));
    run_bytes(&input).unwrap();
}

/// decoder_ops, crash-45f9f0947f487b428019c82ff6398f7a05507840 (after 148k
/// executions): a harness bug, not a core one. The harness refused a MAP
/// that returned IOVA 0; ABI.md only says the automatic allocator never
/// picks 0, and iommufd takes a FIXED_IOVA map at 0 like any other IOVA.
#[test]
fn fixed_map_at_iova_zero() {
    use Num::{Huge, Page, Raw, Top};
    run_ops(&[
        Op::Map { who: Who::P, ioas: Id(25), flags: 117, gpa: Raw(5_707_477_998_366_621_695), len: Page(48590), iova: Huge(162) },
        Op::IovaRanges { who: Who::P, ioas: Id(255), num: 220, ptr: Ptr::Raw(5_701_356_122_315_916_836) },
        Op::Attach { who: Who::Q, dev: Id(171), pt: Id(21) },
        Op::Map { who: Who::P, ioas: Id(21), flags: 21, gpa: Page(5397), len: Top(21), iova: Page(5397) },
        Op::Map { who: Who::P, ioas: Id(21), flags: 21, gpa: Page(5397), len: Page(21), iova: Page(0) },
    ])
    .unwrap();
}
