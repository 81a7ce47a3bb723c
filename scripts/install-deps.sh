#!/usr/bin/env bash
# Installs the Debian packages the project needs. Idempotent: packages
# already present are skipped, and apt-get update runs only when something
# is missing.
#   install-deps.sh           build, tests and demo
#   install-deps.sh fuzz      + clang and its sanitizer runtimes (make fuzz)
#   install-deps.sh browser   + chromium and node/npm (the explorer's browser test)
#   install-deps.sh node      + node/npm (make validate)
#   install-deps.sh lint      + cppcheck (make lint)
#   install-deps.sh bench     + matplotlib (make bench's chart)
set -euo pipefail
PKGS=(build-essential pkg-config libtorch-dev libmicrohttpd-dev libjansson-dev
      liblmdb-dev lmdb-utils check zlib1g-dev libpng-dev libopenblas0-pthread
      dataset-fashion-mnist curl python3 ca-certificates)
for group in "$@"; do
  case "$group" in
    fuzz) PKGS+=(clang libclang-rt-14-dev) ;;
    browser) PKGS+=(chromium)
             command -v node >/dev/null && command -v npm >/dev/null || PKGS+=(nodejs npm) ;;
    bench) PKGS+=(python3-matplotlib) ;;
    lint) PKGS+=(cppcheck) ;;
    node) command -v node >/dev/null && command -v npm >/dev/null || PKGS+=(nodejs npm) ;;
    *) echo "install-deps: unknown group '$group'" >&2; exit 2 ;;
  esac
done
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PKGS[@]} packages present"
  exit 0
fi
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
echo "install-deps: installing ${missing[*]}"
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
