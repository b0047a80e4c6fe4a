#!/usr/bin/env bash
# Builds Sluice and boots it under QEMU with an emulated IOMMU.
#
#   ./qemu-run.sh [x86_64|aarch64] [--selftest] [--manifest FILE]
#
# x86_64 (default): q35 + intel-iommu + two edu devices; the partitions of
# manifests/x86_64.toml run as SVM guests with nested paging.
# aarch64: virt at EL2 + SMMUv3 (stage 2) + two edu devices; the
# partitions of manifests/aarch64.toml run at EL1 under stage 2.
# --manifest FILE boots another manifest (see manifests/README.md);
# --selftest runs the IOMMU self-tests instead, checked against QEMU's trace.
# Installs what is missing first (Rust targets; QEMU on Debian, as root).
set -euo pipefail
cd "$(dirname "$0")"

arch=x86_64
manifest=
want_manifest=0
for arg in "$@"; do
  if ((want_manifest)); then manifest=$arg; want_manifest=0; continue; fi
  case "$arg" in
    x86_64|aarch64) arch=$arg ;;
    --selftest) ;;
    --manifest) want_manifest=1 ;;
    --manifest=*) manifest=${arg#--manifest=} ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "qemu-run.sh: unknown argument '$arg' (see --help)" >&2; exit 2 ;;
  esac
done
if ((want_manifest)); then echo "qemu-run.sh: --manifest needs a file" >&2; exit 2; fi
if [ -n "$manifest" ]; then
  [ -f "$manifest" ] || { echo "qemu-run.sh: no manifest file '$manifest'" >&2; exit 2; }
  # The build script reads it (and fails the build with a clear message if
  # it is wrong).
  export SLUICE_MANIFEST
  SLUICE_MANIFEST=$(cd "$(dirname "$manifest")" && pwd)/$(basename "$manifest")
fi

./tools/install-deps.sh --qemu

selftest=0
for arg in "$@"; do [ "$arg" = --selftest ] && selftest=1; done

if [ "$arch" = aarch64 ]; then
  # The isolation demo: partitions A and B as EL1 guests, each driving
  # its edu through IOAS hypercalls; exit status 0 when every check held.
  # --selftest runs the SMMUv3 self-test in every configuration instead.
  if ((selftest)); then exec tests/qemu/aarch64-selftest.sh; fi
  cargo build --locked -q -p sluice-aarch64 --target aarch64-unknown-none --release
  set +e
  timeout 300 qemu-system-aarch64 -M virt,virtualization=on,iommu=smmuv3,gic-version=3 \
    -cpu cortex-a72 -m 512M -global arm-smmuv3.stage=2 -device edu -device edu \
    -display none -serial stdio -semihosting \
    -kernel target/aarch64-unknown-none/release/sluice-aarch64
  status=$?
  set -e
  exit "$status"
fi

if ((selftest)); then
  # The VT-d self-test in three IOMMU configurations, checked against
  # QEMU's own trace (tests/qemu/x86_64-selftest.sh says what is checked).
  exec tests/qemu/x86_64-selftest.sh
fi

# The isolation demo: partitions A and B as SVM guests, each driving its
# edu through IOAS hypercalls; exit status 0 when every check held.
cargo build --locked -q -p sluice-x86_64 --target x86_64-unknown-none --release
image=target/x86_64-unknown-none/release/sluice-x86_64
set +e
timeout 300 qemu-system-x86_64 -M q35 -accel tcg -cpu qemu64,+svm,+npt -m 512M \
  -device intel-iommu,aw-bits=48 -device edu -device edu \
  -display none -no-reboot -serial stdio \
  -device isa-debug-exit,iobase=0xf4,iosize=0x04 -kernel "$image"
status=$?
set -e
# isa-debug-exit: 33 = the hypervisor reported success, 35 = failure;
# anything else (0 after a triple fault, 124 on timeout) is a crash.
case $status in
  33) exit 0 ;;
  35) echo "qemu-run.sh: the hypervisor reported a failure" >&2; exit 1 ;;
  *) echo "qemu-run.sh: QEMU ended with status $status (crash or timeout)" >&2; exit 1 ;;
esac
