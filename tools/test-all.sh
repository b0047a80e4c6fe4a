#!/usr/bin/env bash
# Runs every test of Sluice. This is the README's test command and what CI runs.
#   1. installs what is missing (Rust bare-metal targets, QEMU) via tools/install-deps.sh;
#   2. checks that kernel/ has no unsafe code;
#   3. builds the core for both bare-metal targets (it must stay no_std);
#   4. clippy with warnings as errors;
#   5. all host tests (unit, bit-exact, spec-walker, model-based property tests);
#   6. the hvsim conformance scripts (shared/conformance, copied into
#      tests/conformance/shared, and Sluice's own in tests/conformance);
#   7. compiles the benchmarks (they are run by hand: `cargo bench`, see README);
#   8. boots the hypervisor in QEMU: the x86_64 VT-d self-test in three
#      intel-iommu configurations, checked against QEMU's own trace
#      (tests/qemu/x86_64-selftest.sh), the aarch64 image at EL2 as ELF
#      and as arm64 Image (tests/qemu/aarch64-boot.sh), and the aarch64
#      SMMUv3 self-test, stage 2 and stage 1, checked against QEMU's trace
#      (tests/qemu/aarch64-selftest.sh), the isolation demo with guest
#      partitions on both (tests/qemu/demo.sh), the reliability run on
#      both: a partition reset during DMA, a device quarantined at its
#      fault limit, a 276,480-fault storm with a timed bystander
#      (tests/qemu/reliability.sh), and the ABI suite on both
#      (tests/qemu/abi.sh: every hypercall with its error paths in a
#      partition, compared line for line with hvsim; GET_HW_INFO against
#      QEMU's IOMMU registers; a partition stopped for touching memory not
#      its own while a third one is still served).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "dependencies"
./tools/install-deps.sh --qemu

step "kernel/ forbids unsafe"
if grep -rn --include='*.rs' -E '\bunsafe\b' kernel | grep -v -E '^[^:]+:[0-9]+:\s*//' | grep -v 'forbid(unsafe_code)'; then
  echo "kernel/ must not contain unsafe code" >&2
  exit 1
fi
echo "ok"

step "core builds for bare metal"
for t in x86_64-unknown-none aarch64-unknown-none; do
  cargo build --locked -q -p sluice-kernel --target "$t"
  echo "ok: $t"
done

step "clippy"
cargo clippy --locked -q --workspace --all-targets -- -D warnings
cargo clippy --locked -q -p sluice-kernel -p sluice-vtd -p sluice-acpi -p sluice-pci --target aarch64-unknown-none -- -D warnings
cargo clippy --locked -q -p sluice-x86_64 --target x86_64-unknown-none -- -D warnings
cargo clippy --locked -q -p sluice-aarch64 -p sluice-boot --target aarch64-unknown-none -- -D warnings
for t in x86_64-unknown-none aarch64-unknown-none; do
  cargo clippy --locked -q -p sluice-guest -p sluice-guest-hello -p sluice-guest-programs --target "$t" -- -D warnings
done
echo "ok"

step "hypervisor images"
cargo build --locked -q -p sluice-x86_64 --target x86_64-unknown-none --release
echo "ok: target/x86_64-unknown-none/release/sluice-x86_64"

step "host tests"
status=0
mkdir -p target
cargo test --locked --workspace 2>&1 | tee target/test-all.log || status=$?
read -r passed failed < <(awk '/^test result/ {
    for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
  END { print p + 0, f + 0 }' target/test-all.log)

step "conformance scripts (hvsim)"
# The shared examples are kept in tests/conformance/shared; when the shared
# design folder sits beside the checkout, the copies must match it.
if [ -d ../shared/conformance ]; then
  for f in ../shared/conformance/*.hvsim; do
    if ! cmp -s "$f" "tests/conformance/shared/$(basename "$f")"; then
      echo "tests/conformance/shared/$(basename "$f") differs from $f: copy it again" >&2
      status=1
    fi
  done
fi
cargo build --locked -q --release -p hvsim
conf_status=0
./target/release/hvsim check tests/conformance/shared/*.hvsim tests/conformance/*.hvsim > target/conformance.log || conf_status=$?
grep -E '^FAIL' target/conformance.log || true
tail -n 1 target/conformance.log
read -r conf_passed conf_failed < <(awk 'END { print $1 + 0, $3 + 0 }' target/conformance.log)
if [ "$conf_status" -ne 0 ]; then status=1; fi

step "benchmarks compile"
cargo bench --locked -q --workspace --no-run 2>&1 | grep -v '^\s*Executable' || true

step "QEMU: x86_64 VT-d self-test"
qemu_status=0
tests/qemu/x86_64-selftest.sh target/x86_64-unknown-none/release/sluice-x86_64 2>&1 | tee target/qemu-x86_64.log | grep -E '^(ok|FAIL|--|   )' || true
grep -q '^qemu x86_64 checks: .* 0 failed' target/qemu-x86_64.log || qemu_status=1
read -r qemu_passed qemu_failed < <(sed -n 's/^qemu x86_64 checks: \([0-9]*\) passed, \([0-9]*\) failed/\1 \2/p' target/qemu-x86_64.log | tail -1)
qemu_passed=${qemu_passed:-0}
qemu_failed=${qemu_failed:-1}

step "QEMU: aarch64 boot at EL2 (ELF and arm64 Image)"
tests/qemu/aarch64-boot.sh 2>&1 | tee target/qemu-aarch64.log | grep -E '^(ok|FAIL|--)' || true
grep -q '^qemu aarch64 checks: .* 0 failed' target/qemu-aarch64.log || qemu_status=1
read -r a_passed a_failed < <(sed -n 's/^qemu aarch64 checks: \([0-9]*\) passed, \([0-9]*\) failed/\1 \2/p' target/qemu-aarch64.log | tail -1)
qemu_passed=$((qemu_passed + ${a_passed:-0}))
qemu_failed=$((qemu_failed + ${a_failed:-1}))

step "QEMU: the isolation demo on x86_64 (SVM partitions with nested paging)"
tests/qemu/demo.sh x86_64 2>&1 | tee target/qemu-demo-x86_64.log | grep -E '^(ok|FAIL|--)' || true
grep -q '^qemu x86_64 demo checks: .* 0 failed' target/qemu-demo-x86_64.log || qemu_status=1
read -r d_passed d_failed < <(sed -n 's/^qemu x86_64 demo checks: \([0-9]*\) passed, \([0-9]*\) failed/\1 \2/p' target/qemu-demo-x86_64.log | tail -1)
qemu_passed=$((qemu_passed + ${d_passed:-0}))
qemu_failed=$((qemu_failed + ${d_failed:-1}))

step "QEMU: the isolation demo on aarch64 (EL1 partitions under stage 2)"
tests/qemu/demo.sh aarch64 2>&1 | tee target/qemu-demo-aarch64.log | grep -E '^(ok|FAIL|--)' || true
grep -q '^qemu aarch64 demo checks: .* 0 failed' target/qemu-demo-aarch64.log || qemu_status=1
read -r d_passed d_failed < <(sed -n 's/^qemu aarch64 demo checks: \([0-9]*\) passed, \([0-9]*\) failed/\1 \2/p' target/qemu-demo-aarch64.log | tail -1)
qemu_passed=$((qemu_passed + ${d_passed:-0}))
qemu_failed=$((qemu_failed + ${d_failed:-1}))

for arch in x86_64 aarch64; do
  step "QEMU: reliability on $arch (reset during DMA, quarantine, fault storm)"
  tests/qemu/reliability.sh "$arch" 2>&1 | tee "target/qemu-reliability-$arch.log" | grep -E '^(ok|FAIL|--|bench)' || true
  grep -q "^qemu $arch reliability checks: .* 0 failed" "target/qemu-reliability-$arch.log" || qemu_status=1
  read -r d_passed d_failed < <(sed -n "s/^qemu $arch reliability checks: \([0-9]*\) passed, \([0-9]*\) failed/\1 \2/p" "target/qemu-reliability-$arch.log" | tail -1)
  qemu_passed=$((qemu_passed + ${d_passed:-0}))
  qemu_failed=$((qemu_failed + ${d_failed:-1}))
done

for a in x86_64 aarch64; do
  step "QEMU: the ABI suite on $a, compared with hvsim; a stopped partition; the others served"
  tests/qemu/abi.sh "$a" 2>&1 | tee "target/qemu-abi-$a.log" | grep -E '^(ok|FAIL|--|[-+](case|sweep|suite))' || true
  grep -q "^qemu $a abi checks: .* 0 failed" "target/qemu-abi-$a.log" || qemu_status=1
  read -r d_passed d_failed < <(sed -n "s/^qemu $a abi checks: \([0-9]*\) passed, \([0-9]*\) failed/\1 \2/p" "target/qemu-abi-$a.log" | tail -1)
  qemu_passed=$((qemu_passed + ${d_passed:-0}))
  qemu_failed=$((qemu_failed + ${d_failed:-1}))
done

step "QEMU: aarch64 SMMUv3 self-test (stage 2, stage 1, malformed entry)"
tests/qemu/aarch64-selftest.sh 2>&1 | tee target/qemu-aarch64-smmu.log | grep -E '^(ok|FAIL|--)' || true
grep -q '^qemu aarch64 SMMUv3 checks: .* 0 failed' target/qemu-aarch64-smmu.log || qemu_status=1
read -r s_passed s_failed < <(sed -n 's/^qemu aarch64 SMMUv3 checks: \([0-9]*\) passed, \([0-9]*\) failed/\1 \2/p' target/qemu-aarch64-smmu.log | tail -1)
qemu_passed=$((qemu_passed + ${s_passed:-0}))
qemu_failed=$((qemu_failed + ${s_failed:-1}))
if [ "$qemu_status" -ne 0 ]; then status=1; fi

echo
echo "conformance expectations: ${conf_passed} passed, ${conf_failed} failed"
echo "QEMU checks: ${qemu_passed} passed, ${qemu_failed} failed"
passed=$((passed + conf_passed + qemu_passed))
failed=$((failed + conf_failed + qemu_failed))
echo "tests: ${passed} passed, ${failed} failed"
exit "$status"
