"""``jimunet serve``'s HTTP side: the page (``static/``) and the JSON API of a ``DigitApp``.

The page (``static/``: plain HTML, JS and CSS shipped in the package, nothing fetched from
elsewhere) sends the drawing as a PNG; ``jimunet.app.serve.DigitApp`` computes the answers.

API (JSON answers; errors are ``{"error": "..."}`` with a 4xx/5xx status):

* ``GET /api/model``: the model file, its summary (``model.summary``), the per-block facts of
  ``explain`` and the first layer's filters.
* ``POST /api/predict[?activations=1]``: the body is a picture (``Content-Type: image/png``,
  ``image/jpeg``, ...; or ``multipart/form-data`` with one file), or JSON
  ``{"pixels": 28x28 array, "activations": true}`` with MNIST-style pixels (white digit on
  black, 0..255 or 0..1: what ``predict`` accepts in a ``.npy``). Answers ``top``,
  ``probabilities``, ``input`` (the 28×28 pixels the model saw, before the ``(x-127.5)/255``
  scaling), ``blocks`` and, with activations, ``feature_maps`` (channels × height × width).
* ``GET /api/mnist?index=I`` / ``GET /api/mnist?mistake=1``: an MNIST test image (its pixels
  and label), or a random one this model gets wrong. MNIST is loaded on first use.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import parse_qs, urlsplit

from .serve import ApiError, DigitApp, ServeError

MAX_BODY = 4 * 1024 * 1024        # bytes in one request body (a 280×280 PNG is ~10 kB)
REQUEST_TIMEOUT = 15.0            # seconds a client may stall while sending its request
ALL_INTERFACES = ("0.0.0.0", "::", "")

_STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".png": "image/png", ".svg": "image/svg+xml"}


def _static_files() -> dict:
    """``{url path: (bytes, content type)}`` of the page's assets (package data), read once."""
    files = {}
    root = resources.files("jimunet.app") / "static"
    for entry in root.iterdir():
        ext = os.path.splitext(entry.name)[1]
        if entry.is_file() and ext in _STATIC_TYPES:
            files[f"/static/{entry.name}"] = (entry.read_bytes(), _STATIC_TYPES[ext])
    if "/static/index.html" in files:
        files["/"] = files["/static/index.html"]
    return files


JSON_TYPE = "application/json; charset=utf-8"


def _json_bytes(doc) -> bytes:
    return json.dumps(doc, allow_nan=False, separators=(",", ":")).encode("utf-8")


def _flag(query, name) -> bool | None:
    values = query.get(name)
    if not values:
        return None
    v = values[-1].strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise ApiError(400, f"{name} must be 1 or 0 (true/false), got {values[-1]!r}")


class Handler(BaseHTTPRequestHandler):
    """Routes requests to ``server.app`` (a ``DigitApp``); every answer is JSON or a static file."""

    server_version = "jimunet-serve"
    timeout = REQUEST_TIMEOUT  # a stalled client costs one thread for this long, then is dropped
    _GET = ("/api/model", "/api/mnist")
    _POST = ("/api/predict",)

    # -- plumbing --
    def log_request(self, code="-", size="-"):
        if isinstance(code, HTTPStatus):
            code = code.value
        if not (isinstance(code, int) and code < 400):  # success is the normal case: stay quiet
            super().log_request(code, size)

    def send_error(self, code, message=None, explain=None):
        """Errors found by ``http.server`` itself (bad request line, headers) as JSON too."""
        if self.request_version == "HTTP/0.9":  # an unparsable request line: answer with a status line
            self.request_version = "HTTP/1.0"
        self.close_connection = True
        try:
            self._send(int(code), _json_bytes({"error": message or HTTPStatus(code).phrase}), JSON_TYPE)
        except OSError:
            pass

    def _send(self, status: int, body: bytes, ctype: str, extra=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        # Everything the page needs comes from this server: the browser refuses anything else.
        self.send_header("Content-Security-Policy", "default-src 'self'; img-src 'self' data: blob:; "
                                                    "frame-ancestors 'none'")
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise ApiError(411, "send the body with a Content-Length header (chunked transfer is not supported)")
        length = self.headers.get("Content-Length")
        if length is None:
            raise ApiError(411, "a Content-Length header is required")
        try:
            n = int(length)
            if n < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            raise ApiError(400, f"bad Content-Length {length!r}") from None
        if n > MAX_BODY:
            self.close_connection = True
            self._discard(n)
            raise ApiError(413, f"the request body has {n:,} bytes; at most {MAX_BODY:,} are accepted")
        data = self.rfile.read(n)
        if len(data) != n:
            self.close_connection = True
            raise ApiError(400, f"the body ended after {len(data)} of the {n} bytes its Content-Length announced")
        return data

    def _discard(self, n: int):
        """Read and drop a too-large body (up to 16× the limit), so the client can read the 413."""
        if n > 16 * MAX_BODY:
            return
        try:
            while n > 0:
                chunk = self.rfile.read(min(n, 1 << 16))
                if not chunk:
                    return
                n -= len(chunk)
        except OSError:
            pass

    # -- routing --
    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def do_PATCH(self):
        self._dispatch("PATCH")

    def _dispatch(self, method: str):
        try:
            answer = self._answer(method)
        except ApiError as e:
            answer = (e.status, _json_bytes({"error": str(e)}), JSON_TYPE, e.headers)
        except (TimeoutError, ConnectionError):  # the client stalled or went away: nobody to answer
            self.close_connection = True
            return
        except Exception as e:  # a bug, not bad input: say so, keep serving
            traceback.print_exc(file=sys.stderr)
            answer = (500, _json_bytes({"error": f"internal error: {type(e).__name__}: {e}"}), JSON_TYPE, ())
        try:
            self._send(*answer)
        except OSError:  # the client hung up before reading the answer
            self.close_connection = True

    def _answer(self, method: str):
        """``(status, body, content type, extra headers)`` for this request; raises ``ApiError``."""
        url = urlsplit(self.path)
        path, query = url.path, parse_qs(url.query, keep_blank_values=True)
        static = self.server.static.get(path)
        if static is not None or path in self._GET or path in self._POST:
            allowed = ("GET", "HEAD") if (static is not None or path in self._GET) else ("POST",)
            if method not in allowed:
                names = ", ".join(allowed)
                raise ApiError(405, f"{path} answers {names}, not {method}", [("Allow", names)])
        app = self.server.app
        if static is not None:
            return (200, *static, ())
        if path == "/api/model":
            doc = app.info()
        elif path == "/api/mnist":
            doc = self._mnist(query)
        elif path == "/api/predict":
            body = self._read_body()
            pixels, flag = app.pixels_from_request(body, self.headers.get("Content-Type", ""))
            activations = flag if flag is not None else bool(_flag(query, "activations"))
            doc = app.predict(pixels, activations=activations)
        else:
            raise ApiError(404, f"no such page: {path} (the page is /, the API /api/model, /api/predict, "
                                f"/api/mnist)")
        return 200, _json_bytes(doc), JSON_TYPE, ()

    def _mnist(self, query) -> dict:
        if _flag(query, "mistake"):
            return self.server.app.random_mistake()
        raw = (query.get("index") or [None])[-1]
        if raw is None:
            raise ApiError(400, "give ?index=I (0..9999) or ?mistake=1")
        try:
            index = int(raw)
        except ValueError:
            raise ApiError(400, f"index must be an integer, got {raw!r}") from None
        return self.server.app.test_image(index)


class Server(ThreadingHTTPServer):
    """One thread per connection (daemon threads: a stuck client never holds up shutdown)."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, app: DigitApp, host: str = "127.0.0.1", port: int = 8000):
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.app = app
        self.static = _static_files()
        super().__init__((host, port), Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        if host in ALL_INTERFACES:
            host = "127.0.0.1" if self.address_family == socket.AF_INET else "::1"
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def make_server(app: DigitApp, host: str = "127.0.0.1", port: int = 8000) -> Server:
    """A bound (not yet serving) server; ``ServeError`` if the address cannot be used."""
    try:
        return Server(app, host, port)
    except OSError as e:
        hint = "; pick another with --port" if e.errno in (98, 48, 10048) else ""
        raise ServeError(f"cannot listen on {host}:{port}: {e.strerror or e}{hint}") from None


def run(app: DigitApp, host: str = "127.0.0.1", port: int = 8000, out=None) -> int:
    """Serve until Ctrl-C or SIGTERM; returns 0 after a clean stop."""
    out = out or sys.stdout
    if host in ALL_INTERFACES:
        print(f"warning: listening on all interfaces ({host or '0.0.0.0'}): anyone who can reach this machine "
              f"can use the page; the default --host 127.0.0.1 keeps it local", file=sys.stderr)
    server = make_server(app, host, port)
    print(f"jimunet serve: {app.model_path} at {server.url}  (Ctrl-C to stop)", file=out, flush=True)

    def stop(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop) if threading.current_thread() is threading.main_thread() else None
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    print("jimunet serve: stopped", file=out, flush=True)
    return 0


__all__ = ["Server", "Handler", "make_server", "run", "MAX_BODY", "REQUEST_TIMEOUT"]
