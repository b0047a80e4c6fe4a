#!/usr/bin/env bash
# Installs what a fresh machine lacks to build and test Sluice:
#   - the bare-metal Rust targets (x86_64-unknown-none, aarch64-unknown-none)
#     and the llvm-tools component (llvm-objcopy, for the arm64 Image);
#   - with --qemu: QEMU >= 8.2 (SMMUv3 stage 2, intel-iommu) from Debian
#     bookworm-backports, as shared/design/QEMU.md describes.
# Safe to run again: it only installs what is missing.
set -euo pipefail

want_qemu=0
for arg in "$@"; do
  case "$arg" in
    --qemu) want_qemu=1 ;;
    *) echo "usage: $0 [--qemu]" >&2; exit 2 ;;
  esac
done

need_targets=()
installed=$(rustup target list --installed 2>/dev/null || true)
for t in x86_64-unknown-none aarch64-unknown-none; do
  grep -qx "$t" <<<"$installed" || need_targets+=("$t")
done
if ((${#need_targets[@]})); then
  echo "install-deps: adding Rust targets ${need_targets[*]}"
  rustup target add "${need_targets[@]}"
fi

# llvm-objcopy turns the aarch64 ELF into a raw arm64 Image (U-Boot's booti
# form); the toolchain's own copy comes with the llvm-tools component.
host=$(rustc -vV | sed -n 's/^host: //p')
if [ ! -x "$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-objcopy" ]; then
  echo "install-deps: adding the llvm-tools component (llvm-objcopy)"
  rustup component add llvm-tools
fi

qemu_ok() {
  # SMMUv3 stage 2 needs QEMU >= 8.2.
  local bin v major minor
  for bin in qemu-system-x86_64 qemu-system-aarch64; do
    command -v "$bin" >/dev/null || return 1
    v=$("$bin" --version | sed -n 's/.*version \([0-9]*\)\.\([0-9]*\).*/\1 \2/p' | head -n1)
    read -r major minor <<<"$v"
    [ -n "${major:-}" ] || return 1
    if ((major < 8 || (major == 8 && minor < 2))); then return 1; fi
  done
}

if ((want_qemu)) && ! qemu_ok; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "install-deps: QEMU >= 8.2 (qemu-system-x86_64 and qemu-system-aarch64) is needed;" >&2
    echo "install-deps: on Debian 12 run this script as root, elsewhere install it from your distribution." >&2
    exit 1
  fi
  src=/etc/apt/sources.list.d/debian.sources
  mirror=http://deb.debian.org/debian
  [ -f "$src" ] && mirror=$(awk '/^URIs:/{print $2; exit}' "$src")
  echo "deb $mirror bookworm-backports main" > /etc/apt/sources.list.d/backports.list
  echo "install-deps: installing QEMU from bookworm-backports"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports \
    --no-install-recommends qemu-system-x86 qemu-system-arm >/dev/null
  qemu_ok || { echo "install-deps: QEMU install did not give QEMU >= 8.2" >&2; exit 1; }
fi
exit 0
