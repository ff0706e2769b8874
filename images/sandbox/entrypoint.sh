#!/bin/bash
# Sandbox entrypoint: start the in-sandbox relay (container loopback :8080 ->
# the broker's unix socket bind-mounted from the host), wait until it is
# listening, then exec the command (the Claude Code CLI, or a test command).
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
#              FSRLM_RELAY_TIMEOUT seconds to wait for the relay (default 10),
#              FSRLM_RELAY_MODE=unix (default) or tunnel,
#              FSRLM_TUNNEL_READY the tunnel's ready file (default /tmp/.fsrlm-tunnel-ready),
#              FSRLM_RELAY=0 to skip the relay entirely.
set -u

if [ "$#" -eq 0 ]; then
    set -- /usr/local/bin/claude --version
fi

if [ "${FSRLM_RELAY:-1}" = "0" ]; then
    exec "$@"
fi

socket="${FSRLM_BROKER_SOCKET:-/run/fsrlm/broker.sock}"
listen="${FSRLM_RELAY_LISTEN:-127.0.0.1:8080}"
timeout="${FSRLM_RELAY_TIMEOUT:-10}"

fail() {
    printf 'fsrlm-entrypoint: %s\n' "$*" >&2
    exit 70
}

if [ "${FSRLM_RELAY_MODE:-unix}" = "tunnel" ]; then
    ready_file="${FSRLM_TUNNEL_READY:-/tmp/.fsrlm-tunnel-ready}"
    deadline=$((SECONDS + timeout))
    until [ -e "$ready_file" ]; do
        [ "$SECONDS" -lt "$deadline" ] || fail "the broker tunnel did not start within ${timeout}s"
        sleep 0.01
    done
    exec "$@"
fi

fifo="$(mktemp -u /tmp/.fsrlm-relay.XXXXXXXX)" || fail "cannot make a temp name in /tmp"
mkfifo -m 600 "$fifo" || fail "cannot create a fifo in /tmp (is /tmp writable?)"

# -I: isolated mode, so PYTHONPATH=/workspace/tools cannot shadow the relay's imports.
python3 -I -u /opt/fsrlm/relay.py --listen "$listen" --unix "$socket" </dev/null >"$fifo" 2>&1 &
relay_pid=$!

exec 3<"$fifo"
rm -f "$fifo"

ready=0
deadline=$((SECONDS + timeout))
while [ "$SECONDS" -lt "$deadline" ]; do
    if IFS= read -r -t 1 line <&3; then
        printf '%s\n' "$line" >&2
        case "$line" in
            *"relay ready"*) ready=1; break ;;
        esac
    elif [ "$?" -le 128 ]; then
        break  # end of file: the relay exited
    fi
done

if [ "$ready" -ne 1 ]; then
    kill "$relay_pid" 2>/dev/null
    wait "$relay_pid" 2>/dev/null
    fail "the relay did not become ready within ${timeout}s (socket $socket)"
fi

# Keep forwarding whatever the relay says later, so it never blocks on a full pipe.
cat <&3 >&2 &
exec 3<&-

exec "$@"
