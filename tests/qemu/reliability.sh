#!/usr/bin/env bash
# Reliability in QEMU (issue #7): the image built with
# manifests/tests/reliability-ARCH.toml runs four partitions:
#   R  reset-dma   starts an edu DMA (edu copies 100 ms later) and exits at
#                  once; the hypervisor resets it (devices blocked, objects
#                  destroyed, pins released, RAM zeroed) and starts it again
#                  (restarts = 1);
#   Q  quarantine  DMAs to unmapped IOVAs until the hypervisor switches its
#                  device's bus mastering off (fault_limit = 8) and tells it;
#   S  storm       270 edu DMAs into unmapped IOVAs (1024 faults each);
#   V  victim      times its own hypercalls before and during the storm.
#
# Checks, from QEMU's side where QEMU can tell:
#   - QEMU's exit status says success, every partition exited 0;
#   - R was reset and started again, its checks held (the DMA was still in
#     flight at the restart, its memory stayed zero), and QEMU's IOMMU
#     blocked that DMA: vtd_dmar_fault (x86_64) / smmuv3_translate_abort
#     (aarch64) for R's device at the old IOVA page;
#   - Q: QEMU saw the command-register write that cleared Q's bus master
#     enable (pci_cfg_write), after at least 8 faults of Q's device, and no
#     fault of Q's device after it; Q's checks held;
#   - S: QEMU's IOMMU recorded at least 100,000 faults for S's devices; S
#     read a full queue (256 records) with the rest counted in out_lost;
#   - V: every hypercall succeeded; its speed before and during the storm
#     is printed (a benchmark number: reported, not judged);
#   - QEMU reported no malformed entry.
#
# Usage: tests/qemu/reliability.sh aarch64|x86_64
#        SLUICE_REUSE=1 tests/qemu/reliability.sh ARCH   re-checks the last run's
#        serial log and trace (target/qemu-reliability) without booting.
set -uo pipefail
cd "$(dirname "$0")/../.."
arch=${1:-x86_64}
out=target/qemu-reliability
mkdir -p "$out"
passed=0
failed=0
ok() { echo "ok: $*"; passed=$((passed + 1)); }
bad() { echo "FAIL: $*"; failed=$((failed + 1)); }

serial="$out/$arch.serial"
trace="$out/$arch.trace"
if [ -z "${SLUICE_REUSE:-}" ]; then rm -f "$trace"; fi
export SLUICE_MANIFEST="$PWD/manifests/tests/reliability-$arch.toml"
edus=(-device edu -device edu -device edu -device edu -device edu)
t0=$SECONDS
case ${SLUICE_REUSE:+reuse-}$arch in
  reuse-*) status=$(cat "$out/$arch.status"); success=$status ;;
  aarch64)
    cargo build --locked -q -p sluice-aarch64 --target aarch64-unknown-none --release || exit 1
    cp target/aarch64-unknown-none/release/sluice-aarch64 "$out/sluice-aarch64"
    timeout 300 qemu-system-aarch64 -M virt,virtualization=on,iommu=smmuv3,gic-version=3 -cpu cortex-a72 -m 512M \
      -global arm-smmuv3.stage=2 "${edus[@]}" -display none -serial stdio -semihosting -kernel "$out/sluice-aarch64" \
      -trace smmuv3_record_event -trace smmuv3_translate_abort -trace pci_cfg_write -D "$trace" > "$serial" 2> "$out/$arch.stderr"
    status=$?
    success=0
    ;;
  x86_64)
    cargo build --locked -q -p sluice-x86_64 --target x86_64-unknown-none --release || exit 1
    cp target/x86_64-unknown-none/release/sluice-x86_64 "$out/sluice-x86_64"
    timeout 300 qemu-system-x86_64 -M q35 -accel tcg -cpu qemu64,+svm,+npt -m 512M -device intel-iommu,aw-bits=48 \
      "${edus[@]}" -display none -no-reboot -serial stdio -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
      -kernel "$out/sluice-x86_64" -trace vtd_dmar_fault -trace pci_cfg_write -D "$trace" > "$serial" 2> "$out/$arch.stderr"
    status=$?
    success=33
    ;;
  *) echo "reliability.sh: aarch64 or x86_64" >&2; exit 2 ;;
esac
echo "$status" > "$out/$arch.status"
elapsed=$((SECONDS - t0))
echo "-- $arch reliability: QEMU exit status $status after $elapsed s"

if [ "$status" -eq "$success" ] && grep -q '^sluice: every partition exited 0' "$serial"; then
  ok "$arch: every partition exited 0 (QEMU status $status, $elapsed s)"
else
  bad "$arch: status $status after $elapsed s"; grep -E 'FAIL|STOPPED|NOT |PANIC' "$serial" | head -5
fi

# Each partition's devices: "[P] device BB:DD.F (requester/stream id 0x.. on ..."
sids() { sed -n "s/^\[$1\] device .* (requester\/stream id \(0x[0-9a-f]*\) on.*/\1/p" "$serial"; }
bdfs() { sed -n "s/^\[$1\] device \([0-9a-f:.]*\) (requester.*/\1/p" "$serial" | head -1; }
checks() { # partition, program: "N passed" of its last summary, and no FAIL
  local s; s=$(grep "^\[$1\] summary: $2:" "$serial" | tail -1)
  if grep -q "^\[$1\] check: FAIL" "$serial"; then echo "FAIL"; else sed -n 's/.*: \([0-9]*\) checks passed, 0 failed\r*$/\1/p' <<< "$s"; fi
}
# The trace as one line per fault QEMU's IOMMU saw, "fault SID PAGE - REASON"
# / "abort SID PAGE", and "cfg BDF VALUE" per edu command-register write
# (SIDs and values as QEMU prints them: mawk has no strtonum).
sed 's/^[0-9]*@[0-9.]*://' "$trace" | awk '
  function page(a) { sub(/^0x/, "", a); a = substr(a, 1, length(a) - 3); sub(/^0*/, "", a); return a == "" ? "0" : a }
  $1 == "vtd_dmar_fault" { printf "fault %s %s - %s\n", $3, page($7), $5 }
  $1 == "smmuv3_record_event" { s = $3; sub(/^sid=/, "", s); printf "fault %s - - %s\n", s, $2 }
  $1 == "smmuv3_translate_abort" { s = $3; sub(/^sid=/, "", s); a = $6; sub(/^iova:/, "", a); printf "abort %s %s - -\n", s, page(a) }
  $1 == "pci_cfg_write" && $2 == "edu" && $4 == "@0x4" { printf "cfg %s %s\n", $3, $6 }' > "$out/$arch.events"
num() { if [ "$arch" = x86_64 ]; then printf '0x%04x' "$1"; else printf '0x%x' "$1"; fi; }
count() { awk -v k="$1" -v s="$2" '$1 == k && $2 == s' "$out/$arch.events" | wc -l; }

# R: reset during DMA.
r_sid=$(num "$(sids R)")
r_checks=$(checks R reset-dma)
r_blocked=$(awk -v s="$r_sid" '($1 == "fault" || $1 == "abort") && $2 == s && $3 == "201"' "$out/$arch.events" | wc -l)
if grep -q '^\[R\] partition reset: 1 devices blocked, 1 IOAS destroyed, 2 pinned pages released, 8192 KiB of RAM zeroed' "$serial" \
  && grep -q '^\[R\] partition starting again (reset 1' "$serial" && [ "${r_checks:-0}" = 7 ]; then
  ok "$arch: R was reset during its DMA and started again; its 7 checks held (the DMA was in flight at the restart, its memory stayed zero)"
else
  bad "$arch: R: reset/restart lines or its checks (${r_checks:-none})"
fi
if [ "$r_blocked" -gt 0 ]; then
  ok "$arch: QEMU's IOMMU blocked R's DMA after the reset: $r_blocked faults/aborts of device $(sids R) at IOVA page 0x201"
else
  bad "$arch: QEMU shows no blocked access of R's device $(sids R) at IOVA page 0x201"
fi

# Q: quarantine.
q_sid=$(num "$(sids Q)")
q_bdf=$(bdfs Q); q_bdf=${q_bdf#0000:}
# The first write that clears bus master enable (bit 2) after one that set it.
q_line=$(awk -v b="$q_bdf" '$1 == "cfg" && $2 == b { d = substr($3, length($3)); on = index("4567cdef", d) > 0; if (on) seen = 1; else if (seen) { print NR; exit } }' "$out/$arch.events")
if [ -n "$q_line" ]; then
  q_before=$(head -n "$q_line" "$out/$arch.events" | awk -v s="$q_sid" '$1 == "fault" && $2 == s' | wc -l)
  q_after=$(tail -n "+$q_line" "$out/$arch.events" | awk -v s="$q_sid" '($1 == "fault" || $1 == "abort") && $2 == s' | wc -l)
else
  q_before=0; q_after=0
fi
if [ -n "$q_line" ] && [ "$q_before" -ge 8 ] && [ "$q_after" -eq 0 ] && [ "$(checks Q quarantine)" = 3 ]; then
  ok "$arch: QEMU saw Q's device $q_bdf lose bus mastering after $q_before faults and fault no more; Q was told and its DMA moved nothing"
else
  bad "$arch: Q ($q_bdf, sid $(sids Q)): bus-master-off write at events line '${q_line}', $q_before faults before, $q_after after, checks $(checks Q quarantine)"
fi

# S: the storm.
s_faults=0
for s in $(sids S); do s_faults=$((s_faults + $(count fault "$(num "$s")"))); done
read -r s_dmas s_records s_lost < <(sed -n 's/^\[S\] storm: \([0-9]*\) DMAs; FAULT_READ: \([0-9]*\) records, out_lost \([0-9]*\),.*/\1 \2 \3/p' "$serial")
if [ "$s_faults" -ge 100000 ] && [ "${s_records:-0}" -eq 256 ] && [ "${s_lost:-0}" -gt 0 ] && [ "$(checks S storm)" = 4 ]; then
  ok "$arch: fault storm: QEMU's IOMMU saw $s_faults faults from S's ${s_dmas} DMAs; S read 256 records (the queue) and out_lost $s_lost"
else
  bad "$arch: storm: $s_faults faults in QEMU (want >= 100000), S read ${s_records:-?} records, out_lost ${s_lost:-?}, checks $(checks S storm)"
fi

# V: still served; its numbers.
bench=$(grep '^\[V\] bench:' "$serial" | sed 's/^\[V\] bench: //; s/\r$//')
if [ "$(checks V victim)" = 1 ] && [ -n "$bench" ]; then
  ok "$arch: V's hypercalls all succeeded during the storm"
  echo "bench: $arch: $bench$(grep -A1 '^\[V\] bench:' "$serial" | sed -n '2s/^\[V\] //p' | tr -d '\r')"
else
  bad "$arch: V: checks $(checks V victim), bench line '${bench}'"
fi

# Nothing malformed.
case $arch in
  aarch64) malformed=$(awk '$1 == "fault" && $5 != "SMMU_EVT_F_TRANSLATION"' "$out/$arch.events" | sort -u | head -3) ;;
  x86_64)
    malformed=$(awk '$1 == "fault" && $5 != 5 && $5 != 6 && $5 != 2' "$out/$arch.events" | sort -u | head -3)
    malformed+=$(grep -E 'reserve non-?zero|invalid context entry|read error on DMAR' "$out/$arch.stderr" | head -3)
    ;;
esac
if [ -z "$malformed" ]; then
  ok "$arch: QEMU reported no malformed entry"
else
  bad "$arch: malformed: $malformed"
fi
echo "qemu $arch reliability checks: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
