# Sourced by every non-interactive bash in the sandbox (BASH_ENV), i.e. by each command the
# agent's Bash tool runs and so by every script it starts. It makes those processes the
# kernel's first choice when the container runs out of memory, so a runaway script is
# killed rather than the agent (the CLI) itself. Raising oom_score_adj needs no privilege.
{ [ "$(cat /proc/self/oom_score_adj 2>/dev/null)" -lt 500 ] && echo 500 > /proc/self/oom_score_adj; } 2>/dev/null || true
