//! Offsets and bits of the configuration header registers this crate uses
//! (PCI Local Bus 3.0 §6.1, PCI-to-PCI Bridge 1.2 §3.2).

/// Vendor id (bits 15:0) and device id (31:16).
pub const ID: u16 = 0x00;
/// Command (15:0) and status (31:16).
pub const COMMAND_STATUS: u16 = 0x04;
/// Revision, programming interface, subclass, class.
pub const CLASS_REV: u16 = 0x08;
/// Cache line size, latency timer, header type (23:16), BIST.
pub const HEADER_TYPE_DWORD: u16 = 0x0c;
/// First base address register.
pub const BAR0: u16 = 0x10;
/// Bridge: primary (7:0), secondary (15:8) and subordinate (23:16) bus.
pub const BRIDGE_BUSES: u16 = 0x18;
/// Bridge: memory base (15:0) and limit (31:16), 1 MiB granular.
pub const BRIDGE_MEMORY: u16 = 0x20;

/// Base address registers of a type 0 (endpoint) header.
pub const ENDPOINT_BARS: u8 = 6;
/// Base address registers of a type 1 (PCI-PCI bridge) header.
pub const BRIDGE_BARS: u8 = 2;

/// Status bits that are write-one-to-clear: detected parity error,
/// signaled system error, received master/target abort, signaled target
/// abort, master data parity error.
pub const STATUS_W1C: u16 = 0xf900;

/// BAR bit 0: the BAR decodes I/O space.
pub const BAR_IO: u32 = 1 << 0;
/// Memory BAR bits 2:1: the address type.
pub const BAR_MEM_TYPE_MASK: u32 = 0b110;
/// Memory BAR type: 32-bit address.
pub const BAR_MEM_TYPE_32: u32 = 0b000;
/// Memory BAR type: below 1 MiB (PCI 2.x legacy), decoded as 32-bit.
pub const BAR_MEM_TYPE_1M: u32 = 0b010;
/// Memory BAR type: 64-bit address in two consecutive BARs.
pub const BAR_MEM_TYPE_64: u32 = 0b100;
/// Memory BAR bit 3: prefetchable.
pub const BAR_PREFETCHABLE: u32 = 1 << 3;
/// Read-only flag bits of a memory BAR.
pub const BAR_MEM_FLAGS: u32 = 0xf;
/// Read-only flag bits of an I/O BAR.
pub const BAR_IO_FLAGS: u32 = 0x3;

/// Offset of BAR `slot`.
#[must_use]
pub const fn bar_offset(slot: u8) -> u16 {
    BAR0 + 4 * slot as u16
}
