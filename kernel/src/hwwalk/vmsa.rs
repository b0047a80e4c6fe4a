//! VMSAv8-64 translation with the 4 KiB granule (Arm ARM D8.1-D8.3), as an
//! SMMUv3 performs it for a stage-1 context descriptor (T0SZ) or a stage-2
//! STE (S2T0SZ, S2SL0).
//!
//! Descriptor formats: bit 0 valid; at levels 0-2 bit 1 set is a table
//! descriptor and clear a block (levels 1 and 2 only); at level 3 bit 1 must
//! be set (page). Output address in bits 47:12 (bits 51:48 RES0 without
//! 52-bit addresses), block addresses aligned to the block. AF is bit 10.
//! Stage 2: S2AP bits 7:6 (bit 6 read, bit 7 write); table descriptors carry
//! no attributes (bits 63:59 RES0). Stage 1: AP[2] bit 7 read-only,
//! APTable[1] bit 62 makes everything below read-only.

use super::{PhysRead, Walk, WalkFault, read};

/// Which stage and its size fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Stage 1 (CD.T0SZ): the start level follows from the input size.
    One {
        /// 64 minus the input size.
        t0sz: u8,
    },
    /// Stage 2 (STE.S2T0SZ and S2SL0); the start level may use
    /// concatenated tables (up to 16).
    Two {
        /// 64 minus the input size.
        t0sz: u8,
        /// Start level code for the 4 KiB granule: 0 = level 2, 1 = level
        /// 1, 2 = level 0.
        sl0: u8,
    },
}

/// What the walk depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmsaConfig {
    /// Stage and size fields.
    pub stage: Stage,
    /// Effective output size in bits (IPS/S2PS capped by the SMMU's OAS).
    pub oa_bits: u8,
}

const VALID: u64 = 1 << 0;
const TABLE: u64 = 1 << 1;
const AF: u64 = 1 << 10;
const OA_MASK: u64 = 0x0000_ffff_ffff_f000;
const OA_HIGH_RES0: u64 = 0xf << 48;
const S2AP_R: u64 = 1 << 6;
const S2AP_W: u64 = 1 << 7;
const AP_RDONLY: u64 = 1 << 7;
const APTABLE_RDONLY: u64 = 1 << 62;
const S2_TABLE_RES0: u64 = 0x1f << 59;

/// Translate the input address `ia` through the tables at `ttb`.
pub fn translate(cfg: &VmsaConfig, ttb: u64, ia: u64, mem: &impl PhysRead) -> Result<Walk, WalkFault> {
    let (t0sz, stage2) = match cfg.stage {
        Stage::One { t0sz } => (t0sz, false),
        Stage::Two { t0sz, .. } => (t0sz, true),
    };
    if !(16..=39).contains(&t0sz) || !(32..=48).contains(&cfg.oa_bits) {
        return Err(WalkFault::BadConfig);
    }
    let ia_bits = 64 - u32::from(t0sz);
    let start: u32 = match cfg.stage {
        // The fewest levels that resolve the input size.
        Stage::One { .. } => 4 - (ia_bits - 12).div_ceil(9),
        Stage::Two { sl0, .. } => match sl0 {
            0 => 2,
            1 => 1,
            2 => 0,
            _ => return Err(WalkFault::BadConfig),
        },
    };
    // Bits the start level resolves; more than 9 means concatenated tables.
    let below = 12 + 9 * (3 - start);
    if ia_bits <= below {
        return Err(WalkFault::BadConfig);
    }
    let start_bits = ia_bits - below;
    if start_bits > 9 + 4 {
        return Err(WalkFault::BadConfig);
    }
    if ia >> ia_bits != 0 {
        return Err(WalkFault::InputBeyondRange);
    }
    let oa_limit_bits = u32::from(cfg.oa_bits);
    let mut table = ttb & OA_MASK;
    let mut write_ok = true;
    for level in start..=3 {
        let shift = 12 + 9 * (3 - level);
        let index_bits = if level == start { start_bits } else { 9 };
        let index = (ia >> shift) & ((1 << index_bits) - 1);
        let desc = read(mem, table + index * 8)?;
        let lvl = level as u8;
        if desc & VALID == 0 {
            return Err(WalkFault::NotPresent { level: lvl });
        }
        if desc & OA_HIGH_RES0 != 0 {
            return Err(WalkFault::Reserved { level: lvl, entry: desc });
        }
        let oa = desc & OA_MASK;
        if oa >> oa_limit_bits != 0 {
            return Err(WalkFault::AddressSize { level: lvl });
        }
        let is_table = level < 3 && desc & TABLE != 0;
        if is_table {
            if stage2 && desc & S2_TABLE_RES0 != 0 {
                return Err(WalkFault::Reserved { level: lvl, entry: desc });
            }
            if !stage2 && desc & APTABLE_RDONLY != 0 {
                write_ok = false;
            }
            table = oa;
            continue;
        }
        // A leaf: a page at level 3, a block at levels 1 and 2. Level 3
        // with bit 1 clear, and level-0 blocks, are invalid descriptors.
        if (level == 3 && desc & TABLE == 0) || level == 0 {
            return Err(WalkFault::NotPresent { level: lvl });
        }
        let size = 1u64 << shift;
        if oa & (size - 1) != 0 {
            return Err(WalkFault::Reserved { level: lvl, entry: desc });
        }
        if desc & AF == 0 {
            return Err(WalkFault::AccessFlag { level: lvl });
        }
        let (read_ok, write_leaf) =
            if stage2 { (desc & S2AP_R != 0, desc & S2AP_W != 0) } else { (true, desc & AP_RDONLY == 0) };
        return Ok(Walk {
            pa: oa | (ia & (size - 1)),
            page_size: size,
            read: read_ok,
            write: write_ok && write_leaf,
            leaf: desc,
        });
    }
    Err(WalkFault::NotPresent { level: 3 })
}
