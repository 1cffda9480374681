#!/usr/bin/env bash
# Run a command as a new user would: in a minimal Debian 12 root made from the package mirror
# (mmdebstrap --variant=minbase: the essential packages and apt, no Python, no compiler), holding a
# clean clone of this checkout's HEAD and nothing else this machine has installed.
#
#   bash scripts/fresh-machine.sh 'bash scripts/quickstart.sh && bash scripts/test.sh'
#
# Needs root (mount namespaces, chroot). Only caches are shared with this machine: apt's .deb files
# and pip's wheels (the same packages, installed from scratch each time); and, read-only, ../shared
# (reference models, optional for the tests) and /opt/wheels (this machine kind's local PyTorch
# wheel, where present). The root is deleted afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 1 ] || { echo "usage: $0 'COMMAND'" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "fresh-machine: needs root (chroot and mounts)" >&2; exit 2; }

repo=$(pwd)
suite=bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
cache=${EDGECOMP_CI_CACHE:-$HOME/.cache/edgecomp-ci}
mkdir -p "$cache/apt" "$cache/pip"
if ! command -v mmdebstrap >/dev/null; then
  echo "fresh-machine: installing mmdebstrap"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null
fi

work=$(mktemp -d /tmp/edgecomp-fresh.XXXXXX)
root="$work/root"
cleanup() { rm -rf --one-file-system "$work"; }
trap cleanup EXIT

echo "fresh-machine: building a minimal Debian $suite root"
t0=$(date +%s)
mmdebstrap --quiet --variant=minbase --mode=root \
  --aptopt='Acquire::Retries "3"' \
  "$suite" "$root" \
  "deb $mirror $suite main" "deb $mirror $suite-updates main" \
  "deb ${mirror%/debian}/debian-security $suite-security main"
echo "fresh-machine: root ready in $(( $(date +%s) - t0 )) s ($(du -sh "$root" | cut -f1))"

# The checkout: a clean clone of HEAD, where ../shared would be beside it.
mkdir -p "$root/work"
git clone -q --no-hardlinks "$repo" "$root/work/main"
# The network as this machine reaches it: name servers, and the CA bundle and proxy settings its
# environment gives (a TLS-inspecting egress proxy needs its CA; a fresh machine here has it too).
cp /etc/resolv.conf "$root/etc/resolv.conf"
netenv=()
for var in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY \
           SSL_CERT_FILE REQUESTS_CA_BUNDLE PIP_CERT CURL_CA_BUNDLE; do
  [ -n "${!var:-}" ] && netenv+=("$var=${!var}")
done
# Local CAs too, so that the bundle keeps them when apt installs ca-certificates and rebuilds it.
if [ -d /usr/local/share/ca-certificates ]; then
  mkdir -p "$root/usr/local/share" && cp -r /usr/local/share/ca-certificates "$root/usr/local/share/"
fi
for f in SSL_CERT_FILE REQUESTS_CA_BUNDLE PIP_CERT CURL_CA_BUNDLE; do
  if [ -n "${!f:-}" ] && [ -f "${!f}" ] && [ ! -e "$root${!f}" ]; then
    mkdir -p "$(dirname "$root${!f}")" && cp "${!f}" "$root${!f}"
  fi
done

# Inside a private mount namespace and PID namespace: every mount and process ends with it.
# ../shared: beside this checkout, or beside the checkout this one was cloned from.
shared=""
origin=$(git config --get remote.origin.url 2>/dev/null || true)
for cand in "${EDGECOMP_SHARED:-}" "$repo/../shared" "${origin:+$origin/../shared}"; do
  if [ -n "$cand" ] && [ -d "$cand" ]; then shared=$(cd "$cand" && pwd); break; fi
done

unshare --mount --pid --fork --propagation private bash -euo pipefail -s -- "$root" "$cache" "$shared" "$1" "${netenv[@]}" <<'INNER'
root=$1 cache=$2 shared=$3 cmd=$4
shift 4
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
mount -t sysfs sys "$root/sys"
mount -t tmpfs tmpfs "$root/tmp"
mkdir -p "$root/var/cache/apt/archives" "$root/root/.cache/pip"
mount --bind "$cache/apt" "$root/var/cache/apt/archives"
mount --bind "$cache/pip" "$root/root/.cache/pip"
if [ -n "$shared" ]; then
  mkdir -p "$root/work/shared"
  mount --bind -o ro "$shared" "$root/work/shared"
fi
find_links=""
if [ -d /opt/wheels ]; then
  mkdir -p "$root/opt/wheels"
  mount --bind -o ro /opt/wheels "$root/opt/wheels"
  find_links=/opt/wheels
fi
# A login-like environment: nothing from this machine's shell leaks in.
exec chroot "$root" /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 \
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  PIP_FIND_LINKS="$find_links" PIP_DISABLE_PIP_VERSION_CHECK=1 \
  EDGECOMP_TEST_STRICT="${EDGECOMP_TEST_STRICT:-1}" EDGECOMP_TEST_REQUIRE="${EDGECOMP_TEST_REQUIRE:-}" "$@" \
  /bin/bash -c "cd /work/main && $cmd"
INNER
