"""Many fsRLM runs: ``fsrlm batch`` on this machine or on a Ray cluster.

``runner.FanOut`` is the shared machinery (an iterable of items, an async per-item
callable, a backend: ``local.LocalBackend`` or ``ray_backend.RayBackend``);
``fleet`` holds what every fan-out command shares (``FleetOptions``, ``open_fleet``: the
backend connected, credentials in Ray's runtime environment, the sandbox image offered
to the nodes, the nodes swept at the end); ``driver.run_batch`` is ``fsrlm batch`` on top
of it, and the OOLONG runner (``fsrlm.benchmarks.harness``) is another. Nothing here
imports Ray until a Ray backend starts.
"""
