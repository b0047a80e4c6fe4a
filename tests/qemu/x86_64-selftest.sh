#!/usr/bin/env bash
# The x86_64 VT-d self-test in QEMU, checked from outside.
#
# Boots the hypervisor on q35 with intel-iommu and two edu devices, once per
# IOMMU configuration (aw-bits=48, aw-bits=39, caching-mode=on). The
# hypervisor maps a buffer for edu #1 through a real HWPT, DMAs both ways,
# unmaps, DMAs again (must fault) and lets the blocked edu #2 try the same
# IOVA (must fault). This script then checks what QEMU itself saw:
#   - QEMU's exit status is the isa-debug-exit code for PASS (33);
#   - QEMU printed no "detected ... reserve non-zero" line (a malformed
#     entry written by the hypervisor) on its stderr;
#   - every VT-d fault QEMU recorded (trace event vtd_dmar_fault) is one the
#     hypervisor reported (its "VTD-FAULT" lines), and the other way round;
#   - the IOTLB invalidations QEMU received per unmap (vtd_inv_desc_iotlb_*).
# Finally it boots once with a deliberately malformed second-level entry
# and requires the malformed-entry check to fire, so the check is known to
# work.
#
# Usage: tests/qemu/x86_64-selftest.sh [IMAGE]   (builds the image if absent)
set -uo pipefail
cd "$(dirname "$0")/../.."

image=${1:-target/x86_64-unknown-none/release/sluice-x86_64}
if [ $# -eq 0 ]; then
  cargo build --locked -q -p sluice-x86_64 --target x86_64-unknown-none --release || exit 1
fi
qemu=${QEMU_X86_64:-qemu-system-x86_64}
out=target/qemu-x86_64
mkdir -p "$out"

passed=0
failed=0
ok() { echo "ok: $*"; passed=$((passed + 1)); }
bad() { echo "FAIL: $*"; failed=$((failed + 1)); }

# run NAME IOMMU-OPTIONS [APPEND]: boots once; leaves NAME.{serial,stderr,trace}
run() {
  local name=$1 iommu=$2 append=${3:-}
  local args=(-M q35 -accel tcg -cpu qemu64,+svm,+npt -m 512M
    -device "intel-iommu,$iommu" -device edu -device edu
    -display none -no-reboot -serial stdio
    -device isa-debug-exit,iobase=0xf4,iosize=0x04
    -trace 'vtd_dmar_fault' -trace 'vtd_inv_desc_iotlb_*' -trace 'vtd_inv_desc_cc_*'
    -D "$out/$name.trace" -kernel "$image")
  args+=(-append "selftest $append")
  local start=$SECONDS
  timeout 300 "$qemu" "${args[@]}" > "$out/$name.serial" 2> "$out/$name.stderr"
  status=$?
  echo "-- $name: QEMU exit status $status after $((SECONDS - start)) s"
}

# malformed NAME: QEMU's own report of a structure the hypervisor wrote
# wrong: its stderr messages for reserved bits set in a root, context or
# second-level entry or an unreadable table, and DMA faults whose reason
# says so (3: invalid context entry, 7-9: unreadable paging/root/context
# entry, 0xa-0xc: reserved bits in root/context/paging entry, 0xd: bad TT).
malformed() {
  {
  grep -E 'reserved? non-?zero|invalid context entry|read error on DMAR' "$out/$1.stderr"
  grep -E 'vtd_dmar_fault .* fault (3|7|8|9|10|11|12|13) ' "$out/$1.trace" | head -3
  } | grep .
}

# "SID REASON ADDR WRITE" (hex, dec, hex, 0/1) in one spelling, page address.
normalise() {
  local sid reason addr write
  while read -r sid reason addr write; do
    printf '%04x %d %x %d\n' "$((16#$sid))" "$reason" "$((16#$addr & ~0xfff))" "$write"
  done
}

check_faults() {
  local name=$1
  # QEMU: "vtd_dmar_fault sid 0x18 fault 5 addr 0x1000 write 1"
  sed -n 's/.*vtd_dmar_fault sid 0x\([0-9a-f]*\) fault \([0-9]*\) addr 0x\([0-9a-f]*\) write \([01]\).*/\1 \2 \3 \4/p' "$out/$name.trace" |
    normalise | sort -u > "$out/$name.qemu-faults"
  # Hypervisor: "VTD-FAULT sid=0x0018 reason=5 addr=0x1000 write=1"
  sed -n 's/^VTD-FAULT sid=0x\([0-9a-f]*\) reason=\([0-9]*\) addr=0x\([0-9a-f]*\) write=\([01]\).*/\1 \2 \3 \4/p' "$out/$name.serial" |
    normalise | sort -u > "$out/$name.hv-faults"
  local n
  n=$(wc -l < "$out/$name.qemu-faults")
  if [ "$n" -eq 0 ]; then
    bad "$name: QEMU recorded no DMA fault (the self-test provokes at least two)"
  elif cmp -s "$out/$name.qemu-faults" "$out/$name.hv-faults"; then
    ok "$name: the $n distinct faults QEMU raised (device, reason, page, direction) are exactly those the hypervisor reported"
  else
    bad "$name: QEMU's faults and the hypervisor's differ"
    diff "$out/$name.qemu-faults" "$out/$name.hv-faults" | head -20
  fi
}

for variant in "aw48:aw-bits=48" "aw39:aw-bits=39" "cm:aw-bits=48,caching-mode=on"; do
  name=${variant%%:*}
  run "$name" "${variant#*:}"
  if [ "$status" -eq 33 ] && grep -q '^selftest: PASS' "$out/$name.serial"; then
    ok "$name: self-test passed (exit status 33)"
  else
    bad "$name: self-test did not pass (status $status); serial output:"
    tail -n 30 "$out/$name.serial"
    tail -n 5 "$out/$name.stderr"
  fi
  if malformed "$name" > /dev/null; then
    bad "$name: QEMU reported a malformed entry:"; malformed "$name"
  else
    ok "$name: QEMU reported no malformed entry"
  fi
  check_faults "$name"
  unmaps=$(sed -n 's/^selftest: unmaps=\([0-9]*\).*/\1/p' "$out/$name.serial" | tail -1)
  pages=$(grep -c 'vtd_inv_desc_iotlb_pages' "$out/$name.trace")
  domains=$(grep -c 'vtd_inv_desc_iotlb_domain' "$out/$name.trace")
  echo "   $name: IOTLB invalidations seen by QEMU: $pages page-selective, $domains domain-selective, for ${unmaps:-?} unmaps"
  if [ -n "$unmaps" ] && [ "$unmaps" -gt 0 ] && [ "$pages" -ge "$unmaps" ]; then
    ok "$name: at least one page-selective invalidation per unmap reached QEMU"
  else
    bad "$name: fewer page-selective invalidations ($pages) than unmaps (${unmaps:-?})"
  fi
done

# The malformed-entry check must be able to fire.
run malformed "aw-bits=48" "selftest=malformed"
if malformed malformed > /dev/null; then
  ok "the malformed-entry check fires on a deliberately malformed entry: $(malformed malformed | head -1)"
else
  bad "a deliberately malformed entry went unnoticed (status $status)"
  tail -n 20 "$out/malformed.serial"
fi

echo "qemu x86_64 checks: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
