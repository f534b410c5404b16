"""The Starlette app of `scale ui`: HTML pages (shells filled by ``static/ui.js``) and the JSON they read.

Pages: ``/runs``, ``/run?id=``, ``/diff?a=&b=``, ``/evaluations``, ``/evaluation?name=``. Their
data: ``/api/runs``, ``/api/run``, ``/api/diff``, ``/api/evaluations``, ``/api/evaluation``.
Ids travel as query parameters because run ids hold ``/`` and ``#``. Every JSON answer passes
through :func:`scale_graph.ui.views.scrubbed` (no key or password leaves); an unknown or
malformed id is a 404 page, any other failure one line on a 500 page — never a traceback.
With an API key, every request needs it: ``Authorization: Bearer KEY``, or ``?key=KEY`` once in
a browser (kept in an HttpOnly cookie); without one, only requests naming a loopback host are answered.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import sqlite3
from pathlib import Path
from typing import Any, AsyncIterator

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from scale_graph.database import Database
from scale_graph.graph import build_graph
from scale_graph.persistence import open_async
from scale_graph.redact import redact
from scale_graph.runs import list_runs
from scale_graph.ui import catalog, pages, views
from scale_graph.ui.views import NotFound

STATIC = Path(__file__).parent / "static"
KEY_COOKIE = "scale_ui_key"
#: Host headers a viewer without an API key answers (a browser on this machine, an SSH tunnel).
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")
log = logging.getLogger("scale_graph.ui")


class Json(Response):
    """A JSON answer with every secret masked."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return views.scrubbed(content).encode("utf-8")


def create_app(db: Database, *, results: Any = None, api_key: str | None = None, db_shown: str | None = None,
               calibration_dir: Path | None = None) -> Starlette:
    """The viewer over run database ``db`` (a SQLite path or a PostgreSQL URL) and an open
    :class:`~scale_graph.evaluation.store.ResultsStore` ``results`` (None: no evaluations).
    ``db_shown``: how the CLI commands on a run page name the database (None: the default)."""
    sqlite_path = db if isinstance(db, Path) else None
    calibration_dir = calibration_dir or Path("scale-calibrate")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with open_async(db) as (saver, store):
            app.state.graph, app.state.store = build_graph(saver, store), store
            app.state.catalog = catalog.SqliteCatalog(sqlite_path) if sqlite_path is not None else None
            if app.state.catalog is not None:  # read every run once now (≈ 1 s for 10,000), not on the first page
                with contextlib.suppress(sqlite3.Error):  # the first page then says what is wrong, in one line
                    await run_in_threadpool(app.state.catalog.page, catalog.Query())
            try:
                yield
            finally:
                if app.state.catalog is not None:
                    app.state.catalog.close()

    async def runs_api(request: Request) -> Response:
        params = request.query_params
        query = catalog.Query(params.get("text", ""), params.get("state", ""), params.get("sort", "created"),
                              params.get("order", "desc") != "asc", _int(params.get("page"), 1),
                              _int(params.get("per_page"), 50)).checked()
        graph, store = request.app.state.graph, request.app.state.store
        if request.app.state.catalog is not None:
            page = await run_in_threadpool(request.app.state.catalog.page, query)
            await views.fill_rows(graph, page.rows)
        else:
            page = catalog.python_page(await list_runs(graph, store), query)
        return Json({**page.to_dict(query), "database": str(db)})

    async def run_api(request: Request) -> Response:
        return Json(await views.run_view(request.app.state.graph, request.app.state.store,
                                         request.query_params.get("id", ""), db=db_shown,
                                         catalog=request.app.state.catalog))

    async def diff_api(request: Request) -> Response:
        params = request.query_params
        return Json(await views.diff_view(request.app.state.graph, request.app.state.store,
                                          params.get("a", ""), params.get("b", "")))

    def evaluation_runs(patterns: list[str] | None = None) -> list[Any]:
        if results is None:
            raise NotFound("no results database: start `scale ui --results-db URL` (or run `scale eval` here)")
        return results.runs(patterns)

    async def evaluations_api(request: Request) -> Response:
        chosen = await run_in_threadpool(evaluation_runs)
        shown = await run_in_threadpool(views.evaluations_view, chosen)
        shown["runs"] = [{"name": run.name, "method": run.method, "dataset": run.dataset,
                          "samples": len(run.results)} for run in chosen]
        shown["calibration"] = await run_in_threadpool(views.calibration_view, calibration_dir)
        return Json(shown)

    async def evaluation_api(request: Request) -> Response:
        name = request.query_params.get("name", "")
        matching = [run for run in await run_in_threadpool(evaluation_runs) if run.name == name]
        if not matching:
            raise NotFound(f"no evaluation run named {name!r}")
        return Json(await run_in_threadpool(views.grid_view, matching[0]))

    async def page(request: Request) -> Response:
        name, params = request.url.path.strip("/"), request.query_params
        graph, store = request.app.state.graph, request.app.state.store
        if name == "run":  # a missing or malformed id: the 404 page at once, not an empty shell
            await views.require_run(graph, store, params.get("id"))
        elif name == "diff":
            for side in ("a", "b"):
                if params.get(side):
                    await views.require_run(graph, store, params[side])
        elif name == "evaluation":
            name_of = params.get("name", "")
            if not any(run.name == name_of for run in await run_in_threadpool(evaluation_runs)):
                raise NotFound(f"no evaluation run named {name_of!r}")
        return HTMLResponse(pages.shell(name, str(db)))

    async def not_found(request: Request, exc: Exception) -> Response:
        message = str(exc) if isinstance(exc, NotFound) else "no such page"
        return _failure(request, 404, message)

    async def failure(request: Request, exc: Exception) -> Response:
        log.error("%s on %s: %s", type(exc).__name__, request.url.path, redact(str(exc)))
        return _failure(request, 500, f"{type(exc).__name__}: {exc}")

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return _failure(request, exc.status_code, exc.detail or "error")

    routes = [Route("/", lambda request: RedirectResponse("/runs")),
              *(Route(f"/{name}", page) for name in pages.PAGES),
              Route("/api/runs", runs_api), Route("/api/run", run_api), Route("/api/diff", diff_api),
              Route("/api/evaluations", evaluations_api), Route("/api/evaluation", evaluation_api),
              Mount("/static", StaticFiles(directory=STATIC), name="static")]
    # without a key the viewer is for this machine alone: a page of another site that points its own
    # name at 127.0.0.1 (DNS rebinding) must not read it, so the Host header must name loopback too
    middleware = ([Middleware(KeyCheck, api_key=api_key)] if api_key else
                  [Middleware(TrustedHostMiddleware, allowed_hosts=list(LOOPBACK_NAMES))])
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                     exception_handlers={NotFound: not_found, 404: not_found, HTTPException: http_error,
                                         Exception: failure})


def _failure(request: Request, status: int, message: str) -> Response:
    """A failure as JSON (``/api``) or as a page: one line, secrets masked."""
    message = views.masked(" ".join(message.split()))
    if request.url.path.startswith("/api/"):
        return Json({"error": message}, status_code=status)
    return HTMLResponse(pages.error_page(status, message), status_code=status)


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


class KeyCheck(BaseHTTPMiddleware):
    """Every request needs the API key: a bearer header, the cookie, or ``?key=`` (then kept in the cookie)."""

    def __init__(self, app: Any, api_key: str) -> None:
        super().__init__(app)
        self.key = api_key.encode()

    def _matches(self, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(given.encode(), self.key)

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if (scheme.lower() == "bearer" and self._matches(token.strip())) or self._matches(request.cookies.get(KEY_COOKIE)):
            return await call_next(request)
        if self._matches(request.query_params.get("key")):
            kept = [(k, v) for k, v in request.query_params.multi_items() if k != "key"]
            target = request.url.replace_query_params(**dict(kept)) if kept else request.url.remove_query_params("key")
            response = RedirectResponse(str(target.path) + (f"?{target.query}" if target.query else ""), status_code=303)
            response.set_cookie(KEY_COOKIE, request.query_params["key"], httponly=True, samesite="strict")
            return response
        return _failure(request, 401, "this viewer needs its API key: open it once with ?key=KEY "
                                      "or send 'Authorization: Bearer KEY'")
