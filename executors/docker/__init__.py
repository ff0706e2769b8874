"""The ``docker`` and ``remote-docker`` executors: the agent in a locked-down container.

* ``executor.py``  — ``DockerExecutor`` and ``DockerSandbox`` (the interface of ``executors.base``)
* ``process.py``   — ``DockerAgentProcess``: the agent's stdin/stdout over Docker's attach stream
* ``stream.py``    — attach/exec connections (plain or TLS) on the event loop; Docker's stream headers
* ``hardening.py`` — the container settings, as a pure function of the config
* ``image.py``     — build ``fsrlm-sandbox:<version>`` once; ``fsrlm image build``
* ``cleanup.py``   — remove containers and volumes by label (per run, and ``gc`` of crashed runs)

``remote-docker`` (the same container on another engine) adds:

* ``remote.py``    — ``RemoteDockerExecutor`` and ``RemoteDockerSandbox`` (a volume, no bind mounts)
* ``endpoint.py``  — which engine (host, TLS, context) and connecting to it; ``sshdial.py`` for ``ssh://``
* ``ship.py``      — copy the image there (save here, load there) when it lacks the current one
* ``archive.py``   — the workspace as a tar: packed on the way in, extracted safely on the way back
* ``tunnel.py``    — the broker over the container's exec stream (the other end is ``tools/relay.py``; both speak ``tools/mux.py``)

Importing this package does not import the docker SDK; its modules do.
"""
