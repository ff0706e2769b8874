"""``fsrlm view``: a local web page that shows one run (or lists a folder of runs).

- ``files.py``    reading the workspace without following links (the agent controls it)
- ``snapshot.py`` what the page shows: one run's snapshot, a folder's run list
- ``server.py``   the aiohttp app: pages, JSON API, live events (SSE), security headers
- ``static/``     the page itself: plain HTML, CSS and JavaScript, no build step

Everything in a workspace is untrusted: the page builds its DOM with
``textContent`` only and is served with a strict Content-Security-Policy.
"""

from __future__ import annotations

from fsrlm.viewer.server import ViewerSettings, create_app, serve

__all__ = ["ViewerSettings", "create_app", "serve"]
