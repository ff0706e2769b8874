"""The viewer's web server: one run, or a folder of runs, on a loopback port.

Routes (single run: PATH holds ``state/job.json``)::

    GET /                     the page
    GET /api/runs             {"mode": "run"}
    GET /api/run              the run's snapshot (snapshot.RunSnapshot)
    GET /api/events?after=N   server-sent events: each line of state/events.jsonl from line N on,
                              as it is appended (``id:`` is the line number; ``event: reset``
                              when the file was replaced)

With a folder of runs, ``/api/runs`` is ``{"mode": "folder", "runs": [...]}`` and each
run lives under ``/run/<name>/`` (the page, ``api/run``, ``api/events``). The runs
nested in a run (``rlm_query``; their folders are in ``<run>.nested/``) live under
``nested/<name>/`` of that run's address, at any depth.

Every response carries a strict Content-Security-Policy (scripts only from this
server, nothing inline) and ``nosniff``. A request whose Host is not a loopback
name is refused (DNS rebinding: a page elsewhere whose name resolves to this
machine must not read the run); with ``--allow-remote`` also IP addresses, this
machine's own names and the names given with ``--allow-host`` are accepted, never
any other name. At most ``max_event_streams`` event streams are open at once.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from fsrlm.errors import InputError
from fsrlm.events import EVENTS_LOG
from fsrlm.viewer.files import LineTail
from fsrlm.viewer.snapshot import is_run, list_runs, nested_run_dir, run_dir, snapshot, timeline_event

logger = logging.getLogger(__name__)

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
KEEPALIVE_SECONDS = 15.0
_STATIC = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "app.css": "text/css",
}
_LOOPBACK_NAMES = {"localhost", "localhost.", "ip6-localhost"}
MAX_NESTING = 16  # nested/<name>/ segments in one address
# An address below the server's root: /run/<name>/ (a folder of runs), then nested/<name>/ per level.
_CHAIN = r"{chain:(?:(?:run|nested)/[A-Za-z0-9][A-Za-z0-9._-]{0,199}/)*}"


@dataclass(frozen=True)
class ViewerSettings:
    path: Path  # a run folder, or a folder of run folders
    allow_remote: bool = False  # also answer Host names other than loopback (only with --allow-remote)
    allowed_hosts: tuple[str, ...] = ()  # with allow_remote: more Host names to answer (--allow-host)
    poll_interval: float = 0.3  # how often /api/events looks at state/events.jsonl
    max_event_streams: int = 16  # /api/events streams open at once; more get 503


_ROOT = web.AppKey("root", Path)
_SETTINGS = web.AppKey("settings", ViewerSettings)
_STOPPING = web.AppKey("stopping", asyncio.Event)
_HOSTS = web.AppKey("hosts", frozenset)
_STREAMS = web.AppKey("streams", list)


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def machine_names() -> frozenset[str]:
    """This machine's own host names (what a browser on the network sends as Host)."""
    names = {socket.gethostname()}
    try:
        names.add(socket.getfqdn())
    except OSError:
        pass
    return frozenset(n.lower().rstrip(".") for n in names if n)


def create_app(settings: ViewerSettings) -> web.Application:
    """The viewer for ``settings.path``; InputError when it is neither a run nor a folder."""
    root = settings.path.expanduser().resolve()
    if not root.is_dir():
        raise InputError(f"{settings.path} is not a folder; give a run folder or a folder of runs")
    app = web.Application(middlewares=[_host_guard])
    app[_ROOT] = root
    app[_SETTINGS] = settings
    app[_STOPPING] = asyncio.Event()
    app[_HOSTS] = (machine_names() | {h.lower().rstrip(".") for h in settings.allowed_hosts}
                   if settings.allow_remote else frozenset())
    app[_STREAMS] = []
    app.on_response_prepare.append(_security_headers)
    app.on_shutdown.append(_stop_streams)
    app.router.add_get("/static/{name}", _static)
    app.router.add_get("/favicon.ico", _no_content)
    app.router.add_get("/api/runs", _single_mode if is_run(root) else _runs)
    # "/", "/run/<name>/", "/nested/<name>/", "/run/<name>/nested/<child>/nested/..." (see _run_root)
    app.router.add_get("/" + _CHAIN, _page)
    app.router.add_get("/" + _CHAIN + "api/run", _run)
    app.router.add_get("/" + _CHAIN + "api/events", _events)
    app.router.add_get(r"/{chain:(?:(?:run|nested)/[^/]+/)*(?:run|nested)/[^/]+}", _add_slash)
    return app


# -- security --------------------------------------------------------------------------


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


@web.middleware
async def _host_guard(request: web.Request, handler: Callable) -> web.StreamResponse:
    try:
        hostname = (urlsplit("//" + (request.host or "")).hostname or "").rstrip(".")
    except ValueError:
        hostname = ""
    if not is_loopback(hostname):
        if not request.app[_SETTINGS].allow_remote:
            raise web.HTTPForbidden(text="fsrlm view: this viewer only answers on a loopback address\n")
        # A name resolved by someone else's DNS (rebinding) is not this machine's: only addresses,
        # this machine's names and the names the user allowed.
        if not (_is_ip(hostname) or hostname in request.app[_HOSTS]):
            raise web.HTTPForbidden(text=f"fsrlm view: Host {hostname[:100]!r} is not this machine's name or "
                                         "address; add it with --allow-host\n")
    return await handler(request)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers.setdefault("Cache-Control", "no-store")


async def _stop_streams(app: web.Application) -> None:
    app[_STOPPING].set()


# -- pages and data ----------------------------------------------------------------------


def _run_root(request: web.Request, chain: str | None = None) -> Path:
    """The run folder an address names: ``run/<name>/`` once (a folder of runs), then ``nested/<name>/``."""
    path = request.app[_ROOT]
    chain = request.match_info.get("chain", "") if chain is None else chain
    parts = [p for p in chain.split("/") if p]
    steps = list(zip(parts[::2], parts[1::2]))
    if len(steps) > MAX_NESTING + 1:
        raise web.HTTPNotFound(text="nested too deep\n")
    single = is_run(path)
    for i, (kind, name) in enumerate(steps):
        if kind == "run" and (i > 0 or single):
            raise web.HTTPNotFound(text="no such page\n")
        if kind == "nested" and i == 0 and not single:
            raise web.HTTPNotFound(text="no such page\n")
        found = run_dir(path, name) if kind == "run" else nested_run_dir(path, name)
        if found is None:
            raise web.HTTPNotFound(text=f"no run named {name!r} here\n")
        path = found
    return path


def _is_folder_page(request: web.Request) -> bool:
    return not request.match_info.get("chain") and not is_run(request.app[_ROOT])


def _static_bytes(name: str) -> bytes:
    return (resources.files("fsrlm.viewer") / "static" / name).read_bytes()


async def _static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in _STATIC:
        raise web.HTTPNotFound()
    return web.Response(body=_static_bytes(name), content_type=_STATIC[name], charset="utf-8")


async def _page(request: web.Request) -> web.Response:
    _run_root(request)  # 404 for an unknown run
    return web.Response(body=_static_bytes("index.html"), content_type="text/html", charset="utf-8")


async def _no_content(request: web.Request) -> web.Response:
    return web.Response(status=204)


async def _add_slash(request: web.Request) -> web.Response:
    chain = request.match_info["chain"] + "/"
    _run_root(request, chain)
    raise web.HTTPFound(f"/{chain}")


async def _single_mode(request: web.Request) -> web.Response:
    return web.json_response({"mode": "run"})


async def _runs(request: web.Request) -> web.Response:
    runs = await asyncio.to_thread(list_runs, request.app[_ROOT])
    return web.json_response({"mode": "folder", "runs": [r.model_dump(mode="json") for r in runs]})


async def _run(request: web.Request) -> web.Response:
    if _is_folder_page(request):
        raise web.HTTPNotFound(text="this is a folder of runs: see /api/runs\n")
    root = _run_root(request)
    snap = await asyncio.to_thread(snapshot, root)
    return web.Response(text=snap.model_dump_json(exclude_none=True), content_type="application/json")


def _cursor(request: web.Request) -> int:
    """The first line to send: ``after=N`` (lines the page has), or after the browser's Last-Event-ID."""
    raw = request.headers.get("Last-Event-ID")
    try:
        if raw is not None:
            return int(raw) + 1
        return max(0, int(request.query.get("after", "0")))
    except ValueError:
        raise web.HTTPBadRequest(text="after must be a whole number\n") from None


async def _events(request: web.Request) -> web.StreamResponse:
    """Tail state/events.jsonl: send each line from the cursor on, then each new one as it comes."""
    if _is_folder_page(request):
        raise web.HTTPNotFound(text="this is a folder of runs: see /api/runs\n")
    root = _run_root(request)
    after = _cursor(request)
    streams = request.app[_STREAMS]
    if len(streams) >= request.app[_SETTINGS].max_event_streams:
        raise web.HTTPServiceUnavailable(text="fsrlm view: too many open event streams; close a tab\n",
                                         headers={"Retry-After": "5"})
    streams.append(request)
    try:
        return await _stream_events(request, root, after)
    finally:
        streams.remove(request)


async def _stream_events(request: web.Request, root: Path, after: int) -> web.StreamResponse:
    stopping = request.app[_STOPPING]
    interval = request.app[_SETTINGS].poll_interval
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(request)
    tail = LineTail(root, EVENTS_LOG)
    last_write = time.monotonic()
    try:
        await response.write(b"retry: 1000\n\n")
        while not stopping.is_set():
            lines = await asyncio.to_thread(tail.read)
            out: list[bytes] = []
            if tail.reset:
                after = 0
                out.append(b"event: reset\ndata: {}\n\n")
            for seq, line in lines:
                if seq >= after and (event := timeline_event(seq, line)) is not None:
                    out.append(f"id: {seq}\ndata: {event.model_dump_json(exclude_none=True)}\n\n".encode())
            if not out and time.monotonic() - last_write > KEEPALIVE_SECONDS:
                out.append(b": keepalive\n\n")
            if out:
                await response.write(b"".join(out))
                last_write = time.monotonic()
            try:
                await asyncio.wait_for(stopping.wait(), interval)
            except TimeoutError:
                pass
    except ConnectionResetError:
        pass  # the page went away
    return response


# -- running it ------------------------------------------------------------------------------


def _url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


async def serve(settings: ViewerSettings, host: str, port: int, *,
                on_ready: Callable[[str], None] | None = None) -> None:
    """Serve the viewer on ``host:port`` (0: any free port) until cancelled."""
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as e:
            raise InputError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
        bound = runner.addresses[0][1] if runner.addresses else port
        url = _url("127.0.0.1" if host in ("0.0.0.0", "") else host, bound)
        logger.info("viewer for %s at %s", settings.path, url)
        if on_ready is not None:
            on_ready(url)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
