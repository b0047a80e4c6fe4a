#!/usr/bin/env bash
# Builds Sluice and boots it under QEMU with an emulated IOMMU.
#
#   ./qemu-run.sh [x86_64|aarch64] [--selftest] [--manifest FILE]
#
# x86_64 (default): q35 + intel-iommu + two edu devices, SVM guests.
# aarch64: virt at EL2 + SMMUv3 (stage 2) + two edu devices.
# Installs what is missing first (Rust targets; QEMU on Debian, as root).
set -euo pipefail
cd "$(dirname "$0")"

arch=x86_64
for arg in "$@"; do
  case "$arg" in
    x86_64|aarch64) arch=$arg ;;
    --selftest|--manifest|*.toml) ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "qemu-run.sh: unknown argument '$arg' (see --help)" >&2; exit 2 ;;
  esac
done

./tools/install-deps.sh --qemu

if [ ! -d "boot/$arch" ]; then
  cat >&2 <<MSG
qemu-run.sh: Sluice cannot boot on $arch yet.
  What exists today is the host-tested core (kernel/: the page-table engine
  and the spec walkers). The $arch boot code (boot/$arch), the IOMMU driver
  and the partitions that make up the default demo are still open work
  (issues #4 x86_64, #5 aarch64, #6 partitions). Run the tests instead:
      ./tools/test-all.sh
MSG
  exit 2
fi
