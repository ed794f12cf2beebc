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

Limits (each checked against a running server in tests/test_serve_hostile.py): a body of at most
``MAX_BODY`` bytes; a whole request (request line, headers, body; or the wait for the next
request on a kept-alive connection) within ``REQUEST_DEADLINE`` seconds, else 408 and the
connection is closed; an answer sent within ``SEND_TIMEOUT``; at most ``MAX_CONNECTIONS``
connections served at once (one thread each), more are answered 503 and closed at once. Errors
are logged as one line; no answer or log line carries a traceback.

Why ``http.server`` and not an ASGI server: jimunet's core needs only NumPy, and this page needs
nothing but the standard library and Pillow; the few things a server must bound are bounded here
and tested against a running server, so the ``serve`` extra stays one package (Pillow).
"""
from __future__ import annotations

import ctypes
import io
import ipaddress
import json
import os
import signal
import socket
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import parse_qs, urlsplit

from .serve import ApiError, DigitApp, ServeError

MAX_BODY = 4 * 1024 * 1024        # bytes in one request body (a 280×280 PNG is ~10 kB)
REQUEST_DEADLINE = 30.0           # seconds for one whole request, from its first byte awaited to its body's last
SEND_TIMEOUT = 30.0               # seconds to send one answer to a client that reads slowly
MAX_CONNECTIONS = 32              # connections served at once (a thread each); more get 503 and are closed

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


class _DeadlineReader(io.RawIOBase):
    """The connection's bytes; every read waits only until ``handler.deadline`` (a whole-request
    deadline, where a socket timeout would restart with each byte a slow client sends)."""

    def __init__(self, sock, handler):
        self._sock, self._handler = sock, handler

    def readable(self):
        return True

    def readinto(self, b):
        left = self._handler.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        self._sock.settimeout(left)
        n = self._sock.recv_into(b)
        if n:
            self._handler.got_bytes = True
        return n


class Handler(BaseHTTPRequestHandler):
    """Routes requests to ``server.app`` (a ``DigitApp``); every answer is JSON or a static file."""

    server_version = "jimunet-serve"
    _GET = ("/api/model", "/api/mnist")
    _POST = ("/api/predict",)

    # -- plumbing --
    def setup(self):
        super().setup()
        self.deadline, self.got_bytes = time.monotonic() + self.server.request_deadline, False
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, self))

    def handle_one_request(self):
        """``BaseHTTPRequestHandler.handle_one_request`` under the whole-request deadline."""
        self.deadline, self.got_bytes = time.monotonic() + self.server.request_deadline, False
        self.command, self.request_version, self.requestline = "", "HTTP/1.0", ""
        try:
            self.raw_requestline = self.rfile.readline(65537)
            if len(self.raw_requestline) > 65536:
                self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG)
                return
            if not self.raw_requestline:
                self.close_connection = True
                return
            if not self.parse_request():
                return
            method = getattr(self, "do_" + self.command, None)
            if method is None:
                self.send_error(HTTPStatus.NOT_IMPLEMENTED, f"Unsupported method ({self.command!r})")
                return
            method()
            self.wfile.flush()
        except TimeoutError:
            self._timed_out()
        except (ConnectionError, OSError):  # the client went away: nobody to answer
            self.close_connection = True

    def _timed_out(self):
        """408 to a client that began a request and did not finish it in time; silence to an idle one."""
        self.close_connection = True
        if self.got_bytes:
            self.send_error(HTTPStatus.REQUEST_TIMEOUT, f"the request was not complete within "
                                                        f"{self.server.request_deadline:g} seconds")
            try:  # what the client sent meanwhile: closing with it unread would reset the answer
                self.connection.setblocking(False)
                self.connection.recv(1 << 16)
            except OSError:
                pass

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
        self.connection.settimeout(self.server.send_timeout)  # for the whole answer (sendall)
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
        except TimeoutError:  # the body did not arrive in time
            self._timed_out()
            return
        except ConnectionError:  # the client went away: nobody to answer
            self.close_connection = True
            return
        except Exception as e:  # a bug, not bad input: say so in one line, keep serving
            self.log_message("internal error answering %s %s: %s", method, self.path[:200], str(e)[:300])
            answer = (500, _json_bytes({"error": "internal error; the server's log has a line about it"}),
                      JSON_TYPE, ())
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


def _bind_address(host: str, port: int):
    """``(family, numeric address)`` that ``host`` (an address in any spelling, or a name) binds to."""
    try:
        infos = socket.getaddrinfo(host or None, port, 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    except UnicodeError:
        raise socket.gaierror(socket.EAI_NONAME, "not an address or a host name") from None
    family, _, _, _, addr = infos[0]
    return family, addr[0]


def exposure_warning(address: str) -> str | None:
    """The warning for a bound ``address`` that other machines can reach (None for loopback)."""
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return f"warning: listening on {address}: other machines may reach the page"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return None
    if ip.is_unspecified:
        return (f"warning: listening on all interfaces ({address}): anyone who can reach this machine can use "
                f"the page; the default --host 127.0.0.1 keeps it local")
    return (f"warning: listening on {address}, which is not a loopback address: other machines can reach the "
            f"page; the default --host 127.0.0.1 keeps it local")


class Server(ThreadingHTTPServer):
    """One thread per connection, at most ``max_connections`` at once (daemon threads: a stuck
    client never holds up shutdown); more connections are answered 503 and closed at once."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, app: DigitApp, host: str = "127.0.0.1", port: int = 8000, *,
                 max_connections: int = MAX_CONNECTIONS, request_deadline: float = REQUEST_DEADLINE,
                 send_timeout: float = SEND_TIMEOUT):
        self.address_family, address = _bind_address(host, port)
        self.app = app
        self.static = _static_files()
        self.max_connections, self.request_deadline, self.send_timeout = max_connections, request_deadline, send_timeout
        self._slots = threading.BoundedSemaphore(max_connections)
        self._holding, self._holding_lock = set(), threading.Lock()  # connections that hold a slot
        self._last_busy_log = 0.0
        super().__init__((address, port), Handler)

    @property
    def url(self) -> str:
        """The URL of the address actually bound (``0.0.0.0`` when every interface listens)."""
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            self._refuse(request)
            return
        self._holding.add(request)
        try:
            super().process_request(request, client_address)
        except BaseException:  # e.g. Ctrl-C before the thread started: give its slot back
            self._release(request)
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(request)

    def _release(self, request):
        """The connection's slot back, once: a Ctrl-C can reach ``process_request`` after the
        thread it started has already finished (and a second release would raise in place of it)."""
        with self._holding_lock:
            if request in self._holding:
                self._holding.remove(request)
                self._slots.release()

    def _refuse(self, request):
        """503 to a connection over the limit, written without waiting, then closed."""
        body = _json_bytes({"error": f"the server is busy: {self.max_connections} connections are open, the most "
                                     f"it serves at once; try again shortly"})
        head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: {JSON_TYPE}\r\nContent-Length: {len(body)}"
                f"\r\nRetry-After: 5\r\nConnection: close\r\n\r\n").encode("ascii")
        try:
            request.setblocking(False)
            request.send(head + body)
            request.recv(1 << 16)  # what the client already sent: closing with it unread would reset the answer
        except OSError:
            pass
        self.shutdown_request(request)
        now = time.monotonic()
        if now - self._last_busy_log > 10:
            self._last_busy_log = now
            print(f"jimunet serve: {self.max_connections} connections open, the most served at once; "
                  f"answering 503 to more", file=sys.stderr, flush=True)

    def handle_error(self, request, client_address):
        """One line, not a traceback, for anything a handler let escape."""
        e = sys.exc_info()[1]
        print(f"jimunet serve: error with the connection from {client_address[0]}: {str(e)[:300]}",
              file=sys.stderr, flush=True)


def make_server(app: DigitApp, host: str = "127.0.0.1", port: int = 8000, **limits) -> Server:
    """A bound (not yet serving) server; ``ServeError`` if the address cannot be used.

    ``limits``: ``max_connections``, ``request_deadline``, ``send_timeout`` (see ``Server``)."""
    try:
        return Server(app, host, port, **limits)
    except OSError as e:
        hint = "; pick another with --port" if e.errno in (98, 48, 10048) else ""
        raise ServeError(f"cannot listen on {host}:{port}: {e.strerror or e}{hint}") from None


def return_freed_memory() -> bool:
    """Make glibc give large freed blocks (over 4 MiB) back to the system at once (True if it could).

    By default glibc raises its mmap threshold after the first large block is freed, so later
    ones (a decoded picture, in a handler thread's arena) stay in the process for reuse and the
    resident size stays at its peak for good; with a fixed threshold each is unmapped when freed.
    """
    try:
        return bool(ctypes.CDLL(None).mallopt(-3, 4 << 20))  # M_MMAP_THRESHOLD (glibc only)
    except (OSError, AttributeError, TypeError):
        return False


def run(app: DigitApp, host: str = "127.0.0.1", port: int = 8000, out=None) -> int:
    """Serve until Ctrl-C or SIGTERM; returns 0 after a clean stop."""
    out = out or sys.stdout
    return_freed_memory()
    server = make_server(app, host, port)
    warning = exposure_warning(server.server_address[0])
    if warning:
        print(warning, file=sys.stderr, flush=True)
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


__all__ = ["Server", "Handler", "make_server", "run", "exposure_warning", "MAX_BODY", "REQUEST_DEADLINE",
           "SEND_TIMEOUT", "MAX_CONNECTIONS"]
