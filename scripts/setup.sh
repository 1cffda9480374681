#!/usr/bin/env bash
# Set up edgecomp on a fresh Debian/Ubuntu machine: the system packages that are missing, then a
# virtual environment .venv with edgecomp and its test tools. Prints progress; apt's and pip's own
# output goes to .cache/setup.log.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .cache
log=.cache/setup.log
: > "$log"

step() { echo "setup: $*"; }
fail() {
  echo "setup: FAILED: $1 (last lines of $log below; the whole log is there)" >&2
  tail -n 25 "$log" >&2
  exit 1
}

need=()
command -v python3 >/dev/null || need+=(python3)
python3 -c "import venv, ensurepip" 2>/dev/null || need+=(python3-venv)
command -v gcc >/dev/null || need+=(gcc libc6-dev)
command -v make >/dev/null || need+=(make)
command -v arm-none-eabi-gcc >/dev/null || need+=(gcc-arm-none-eabi)
[ -e /usr/lib/arm-none-eabi/newlib/libc.a ] || [ -e /usr/lib/arm-none-eabi/lib/libc.a ] || need+=(libnewlib-arm-none-eabi)
command -v qemu-system-arm >/dev/null || need+=(qemu-system-arm)
# edgecomp export's tests build the exported libraries with CMake (and C++ for the headers).
command -v cmake >/dev/null || need+=(cmake)
command -v g++ >/dev/null || need+=(g++)
# Arm application-processor (Linux) targets: cross compilers and QEMU user mode.
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v arm-linux-gnueabihf-gcc >/dev/null || need+=(gcc-arm-linux-gnueabihf libc6-dev-armhf-cross)
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
# Bare-metal AArch64 (cortex-a53-virt): picolibc for the cross compiler; qemu-system-aarch64
# comes with Debian's qemu-system-arm.
[ -e /usr/lib/picolibc/aarch64-linux-gnu/picolibc.specs ] || need+=(picolibc-aarch64-linux-gnu)
command -v qemu-system-aarch64 >/dev/null || need+=(qemu-system-arm)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  # Deduplicated, in order.
  mapfile -t pkgs < <(printf '%s\n' "${need[@]}" | awk '!seen[$0]++')
  step "installing system packages: ${pkgs[*]} (apt's log: $log)"
  $sudo apt-get update >>"$log" 2>&1 || fail "apt-get update"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${pkgs[@]}" >>"$log" 2>&1 \
    || fail "apt-get install"
fi
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "setup: edgecomp needs Python 3.11 or newer; python3 is $(python3 -V 2>&1)" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
  step "creating .venv"
  python3 -m venv .venv >>"$log" 2>&1 || fail "python3 -m venv .venv"
fi
step "installing edgecomp and its Python dependencies into .venv (pip's log: $log)"
.venv/bin/python -m pip install --disable-pip-version-check --progress-bar off -e ".[dev]" >>"$log" 2>&1 \
  || fail "pip install -e .[dev]"
step "done ($(.venv/bin/edgecomp --version))"
