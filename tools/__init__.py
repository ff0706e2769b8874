"""Code that runs inside the sandbox (installed as ``fsrlm.tools``). Standard library only; it imports
nothing from fsRLM and never sees a credential.

* ``workspace/`` — the agent's tools, copied into every run folder's ``tools/``: ``llm_client.py``
  (talks only to the broker), ``chunking.py``, ``README.md``.
* ``relay.py`` — the in-sandbox relay, baked into the image at ``/opt/fsrlm/relay.py``.
* ``mux.py`` — the broker tunnel's framing, imported by the relay and by the host's end
  (``executors/docker/tunnel.py``); nothing else is shared between host and sandbox.
"""
