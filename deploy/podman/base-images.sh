#!/usr/bin/env bash
# Builds the stand-ins for the public base images that the Dockerfile and
# docker-compose.yml name, for a machine that cannot pull from Docker Hub:
#   docker.io/library/python:3.11-slim, docker.io/library/redis:7,
#   docker.io/library/rabbitmq:3-management
# from a debootstrap of the host's Debian mirror. An image that already exists is kept,
# so only the first run pays (about two minutes). MLPULSE_STANDINS_REBUILD=1 rebuilds.
set -euo pipefail
source "$(dirname "$0")/env.sh"

BASE=localhost/mlpulse-standin/debian:bookworm
declare -A STANDINS=(
  [python]=docker.io/library/python:3.11-slim
  [redis]=docker.io/library/redis:7
  [rabbitmq]=docker.io/library/rabbitmq:3-management
)

exists() { podman image exists "$1"; }

if [[ ${MLPULSE_STANDINS_REBUILD:-} == 1 ]]; then
  for image in "$BASE" "${STANDINS[@]}"; do podman rmi -f "$image" >/dev/null 2>&1 || true; done
fi

todo=()
for name in python redis rabbitmq; do
  exists "${STANDINS[$name]}" || todo+=("$name")
done
if ((${#todo[@]} == 0)); then
  echo "base-images: stand-ins present (${STANDINS[*]})"
  exit 0
fi

# The Debian mirror the host uses, from deb822 sources or a classic sources.list.
mirror() {
  local uri
  uri=$(grep -hs -E '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | awk '{print $2}' | grep -v -e security -e '^$' | head -n1 || true)
  if [[ -z $uri ]]; then
    uri=$(grep -hs -E '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
          | awk '{print $2}' | grep -v security | grep -i debian | head -n1 || true)
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}

work=$(mktemp -d /var/tmp/mlpulse-standins.XXXXXX)
trap 'rm -rf "$work"' EXIT

if ! exists "$BASE"; then
  url=$(mirror)
  echo "base-images: debootstrap --variant=minbase bookworm from $url"
  debootstrap --variant=minbase bookworm "$work/rootfs" "$url" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 20 "$work/debootstrap.log" >&2; exit 1; }
  rm -rf "$work"/rootfs/var/cache/apt/archives/*.deb "$work"/rootfs/var/lib/apt/lists/*
  tar -C "$work/rootfs" -c . | podman import --quiet --change 'CMD ["/bin/bash"]' - "$BASE" >/dev/null
  rm -rf "$work/rootfs"
fi

# The build context: the Containerfiles, entrypoints, and the host's CA bundle and pip
# settings (the host may reach PyPI through a proxy with its own CA, or through a mirror).
cp "$PODMAN_DIR"/standins/* "$work/"
cp /etc/ssl/certs/ca-certificates.crt "$work/ca-certificates.crt"
python3 - "$work/pip.conf" <<'PY'
import os, subprocess, sys
# Index settings that are URLs reachable from a container; local file:// indexes are not.
conf = {"cert": "/etc/ssl/certs/ca-certificates.crt",
        "timeout": os.environ.get("PIP_DEFAULT_TIMEOUT", "60")}
for key, env in (("index-url", "PIP_INDEX_URL"), ("extra-index-url", "PIP_EXTRA_INDEX_URL"),
                 ("trusted-host", "PIP_TRUSTED_HOST")):
    value = os.environ.get(env)
    if value is None:
        out = subprocess.run([sys.executable, "-m", "pip", "config", "get", f"global.{key}"],
                             capture_output=True, text=True, check=False)
        value = out.stdout.strip() if out.returncode == 0 else ""
    words = [w for w in value.split() if key == "trusted-host" or w.startswith(("http://", "https://"))]
    if words:
        conf[key] = " ".join(words)
with open(sys.argv[1], "w") as f:
    f.write("[global]\n" + "".join(f"{k} = {v}\n" for k, v in conf.items()))
PY

for name in "${todo[@]}"; do
  echo "base-images: building the stand-in ${STANDINS[$name]}"
  podman build --quiet --format docker --network host -f "$work/$name.Containerfile" \
    -t "${STANDINS[$name]}" "$work" >/dev/null
done
podman image prune -f >/dev/null
echo "base-images: done"
