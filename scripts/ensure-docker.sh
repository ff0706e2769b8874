#!/usr/bin/env bash
# Make sure a Docker daemon answers; start one if the engine is installed but
# not running, and install Debian's docker.io first if there is no engine at all.
#
#   scripts/ensure-docker.sh          (Makefile `docker` target, .ci/run)
#
# DOCKER_HOST or DOCKER_CONTEXT naming any engine but this machine's default
# socket is respected: that engine is checked, and no daemon is ever installed
# or started for it (it is someone else's to start).
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

CHECK_SECONDS="${FSRLM_DOCKER_CHECK_TIMEOUT:-20}"  # a host that swallows packets must not hang make

docker_ok() { command -v docker >/dev/null 2>&1 && timeout "$CHECK_SECONDS" docker info >/dev/null 2>&1; }

# The engine the docker command line would use, when it is not this machine's default socket.
elsewhere() {
    case "${DOCKER_HOST:-}" in
        "" | unix:///var/run/docker.sock | unix:///run/docker.sock) ;;
        *) echo "DOCKER_HOST=$DOCKER_HOST"; return 0 ;;
    esac
    case "${DOCKER_CONTEXT:-}" in
        "") ;;
        default) return 1 ;;
        *) echo "DOCKER_CONTEXT=$DOCKER_CONTEXT"; return 0 ;;
    esac
    local current
    current="$(docker context show 2>/dev/null || true)"  # `docker context use NAME` chose another engine
    case "$current" in
        "" | default) return 1 ;;
        *) echo "the current docker context ($current)"; return 0 ;;
    esac
}

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

if target="$(elsewhere)"; then
    if ! command -v docker >/dev/null 2>&1; then
        log "$target is set, but there is no docker command to check it with; install the Docker CLI, or unset it"
        exit 1
    fi
    why="$(timeout "$CHECK_SECONDS" docker info 2>&1 >/dev/null | grep -v '^\s*$' | tail -n 1 || true)"
    log "the Docker engine of $target does not answer${why:+ ($why)}."
    log "fsRLM starts no daemon for an engine that DOCKER_HOST or a docker context names: start that"
    log "engine, or unset DOCKER_HOST / DOCKER_CONTEXT (docker context use default) to use this machine's own."
    exit 1
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
