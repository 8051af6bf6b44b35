"""The live dashboard: a small read-only tornado app (tornado already serves dask's dashboard).

Routes: ``/`` all sites, ``/site/NAME`` one site (both with the MOUS table's query arguments
sort, order, q, state, page, per), ``/mous/UID/...`` a MOUS's products, previews and weblog,
``/api/...`` the same data as JSON (``/api/mous``: one page of the MOUS table),
``/metrics`` the same figures for Prometheus (arihpc.monitor.metrics), and ``/static/...``
BokehJS. Only GET: no page writes anything (tornado answers 405 to the rest).
Bound to 127.0.0.1 by default; on any other address every request needs the token, given
as ``?token=``, as ``Authorization: Bearer``, or as the cookie the first such request sets.
"""

from __future__ import annotations

import hmac
import json
import mimetypes
import secrets
from functools import partial
from pathlib import Path
from typing import Callable, Mapping

import tornado.httpserver
import tornado.ioloop
import tornado.netutil
import tornado.web
from bokeh.settings import settings as bokeh_settings

from arihpc.errors import InvalidUid
from arihpc.monitor import metrics, mous_list, pages, views, workfiles
from arihpc.mous import parse_uid
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
    """Builds its answer off the event loop: store, squeue and the scheduler may be slow.
    ``arguments``: the build takes the query arguments (the MOUS table's sort, filter, page)."""

    def initialize(self, build: Callable[..., object], content: str,
                   arguments: bool = False) -> None:
        self.build, self.content, self.arguments = build, content, arguments

    async def get(self, *args: str) -> None:
        if args and args[0] not in self.settings["known"]():
            raise tornado.web.HTTPError(404, f"no site {args[0]!r} in this campaign")
        given = {name: self.get_query_argument(name) for name in self.request.query_arguments
                 if name != "token"}
        build = partial(self.build, *args, arguments=given) if self.arguments \
            else partial(self.build, *args)
        loop = tornado.ioloop.IOLoop.current()
        body = await loop.run_in_executor(None, build)
        if self.content in CONTENT_TYPES:
            self.set_header("Content-Type", CONTENT_TYPES[self.content])
        if self.content == "json":
            body = json.dumps(body, indent=1, sort_keys=True, default=str)
        self.finish(body)


class _Static(_Guarded, tornado.web.StaticFileHandler):
    """BokehJS, behind the same token as the pages."""


class _ApiIndex(_Guarded):
    def get(self) -> None:
        self.finish({"endpoints": ["/api/status", "/api/campaign", "/api/mous",
                                   *(f"/api/site/{name}" for name in self.settings["known"]()),
                                   "/metrics"]})


class _MousFiles(_Guarded):
    """A MOUS's files: ``/mous/UID/products`` (its FITS products and previews),
    ``/mous/UID/thumbnail`` (its continuum preview, small) and ``/mous/UID/file/PATH`` (a file
    of its work directory under export/, preview/, weblog/, qa/ or moments/). UID as on disk."""

    def initialize(self, store: CampaignStore, known: Callable[[], dict]) -> None:
        self.store, self.known = store, known

    async def get(self, name: str, what: str, relative: str | None = None) -> None:
        try:
            uid = parse_uid(name)
        except InvalidUid:
            raise tornado.web.HTTPError(404, "not a MOUS uid") from None
        loop = tornado.ioloop.IOLoop.current()
        workdir = await loop.run_in_executor(
            None, partial(views.work_dir_of, self.store, self.known(), uid))
        if workdir is None:
            raise tornado.web.HTTPError(404, f"no work directory of {uid} on this machine")
        answer = {"products": self._products, "thumbnail": self._thumbnail,
                  "file": self._file}[what]
        await loop.run_in_executor(None, partial(answer, uid, workdir, relative or ""))
        self.finish()

    def _products(self, uid: str, workdir: Path, _relative: str) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.write(pages.products_page(uid, views.products_of(workdir)))

    def _thumbnail(self, uid: str, workdir: Path, _relative: str) -> None:
        files = workfiles.files_of(uid, workdir)
        small = workfiles.thumbnail(files.preview) if files and files.preview else None
        if small is None:
            raise tornado.web.HTTPError(404, f"no continuum preview of {uid}")
        self.set_header("Content-Type", "image/png")
        self.write(small)

    def _file(self, uid: str, workdir: Path, relative: str) -> None:
        path = workfiles.served_file(workdir, relative)
        if path is None:
            raise tornado.web.HTTPError(404, f"no such file of {uid} to serve")
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        self.set_header("Content-Type", kind + ("; charset=utf-8" if kind == "text/html"
                                                else ""))
        self.write(path.read_bytes())


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

    def mous_api(arguments: dict) -> dict:
        site = arguments.get("site") or None
        return views.mous_api(store, known(), mous_list.TableQuery.from_arguments(arguments,
                                                                                   site))

    routes = [
        (r"/", _View, {"content": "html", "arguments": True,
                       "build": lambda arguments: pages.overview_page(
                           store, known(), refresh, arguments=arguments)}),
        (r"/site/([^/]+)", _View, {"content": "html", "arguments": True,
                                   "build": lambda name, arguments: pages.site_page(
                                       store, name, known().get(name), known(), refresh,
                                       arguments=arguments)}),
        (r"/api/?", _ApiIndex),
        (r"/api/mous", _View, {"content": "json", "arguments": True, "build": mous_api}),
        (r"/mous/([^/]+)/(products|thumbnail)", _MousFiles, {"store": store, "known": known}),
        (r"/mous/([^/]+)/(file)/(.+)", _MousFiles, {"store": store, "known": known}),
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
