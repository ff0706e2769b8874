#!/usr/bin/env bash
# Install gVisor's runsc from Debian's packages and register it with this machine's Docker engine,
# so that `executor.isolation = "auto"` (the default) runs every sandbox on gVisor's user-space kernel.
#
#   scripts/install-gvisor.sh            (`make gvisor`, .ci/run)
#
# What it changes, and how it keeps the machine sound:
#
# * installs the `runsc` package when no runsc is on PATH (needs root);
# * adds one entry to the `runtimes` table of the engine's daemon.json (the file the running dockerd
#   reads: its --config-file, else /etc/docker/daemon.json), keeping every other setting as it is:
#       "runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none", "--host-uds=open"]}
#   (without --network=none a `--network none` container fails to start; without --host-uds=open the
#   broker's bind-mounted unix socket cannot be mounted). Not --oci-seccomp: with this runsc release
#   Docker's profile then refuses select(2) inside the sandbox (see executors/docker/isolation.py). A `runsc` entry of the user's own with other
#   arguments is left alone: ours is then added as `fsrlm-runsc`. The old file is kept as
#   daemon.json.fsrlm-backup; the new one is written atomically and checked with `dockerd --validate`
#   where this dockerd has it;
# * reloads the engine's configuration with SIGHUP (what `systemctl reload docker` does): dockerd
#   re-reads `runtimes` without a restart, so running containers and every other setting are untouched.
#   If the engine does not show the runtime afterwards, the old file is put back and reloaded.
#
# It never restarts the engine. When DOCKER_HOST (or DOCKER_CONTEXT) points at another engine, it changes
# nothing and starts nothing here: it says whether that engine has a gVisor runtime, and how to add one.
# Environment: FSRLM_GVISOR_RUNTIME (the name to register; default runsc), FSRLM_DOCKER_WAIT (seconds),
# FSRLM_DOCKERD_PID (a dockerd on this machine other than the default one, reached through DOCKER_HOST:
# the tests register runsc with an engine of their own this way).
set -euo pipefail
cd "$(dirname "$0")/.."

NAME="${FSRLM_GVISOR_RUNTIME:-runsc}"
WAIT_SECONDS="${FSRLM_DOCKER_WAIT:-30}"
ARGS_JSON='["--network=none", "--host-uds=open"]'

log() { printf 'install-gvisor: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# The engine's runtimes as "name<TAB>path<TAB>args" lines.
engine_runtimes() {
    docker info --format '{{range $name, $rt := .Runtimes}}{{$name}}{{"\t"}}{{$rt.Path}}{{"\t"}}{{range $rt.Args}}{{.}} {{end}}{{"\n"}}{{end}}' 2>/dev/null
}

# The name of a registered gVisor runtime with the arguments fsRLM needs, if there is one.
usable_gvisor_runtime() {
    engine_runtimes | awk -F'\t' '$2 ~ /(^|\/)runsc$/ && $3 ~ /--network=none/ && $3 ~ /--host-uds=open/ {print $1; exit}'
}

HOW_TO="on that host: \`apt-get install runsc\` (or gVisor's own release), add to the engine's daemon.json
  \"runtimes\": {\"runsc\": {\"path\": \"/usr/bin/runsc\", \"runtimeArgs\": $ARGS_JSON}}
and reload it with \`sudo systemctl reload docker\` (or \`sudo kill -HUP \$(pidof dockerd)\`); \`fsrlm doctor\` checks it"

# -- another engine: look, change nothing ------------------------------------------------------------
elsewhere=""
ENGINE_PID="${FSRLM_DOCKERD_PID:-}"
case "${ENGINE_PID:+local}${DOCKER_HOST:-}" in
    local*) ;;
    "" | unix:///var/run/docker.sock | unix:///run/docker.sock) ;;
    *) elsewhere="DOCKER_HOST=$DOCKER_HOST" ;;
esac
if [ -z "$elsewhere" ] && [ -z "$ENGINE_PID" ] && [ -n "${DOCKER_CONTEXT:-}" ] && [ "$DOCKER_CONTEXT" != "default" ]; then
    elsewhere="DOCKER_CONTEXT=$DOCKER_CONTEXT"
fi
if [ -n "$elsewhere" ]; then
    log "$elsewhere names another Docker engine; this script changes only the engine on this machine, so it changes nothing"
    if ! docker info >/dev/null 2>&1; then
        die "that engine does not answer (\`docker info\` failed); no local daemon was started"
    fi
    if found="$(usable_gvisor_runtime)" && [ -n "$found" ]; then
        log "that engine has gVisor registered as '$found' with the arguments fsRLM needs: nothing to do"
        exit 0
    fi
    die "that engine has no gVisor runtime with the arguments fsRLM needs; $HOW_TO"
fi

# -- this machine's engine -----------------------------------------------------------------------------
if [ -z "$ENGINE_PID" ]; then bash scripts/ensure-docker.sh; fi

if found="$(usable_gvisor_runtime)" && [ -n "$found" ]; then
    log "the Docker engine already has gVisor registered as '$found': nothing to do"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then exec sudo -n -E bash "$0" "$@"; fi
    die "installing runsc and changing the engine's daemon.json need root; run this as root (or with sudo)"
fi

if ! command -v runsc >/dev/null 2>&1; then
    log "installing runsc (gVisor) from Debian packages"
    env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq runsc >/dev/null
fi
RUNSC="$(command -v runsc)" || die "runsc is not on PATH after installing it"
"$RUNSC" --version >/dev/null 2>&1 || die "$RUNSC --version failed; is it a working gVisor build?"

# The engine's own process: the pid file it writes by default, else the only dockerd running.
pid="$ENGINE_PID"
if [ -n "$pid" ]; then
    [ -d "/proc/$pid" ] || die "FSRLM_DOCKERD_PID=$pid is not a running process"
elif [ -r /var/run/docker.pid ]; then
    pid="$(cat /var/run/docker.pid 2>/dev/null || true)"
fi
if [ -z "$pid" ] || [ ! -d "/proc/$pid" ]; then
    pids="$(pidof dockerd 2>/dev/null || true)"
    [ "$(wc -w <<<"$pids")" -eq 1 ] || die "cannot tell which dockerd is this machine's engine (pids: ${pids:-none}); register runsc by hand: $HOW_TO"
    pid="$pids"
fi
mapfile -d '' argv < "/proc/$pid/cmdline"
config=/etc/docker/daemon.json
for ((i = 0; i < ${#argv[@]}; i++)); do
    case "${argv[$i]}" in
        --config-file) config="${argv[$((i + 1))]}" ;;
        --config-file=*) config="${argv[$i]#--config-file=}" ;;
        --add-runtime | --add-runtime=*)
            die "dockerd (pid $pid) takes its runtimes from --add-runtime flags, and it refuses runtimes in daemon.json as well; nothing was changed. Add --add-runtime $NAME=$RUNSC to its flags (runtime arguments then need a wrapper script around runsc) and restart it yourself" ;;
    esac
done
log "engine: dockerd pid $pid, configuration $config"

# Merge our runtime into the file (stdlib Python: every other key is kept as it is).
mkdir -p "$(dirname "$config")"
tmp="$(mktemp "$(dirname "$config")/.daemon.json.fsrlm-XXXXXX")"
trap 'rm -f "$tmp"' EXIT
registered="$(python3 - "$config" "$tmp" "$NAME" "$RUNSC" "$ARGS_JSON" <<'PY'
import json, os, sys
config, tmp, name, path, args = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
try:
    with open(config) as f:
        text = f.read()
except FileNotFoundError:
    text = ""
try:
    data = json.loads(text) if text.strip() else {}
except ValueError as e:
    sys.exit(f"{config} is not valid JSON ({e}); fix it first, nothing was changed")
if not isinstance(data, dict) or not isinstance(data.get("runtimes", {}), dict):
    sys.exit(f"{config} does not hold a JSON object with a runtimes table; nothing was changed")
runtimes = data.setdefault("runtimes", {})
ours = {"path": path, "runtimeArgs": args}
if name in runtimes and runtimes[name] != ours:
    print(f"{config} already has a runtime '{name}' of its own; registering fsRLM's as 'fsrlm-runsc'", file=sys.stderr)
    name = "fsrlm-runsc"
runtimes[name] = ours
with open(tmp, "w") as f:
    json.dump(data, f, indent=2)
    f.write("\n")
    f.flush()
    os.fsync(f.fileno())
print(name)
PY
)" || die "daemon.json was left unchanged"
NAME="$registered"

if dockerd --help 2>&1 | grep -q -- '--validate'; then
    dockerd --validate --config-file "$tmp" >/dev/null 2>&1 || die "dockerd --validate refused the new configuration; $config was left unchanged"
fi

if [ -e "$config" ]; then
    cp -p "$config" "$config.fsrlm-backup"
    chmod --reference="$config" "$tmp"
else
    chmod 0644 "$tmp"
fi
mv -f "$tmp" "$config"
trap - EXIT
log "registered '$NAME' in $config (the previous file is $config.fsrlm-backup); reloading the engine's configuration"

restore() {
    if [ -e "$config.fsrlm-backup" ]; then cp -p "$config.fsrlm-backup" "$config"; else rm -f "$config"; fi
    kill -HUP "$pid" || true
}

kill -HUP "$pid"
for ((i = 0; i < WAIT_SECONDS * 2; i++)); do
    if [ "$(usable_gvisor_runtime)" = "$NAME" ]; then
        log "the Docker engine now offers '$NAME' (gVisor $("$RUNSC" --version 2>/dev/null | head -1 | awk '{print $3}')); running containers were not touched"
        exit 0
    fi
    sleep 0.5
done
restore
die "the engine did not pick up the runtime after SIGHUP (see its log); the previous $config was put back and reloaded"
