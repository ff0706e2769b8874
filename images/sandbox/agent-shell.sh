#!/bin/sh
# /opt/fsrlm/bin/bash: the shell the Claude Code CLI runs each of the agent's commands in
# (CLAUDE_CODE_SHELL points here), so every command and every script it starts inherits
# what this sets; then it is plain /bin/bash. (BASH_ENV cannot do this: the CLI unsets it
# for its commands.) The CLI itself, the entrypoint and the relay keep the defaults.
#
# * oom_score_adj 500: the agent's commands are the kernel's first choice when the
#   container runs out of memory, so a runaway script is killed rather than the agent.
#   Raising it needs no privilege.
# * FSRLM_SCRIPT_MEMORY_KB (set by the host only under gVisor, where the host's OOM killer
#   sees one process, the sandbox's kernel, and gVisor has none of its own, so a script
#   that takes the container's memory takes the agent down with it): an address-space
#   cap for each command, soft and hard, so it cannot be raised again and a runaway
#   allocation fails in the script alone.
# * FSRLM_SCRIPT_PROCESSES (also gVisor only, where the sandbox's kernel counts RLIMIT_NPROC
#   per sandbox; under runc it would count the uid's processes on the whole host): the
#   commands may have fewer tasks than the agent, so a fork bomb leaves the CLI room to go on.
# (read, not $(cat ...): no process started for it; the CLI starts this shell several times a command.)
{ read -r adj < /proc/self/oom_score_adj && [ "$adj" -lt 500 ] && echo 500 > /proc/self/oom_score_adj; } 2>/dev/null
if [ -n "${FSRLM_SCRIPT_MEMORY_KB:-}" ]; then ulimit -v "$FSRLM_SCRIPT_MEMORY_KB" 2>/dev/null; fi
if [ -n "${FSRLM_SCRIPT_PROCESSES:-}" ]; then ulimit -p "$FSRLM_SCRIPT_PROCESSES" 2>/dev/null; fi
exec /bin/bash "$@"
