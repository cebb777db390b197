"""The viewer's Starlette application: routes, token check, CSRF check, actions."""

from __future__ import annotations

import hmac
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from urllib.parse import parse_qsl, quote, urlencode

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from ._redact import redact
from ._viewer_data import Reader, RunFilter, parse_time
from ._viewer_forms import AnswerForm, AnswerInvalidError, answer_form, read_answer
from ._viewer_html import error_page, run_live, run_page, runs_page, runs_rows
from .errors import DurableError, RunNotFoundError

#: Cookies: the access token (when one is required) and the CSRF token.
TOKEN_COOKIE = "dbos_llama_token"
CSRF_COOKIE = "dbos_llama_csrf"
#: Most runs on one page.
MAX_LIMIT = 500


async def posted_form(request: Request) -> dict[str, str]:
    """The fields of a posted HTML form (``application/x-www-form-urlencoded``; the
    body is kept by Starlette, so the middleware and the endpoint both read it)."""
    body = (await request.body()).decode("utf-8", errors="replace")
    return dict(parse_qsl(body, keep_blank_values=True))


class _Guard(BaseHTTPMiddleware):
    """Every request needs the token (if one is set): ``?token=`` once (it becomes a
    cookie), the cookie, or ``Authorization: Bearer``. Every POST needs the CSRF
    token of its form to match the CSRF cookie. HTML responses set that cookie."""

    def __init__(self, app: object, token: str | None, db: str) -> None:
        super().__init__(app)  # type: ignore[arg-type]
        self.token = token
        self.db = db

    async def dispatch(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if self.token is not None and request.url.path != "/health":
            given = request.query_params.get("token")
            if given is not None and hmac.compare_digest(given, self.token):
                rest = {k: v for k, v in request.query_params.items() if k != "token"}
                target = request.url.path + ("?" + urlencode(rest) if rest else "")
                response: Response = RedirectResponse(target, status_code=303)
                response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict")
                return response
            header = request.headers.get("authorization", "")
            held = request.cookies.get(TOKEN_COOKIE) or header.removeprefix("Bearer ")
            if not held or not hmac.compare_digest(held, self.token):
                message = "Open the viewer with ?token=TOKEN (the --token it was started with)."
                return HTMLResponse(error_page("Token needed", message, self.db), 401)
        csrf = request.cookies.get(CSRF_COOKIE)
        if request.method == "POST":
            sent = (await posted_form(request)).get("csrf")
            if not csrf or not isinstance(sent, str) or not hmac.compare_digest(sent, csrf):
                message = "The form's CSRF token does not match: reload the page and try again."
                return HTMLResponse(error_page("Request refused", message, self.db), 403)
        request.state.csrf = csrf or secrets.token_urlsafe(24)
        response = await call_next(request)
        if csrf is None:
            response.set_cookie(CSRF_COOKIE, request.state.csrf, httponly=True, samesite="strict")
        return response


def make_app(db: str, token: str | None = None) -> Starlette:
    """The viewer over the system database ``db``; ``token``: required of every request."""
    reader: Reader | None = None

    def read() -> Reader:
        assert reader is not None, "the app's lifespan opens the reader"
        return reader

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        nonlocal reader
        reader = Reader(db)
        try:
            yield
        finally:
            reader.close()

    def html(body: str, status: int = 200) -> HTMLResponse:
        return HTMLResponse(body, status, headers={"Cache-Control": "no-store"})

    def not_found(error: RunNotFoundError) -> HTMLResponse:
        return html(error_page("Run not found", str(error), db), 404)

    def wanted(request: Request) -> RunFilter | str:
        q = request.query_params
        try:
            return RunFilter(
                workflow=q.get("workflow") or None,
                status=q.get("status") or None,
                since=parse_time(q.get("since")),
                until=parse_time(q.get("until")),
                offset=max(0, int(q.get("offset") or 0)),
                limit=min(MAX_LIMIT, max(1, int(q.get("limit") or 50))),
            )
        except ValueError as error:
            return f"Bad filter ({error}): give times as 30m, 2h, 1d or 2026-12-01T09:00."

    async def runs(request: Request) -> Response:
        chosen = wanted(request)
        if isinstance(chosen, str):
            return html(error_page("Bad filter", chosen, db), 400)
        found = await read().runs_page(chosen)
        if request.url.path.startswith("/fragments/"):
            return html(runs_rows(found))
        return html(runs_page(found, chosen, dict(request.query_params), db))

    async def show(request: Request, form: AnswerForm | None = None, status: int = 200) -> Response:
        run_id = request.path_params["run_id"]
        try:
            view = await read().run_view(run_id)
        except RunNotFoundError as error:
            return not_found(error)
        if request.url.path.startswith("/fragments/"):
            return html(run_live(view))
        if form is None:
            form = answer_form(request.query_params.get("type"))
        notice = request.query_params.get("notice", "")
        return html(run_page(view, form, request.state.csrf, notice, db), status)

    def back(run_id: str, notice: str) -> Response:
        return RedirectResponse(
            f"/runs/{quote(run_id, safe='')}?{urlencode({'notice': notice})}", status_code=303
        )

    async def act(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        action = request.path_params["action"]
        posted = await posted_form(request)
        client = read().client
        try:
            if action == "answer":
                form = answer_form(posted.pop("event_type", None), may_import=True)
                posted.pop("csrf", None)
                if posted.pop("do", None) == "load":  # the form of another event type
                    return await show(request, form)
                try:
                    event = read_answer(form, posted)
                    await client.send_event(run_id, event)
                except AnswerInvalidError as error:
                    form.error = str(error)
                    return await show(request, form, 400)
                except RunNotFoundError:
                    raise
                except DurableError as error:  # finished, not accepted, not serializable
                    form.error = str(error)
                    return await show(request, form, 409)
                return back(run_id, f"Sent {form.type_name} to run {run_id}.")
            if action == "cancel":
                changed = await client.cancel(run_id)
                return back(run_id, "Cancelled." if changed else "It had already ended.")
            if action == "resume":
                await client.resume(run_id)
                return back(run_id, "Resumed: a worker with its code continues it.")
            if action == "fork":
                step = posted.get("from_step", "")
                new_id = await client.fork(run_id, step)
                return back(new_id, f"Forked from {run_id} at step {step}.")
        except RunNotFoundError as error:
            return not_found(error)
        except DurableError as error:
            return back(run_id, f"{action} failed: {error}")
        return html(error_page("Unknown action", f"No action {action!r}.", db), 404)

    async def health(_: Request) -> Response:
        return PlainTextResponse("ok")

    async def missing(request: Request, exc: Exception) -> Response:
        return html(error_page("Not found", f"No page at {request.url.path}.", db), 404)

    async def failed(request: Request, exc: Exception) -> Response:
        message = redact(f"{type(exc).__name__}: {exc}")
        return html(error_page("Viewer error", message, db), 500)

    routes = [
        Route("/", runs),
        Route("/health", health),
        Route("/fragments/runs", runs),
        Route("/runs/{run_id}", show),
        Route("/fragments/runs/{run_id}", show),
        Route("/runs/{run_id}/{action}", act, methods=["POST"]),
    ]
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[Middleware(_Guard, token=token, db=db)],
        exception_handlers={404: missing, 500: failed},
    )
