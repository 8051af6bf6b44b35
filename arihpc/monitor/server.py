"""The live dashboard: a small read-only tornado app (tornado already serves dask's dashboard).

Routes: ``/`` all sites, ``/site/NAME`` one site, ``/api/...`` the same data as JSON,
``/metrics`` the same figures for Prometheus (arihpc.monitor.metrics), and ``/static/...``
BokehJS. Only GET: no page writes anything (tornado answers 405 to the rest).
Bound to 127.0.0.1 by default; on any other address every request needs the token, given
as ``?token=``, as ``Authorization: Bearer``, or as the cookie the first such request sets.
"""

from __future__ import annotations

import hmac
import json
import secrets
from functools import partial
from typing import Callable, Mapping

import tornado.httpserver
import tornado.ioloop
import tornado.netutil
import tornado.web
from bokeh.settings import settings as bokeh_settings

from arihpc.monitor import metrics, pages, views
from arihpc.sites.profile import SiteProfile
from arihpc.store.campaign import CampaignStore

LOOPBACK = ("127.0.0.1", "localhost", "::1")
COOKIE = "arihpc_token"
CONTENT_TYPES = {"json": "application/json", "metrics": metrics.CONTENT_TYPE}


def needs_token(host: str) -> bool:
    """Anything but the loopback interface is reachable by others: it needs a token."""
    return host not in LOOPBACK


def new_token() -> str:
    return secrets.token_urlsafe(24)


class _Guarded(tornado.web.RequestHandler):
    """Checks the token before anything else, and marks every answer not to be sniffed."""

    def prepare(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        token = self.settings["token"]
        if not token:
            return
        given = (self.get_query_argument("token", None)
                 or self.request.headers.get("Authorization", "").removeprefix("Bearer ")
                 or self.get_cookie(COOKIE, ""))
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise tornado.web.HTTPError(403, "a token is needed: open the URL arihpc "
                                             "dashboard printed at start")
        if self.get_query_argument("token", None):
            self.set_cookie(COOKIE, token, httponly=True, samesite="Strict")

    def write_error(self, status_code: int, **kwargs) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(f"{status_code} {self._reason}\n")


class _View(_Guarded):
    """Builds its answer off the event loop: store, squeue and the scheduler may be slow."""

    def initialize(self, build: Callable[..., object], content: str) -> None:
        self.build, self.content = build, content

    async def get(self, *args: str) -> None:
        if args and args[0] not in self.settings["known"]():
            raise tornado.web.HTTPError(404, f"no site {args[0]!r} in this campaign")
        loop = tornado.ioloop.IOLoop.current()
        body = await loop.run_in_executor(None, partial(self.build, *args))
        if self.content in CONTENT_TYPES:
            self.set_header("Content-Type", CONTENT_TYPES[self.content])
        if self.content == "json":
            body = json.dumps(body, indent=1, sort_keys=True, default=str)
        self.finish(body)


class _Static(_Guarded, tornado.web.StaticFileHandler):
    """BokehJS, behind the same token as the pages."""


class _ApiIndex(_Guarded):
    def get(self) -> None:
        self.finish({"endpoints": ["/api/status", "/api/campaign",
                                   *(f"/api/site/{name}" for name in self.settings["known"]()),
                                   "/metrics"]})


def make_app(store: CampaignStore, profiles: Mapping[str, SiteProfile | None],
             token: str | None = None, refresh: int = 10) -> tornado.web.Application:
    """The dashboard of these sites (and any other site the store names)."""
    profiles = dict(profiles)

    def known() -> dict:
        return views.profiles_for(store, profiles)

    def site(name: str) -> dict:
        every = known()
        return {"campaign": views.campaign_view(views.read_numbers(store), every, name),
                "now": views.site_view(store, name, every.get(name))}

    registry = metrics.registry_for(store, known)

    routes = [
        (r"/", _View, {"content": "html",
                       "build": lambda: pages.overview_page(store, known(), refresh)}),
        (r"/site/([^/]+)", _View, {"content": "html", "build": lambda name: pages.site_page(
            store, name, known().get(name), known(), refresh)}),
        (r"/api/?", _ApiIndex),
        (r"/api/status", _View, {"content": "json",
                                 "build": lambda: views.status_report(store, known())}),
        (r"/api/campaign", _View, {"content": "json",
                                   "build": lambda: views.campaign_view(
                                       views.read_numbers(store), known())}),
        (r"/api/site/([^/]+)", _View, {"content": "json", "build": site}),
        (r"/metrics", _View, {"content": "metrics",
                              "build": lambda: metrics.exposition(registry)}),
        (r"/static/(.*)", _Static, {"path": bokeh_settings.bokehjs_path()}),
    ]
    # known: the sites now (the store may name new ones while the dashboard runs)
    return tornado.web.Application(routes, token=token, known=known)


def listen(app: tornado.web.Application, host: str, port: int
           ) -> tuple[tornado.httpserver.HTTPServer, int]:
    """Bind the app (port 0: any free port); returns the server and the port it got."""
    server = tornado.httpserver.HTTPServer(app)
    sockets = tornado.netutil.bind_sockets(port, address=host)
    server.add_sockets(sockets)
    return server, sockets[0].getsockname()[1]


def serve_in_thread(app: tornado.web.Application, host: str = "127.0.0.1",
                    port: int = 0) -> tuple[int, Callable[[], None]]:
    """Serve the app from a daemon thread (tests, benchmarks); returns the port and a stop."""
    import asyncio
    import threading

    ready, state = threading.Event(), {}

    def run() -> None:
        asyncio.set_event_loop(asyncio.new_event_loop())
        state["server"], state["port"] = listen(app, host, port)
        state["loop"] = tornado.ioloop.IOLoop.current()
        ready.set()
        state["loop"].start()

    threading.Thread(target=run, daemon=True, name="arihpc-dashboard").start()
    if not ready.wait(30):
        raise RuntimeError("the dashboard did not start within 30 s")

    def stop() -> None:
        state["loop"].add_callback(state["server"].stop)
        state["loop"].add_callback(state["loop"].stop)
    return state["port"], stop
