#!/usr/bin/env bash
# Installs every Debian package that the build, the tests and the demo need.
# Idempotent: packages already present are skipped by apt; apt-get update runs
# only when something is missing.
set -euo pipefail
PKGS=(build-essential pkg-config libtorch-dev libmicrohttpd-dev libjansson-dev
      liblmdb-dev lmdb-utils check zlib1g-dev libpng-dev libopenblas0-pthread
      dataset-fashion-mnist curl python3 ca-certificates)
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
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
