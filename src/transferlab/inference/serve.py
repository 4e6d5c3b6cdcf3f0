"""A small web app around a run: an upload page, ``POST /predict``, ``GET /health`` and ``GET /info``.

``create_app(run_dir)`` builds the FastAPI app (tests drive it with TestClient);
``serve(run_dir)`` runs it with uvicorn, on 127.0.0.1 unless told otherwise.
Every error is JSON ``{"error": "..."}``: 413 for an upload or image over the
limits, 415 for a file that is no image, 400 for a broken request or image.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the route annotations at run time,
# and ``Request`` is imported inside create_app (so that a missing extra is a one-line error).
import asyncio
import ipaddress
import logging
import re
import socket
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any

from PIL import Image

from ..data import images
from ..data.images import ImageError, load_rgb
from ..errors import TransferlabError, opt, render
from ..files import readable

__all__ = ["DEFAULT_MAX_UPLOAD_MB", "NOT_AN_IMAGE", "ApiError", "is_hotdog_model", "headline", "decode_upload",
           "create_app", "make_server", "serve"]

log = logging.getLogger(__name__)

MAX_UPLOAD_CEILING_MB = 4096  # one upload is one image: more only invites memory exhaustion
DEFAULT_MAX_UPLOAD_MB = 10.0
DECODERS = 2  # uploads decoded at once
UPLOAD_STATUS = {"not_image": 415, "too_large": 413}  # other unusable uploads: 400
NOT_AN_IMAGE = f"this file is not an image we can read ({images.READABLE_FORMATS}); choose another one"
HEADER_TIMEOUT = 10.0  # seconds for a request's headers to arrive (on a new connection, or after a response)
BODY_TIMEOUT = 60.0  # seconds for a request body (the upload) to arrive
LOOPBACK = ("127.0.0.1", "localhost", "::1")
MULTIPART_SLACK = 64 * 1024  # room for multipart headers and boundaries around the file itself
PAGE_HEADERS = {
    # the page is self-contained: nothing may load from elsewhere
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                               "img-src 'self' blob: data:; connect-src 'self'; form-action 'none'; "
                               "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}


class ApiError(Exception):
    """An HTTP error answered as ``{"error": message}``; options named as the server's flags (``--max-upload-mb``)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = render(message, cli=True)


def _hotdog_key(name: str) -> str:
    return re.sub(r"[^a-z]", "", name.lower())


def is_hotdog_model(classes: tuple[str, ...] | list[str]) -> bool:
    """Whether the classes are hot dog / not hot dog (spelled hotdog, hot_dog, Not-Hotdog, ...)."""
    return sorted(_hotdog_key(c) for c in classes) == ["hotdog", "nothotdog"]


def headline(label: str, classes: tuple[str, ...] | list[str]) -> str:
    """'Hot dog!' or 'Not hot dog!' for a hot dog / not hot dog model, else the class name."""
    if not is_hotdog_model(classes):
        return label
    return "Hot dog!" if _hotdog_key(label) == "hotdog" else "Not hot dog!"


def decode_upload(data: bytes, max_pixels: int, reduce_to: int | None = None) -> Image.Image:
    """Uploaded bytes -> RGB image (:func:`~transferlab.data.images.load_rgb`); :class:`ApiError` if they are not a
    whole image within ``max_pixels``. ``reduce_to``: large images are shrunk while decoding."""
    try:
        return load_rgb(data, limit=max_pixels, name="the upload", reduce_to=reduce_to)
    except ImageError as exc:
        if exc.kind == "not_image":  # the one error anyone picking a file sees: said for them, not for a developer
            raise ApiError(415, NOT_AN_IMAGE) from None
        raise ApiError(UPLOAD_STATUS.get(exc.kind, 400), str(exc)) from None


class _BodyLimit:
    """ASGI middleware: refuse request bodies over ``limit`` bytes with 413, before or while they arrive, and
    bodies that take longer than ``seconds`` to arrive with 408."""

    def __init__(self, app: Any, limit: int, message: str, seconds: float = BODY_TIMEOUT) -> None:
        self.app = app
        self.limit = limit
        self.message = render(message, cli=True)
        self.seconds = seconds

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            from fastapi.responses import JSONResponse

            await JSONResponse({"error": self.message}, status_code=413)(scope, receive, send)
            return
        received, deadline, complete = 0, time.monotonic() + self.seconds, False

        async def limited_receive() -> dict[str, Any]:
            nonlocal received, complete
            if complete:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                raise ApiError(408, f"the upload did not arrive within {self.seconds:g} s; send it again") from None
            complete = not message.get("more_body", False)
            received += len(message.get("body", b""))
            if received > self.limit:
                raise ApiError(413, self.message)
            return message

        await self.app(scope, limited_receive, send)


def create_app(run_dir: str | Path, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
               max_pixels: int | None = None, device: str = "auto",
               allowed_hosts: Sequence[str] | None = None) -> Any:
    """The FastAPI app for one run directory (the model is loaded once, here).

    ``allowed_hosts``: the Host header names (port aside) a request may carry; None accepts any.
    """
    if not 0 < max_upload_mb <= MAX_UPLOAD_CEILING_MB:
        raise TransferlabError(f"{opt('max_upload_mb')} must be a positive number of megabytes up to "
                               f"{MAX_UPLOAD_CEILING_MB:,}, got {max_upload_mb}")
    max_pixels = images.max_pixels() if max_pixels is None else max_pixels
    if max_pixels <= 0:
        raise TransferlabError(f"{opt('max_pixels', max_pixels)}: must be positive")
    try:
        from fastapi import FastAPI, Request
        from fastapi.concurrency import run_in_threadpool
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import HTMLResponse, JSONResponse, Response
        from starlette.datastructures import UploadFile
        from starlette.exceptions import HTTPException
        from starlette.requests import ClientDisconnect
    except ImportError as exc:
        raise TransferlabError(f"serve needs fastapi, uvicorn and python-multipart ({exc}); "
                               "run `pip install 'transferlab[serve]'`") from None
    from .. import __version__
    from .predictor import load

    predictor = load(run_dir, device=device)
    max_bytes = int(max_upload_mb * 1024 * 1024)
    too_large = f"the upload is larger than {max_upload_mb:g} MB ({opt('max_upload_mb')}); send a smaller image"
    page = resources.files("transferlab").joinpath("static/index.html").read_text(encoding="utf-8")
    lock = threading.Lock()  # one prediction at a time: the model is shared and the CPU is small
    # Uploads are decoded in a pool of their own, DECODERS at a time: that bounds the memory of decoding, and
    # so does keeping it to DECODERS threads (glibc keeps per-thread heaps, which decoded images would fill).
    decoders = ThreadPoolExecutor(DECODERS, thread_name_prefix="decode")
    names = {c: readable(c) for c in predictor.classes}  # JSON for a browser: a non-UTF-8 name as \\xNN
    info = {"model": predictor.model_name, "class_names": list(names.values()), "transferlab_version": __version__,
            "preprocessing": predictor.pre.to_dict(),
            "hotdog": is_hotdog_model(predictor.classes), "stage": predictor.stage,
            "limits": {"max_upload_mb": max_upload_mb, "max_pixels": max_pixels}}

    app = FastAPI(title="transferlab", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_BodyLimit, limit=max_bytes + MULTIPART_SLACK, message=too_large)
    if allowed_hosts is not None:
        app.add_middleware(_HostCheck, allowed=allowed_hosts)

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": f"invalid request: {exc.errors()}"}, status_code=400)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, _exc: ClientDisconnect) -> Response:
        client = f"{request.client.host}:{request.client.port}" if request.client else "a client"
        log.info("%s closed the connection before its request had arrived; nothing was answered", client)
        return Response(status_code=499)  # not sent: the client is gone

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error")
        return JSONResponse({"error": f"internal error ({type(exc).__name__}); see the server log"}, status_code=500)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers=PAGE_HEADERS)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/info")
    async def get_info() -> dict[str, Any]:
        return info

    def predict_image(image: Image.Image) -> dict[str, Any]:
        with lock:
            result = predictor.predict([image])[0]
        return {"label": names[result["label"]], "headline": readable(headline(result["label"], predictor.classes)),
                "probabilities": {names[c]: p for c, p in result["probabilities"].items()}}

    @app.post("/predict")
    async def predict(request: Request) -> dict[str, Any]:
        if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
            raise ApiError(400, "send the image as multipart/form-data in a field named 'file'")
        async with request.form(max_files=1, max_fields=10) as form:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise ApiError(400, "missing multipart field 'file' (the image file)")
            data = await upload.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise ApiError(413, too_large)
        # an upload over twice the model's resize is reduced while it is decoded
        image = await asyncio.get_running_loop().run_in_executor(decoders, decode_upload, data, max_pixels,
                                                                 predictor.pre.resize_size)
        return await run_in_threadpool(predict_image, image)

    return app


class _HostCheck:
    """ASGI middleware: answer 400 to a Host header not in ``allowed`` (a page on another site that rebinds its
    DNS name to 127.0.0.1 sends its own name). Starlette's TrustedHostMiddleware cuts ``[::1]:8000`` at the
    first colon, so IPv6 literals need this small check of our own."""

    def __init__(self, app: Any, allowed: Sequence[str]) -> None:
        self.app = app
        self.allowed = {h.strip("[]").lower() for h in allowed}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and "*" not in self.allowed:
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1").lower()
            name = host[1:].partition("]")[0] if host.startswith("[") else host.rpartition(":")[0] or host
            if ":" in host and not host.startswith("[") and host.count(":") > 1:
                name = host  # a bare IPv6 literal without a port
            if name not in self.allowed:
                from fastapi.responses import JSONResponse

                await JSONResponse({"error": f"host {host!r} is not served here (--allowed-hosts)"},
                                   status_code=400)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _protocol() -> type:
    """uvicorn's HTTP protocol with a deadline for each request's headers: uvicorn has none, so a client that
    sends its headers a byte at a time would hold a connection for ever (a "slowloris"). The deadline is armed
    when the connection opens and again after every response (a keep-alive connection's next request)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadline(H11Protocol):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._deadline.cancel()
            self._arm()

        def _arm(self) -> None:
            armed_on = self.cycle  # the request answered last (None: a new connection)
            self._deadline = self.loop.call_later(HEADER_TIMEOUT, self._expire, armed_on)

        def _expire(self, armed_on: Any) -> None:
            if self.cycle is armed_on:  # no whole request since the deadline was armed
                self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            self._deadline.cancel()
            super().connection_lost(exc)

    return HeaderDeadline


def make_server(app: Any, log_level: str = "info") -> Any:
    """The uvicorn server for ``app``: a deadline for request headers, and at most 256 connections at once."""
    import uvicorn

    return uvicorn.Server(uvicorn.Config(app, log_level=log_level, http=_protocol(), limit_concurrency=256))


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise TransferlabError(f"{opt('host', host)} {opt('port', port)}: cannot listen ({exc.strerror or exc}); "
                               f"choose another {opt('port')} (or {opt('host')})") from None
    return sock


def is_loopback(host: str) -> bool:
    """Whether ``host`` is an address of this machine alone (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000,
          max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, max_pixels: int | None = None,
          device: str = "auto", allowed_hosts: Sequence[str] | None = None) -> None:
    """Run the app with uvicorn until interrupted.

    ``allowed_hosts`` defaults to the loopback names when listening on a loopback address, else any.
    """
    if not host.strip():
        raise TransferlabError(f"{opt('host')}: empty; give the address to listen on (127.0.0.1: this machine only, "
                               "0.0.0.0: every interface)")
    loopback = is_loopback(host)
    if allowed_hosts is None and loopback:
        allowed_hosts = LOOPBACK if host in LOOPBACK else (*LOOPBACK, host)
    if not 0 <= port <= 65535:
        raise TransferlabError(f"{opt('port', port)}: choose a port between 1 and 65535 (0 = any free port)")
    try:
        import uvicorn  # noqa: F401 - checked here, used by make_server
    except ImportError:
        raise TransferlabError("serve needs uvicorn; run `pip install 'transferlab[serve]'`") from None
    sock = _listen(host, port)  # first, so that a busy port fails before the model loads
    try:
        app = create_app(run_dir, max_upload_mb=max_upload_mb, max_pixels=max_pixels, device=device,
                         allowed_hosts=allowed_hosts)
    except BaseException:
        sock.close()
        raise
    bound = sock.getsockname()[1]
    if not loopback:
        log.warning("listening on %s: anyone who can reach this machine can use the model", host)
    shown = f"[{host}]" if ":" in host else host
    print(f"transferlab: serving {run_dir} on http://{shown}:{bound}/ (Ctrl+C stops)", flush=True)
    server = make_server(app)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
