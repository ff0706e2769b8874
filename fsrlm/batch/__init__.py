"""Many fsRLM runs: ``fsrlm batch`` on this machine or on a Ray cluster.

``runner.FanOut`` is the shared machinery (an iterable of items, an async per-item
callable, a backend: ``local.LocalBackend`` or ``ray_backend.RayBackend``);
``driver.run_batch`` is ``fsrlm batch`` on top of it. Nothing here imports Ray
until a Ray backend starts.
"""
