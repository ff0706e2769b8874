#!/usr/bin/env bash
# Make sure a Docker daemon answers; start one if the engine is installed but
# not running, and install Debian's docker.io first if there is no engine at all.
#
#   scripts/ensure-docker.sh          (Makefile `docker` target, .ci/run)
#
# Needs root (or sudo) only when it has to install or start the daemon.
# The daemon's log goes to /var/log/dockerd.log.
set -euo pipefail

WAIT_SECONDS="${FSRLM_DOCKER_WAIT:-60}"
LOG="${FSRLM_DOCKERD_LOG:-/var/log/dockerd.log}"

log() { printf 'ensure-docker: %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"; else
        log "need root to run: $*"; return 1; fi
}

docker_ok() { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; }

wait_for_docker() {
    local i
    for ((i = 0; i < WAIT_SECONDS * 2; i++)); do
        docker_ok && return 0
        # stop early when the daemon we started has died
        if [ -n "${1:-}" ] && [ ! -d "/proc/$1" ]; then return 1; fi
        sleep 0.5
    done
    return 1
}

if docker_ok; then
    exit 0
fi

if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
    log "no Docker engine found; installing docker.io from Debian packages"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
fi

# A system service manager, when there is one, owns the daemon.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    log "starting docker with systemctl"
    as_root systemctl start docker || true
    if wait_for_docker; then exit 0; fi
fi

start_dockerd() {
    log "starting dockerd $* (log: $LOG)"
    # setsid + nohup: the daemon outlives this script and the shell that ran it.
    as_root sh -c "setsid nohup dockerd $* >>'$LOG' 2>&1 </dev/null & echo \$!"
}

# A pid file left by a daemon that died keeps a new one from starting.
remove_stale_pidfile() {
    local pidfile=/var/run/docker.pid old
    [ -f "$pidfile" ] || return 0
    old="$(cat "$pidfile" 2>/dev/null || true)"
    if [ -z "$old" ] || [ ! -d "/proc/$old" ]; then as_root rm -f "$pidfile"; fi
}

remove_stale_pidfile

pid="$(start_dockerd)"
if wait_for_docker "$pid"; then
    log "dockerd is up (storage driver: $(docker info --format '{{.Driver}}' 2>/dev/null))"
    exit 0
fi

log "dockerd did not come up with its default storage driver; retrying with --storage-driver=vfs"
as_root kill "$pid" 2>/dev/null || true
sleep 1
remove_stale_pidfile
pid="$(start_dockerd --storage-driver=vfs)"
if wait_for_docker "$pid"; then
    log "dockerd is up (storage driver: vfs)"
    exit 0
fi

log "Docker did not start within ${WAIT_SECONDS}s; see $LOG"
tail -n 20 "$LOG" >&2 || true
exit 1
