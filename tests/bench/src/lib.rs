//! Shared helpers for the benchmarks (none yet: each bench is one file).
