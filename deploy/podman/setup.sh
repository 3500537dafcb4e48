#!/usr/bin/env bash
# Installs what `make compose-test` needs and is missing: Debian's podman with its
# helpers, debootstrap for the stand-in base images, and podman-compose in its own venv.
# Safe to run again; it does nothing when everything is there.
set -euo pipefail
source "$(dirname "$0")/env.sh"

if [[ $(id -u) != 0 ]]; then
  echo "setup: needs root (rootful podman, apt-get)" >&2
  exit 1
fi

packages=(podman buildah runc netavark aardvark-dns conmon catatonit iptables
          fuse-overlayfs slirp4netns uidmap debootstrap python3-venv)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    "${missing[@]}" >/dev/null
fi

if ! "$PODMAN_COMPOSE" --version 2>/dev/null | grep -q "podman-compose version $PODMAN_COMPOSE_VERSION"; then
  echo "setup: installing podman-compose $PODMAN_COMPOSE_VERSION"
  mkdir -p "$MLPULSE_PODMAN_CACHE"
  rm -rf "$MLPULSE_PODMAN_CACHE/venv"
  python3 -m venv "$MLPULSE_PODMAN_CACHE/venv"
  "$MLPULSE_PODMAN_CACHE/venv/bin/python" -m pip install --quiet \
    "podman-compose==$PODMAN_COMPOSE_VERSION" 2> >(grep -v "is ignored: it is neither" >&2)
fi

podman info --format '{{.Host.OCIRuntime.Name}} {{.Host.CgroupManager}}' >/dev/null
