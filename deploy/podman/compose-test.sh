#!/usr/bin/env bash
# `make compose-test`: installs podman and podman-compose if missing, builds the stand-in
# base images if missing, then builds the real Dockerfile and runs the real
# docker-compose.yml through the checks in compose_test.py. Exits non-zero if any fails.
set -euo pipefail
cd "$(dirname "$0")"
source ./env.sh

./setup.sh
./base-images.sh

# A project of its own, so a running stack is never touched; removed on any exit, even if
# the checks themselves are killed.
export MLPULSE_COMPOSE_PROJECT="${MLPULSE_COMPOSE_PROJECT:-mlpulse-ct-$$}"
trap 'python3 compose_test.py --cleanup "$MLPULSE_COMPOSE_PROJECT" >/dev/null 2>&1 || true' EXIT
python3 compose_test.py
