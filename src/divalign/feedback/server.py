"""The labelling page's web server: a Starlette app, served by uvicorn on 127.0.0.1.

Routes: ``/`` the labelling page, ``/summary`` the summary page (both static HTML with their scripts under
``/static``), and a small JSON API — ``GET /api/next?annotator=NAME`` (the annotator's next pair, sides already
shuffled, and the progress count), ``POST /api/label`` (one choice, written to the preference file before the
answer goes back), ``GET /api/summary``.

Only this machine is served by default. Requests must name this server as their ``Host`` (so a web page elsewhere
cannot reach it by rebinding a domain name to 127.0.0.1), a POST must carry JSON and, when the browser sends an
``Origin``, come from this page (so another site cannot post labels), and the pages allow only their own scripts
(Content-Security-Policy); the scripts put every text on the page as text, never as HTML.
"""

from __future__ import annotations

import json
from importlib import resources

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from divalign.errors import UserError
from divalign.feedback.agreement import summary
from divalign.feedback.labels import LabelFile, label_record, shows_b_first
from divalign.feedback.pairs import LabelPair

STATIC = resources.files("divalign.feedback") / "static"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")
#: what a page may load: only this server's own files, no inline script, no framing by other sites
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
SIDES = {"left", "right", "tie", "both_bad"}
MAX_COMMENT = 10_000
MAX_NAME = 100


class LabellingSession:
    """The pairs, the preference file and the shuffle; what the routes read and write."""

    def __init__(self, pairs: list[LabelPair], labels: LabelFile, seed: int = 0):
        self.pairs = pairs
        self.by_id = {pair.id: pair for pair in pairs}
        self.labels = labels
        self.seed = seed

    def next_for(self, annotator: str) -> dict:
        done = self.labels.done(annotator)
        todo = [pair for pair in self.pairs if pair.id not in done]
        state = {"annotator": annotator, "done": len(self.pairs) - len(todo), "total": len(self.pairs), "pair": None}
        if todo:
            pair = todo[0]
            swapped = shows_b_first(self.seed, pair.id, annotator)
            left, right = (pair.response_b, pair.response_a) if swapped else (pair.response_a, pair.response_b)
            state["pair"] = {"id": pair.id, "prompt": pair.prompt, "left": left, "right": right}
        return state

    def record(self, annotator: str, pair_id: str, side: str, comment: str) -> None:
        """Write one choice; ``side`` is what the annotator saw (left/right), mapped back to A/B by the shuffle.
        A pair this annotator has already labelled is not written again (a repeated click)."""
        if pair_id in self.labels.done(annotator):
            return
        pair = self.by_id[pair_id]
        left = "b" if shows_b_first(self.seed, pair_id, annotator) else "a"
        right = "a" if left == "b" else "b"
        choice = {"left": left, "right": right}.get(side, side)
        self.labels.append(label_record(pair, choice, annotator, left, comment))

    def summary(self) -> dict:
        return summary(self.labels.labels, [pair.id for pair in self.pairs])


def _error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _annotator(value) -> str | None:
    if not isinstance(value, str):
        return None
    name = value.strip()
    return name if 0 < len(name) <= MAX_NAME and name.isprintable() else None


def create_app(session: LabellingSession, allowed_hosts: tuple[str, ...] = LOCAL_HOSTS) -> Starlette:
    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "label.html", headers=SECURITY_HEADERS)

    async def summary_page(request: Request) -> Response:
        return FileResponse(STATIC / "summary.html", headers=SECURITY_HEADERS)

    async def next_pair(request: Request) -> Response:
        annotator = _annotator(request.query_params.get("annotator"))
        if annotator is None:
            return _error(f"give your name (1 to {MAX_NAME} printable characters)")
        return JSONResponse(session.next_for(annotator))

    async def label(request: Request) -> Response:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return _error("expected a JSON body", 415)
        origin = request.headers.get("origin")
        if origin is not None and origin != f"{request.url.scheme}://{request.headers.get('host', '')}":
            return _error("labels are accepted from this server's own page only", 403)
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error("the body is not valid JSON")
        if not isinstance(body, dict):
            return _error("expected a JSON object")
        annotator = _annotator(body.get("annotator"))
        if annotator is None:
            return _error(f"give your name (1 to {MAX_NAME} printable characters)")
        if body.get("pair_id") not in session.by_id:
            return _error("unknown pair id")
        if body.get("side") not in SIDES:
            return _error(f"side must be one of {', '.join(sorted(SIDES))}")
        comment = body.get("comment", "")
        if not isinstance(comment, str) or len(comment) > MAX_COMMENT:
            return _error(f"comment must be text of at most {MAX_COMMENT} characters")
        session.record(annotator, body["pair_id"], body["side"], comment.strip())
        return JSONResponse(session.next_for(annotator))

    async def summary_data(request: Request) -> Response:
        return JSONResponse(session.summary())

    routes = [
        Route("/", page), Route("/summary", summary_page), Route("/api/next", next_pair),
        Route("/api/label", label, methods=["POST"]), Route("/api/summary", summary_data),
        Mount("/static", app=StaticFiles(directory=str(STATIC)), name="static"),
    ]
    return Starlette(routes=routes, middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))])


def serve(session: LabellingSession, host: str, port: int, on_ready=None) -> None:
    """Serve until interrupted; ``on_ready(url)`` once the socket listens (with the bound port when 0 was asked).
    On another address than this machine's own, any ``Host`` is accepted: the user asked to be reached from
    elsewhere."""
    import asyncio
    import socket

    import uvicorn

    try:  # bound here so that a taken port is one line, not uvicorn's exit
        sock = socket.create_server((host.strip("[]"), port), family=socket.AF_INET6 if ":" in host else
                                    socket.AF_INET, reuse_port=False)
    except OSError as exc:
        raise UserError(f"cannot serve on {host}:{port} ({exc.strerror or exc})") from None
    config = uvicorn.Config(create_app(session, LOCAL_HOSTS if host in LOCAL_HOSTS else ("*",)), log_level="warning",
                            access_log=False, lifespan="off")
    server = uvicorn.Server(config)

    async def main() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.02)
        if server.started and on_ready is not None:
            shown = "127.0.0.1" if host in ("0.0.0.0", "::", "[::]") else host
            on_ready(f"http://{shown}:{sock.getsockname()[1]}/")
        await task

    asyncio.run(main())
