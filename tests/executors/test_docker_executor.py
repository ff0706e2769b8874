import time, pytest
from executors.configs import DockerExecutorConfig
from executors.docker.executor import DockerExecutor

@pytest.mark.docker
async def test_smoke(make_spec, agent_env, run_to_end, docker_image):
    ex = DockerExecutor(DockerExecutorConfig())
    t=time.monotonic(); await ex.check(); print("check", time.monotonic()-t)
    t=time.monotonic()
    sb = await ex.prepare(make_spec())
    sb.cli_path = "/bin/sh"
    p = await sb.start_agent(["-c", "id; cat; echo err >&2; python3 -c \"import urllib.request,os; r=urllib.request.Request('http://127.0.0.1:8080/fsrlm/v1/health', headers={'x-api-key': os.environ['FSRLM_BROKER_TOKEN']}); print(urllib.request.urlopen(r).read())\""], agent_env)
    lines, res = await run_to_end(p, b"hello\n")
    print("run", time.monotonic()-t)
    print(lines, res)
    await sb.close()
