"""The review web app (Starlette, served by uvicorn).

Auth: a session token in an HttpOnly SameSite=Strict cookie (the browser) or an
`Authorization: Bearer` header (scripts, via POST /api/login). Every write needs the
session's CSRF token in the `X-CSRF-Token` header (or a `csrf` form field); a missing
or wrong session answers 401 before anything is read or written. Database calls run in
the thread pool, each write committed before the response goes out.
"""

from __future__ import annotations

import hmac
import json
import secrets
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from acedata.review import assign, pages, stats, store
from acedata.review.catalog import IMAGE_ID, SIZES, Catalog
from acedata.review.queues import list_queues

COOKIE = "acedata_session"
LOGIN_CSRF = "acedata_login_csrf"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; script-src 'self'; style-src 'self'; "
                               "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


SESSION_CACHE_S = 5.0  # a revoked session stays usable at most this long in this process


@dataclass
class Ctx:
    engine: sa.Engine
    catalog: Catalog
    run_dir: str
    lease_s: int = 900
    secure_cookies: bool = False
    _sessions: dict[str, tuple[float, dict[str, str]]] = field(default_factory=dict)

    async def user(self, token: str | None) -> dict[str, str] | None:
        """The session's user; live sessions are remembered briefly so image requests skip the database."""
        if not token:
            return None
        hit = self._sessions.get(token)
        if hit and hit[0] > time.monotonic():
            return hit[1]
        user = await run_in_threadpool(store.session_user, self.engine, token)
        if user is not None:
            if len(self._sessions) > 10_000:
                self._sessions.clear()
            self._sessions[token] = (time.monotonic() + SESSION_CACHE_S, user)
        return user


Handler = Callable[[Request], Awaitable[Response]]


def _token(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.cookies.get(COOKIE)


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form body (the only kind our pages post)."""
    body = (await request.body())[:16384].decode("utf-8", "replace")
    return {k: v[0] for k, v in urllib.parse.parse_qs(body).items()}


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except ValueError:
        body = None
    return body if isinstance(body, dict) else {}


def guard(ctx: Ctx, role: str | None = None, write: bool = False, page: bool = False) -> Callable[[Handler], Handler]:
    """Require a live session (401, or a redirect to sign-in for pages), a role, and CSRF on writes."""

    def wrap(fn: Handler) -> Handler:
        async def inner(request: Request) -> Response:
            user = await ctx.user(_token(request))
            if user is None:
                if page:
                    return RedirectResponse("/login?next=" + urllib.parse.quote(request.url.path), 303)
                return JSONResponse({"error": "sign in first (missing or wrong session token)"}, 401)
            if role and user["role"] != role:
                return JSONResponse({"error": f"needs the {role} role"}, 403)
            if write:
                sent = request.headers.get("x-csrf-token")
                if sent is None and request.headers.get("content-type", "").startswith("application/x-www-form"):
                    sent = (await _form(request)).get("csrf")
                if not sent or not hmac.compare_digest(sent, user["csrf"]):
                    return JSONResponse({"error": "missing or wrong CSRF token"}, 403)
            request.state.user = user
            return await fn(request)

        return inner

    return wrap


def _auth_routes(c: Ctx) -> list[Route]:
    """Signing in (form and API) and out."""

    async def login_page(request: Request) -> Response:
        token = request.cookies.get(LOGIN_CSRF) or secrets.token_urlsafe(24)
        nxt = request.query_params.get("next", "/")
        resp = HTMLResponse(pages.login(token, nxt, request.query_params.get("failed") == "1"))
        resp.set_cookie(LOGIN_CSRF, token, httponly=True, samesite="strict", secure=c.secure_cookies)
        return resp

    async def login_post(request: Request) -> Response:
        form = await _form(request)
        sent, cookie = form.get("csrf", ""), request.cookies.get(LOGIN_CSRF, "")
        if not cookie or not hmac.compare_digest(sent, cookie):
            return PlainTextResponse("sign-in form expired; reload the page", 403)
        nxt = form.get("next", "/")
        if not nxt.startswith("/") or nxt.startswith("//"):
            nxt = "/"  # no open redirects
        got = await run_in_threadpool(store.sign_in, c.engine, form.get("user", ""), form.get("password", ""))
        if got is None:
            return RedirectResponse("/login?failed=1&next=" + urllib.parse.quote(nxt), 303)
        resp = RedirectResponse(nxt, 303)
        resp.set_cookie(COOKIE, got[0], httponly=True, samesite="strict", secure=c.secure_cookies,
                        max_age=store.SESSION_HOURS * 3600)
        return resp

    async def api_login(request: Request) -> Response:
        body = await _json(request)
        got = await run_in_threadpool(store.sign_in, c.engine, str(body.get("user", "")),
                                      str(body.get("password", "")))
        if got is None:
            return JSONResponse({"error": "wrong user or password"}, 401)
        return JSONResponse({"token": got[0], "csrf": got[1]})

    @guard(c, write=True)
    async def logout(request: Request) -> Response:
        c._sessions.pop(_token(request) or "", None)
        await run_in_threadpool(store.sign_out, c.engine, _token(request) or "")
        resp = RedirectResponse("/login", 303)
        resp.delete_cookie(COOKIE)
        return resp

    return [
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login_post, methods=["POST"]),
        Route("/api/login", api_login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
    ]


def _page_routes(c: Ctx) -> list[Route]:
    """The annotator pages: the queue list and a queue's review page."""

    @guard(c, page=True)
    async def home(request: Request) -> Response:
        qs = await run_in_threadpool(list_queues, c.engine)
        return HTMLResponse(pages.home(request.state.user, qs))

    @guard(c, page=True)
    async def review_page(request: Request) -> Response:
        q = request.path_params["queue"]
        names = {x["name"] for x in await run_in_threadpool(list_queues, c.engine)}
        if q not in names:
            return HTMLResponse(pages.error(f"no queue named {q}"), 404)
        return HTMLResponse(pages.review(request.state.user, q, assign.REJECT_REASONS))

    return [
        Route("/", home),
        Route("/review/{queue}", review_page),
    ]


def _queue_routes(c: Ctx) -> list[Route]:
    """Claiming items from a queue, keeping the lease, deciding, reading an item."""

    def _item_json(pair_id: str) -> dict[str, Any]:
        it = c.catalog.item(pair_id)
        it["images"] = {"inputs": it["inputs"], "mask": it["mask"], "target": it["target"]}
        return it

    @guard(c, write=True)
    async def claim(request: Request) -> Response:
        body = await _json(request)
        holding = [h for h in body.get("holding", []) if isinstance(h, str)][:10]
        pid = await run_in_threadpool(assign.claim, c.engine, request.path_params["queue"],
                                      request.state.user["name"], c.lease_s, holding)
        if pid is None:
            return JSONResponse({"done": True})
        return JSONResponse({"done": False, "item": _item_json(pid), "lease_s": c.lease_s})

    @guard(c, write=True)
    async def renew(request: Request) -> Response:
        body = await _json(request)
        pids = [h for h in body.get("pair_ids", []) if isinstance(h, str)][:10]
        n = await run_in_threadpool(assign.renew, c.engine, request.path_params["queue"],
                                    request.state.user["name"], pids, c.lease_s)
        return JSONResponse({"renewed": n, "lease_s": c.lease_s})

    @guard(c, write=True)
    async def decide(request: Request) -> Response:
        body = await _json(request)
        pid, queue = body.get("pair_id"), body.get("queue")
        if not isinstance(pid, str) or pid not in c.catalog or not isinstance(queue, str):
            return JSONResponse({"error": "unknown item or queue"}, 404)
        try:
            row = await run_in_threadpool(assign.decide, c.engine, queue, request.state.user["name"],
                                          c.catalog.item(pid), body)
        except assign.Invalid as e:
            return JSONResponse({"error": str(e)}, 422)
        except assign.Conflict as e:
            return JSONResponse({"error": str(e)}, 409)
        return JSONResponse({"ok": True, "review_id": row["review_id"], "decision": row["decision"]})

    @guard(c)
    async def item(request: Request) -> Response:
        pid = request.path_params["pair_id"]
        if pid not in c.catalog:
            return JSONResponse({"error": "no such item in this run"}, 404)
        return JSONResponse(_item_json(pid))

    return [
        Route("/api/queues/{queue}/claim", claim, methods=["POST"]),
        Route("/api/queues/{queue}/renew", renew, methods=["POST"]),
        Route("/api/decisions", decide, methods=["POST"]),
        Route("/api/items/{pair_id:path}", item),
    ]


def _image_routes(c: Ctx) -> list[Route]:
    """Image thumbnails by content id, cached by the browser (immutable)."""

    @guard(c)
    async def image(request: Request) -> Response:
        image_id = request.path_params["image_id"]
        if not IMAGE_ID.match(image_id):
            return PlainTextResponse("not an image id (ids are content hashes, never paths)", 400)
        if not c.catalog.has_image(image_id):
            return PlainTextResponse("no such image in this run", 404)
        try:
            size = int(request.query_params.get("s", "768"))
        except ValueError:
            size = -1
        if size not in SIZES:
            return PlainTextResponse(f"size must be one of {SIZES}", 400)
        etag = f'"{image_id}-{size}"'
        headers = {"ETag": etag, "Cache-Control": "private, max-age=31536000, immutable"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        data, media = await run_in_threadpool(c.catalog.image, image_id, size)
        return Response(data, media_type=media, headers=headers)

    return [
        Route("/img/{image_id:path}", image),
    ]


def _admin_routes(c: Ctx) -> list[Route]:
    """The admin page, statistics, decision exports and the export into the run."""

    @guard(c, role="admin", page=True)
    async def admin_page(request: Request) -> Response:
        s = await run_in_threadpool(stats.summary, c.engine)
        return HTMLResponse(pages.admin(request.state.user, s))

    @guard(c, role="admin")
    async def admin_stats(request: Request) -> Response:
        s = await run_in_threadpool(stats.summary, c.engine)
        return Response(json.dumps(s, default=str), media_type="application/json")

    @guard(c, role="admin")
    async def export(request: Request) -> Response:
        fmt = request.path_params["fmt"]
        if fmt not in ("csv", "json"):
            return PlainTextResponse("export as decisions.csv or decisions.json", 404)
        rows = await run_in_threadpool(stats.all_decisions, c.engine, request.query_params.get("queue"))
        if fmt == "csv":
            return Response(stats.to_csv(rows), media_type="text/csv; charset=utf-8",
                            headers={"Content-Disposition": 'attachment; filename="decisions.csv"'})
        return Response(stats.to_json(rows), media_type="application/json",
                        headers={"Content-Disposition": 'attachment; filename="decisions.json"'})

    @guard(c, role="admin", write=True)
    async def export_run(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(stats.export_to_run, c.engine, c.run_dir))

    return [
        Route("/admin", admin_page),
        Route("/api/admin/stats", admin_stats),
        Route("/admin/decisions.{fmt:str}", export),
        Route("/api/admin/export-run", export_run, methods=["POST"]),
    ]


def create_app(ctx: Ctx) -> Starlette:
    static = StaticFiles(directory=str(resources.files("acedata.review") / "static"))
    routes = [*_auth_routes(ctx), *_page_routes(ctx), *_queue_routes(ctx), *_image_routes(ctx), *_admin_routes(ctx)]
    return Starlette(middleware=[Middleware(SecurityHeaders)], routes=[*routes, Mount("/static", static, name="static")])


class SecurityHeaders:
    """Pure ASGI middleware: CSP and friends on every response; no-store unless a handler set caching."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for k, v in SECURITY_HEADERS.items():
                    headers.setdefault(k, v)
                headers.setdefault("Cache-Control", "no-store")
            await send(message)

        await self.app(scope, receive, send_with_headers)
