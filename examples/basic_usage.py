"""Basic fsRLM usage. Needs ANTHROPIC_API_KEY (or another upstream, see the README)."""

from pathlib import Path

from fsrlm import RLM, RLMConfig

config = RLMConfig(
    executor={"type": "docker"},  # the agent runs in a locked-down container
    max_subcalls_per_script=50,
    max_budget_usd=1.0,
    preserve_workspace=True,
)
rlm = RLM(config)

result = rlm.invoke(Path("huge.log"), question="Which service failed first, and why?")
print(result.answer)
print(result.stop_reason, result.metrics.total_cost_usd, result.workspace_path)

# Watch a run live
for event in rlm.stream(Path("huge.log"), question="How many requests timed out?"):
    if event.kind in ("script_started", "script_finished"):
        print(event.kind, event.detail)
    elif event.kind == "result":
        print("answer:", event.data["answer"])
