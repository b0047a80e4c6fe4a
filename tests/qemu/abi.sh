#!/usr/bin/env bash
# The ABI suite in QEMU (issue #6's hypercall tests, issue #7's hostile
# hypercalls), checked against hvsim and from outside the hypervisor.
#
# Boots manifests/tests/abi-ARCH.toml: partition "suite" runs every
# hypercall with its error paths (guest/programs/src/bin/abi-suite.rs,
# the cases are tests/abi-suite), "wild" stores outside its RAM,
# "witness" runs a full IOAS/DMA cycle after both. The same cases run on
# hvsim (`hvsim abi-suite --arch ARCH`, a machine built like this one).
#
# Checks:
#   (a) the suite's transcript in QEMU equals hvsim's, line for line
#       (a diff on failure), every case held in both, the suite exited 0;
#   (b) GET_HW_INFO: the registers the partition got are what QEMU's
#       IOMMU model returns. aarch64: the values of QEMU's own
#       smmuv3_read_mmio trace events for IDR0-5, IIDR, AIDR (the driver's
#       reads at bring-up). x86_64: QEMU 10 traces VT-d register reads
#       without their value (vtd_reg_read), so CAP/ECAP are read from the
#       model directly, in a second QEMU with the same machine options,
#       paused before the first instruction, through the monitor (`xp` at
#       the DRHD base + 8 and + 0x10), and from the hypervisor's boot log;
#       all three must agree. And: every page the suite read back with
#       FAULT_READ is a page QEMU's IOMMU faulted for its device, and the
#       other way round;
#   (c) "wild" was stopped with the hypervisor's report at its store, and
#       nothing after the store ran;
#   (d) "witness" exited 0 with every check held, "suite" exited 0, the
#       run's verdict is the one for a stopped partition ("sluice: FAILED:
#       a partition did not start, was stopped or exited non-zero") and
#       QEMU exited with the status the hypervisor uses for it (x86_64 35
#       through isa-debug-exit, aarch64 1 through semihosting); the core's
#       invariants held at the end;
#   (e) QEMU's IOMMU recorded no malformed entry (aarch64: only
#       translation and permission events; x86_64: no reserved-field fault
#       reason, no "detected ... reserve" line on QEMU's stderr);
#   (f) the boot took less than 120 s.
#
# Usage: tests/qemu/abi.sh x86_64|aarch64
set -uo pipefail
cd "$(dirname "$0")/../.."
arch=${1:-x86_64}
out=target/qemu-abi
mkdir -p "$out"
passed=0
failed=0
ok() { echo "ok: $*"; passed=$((passed + 1)); }
bad() { echo "FAIL: $*"; failed=$((failed + 1)); }
page() { sed 's/^0x//; s/^\(.*\)...$/\1/; s/^0*//; s/^$/0/'; }

manifest=$PWD/manifests/tests/abi-$arch.toml
serial="$out/$arch.serial"
trace="$out/$arch.trace"
rm -f "$trace" "$serial"
t_all=$SECONDS
case $arch in
  x86_64)
    target=x86_64-unknown-none
    machine=(qemu-system-x86_64 -M q35 -accel tcg -cpu qemu64,+svm,+npt -m 512M -device intel-iommu,aw-bits=48
      -device edu -device edu -device edu -display none -no-reboot)
    traces=(-trace 'vtd_dmar_fault')
    ;;
  aarch64)
    target=aarch64-unknown-none
    machine=(qemu-system-aarch64 -M virt,virtualization=on,iommu=smmuv3,gic-version=3 -cpu cortex-a72 -m 512M
      -global arm-smmuv3.stage=2 -device edu -device edu -device edu -display none)
    traces=(-d guest_errors -trace 'smmuv3_*' -trace 'smmu_*')
    ;;
  *) echo "abi.sh: x86_64 or aarch64" >&2; exit 2 ;;
esac

# The image with the test manifest (the build script reads SLUICE_MANIFEST
# and builds the programs it names); a copy stays next to the logs.
SLUICE_MANIFEST=$manifest cargo build --locked -q -p "sluice-$arch" --target "$target" --release || exit 1
image="$out/sluice-$arch"
cp "target/$target/release/sluice-$arch" "$image"
cargo build --locked -q --release -p hvsim || exit 1
./target/release/hvsim abi-suite --arch "$arch" > "$out/$arch.hvsim" 2> "$out/$arch.hvsim.stderr"
hvsim_status=$?

t0=$SECONDS
case $arch in
  x86_64)
    timeout 300 "${machine[@]}" -serial stdio -device isa-debug-exit,iobase=0xf4,iosize=0x04 -kernel "$image" \
      "${traces[@]}" -D "$trace" > "$serial" 2> "$out/$arch.stderr"
    status=$?
    stopped_status=35
    ;;
  aarch64)
    timeout 300 "${machine[@]}" -serial stdio -semihosting -kernel "$image" \
      "${traces[@]}" -D "$trace" > "$serial" 2> "$out/$arch.stderr"
    status=$?
    stopped_status=1
    ;;
esac
elapsed=$((SECONDS - t0))
echo "-- $arch abi: QEMU exit status $status after $elapsed s"
tr -d '\r' < "$serial" > "$serial.txt"
log="$serial.txt"

# (a) The transcripts: QEMU's (the suite's console lines) and hvsim's,
# GET_HW_INFO's register line apart.
sed -n 's/^\[suite\] //p' "$log" | grep -E '^(case|sweep|hw|suite:) ' > "$out/$arch.qemu-all"
grep -v '^hw ' "$out/$arch.qemu-all" > "$out/$arch.qemu"
grep -v '^hw ' "$out/$arch.hvsim" > "$out/$arch.hvsim-cases"
lines=$(wc -l < "$out/$arch.qemu")
cases=$(sed -n 's/^suite: cases=\([0-9]*\) .*/\1/p' "$out/$arch.qemu")
if [ "$lines" -ge 200 ] && cmp -s "$out/$arch.qemu" "$out/$arch.hvsim-cases"; then
  ok "$arch: the suite's transcript in QEMU equals hvsim's: $lines lines, ${cases:-?} cases"
else
  bad "$arch: the transcripts differ ($lines lines from QEMU, $(wc -l < "$out/$arch.hvsim-cases") from hvsim); diff hvsim QEMU:"
  diff -u "$out/$arch.hvsim-cases" "$out/$arch.qemu" | head -40
fi
qemu_broken=$(grep -c '!!' "$out/$arch.qemu")
if [ "$hvsim_status" -eq 0 ] && [ "$qemu_broken" -eq 0 ] && grep -q '^suite: .* broken=0$' "$out/$arch.qemu" \
    && grep -q '^sluice:   suite: exited with code 0$' "$log"; then
  ok "$arch: every case held in QEMU and in hvsim; the suite exited 0"
else
  bad "$arch: hvsim status $hvsim_status, $qemu_broken broken lines in QEMU, suite: $(grep '^sluice:   suite:' "$log")"
  grep '!!' "$out/$arch.qemu" | head -5
  head -5 "$out/$arch.hvsim.stderr"
fi
hw_q=$(grep '^hw ' "$out/$arch.qemu-all")
hw_h=$(grep '^hw ' "$out/$arch.hvsim")
keys() { sed 's/=[^ ]*/=/g'; }
if [ -n "$hw_q" ] && [ "$(keys <<< "$hw_q")" = "$(keys <<< "$hw_h")" ]; then
  ok "$arch: GET_HW_INFO data has the same fields in both ($(keys <<< "$hw_q"))"
else
  bad "$arch: GET_HW_INFO lines: QEMU '$hw_q', hvsim '$hw_h'"
fi

# (b) GET_HW_INFO against QEMU's model.
field() { tr ' ' '\n' <<< "$hw_q" | sed -n "s/^$1=//p"; }
case $arch in
  aarch64)
    # smmuv3_read_mmio addr: 0x%x val:0x%x size: 0x%x(%d): the first read
    # of each register (the driver reads them once, at bring-up).
    sed 's/^[0-9]*@[0-9.]*://' "$trace" | awk '$1 == "smmuv3_read_mmio" { a = $3; v = $4; sub(/^val:/, "", v); if (!(a in seen)) { seen[a] = v; print a, v } }' > "$out/$arch.regs"
    reg() { awk -v a="$1" '$1 == a { print $2 }' "$out/$arch.regs"; }
    mismatch=
    for kv in idr0:0x0 idr1:0x4 idr2:0x8 idr3:0xc idr4:0x10 idr5:0x14 iidr:0x18 aidr:0x1c; do
      name=${kv%%:*}
      want=$(reg "${kv#*:}")
      got=$(field "$name")
      if [ -z "$want" ] || [ -z "$got" ] || [ $((want)) -ne $((got)) ]; then mismatch+=" $name partition '$got' QEMU '$want'"; fi
    done
    if [ -z "$mismatch" ]; then
      ok "$arch: GET_HW_INFO's IDR0-5, IIDR, AIDR equal what QEMU's SMMUv3 returned (smmuv3_read_mmio): $hw_q"
    else
      bad "$arch: GET_HW_INFO vs QEMU's smmuv3_read_mmio:$mismatch"
    fi
    ;;
  x86_64)
    base=$(sed -n 's/^unit 0 at \(0x[0-9a-f]*\): cap \(0x[0-9a-f]*\) ecap \(0x[0-9a-f]*\):.*/\1/p' "$log")
    log_cap=$(sed -n 's/^unit 0 at 0x[0-9a-f]*: cap \(0x[0-9a-f]*\) ecap.*/\1/p' "$log")
    log_ecap=$(sed -n 's/^unit 0 at 0x[0-9a-f]*: cap 0x[0-9a-f]* ecap \(0x[0-9a-f]*\):.*/\1/p' "$log")
    model=
    if [ -n "$base" ]; then
      model=$(printf 'xp /2gx %#x\nquit\n' $((base + 8)) | timeout 60 "${machine[@]}" -S -monitor stdio -serial none 2> /dev/null \
        | tr -d '\r' | grep -a -o "^0*$(printf '%x' $((base + 8))): 0x[0-9a-f]* 0x[0-9a-f]*")
    fi
    m_cap=$(awk '{ print $2 }' <<< "$model")
    m_ecap=$(awk '{ print $3 }' <<< "$model")
    cap=$(field cap)
    ecap=$(field ecap)
    if [ -n "$cap" ] && [ -n "$m_cap" ] && [ -n "$log_cap" ] \
        && [ $((cap)) -eq $((m_cap)) ] && [ $((cap)) -eq $((log_cap)) ] \
        && [ $((ecap)) -eq $((m_ecap)) ] && [ $((ecap)) -eq $((log_ecap)) ]; then
      ok "$arch: GET_HW_INFO's CAP/ECAP equal QEMU's intel-iommu registers (monitor xp at $base) and the boot log: cap $cap ecap $ecap"
    else
      bad "$arch: GET_HW_INFO cap '$cap' ecap '$ecap'; QEMU model '$m_cap' '$m_ecap'; boot log '$log_cap' '$log_ecap'"
    fi
    ;;
esac

# The fault pages: read back by the suite, recorded by QEMU's IOMMU.
sid=$(sed -n 's/^\[suite\] device .* (requester\/stream id \(0x[0-9a-f]*\) on.*/\1/p' "$log")
# fault_record as the suite prints it: DEV:REASON:IOVA:FLAGS.
grep -E '^case (fault_read|dma)\.' "$out/$arch.qemu" | grep -oE '[[,][0-9]+:[0-9]+:0x[0-9a-f]+:[0-9]+[],]' | cut -d: -f3 | page | sort -u > "$out/$arch.suite-pages"
case $arch in
  aarch64)
    sed 's/^[0-9]*@[0-9.]*://' "$trace" | awk '
      $1 == "smmu_ptw_level" { for (i = 2; i <= NF; i++) if ($i ~ /^iova=/) { iova = substr($i, 6) } }
      $1 == "smmuv3_record_event" { s = $3; sub(/^sid=/, "", s); print $2, s, iova }' > "$out/$arch.events"
    awk -v s="$sid" '$2 == s { print $3 }' "$out/$arch.events" | page | sort -u > "$out/$arch.qemu-pages"
    malformed=$(awk '$1 != "SMMU_EVT_F_TRANSLATION" && $1 != "SMMU_EVT_F_PERMISSION"' "$out/$arch.events" | sort -u | head -3)
    ;;
  x86_64)
    [ -n "$sid" ] && sid=$(printf '0x%04x' "$sid")
    sed 's/^[0-9]*@[0-9.]*://' "$trace" | awk '$1 == "vtd_dmar_fault" { print $3, $5, $7 }' > "$out/$arch.events"
    awk -v s="$sid" '$1 == s { print $3 }' "$out/$arch.events" | page | sort -u > "$out/$arch.qemu-pages"
    malformed=$(awk '$2 != 5 && $2 != 6 && $2 != 2' "$out/$arch.events" | sort -u | head -3)
    malformed+=$(grep -E 'reserve non-?zero|invalid context entry|read error on DMAR' "$out/$arch.stderr" | head -3)
    ;;
esac
if [ -s "$out/$arch.suite-pages" ] && cmp -s "$out/$arch.suite-pages" "$out/$arch.qemu-pages"; then
  ok "$arch: the fault pages the suite read back equal those QEMU's IOMMU faulted for its device $sid: $(tr '\n' ' ' < "$out/$arch.suite-pages")"
else
  bad "$arch: suite read [$(tr '\n' ' ' < "$out/$arch.suite-pages")], QEMU faulted [$(tr '\n' ' ' < "$out/$arch.qemu-pages")] for '$sid'"
fi

# (c) The wild partition: stopped at its store, nothing after it ran.
if grep -q '^\[wild\] wild: partition wild with 0 devices: storing to GPA 0x30000000' "$log" \
    && grep -q '^\[wild\] partition STOPPED by the hypervisor: write at GPA 0x30000000 (PC 0x[0-9a-f]*), outside its RAM and its devices' "$log" \
    && grep -q '^sluice:   wild: stopped: write at GPA 0x30000000 ' "$log"; then
  ok "$arch: wild was stopped at its store to GPA 0x30000000 with the hypervisor's report"
else
  bad "$arch: no stop report for wild: $(grep '^\[wild\]\|^sluice:   wild' "$log" | head -3)"
fi
if grep -q '^\[wild\] wild: partition' "$log" && ! grep -q 'AFTER THE STORE' "$log" && ! grep -q '^\[wild\] partition exited' "$log"; then
  ok "$arch: nothing of wild ran after the store"
else
  bad "$arch: wild went on after its store: $(grep 'AFTER THE STORE\|^\[wild\] partition exited' "$log" | head -2)"
fi

# (d) The witness was served to the end; the verdict and QEMU's status.
wok=$(grep -c '^\[witness\] check: ok' "$log")
wfail=$(grep -c '^\[witness\] check: FAIL' "$log")
if grep -q '^sluice:   witness: exited with code 0$' "$log" && [ "$wfail" -eq 0 ] && [ "$wok" -ge 8 ]; then
  ok "$arch: witness ran after both and exited 0: $wok checks held (DMA both ways through two devices, fault read back)"
else
  bad "$arch: witness: $wok checks held, $wfail failed; $(grep '^sluice:   witness' "$log")"
fi
if [ "$status" -eq "$stopped_status" ] && grep -q '^sluice: FAILED: a partition did not start, was stopped or exited non-zero$' "$log" \
    && ! grep -q '^sluice: every partition exited 0' "$log" && ! grep -q 'core invariants BROKEN\|PANIC' "$log"; then
  ok "$arch: the verdict is the stopped-partition one and QEMU exited with its status ($status); the core's invariants held"
else
  bad "$arch: QEMU status $status (want $stopped_status), verdict: $(grep '^sluice: \(FAILED\|every\|platform\|core\)' "$log" | head -2)"
fi

# (e) No malformed entry.
if [ -z "$malformed" ]; then
  ok "$arch: QEMU's IOMMU reported no malformed entry"
else
  bad "$arch: malformed: $malformed"
fi

# (f) Time.
if [ "$elapsed" -lt 120 ]; then
  ok "$arch: the QEMU run took $elapsed s (all of abi.sh: $((SECONDS - t_all)) s)"
else
  bad "$arch: the QEMU run took $elapsed s"
fi
echo "qemu $arch abi checks: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
