#!/bin/sh
# Build the seed corpora from code (hvsim::fuzzops::{bytes,ops}_seeds) into
# fuzz/corpus/<target>/ (gitignored). Run from anywhere.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo run --quiet -p hvsim --example fuzz_seeds -- "$root/fuzz/corpus"
