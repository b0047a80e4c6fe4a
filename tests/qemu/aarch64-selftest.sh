#!/usr/bin/env bash
# The SMMUv3 self-test on QEMU virt at EL2, checked from outside.
#
# Boots the aarch64 image (boot/aarch64/src/selftest.rs) with QEMU's
# SMMUv3 trace on, in four runs:
#   stage2-elf    the ELF, stage-2 HWPTs (the driver's choice when the
#                 SMMU has stage 2)
#   stage2-image  the same, booted as a raw arm64 Image (x0 = DTB)
#   stage1-elf    smmu-stage=1: stage-1 STEs with a context descriptor per
#                 domain, the path an SMMU without stage 2 takes. QEMU
#                 10.0's virt SMMU always offers both stages (IDR0
#                 0xd44101b, whatever -global arm-smmuv3.stage says), so
#                 the choice is forced from the command line; the S2P = 0
#                 decision itself is tested against the fake SMMU.
#   malformed     selftest=malformed: a leaf whose output address is above
#                 the SMMU's OAS, which QEMU must refuse
# and checks, for each passing run:
#   - QEMU's exit status (semihosting: 0) and "selftest: PASS";
#   - the hypervisor's raw event records ("SMMU-EVENT type sid addr") are
#     events QEMU's trace shows it recorded (smmuv3_record_event, paired
#     with the IOVA of the walk just before it), and the distinct
#     (StreamID, page, direction) sets agree both ways;
#   - every event QEMU recorded is a translation fault (no C_BAD_STE,
#     C_BAD_CD, F_ADDR_SIZE, F_ACCESS...: those mean a malformed STE, CD or
#     table entry) and no command failed (smmuv3_cmdq_consume_error);
#   - the blocked device's StreamID was aborted by QEMU on both pages of A's
#     buffer IOVA, and QEMU recorded no event for it;
#   - QEMU walked tables of the expected stage and saw a TLB invalidation
#     of that stage (smmuv3_range_inval stage=N) for every UNMAP;
#   - stage 1 only: QEMU decoded the context descriptor (smmuv3_decode_cd).
# The malformed run must fail, and the malformed-event check must fire on
# it (QEMU records F_ADDR_SIZE).
#
# Usage: tests/qemu/aarch64-selftest.sh   (builds the image)
set -uo pipefail
cd "$(dirname "$0")/../.."

cargo build --locked -q -p sluice-aarch64 --target aarch64-unknown-none --release || exit 1
elf=target/aarch64-unknown-none/release/sluice-aarch64
image=target/aarch64-unknown-none/release/sluice-aarch64.Image
objcopy="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/llvm-objcopy"
"$objcopy" -O binary "$elf" "$image" || exit 1
out=target/qemu-aarch64
mkdir -p "$out"
passed=0
failed=0
ok() { echo "ok: $*"; passed=$((passed + 1)); }
bad() { echo "FAIL: $*"; failed=$((failed + 1)); }

run() {
  local name=$1 kernel=$2 append=${3:-}
  local args=(-M virt,virtualization=on,iommu=smmuv3,gic-version=3 -cpu cortex-a72 -m 512M
    -global arm-smmuv3.stage=2 -device edu -device edu
    -display none -serial stdio -semihosting -kernel "$kernel"
    -d guest_errors -trace 'smmuv3_*' -trace 'smmu_*' -D "$out/$name.trace")
  args+=(-append "selftest $append")
  rm -f "$out/$name.trace"
  local t0=$SECONDS
  timeout 120 qemu-system-aarch64 "${args[@]}" > "$out/$name.serial" 2> "$out/$name.stderr"
  status=$?
  echo "-- $name: QEMU exit status $status after $((SECONDS - t0)) s"
}

# QEMU's recorded events as "type sid iova": each smmuv3_record_event
# paired with the IOVA of the last page-table walk (smmu_ptw_level) before
# it. Trace lines may carry a "PID@TIME:" prefix.
qemu_events() {
  sed 's/^[0-9]*@[0-9.]*://' "$1" | awk '
    $1 == "smmu_ptw_level" { for (i = 2; i <= NF; i++) if ($i ~ /^iova=/) { iova = substr($i, 6) } }
    $1 == "smmuv3_record_event" { sid = $3; sub(/^sid=/, "", sid); print $2, sid, iova }'
}

# The 4 KiB page number of each hex address on stdin (mawk has no
# strtonum): drop "0x" and the low three hex digits.
page() { sed 's/^0x//; s/^\(.*\)...$/\1/; s/^0*//; s/^$/0/'; }

check_events() {
  local name=$1 serial="$out/$1.serial" trace="$out/$1.trace"
  qemu_events "$trace" > "$out/$name.qemu-events"
  # Every raw record the hypervisor read is one QEMU recorded (same type,
  # StreamID, address).
  local missing=0 n=0
  while read -r type sid addr; do
    n=$((n + 1))
    grep -q "^SMMU_EVT_F_TRANSLATION sid=$sid $addr\$" <(awk '{ print $1, "sid=" $2, $3 }' "$out/$name.qemu-events") || missing=$((missing + 1))
  done < <(sed -n 's/^SMMU-EVENT type=0x10 sid=\(0x[0-9a-f]*\) addr=\(0x[0-9a-f]*\).*/F_TRANSLATION \1 \2/p' "$serial")
  local others
  others=$(grep -c '^SMMU-EVENT' "$serial"); others=$((others - n))
  if [ "$n" -gt 0 ] && [ "$missing" -eq 0 ] && [ "$others" -eq 0 ]; then
    ok "$name: all $n event records the hypervisor read are translation faults QEMU recorded (same StreamID and address)"
  else
    bad "$name: $n F_TRANSLATION records, $missing not in QEMU's trace, $others of other types"
  fi
  # Distinct (StreamID, page) both ways. QEMU's edu faults every 4-byte
  # access, more than the event queue holds: compare pages, not counts.
  awk '$1 == "SMMU_EVT_F_TRANSLATION" { print $2, $3 }' "$out/$name.qemu-events" |
    while read -r sid addr; do echo "$sid $(echo "$addr" | page)"; done | sort -u > "$out/$name.qemu-pages"
  sed -n 's/^SMMU-EVENT type=0x10 sid=\(0x[0-9a-f]*\) addr=\(0x[0-9a-f]*\).*/\1 \2/p' "$serial" |
    while read -r sid addr; do echo "$sid $(echo "$addr" | page)"; done | sort -u > "$out/$name.hv-pages"
  if [ -s "$out/$name.qemu-pages" ] && cmp -s "$out/$name.qemu-pages" "$out/$name.hv-pages"; then
    ok "$name: QEMU's faulting (StreamID, page) set equals the hypervisor's: $(tr '\n' ' ' < "$out/$name.qemu-pages")"
  else
    bad "$name: fault pages differ: QEMU [$(tr '\n' ' ' < "$out/$name.qemu-pages")] hypervisor [$(tr '\n' ' ' < "$out/$name.hv-pages")]"
  fi
}

# Malformed entries: any recorded event but a translation fault, a failed
# command, or a guest error QEMU logged about the SMMU.
malformed_signs() {
  local trace="$out/$1.trace"
  qemu_events "$trace" | awk '$1 != "SMMU_EVT_F_TRANSLATION" { print "event " $1 " sid=" $2 " iova=" $3 }' | sort -u
  grep -E 'smmuv3_cmdq_consume_error' "$trace" | sort -u
  grep -iE 'smmu.*(invalid|illegal|bad)|(invalid|illegal|bad).*(STE|CD)' "$trace" | grep -v '^[0-9@.:]*smmu' | sort -u
}

check_run() {
  local name=$1 stage=$2 serial="$out/$1.serial" trace="$out/$1.trace"
  if [ "$status" -eq 0 ] && grep -q '^selftest: PASS' "$serial"; then
    ok "$name: self-test passed, QEMU exit status 0"
  else
    bad "$name: status $status"; grep -E 'FAILED|PANIC|check failed' "$serial" | head -5
  fi
  check_events "$name"
  local signs
  signs=$(malformed_signs "$name")
  if [ -z "$signs" ]; then
    ok "$name: QEMU recorded only translation faults, no failed command, no SMMU guest error"
  else
    bad "$name: malformed signs: $(echo "$signs" | head -3)"
  fi
  # The blocked device: B's StreamID from the console, its aborts from
  # QEMU, on both pages of A's buffer IOVA; no event recorded for it.
  local bsid iova
  bsid=$(sed -n 's/^selftest: edu .* StreamID \(0x[0-9a-f]*\), partition B.*/\1/p' "$serial")
  iova=$(sed -n 's/^selftest: A: mapped GPA .* at IOVA \(0x[0-9a-f]*\).*/\1/p' "$serial")
  local aborted pages
  pages=$(sed 's/^[0-9]*@[0-9.]*://' "$trace" | awk -v sid="sid=$bsid" '$1 == "smmuv3_translate_abort" && $3 == sid { a = $6; sub(/^iova:/, "", a); print a }' | page | sort -u | tr '\n' ' ')
  aborted=$(printf '%x %x ' $((iova / 4096)) $((iova / 4096 + 1)))
  if [ -n "$bsid" ] && [ "$pages" = "$aborted" ] && ! grep -q "smmuv3_record_event .* sid=$bsid\b" "$trace"; then
    ok "$name: QEMU aborted the blocked StreamID $bsid on pages [$pages] of A's IOVA and recorded no event for it"
  else
    bad "$name: blocked StreamID '$bsid': aborted pages [$pages], expected [$aborted]"
  fi
  # Stage and invalidations.
  local unmaps walks invals
  unmaps=$(sed -n 's/^selftest: unmaps=\([0-9]*\).*/\1/p' "$serial" | tail -1)
  walks=$(grep -c "smmu_ptw_level stage=$stage " "$trace")
  invals=$(grep -c "smmuv3_range_inval .*stage=$stage" "$trace")
  if [ "$walks" -gt 0 ] && [ -n "$unmaps" ] && [ "$invals" -ge "$unmaps" ]; then
    ok "$name: QEMU walked stage-$stage tables ($walks walk steps) and saw $invals stage-$stage range invalidations for $unmaps unmaps"
  else
    bad "$name: stage-$stage walks $walks, range invalidations $invals, unmaps '${unmaps}'"
  fi
}

run stage2-elf "$elf"
check_run stage2-elf 2
run stage2-image "$image"
check_run stage2-image 2
if grep -q 'DTB at 0x[0-9a-f]* (x0)' "$out/stage2-image.serial"; then
  ok "stage2-image: the Image took its device tree from x0"
else
  bad "stage2-image: no 'DTB at ... (x0)' line"
fi
run stage1-elf "$elf" "smmu-stage=1"
check_run stage1-elf 1
if grep -q ' -> stage 1,' "$out/stage1-elf.serial" && grep -q 'smmuv3_decode_cd ' "$out/stage1-elf.trace"; then
  ok "stage1-elf: stage-1 STEs with a context descriptor, which QEMU decoded"
else
  bad "stage1-elf: no stage-1 fallback seen"
fi

run malformed "$elf" "selftest=malformed"
signs=$(malformed_signs malformed)
if [ "$status" -ne 0 ] && echo "$signs" | grep -q 'F_ADDR_SIZE'; then
  ok "malformed: the malformed-entry check fires on a deliberately malformed leaf: $(echo "$signs" | head -1)"
else
  bad "malformed: status $status, signs: '$signs'"
fi

echo "qemu aarch64 SMMUv3 checks: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
