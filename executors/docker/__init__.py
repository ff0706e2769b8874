"""The ``docker`` executor: the agent in a locked-down container on the local engine.

* ``executor.py``  — ``DockerExecutor`` and ``DockerSandbox`` (the interface of ``executors.base``)
* ``process.py``   — ``DockerAgentProcess``: the agent's stdin/stdout over Docker's attach stream
* ``hardening.py`` — the container settings, as a pure function of the config
* ``image.py``     — build ``fsrlm-sandbox:<version>`` once; ``python -m executors.docker.image``
* ``cleanup.py``   — remove containers and volumes by label (per run, and ``gc`` of crashed runs)

Importing this package does not import the docker SDK; its modules do.
"""
