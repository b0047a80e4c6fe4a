//! The hypervisor heap as a budget: how the core keeps a partition from
//! exhausting it.
//!
//! The core keeps its state in `alloc` collections (`BTreeMap`, `Vec`,
//! `VecDeque`). On bare metal an allocation that fails aborts the
//! hypervisor (stable Rust has no fallible `BTreeMap::insert`), so the
//! core must never attempt one that can fail. It does so by *charging*:
//!
//! 1. **Footprint.** [`Hypervisor`](crate::hv::Hypervisor) computes, from
//!    the counts and capacities of its own collections, an upper bound of
//!    the heap bytes they can occupy (its *footprint*, see the cost
//!    functions below). Every allocation is counted as the power-of-two
//!    block a buddy allocator hands out for it ([`block`]). A B-tree of
//!    `n` entries has at most `n / 5 + 1` nodes (std's B-tree keeps at
//!    least 5 entries in every node but the root), so its bound is linear
//!    in `n` ([`btree`]); a `Vec` occupies the block of its capacity
//!    ([`vec`]).
//! 2. **Charge before commit.** A hypercall that makes the state grow
//!    (IOAS_ALLOC, MAP, COPY, ALLOW_IOVAS, DEVICE_ATTACH) first computes how
//!    many bytes it may allocate, in the worst case, until it returns
//!    (the growth of the footprint, the blocks of any `Vec` it reallocates
//!    while the old one is still live, and its scratch space), and asks the
//!    platform's [`HeapBudget`] for them *before it changes anything*. A
//!    refusal is ENOMEM with nothing changed. Once granted, the
//!    allocations cannot fail, since the budget said the bytes are there.
//! 3. **Release never allocates beyond what is charged.** UNMAP, DESTROY
//!    and DEVICE_DETACH charge nothing: the page-table gather chains freed
//!    tables through the tables themselves ([`crate::pt::Gather`]), the
//!    free lists and merged-range caches have their capacity reserved when
//!    they grow, and the only B-tree inserts on these paths (a hole that
//!    reopens, a pin-cover breakpoint) stay within the entry counts the
//!    footprint already charged. A partition can always give memory back,
//!    however full the heap is.
//! 4. **Settle.** When the command returns, the core recomputes its
//!    footprint and gives back ([`HeapBudget::uncharge`]) whatever it was
//!    granted beyond it. [`Hypervisor::check_invariants`](crate::hv::Hypervisor::check_invariants)
//!    recomputes the footprint from scratch and compares.
//!
//! Read-only commands (IOVA_RANGES, DEVICE_LIST, DEVICE_RESV_IOVA_RANGES,
//! FAULT_READ, CONSOLE_WRITE) write their outputs element by element and
//! allocate nothing. The fault queues have their capacity at configuration
//! time, and the console buffer's worst case is charged with its partition.
//!
//! The platform implements [`HeapBudget`] over its heap: a total of charged
//! bytes against the bytes it set aside for the core (boot/common's buddy
//! heap can report its free bytes). What the budget cannot see is buddy
//! fragmentation: enough free bytes are not always one free block of the
//! size asked. The core's blocks are B-tree nodes (at most 4 KiB) and
//! `Vec`s; the platform should keep a margin, and a size-class (slab) heap
//! for the core would close the gap.
//!
//! The host tests verify the bound: a counting global allocator checks, at
//! every allocation a hypercall makes, that the heap the core holds never
//! exceeds what it has charged (tests/hvsim/tests/fail_nth.rs).

use core::mem::size_of;

/// Why the core charges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeapUse {
    /// Configuration (a unit, a partition, a device, installing the
    /// budget): the platform sized its heap for its configuration; the
    /// core records the charge whatever the answer.
    Config,
    /// A hypercall that makes the core's state grow, or needs scratch
    /// space until it returns. Refused: ENOMEM, nothing changed.
    Grow,
}

/// The platform's side of the heap budget.
pub trait HeapBudget {
    /// Take `bytes` more of the heap (counted in allocator blocks, see
    /// [`block`]) for the core. `false`: not available; nothing is taken.
    fn charge(&mut self, bytes: usize, why: HeapUse) -> bool;

    /// Give back `bytes` charged earlier.
    fn uncharge(&mut self, bytes: usize);
}

/// A budget that grants everything (host tools, benchmarks).
#[derive(Clone, Copy, Debug, Default)]
pub struct Unlimited;

impl HeapBudget for Unlimited {
    fn charge(&mut self, _bytes: usize, _why: HeapUse) -> bool {
        true
    }

    fn uncharge(&mut self, _bytes: usize) {}
}

/// Smallest block an allocator hands out.
pub const MIN_BLOCK: usize = 16;

/// The bytes an allocation of `bytes` takes from a buddy allocator: the
/// next power of two, at least [`MIN_BLOCK`] (0 for nothing).
#[must_use]
pub const fn block(bytes: usize) -> usize {
    if bytes == 0 {
        0
    } else if bytes <= MIN_BLOCK {
        MIN_BLOCK
    } else {
        bytes.next_power_of_two()
    }
}

/// Entries in a std B-tree node.
const NODE_CAPACITY: usize = 11;
/// Fewest entries in a node other than the root.
const NODE_MIN: usize = 5;

/// An upper bound of the block of one node of a `BTreeMap<K, V>`: an
/// internal node (parent pointer, index, length, 11 keys and values, 12
/// edges) with every padding.
#[must_use]
pub const fn btree_node<K, V>() -> usize {
    block(3 * size_of::<usize>() + 8 + NODE_CAPACITY * (size_of::<K>() + size_of::<V>()) + (NODE_CAPACITY + 1) * size_of::<usize>() + 16)
}

/// What one entry of a `BTreeMap<K, V>` costs in [`btree`].
#[must_use]
pub const fn btree_entry<K, V>() -> usize {
    btree_node::<K, V>().div_ceil(NODE_MIN)
}

/// The most heap a `BTreeMap<K, V>` of `len` entries occupies: at most
/// `ceil(len / 5) + 1` nodes. Also bounds it during an insert that brings
/// it to `len` entries, or a remove from `len` entries.
#[must_use]
pub const fn btree<K, V>(len: usize) -> usize {
    2 * btree_node::<K, V>() + len * btree_entry::<K, V>()
}

/// The heap a `Vec<T>` of capacity `capacity` occupies.
#[must_use]
pub const fn vec<T>(capacity: usize) -> usize {
    block(capacity * size_of::<T>())
}

/// The capacity a `Vec` of capacity `capacity` grows to when a push finds
/// it full (std's amortised growth for elements of 2..=1024 bytes).
#[must_use]
pub const fn grown(capacity: usize) -> usize {
    if capacity * 2 > 4 { capacity * 2 } else { 4 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_powers_of_two() {
        assert_eq!(block(0), 0);
        assert_eq!(block(1), 16);
        assert_eq!(block(17), 32);
        assert_eq!(block(4096), 4096);
        assert_eq!(block(4097), 8192);
        assert_eq!(grown(0), 4);
        assert_eq!(grown(4), 8);
    }

    #[test]
    fn btree_bound_is_linear() {
        let node = btree_node::<u64, u64>();
        assert!(node >= 11 * 16 + 12 * 8, "room for keys, values and edges");
        assert_eq!(btree::<u64, u64>(0), 2 * node);
        assert_eq!(btree::<u64, u64>(10) - btree::<u64, u64>(5), 5 * btree_entry::<u64, u64>());
    }
}
