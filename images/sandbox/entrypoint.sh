#!/bin/bash
# Sandbox entrypoint: start the in-sandbox relay (container loopback :8080 ->
# the broker's unix socket bind-mounted from the host) and exec the command (the
# Claude Code CLI, or a test command) at once, beside it.
#
# The relay's own output goes to the container's stderr, never to stdout:
# stdout carries the CLI's JSON stream.
#
# On a remote Docker host (FSRLM_RELAY_MODE=tunnel) there is no socket: the
# orchestrator starts the relay itself, as an exec carrying the connections
# over its stdin/stdout (relay.py --tunnel-stdio). The entrypoint then only
# waits for the relay's ready file before it execs the command.
#
# Environment: FSRLM_BROKER_SOCKET (default /run/fsrlm/broker.sock),
#              FSRLM_RELAY_LISTEN (default 127.0.0.1:8080),
#              FSRLM_RELAY_TIMEOUT seconds to wait for the tunnel (tunnel mode; default 10),
#              FSRLM_RELAY_MODE=unix (default) or tunnel,
#              FSRLM_TUNNEL_READY the tunnel's ready file (default /tmp/.fsrlm-tunnel-ready),
#              FSRLM_RELAY=0 to skip the relay entirely,
#              FSRLM_WORKSPACE_ID device:inode the host's run folder has; when set, /workspace
#                 must be that folder, or nothing runs (executors/docker/mountcheck.py).
set -u

fail() {
    printf 'fsrlm-entrypoint: %s\n' "$*" >&2
    exit 70
}

if [ -n "${FSRLM_WORKSPACE_ID:-}" ]; then
    mounted="$(stat -c %d:%i /workspace 2>/dev/null)"
    [ "$mounted" = "$FSRLM_WORKSPACE_ID" ] || fail "/workspace (device:inode ${mounted:-none}) is not the run folder the host created (${FSRLM_WORKSPACE_ID}); refusing to start"
fi

if [ "$#" -eq 0 ]; then
    set -- /usr/local/bin/claude --version
fi

if [ "${FSRLM_RELAY:-1}" = "0" ]; then
    exec "$@"
fi

socket="${FSRLM_BROKER_SOCKET:-/run/fsrlm/broker.sock}"
listen="${FSRLM_RELAY_LISTEN:-127.0.0.1:8080}"
timeout="${FSRLM_RELAY_TIMEOUT:-10}"

if [ "${FSRLM_RELAY_MODE:-unix}" = "tunnel" ]; then
    ready_file="${FSRLM_TUNNEL_READY:-/tmp/.fsrlm-tunnel-ready}"
    deadline=$((SECONDS + timeout))
    until [ -e "$ready_file" ]; do
        [ "$SECONDS" -lt "$deadline" ] || fail "the broker tunnel did not start within ${timeout}s"
        sleep 0.01
    done
    exec "$@"
fi

# The relay starts beside the command rather than before it: the CLI takes longer to start than the
# relay, makes no request before its first message, and retries a refused connection anyway. So no
# time is spent waiting here; if the relay cannot listen at all, it stops the command ($$ becomes the
# command's pid at exec) and says why on stderr.
# -I: isolated mode, so PYTHONPATH=/workspace/tools cannot shadow the relay's imports; -S: no site.
python3 -I -S -u /opt/fsrlm/relay.py --listen "$listen" --unix "$socket" --stop-on-failure "$$" </dev/null >&2 &

exec "$@"
