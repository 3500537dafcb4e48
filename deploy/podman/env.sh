# Sourced by the scripts here: where the tools and settings for `make compose-test` live.
PODMAN_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export CONTAINERS_CONF="$PODMAN_DIR/containers.conf"
export CONTAINERS_REGISTRIES_CONF="$PODMAN_DIR/registries.conf"
# podman-compose lives in a venv of its own: it is a test tool, not part of mlpulse.
MLPULSE_PODMAN_CACHE="${MLPULSE_PODMAN_CACHE:-/var/cache/mlpulse-podman}"
PODMAN_COMPOSE="$MLPULSE_PODMAN_CACHE/venv/bin/podman-compose"
PODMAN_COMPOSE_VERSION="1.6.0"
export MLPULSE_PODMAN_CACHE PODMAN_COMPOSE PODMAN_COMPOSE_VERSION
