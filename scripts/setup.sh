#!/usr/bin/env bash
# Set up edgecomp on a fresh Debian/Ubuntu machine: the system packages that are missing, then a
# virtual environment .venv with edgecomp and its test tools.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v arm-none-eabi-gcc >/dev/null || need+=(gcc-arm-none-eabi)
[ -e /usr/lib/arm-none-eabi/newlib/libc.a ] || [ -e /usr/lib/arm-none-eabi/lib/libc.a ] || need+=(libnewlib-arm-none-eabi)
command -v qemu-system-arm >/dev/null || need+=(qemu-system-arm)
command -v make >/dev/null || need+=(make)
# Arm application-processor (Linux) targets: cross compilers and QEMU user mode.
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v arm-linux-gnueabihf-gcc >/dev/null || need+=(gcc-arm-linux-gnueabihf libc6-dev-armhf-cross)
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
# Bare-metal AArch64 (cortex-a53-virt): picolibc for the cross compiler; qemu-system-aarch64
# comes with Debian's qemu-system-arm.
[ -e /usr/lib/picolibc/aarch64-linux-gnu/picolibc.specs ] || need+=(picolibc-aarch64-linux-gnu)
command -v qemu-system-aarch64 >/dev/null || need+=(qemu-system-arm)
command -v gcc >/dev/null || need+=(gcc libc6-dev)
python3 -c "import venv, ensurepip" 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "setup: installing ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
echo "setup: done ($(.venv/bin/edgecomp --version))"
