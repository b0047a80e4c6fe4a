#!/usr/bin/env bash
# The isolation demo (the main job, ./qemu-run.sh [ARCH]), checked from
# outside: two partitions, each an EL1 guest (aarch64) or SVM guest
# (x86_64) running its program from the manifest, each owning one edu.
#
# Checks:
#   - QEMU's exit status says success, within 90 s;
#   - both partitions exited 0 and printed no failed check;
#   - every fault partition A read back with FAULT_READ (IOVA page) is one
#     the emulated IOMMU really recorded for A's device (QEMU trace:
#     smmuv3_record_event after a walk of that IOVA / vtd_dmar_fault), and
#     QEMU recorded none for B's device;
#   - QEMU recorded no malformed-entry event (aarch64: only translation
#     faults; x86_64: no reserved-field reason, no "detected" line).
#
# Usage: tests/qemu/demo.sh aarch64|x86_64
set -uo pipefail
cd "$(dirname "$0")/../.."
arch=${1:-aarch64}
out=target/qemu-demo
mkdir -p "$out"
passed=0
failed=0
ok() { echo "ok: $*"; passed=$((passed + 1)); }
bad() { echo "FAIL: $*"; failed=$((failed + 1)); }
page() { sed 's/^0x//; s/^\(.*\)...$/\1/; s/^0*//; s/^$/0/'; }

serial="$out/$arch.serial"
trace="$out/$arch.trace"
rm -f "$trace"
t0=$SECONDS
case $arch in
  aarch64)
    cargo build --locked -q -p sluice-aarch64 --target aarch64-unknown-none --release || exit 1
    timeout 300 qemu-system-aarch64 -M virt,virtualization=on,iommu=smmuv3,gic-version=3 -cpu cortex-a72 -m 512M \
      -global arm-smmuv3.stage=2 -device edu -device edu -display none -serial stdio -semihosting \
      -kernel target/aarch64-unknown-none/release/sluice-aarch64 \
      -d guest_errors -trace 'smmuv3_*' -trace 'smmu_*' -D "$trace" > "$serial" 2> "$out/$arch.stderr"
    status=$?
    success=0
    ;;
  x86_64)
    cargo build --locked -q -p sluice-x86_64 --target x86_64-unknown-none --release || exit 1
    timeout 300 qemu-system-x86_64 -M q35 -accel tcg -cpu qemu64,+svm,+npt -m 512M \
      -device intel-iommu,aw-bits=48 -device edu -device edu -display none -no-reboot -serial stdio \
      -device isa-debug-exit,iobase=0xf4,iosize=0x04 -kernel target/x86_64-unknown-none/release/sluice-x86_64 \
      -trace 'vtd_dmar_fault' -D "$trace" > "$serial" 2> "$out/$arch.stderr"
    status=$?
    success=33
    ;;
  *) echo "demo.sh: aarch64 or x86_64" >&2; exit 2 ;;
esac
elapsed=$((SECONDS - t0))
echo "-- $arch demo: QEMU exit status $status after $elapsed s"

if [ "$status" -eq "$success" ] && grep -q '^sluice: every partition exited 0' "$serial" && [ "$elapsed" -lt 90 ]; then
  ok "$arch: the demo passed (QEMU status $status) in $elapsed s"
else
  bad "$arch: status $status after $elapsed s"; grep -E 'FAIL|STOPPED|NOT STARTED|PANIC' "$serial" | head -5
fi
nok=$(grep -c '^\[[AB]\] check: ok' "$serial")
nfail=$(grep -c '^\[[AB]\] check: FAIL' "$serial")
if grep -q '^sluice:   A: exited with code 0' "$serial" && grep -q '^sluice:   B: exited with code 0' "$serial" && [ "$nfail" -eq 0 ] && [ "$nok" -ge 14 ]; then
  ok "$arch: both partitions exited 0; $nok checks held, none failed"
else
  bad "$arch: $nok checks held, $nfail failed"
fi

# The faults A read: IOVA pages; each partition's device (requester id or
# StreamID) from the hypervisor's report.
asid=$(sed -n 's/^\[A\] device .* (requester\/stream id \(0x[0-9a-f]*\) on.*/\1/p' "$serial")
bsid=$(sed -n 's/^\[B\] device .* (requester\/stream id \(0x[0-9a-f]*\) on.*/\1/p' "$serial")
sed -n 's/^\[A\] A: FAULT_READ: device [0-9]* IOVA \(0x[0-9a-f]*\) .*/\1/p' "$serial" | page | sort -u > "$out/$arch.a-pages"
case $arch in
  aarch64)
    sed 's/^[0-9]*@[0-9.]*://' "$trace" | awk '
      $1 == "smmu_ptw_level" { for (i = 2; i <= NF; i++) if ($i ~ /^iova=/) { iova = substr($i, 6) } }
      $1 == "smmuv3_record_event" { sid = $3; sub(/^sid=/, "", sid); print $2, sid, iova }' > "$out/$arch.events"
    awk -v s="$asid" '$2 == s { print $3 }' "$out/$arch.events" | page | sort -u > "$out/$arch.qemu-pages"
    bevents=$(awk -v s="$bsid" '$2 == s' "$out/$arch.events" | wc -l)
    malformed=$(awk '$1 != "SMMU_EVT_F_TRANSLATION"' "$out/$arch.events" | sort -u | head -3)
    ;;
  x86_64)
    # vtd_dmar_fault: sid 0x%04x fault %d addr 0x%lx write %d
    # QEMU prints requester ids as 0x%04x.
    [ -n "$asid" ] && asid=$(printf '0x%04x' "$asid")
    [ -n "$bsid" ] && bsid=$(printf '0x%04x' "$bsid")
    sed 's/^[0-9]*@[0-9.]*://' "$trace" | awk '$1 == "vtd_dmar_fault" { print $3, $5, $7 }' > "$out/$arch.events"
    awk -v s="$asid" '$1 == s { print $3 }' "$out/$arch.events" | page | sort -u > "$out/$arch.qemu-pages"
    bevents=$(awk -v s="$bsid" '$1 == s' "$out/$arch.events" | wc -l)
    malformed=$(awk '$2 != 5 && $2 != 6 && $2 != 2' "$out/$arch.events" | sort -u | head -3)
    malformed+=$(grep -E 'reserve non-?zero|invalid context entry|read error on DMAR' "$out/$arch.stderr" | head -3)
    ;;
esac
if [ -s "$out/$arch.a-pages" ] && cmp -s "$out/$arch.a-pages" "$out/$arch.qemu-pages"; then
  ok "$arch: the fault pages A read back equal the pages QEMU's IOMMU faulted for A's device $asid: $(tr '\n' ' ' < "$out/$arch.a-pages")"
else
  bad "$arch: A read [$(tr '\n' ' ' < "$out/$arch.a-pages")], QEMU faulted [$(tr '\n' ' ' < "$out/$arch.qemu-pages")] for '$asid'"
fi
if [ -n "$bsid" ] && [ "$bevents" -eq 0 ]; then
  ok "$arch: QEMU's IOMMU recorded no fault for B's device $bsid"
else
  bad "$arch: $bevents faults recorded for B's device '$bsid'"
fi
if [ -z "$malformed" ]; then
  ok "$arch: QEMU reported no malformed entry"
else
  bad "$arch: malformed: $malformed"
fi
echo "qemu $arch demo checks: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
