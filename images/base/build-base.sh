#!/usr/bin/env bash
# Build a minimal Debian bookworm base image with python3, offline of any
# container registry: Debian packages only (mmdebstrap | docker import).
#
#   images/base/build-base.sh [TAG]        default TAG: fsrlm-base:bookworm
#
# Environment: FSRLM_DEBIAN_MIRROR (default: the host's apt mirror),
#              FSRLM_DEBIAN_SUITE (default: bookworm).
# Needs root (or a working `sudo`) only to install mmdebstrap when it is missing.
set -euo pipefail

TAG="${1:-fsrlm-base:bookworm}"
SUITE="${FSRLM_DEBIAN_SUITE:-bookworm}"
MIRROR="${FSRLM_DEBIAN_MIRROR:-}"

log() { printf 'build-base: %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo "$@"; else
        log "need root to run: $*"; return 1; fi
}

if ! command -v mmdebstrap >/dev/null 2>&1; then
    log "mmdebstrap is missing; installing it from Debian packages"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
    log "the Docker daemon is not reachable; start it (sudo systemctl start docker, or scripts/ensure-docker.sh)"
    exit 1
fi

# Root mode builds the tree with correct ownership without fakechroot.
mode=auto
[ "$(id -u)" -eq 0 ] && mode=root

log "building $TAG from Debian $SUITE (mmdebstrap --mode=$mode)"
start=$(date +%s)
# shellcheck disable=SC2086
mmdebstrap --quiet --mode="$mode" --variant=minbase \
    --include=python3,ca-certificates \
    --aptopt='Acquire::Retries "3"' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
    "$SUITE" - ${MIRROR:+"$MIRROR"} \
  | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' \
        --change 'LABEL fsrlm=1' \
        - "$TAG" >/dev/null
log "built $TAG in $(( $(date +%s) - start )) s"
echo "$TAG"
