"""The HTTP side: routes, request limits, JSON errors, and the server itself.

Standard library only (`http.server.ThreadingHTTPServer`): a model behind a web page needs no
framework, and nothing outside the machine is fetched, so it works on an offline line PC.
Every failure inside a request becomes a JSON error answer; none reaches the server loop.
"""

from __future__ import annotations

import json
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from anomap import __version__
from anomap.errors import AnomapError
from anomap.methods.base import Detector
from anomap.serve.model import ModelService
from anomap.serve.page import PAGE
from anomap.serve.uploads import RequestError, read_uploads

DEFAULT_MAX_BODY = 20 * 1024 * 1024
# an oversized body is still read (and dropped) up to this much, so the client, which is
# usually still sending, receives the 413 instead of a reset connection
_DRAIN_LIMIT = 256 * 1024 * 1024
_CHUNK = 1024 * 1024
_PREDICT_PARAMETERS = frozenset({"category", "overlay", "map", "filename"})
_TRUE = frozenset({"1", "true", "yes", "on"})


class ModelServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer holding the model service and the request body limit."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], service: ModelService, max_body: int) -> None:
        super().__init__(address, _Handler)
        self.service = service
        self.max_body = max_body

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"


class _Handler(BaseHTTPRequestHandler):
    server: ModelServer
    server_version = f"anomap/{__version__}"
    protocol_version = "HTTP/1.1"
    timeout = 60  # seconds of client silence before its thread gives up

    def do_GET(self) -> None:
        self._answer("GET")

    def do_POST(self) -> None:
        self._answer("POST")

    def _answer(self, method: str) -> None:
        path = urlsplit(self.path).path
        routes = {
            ("GET", "/"): self._page,
            ("GET", "/health"): lambda: self._send_json({"status": "ok"}),
            ("GET", "/info"): self._info,
            ("POST", "/predict"): self._predict,
        }
        try:
            route = routes.get((method, path))
            if route is None:
                allowed = [m for m, p in routes if p == path]
                if allowed:
                    raise RequestError(f"{path} accepts {', '.join(allowed)}", 405)
                raise RequestError(f"no such endpoint: {path}", 404)
            route()
        except RequestError as exc:
            self.close_connection = True  # the body may be unread: the stream is out of step
            self._send_json({"error": str(exc)}, exc.status)
        except ConnectionError:  # the client left (a closed browser tab): nobody to answer
            self.close_connection = True
        except Exception as exc:  # noqa: BLE001 - a failed request must not end the server
            self.log_error("%s", traceback.format_exc())
            self.close_connection = True
            self._send_json({"error": f"internal error: {type(exc).__name__}: {exc}"}, 500)

    def _send(self, body: bytes, content_type: str, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, data: Any, status: int = 200) -> None:
        self._send(json.dumps(data).encode(), "application/json", status)

    def _page(self) -> None:
        self._send(PAGE.encode(), "text/html; charset=utf-8")

    def _info(self) -> None:
        self._send_json(dict(self.server.service.info(), max_body_bytes=self.server.max_body))

    def _body(self) -> bytes:
        """The request body, refused before reading when it is over the limit."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise RequestError("chunked uploads are not supported: send a Content-Length", 411)
        declared = self.headers.get("Content-Length")
        if declared is None:
            raise RequestError("a Content-Length header is required", 411)
        try:
            length = int(declared)
        except ValueError:
            length = -1
        if length < 0:
            raise RequestError(f"invalid Content-Length {declared!r}")
        limit = self.server.max_body
        if length > limit:
            self._drain(length)
            raise RequestError(f"request body is {length} bytes; the limit is {limit}", 413)
        body = self.rfile.read(length)
        if len(body) < length:
            raise RequestError(f"request body ended after {len(body)} of {length} bytes")
        return body

    def _drain(self, length: int) -> None:
        left = min(length, _DRAIN_LIMIT)
        try:
            while left > 0:
                chunk = self.rfile.read(min(left, _CHUNK))
                if not chunk:
                    return
                left -= len(chunk)
        except OSError:  # the client stalled or went away; the answer is the same
            return

    def _predict(self) -> None:
        start = time.perf_counter()
        body = self._body()  # read first: answering with an upload unread resets the client
        query = parse_qs(urlsplit(self.path).query)
        unknown = sorted(set(query) - _PREDICT_PARAMETERS)
        if unknown:
            raise RequestError(
                f"unknown query parameter {', '.join(unknown)}; "
                f"accepted: {', '.join(sorted(_PREDICT_PARAMETERS))}"
            )

        def value(name: str, default: str = "") -> str:
            return query.get(name, [default])[-1]

        service = self.server.service
        category = service.category(value("category"))
        content_type = self.headers.get("Content-Type", "")
        uploads = read_uploads(content_type, body, value("filename", "upload"))
        decoded = time.perf_counter()
        result = service.predict(
            uploads,
            category=category,
            with_overlay=value("overlay").lower() in _TRUE,
            with_map=value("map").lower() in _TRUE,
        )
        result["timing_ms"]["decode"] = (decoded - start) * 1e3
        result["timing_ms"]["total"] = (time.perf_counter() - start) * 1e3
        self._send_json(result)


def make_server(
    model: str | Path | Detector,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    category: str | None = None,
    device: str | None = None,
    weights: str | None = None,
    precision: str | None = None,
    max_body: int = DEFAULT_MAX_BODY,
) -> ModelServer:
    """A bound server (port 0 picks a free one; see `server.url`) for a fitted detector or a
    model file; call `serve_forever()` on it, or use `serve`."""
    if isinstance(model, Detector):
        service = ModelService(model, category=category)
    else:
        service = ModelService.load(
            model, category=category, device=device, weights=weights, precision=precision
        )
    try:
        return ModelServer((host, port), service, max_body)
    except OSError as exc:  # port taken, address not on this machine, no permission
        raise AnomapError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


def serve(
    model: str | Path | Detector, host: str = "127.0.0.1", port: int = 8000, **options: Any
) -> None:
    """Serve until interrupted; `options` are those of `make_server`."""
    server = make_server(model, host, port, **options)
    method = server.service.detector.method
    print(f"anomap: serving {method} on {server.url} (Ctrl+C to stop)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
