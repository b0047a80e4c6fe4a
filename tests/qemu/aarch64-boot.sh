#!/usr/bin/env bash
# The aarch64 image boots at EL2 on QEMU virt (virtualization=on, SMMUv3),
# both as an ELF and as a raw arm64 Image (the 64-byte header U-Boot's
# booti loads, x0 = device tree), and finds the platform in the device tree.
# Checks QEMU's exit status (semihosting: 0 = success) and the console:
#   - it runs at EL2 and found its device tree (x0 for the Image, the start
#     of RAM for the ELF);
#   - the SMMUv3 node and the PCIe host with its iommu-map came from the DT;
#   - crash=brk gives a register report and exit status 1.
# Without options the image runs the manifest's partitions (the demo);
# tests/qemu/aarch64-selftest.sh checks the SMMUv3 self-test, and
# tests/qemu/demo.sh the demo itself.
#
# Usage: tests/qemu/aarch64-boot.sh   (builds the image)
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

boot() {
  local name=$1 kernel=$2 append=${3:-}
  local args=(-M virt,virtualization=on,iommu=smmuv3,gic-version=3 -cpu cortex-a72 -m 512M
    -global arm-smmuv3.stage=2 -device edu -device edu
    -display none -serial stdio -semihosting -kernel "$kernel")
  [ -n "$append" ] && args+=(-append "$append")
  timeout 120 qemu-system-aarch64 "${args[@]}" > "$out/$name.serial" 2> "$out/$name.stderr"
  status=$?
  echo "-- $name: QEMU exit status $status"
}

for form in elf image; do
  kernel=$elf
  [ "$form" = image ] && kernel=$image
  boot "$form" "$kernel"
  s="$out/$form.serial"
  if [ "$status" -eq 0 ] && grep -q 'aarch64, EL2' "$s" && grep -q '^sluice: every partition exited 0' "$s"; then
    ok "$form: booted at EL2 and exited 0"
  else
    bad "$form: status $status"; tail -n 20 "$s"
  fi
  if grep -q 'arm,smmu-v3 at 0x9050000' "$s" && grep -qE 'iommu-map rid 0x0\.\.0x10000 -> smmu0' "$s" && grep -q 'ECAM 0x4010000000' "$s"; then
    ok "$form: SMMUv3, ECAM and iommu-map found in the device tree"
  else
    bad "$form: device tree findings missing"
  fi
  boot "$form-brk" "$kernel" "crash=brk"
  if [ "$status" -eq 1 ] && grep -q 'BRK' "$out/$form-brk.serial" && grep -qE 'x30' "$out/$form-brk.serial"; then
    ok "$form: crash=brk gives a register report and exit status 1"
  else
    bad "$form: crash=brk: status $status"; tail -n 20 "$out/$form-brk.serial"
  fi
done
grep -q 'DTB at 0x48000000 (x0)' "$out/image.serial" && ok "Image: device tree taken from x0" || bad "Image: device tree not from x0"

echo "qemu aarch64 checks: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
