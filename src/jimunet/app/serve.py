"""``jimunet serve``: a local web page to draw a digit on and watch every block react, and its JSON API.

The page (``static/``: plain HTML, JS and CSS shipped in the package, nothing fetched from
elsewhere) sends the drawing as a PNG; the server turns it into the 28×28 input exactly as
``jimunet predict`` does (``jimunet.data.images``), runs it through the model block by block
(``jimunet.explain.walk``, the code behind ``jimunet explain``) and answers with the
probabilities, the input the model saw, the feature maps of the conv blocks and each block's
shapes, im2col/GEMM sizes and FLOPs.

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

Every jimunet computation in the process runs under one lock: layers keep caches and reuse
scratch buffers between calls, and the CPU worker pool of ``jimunet.parallel`` hands results
back through one shared queue, so two forwards at once (even on two copies of the model)
would mix each other's data. One image takes milliseconds, so requests simply queue.
"""
from __future__ import annotations

import json
import os
import random
import signal
import socket
import sys
import threading
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import parse_qs, urlsplit

import numpy as np

from ..data.images import ImageTooLarge, as_pixels, digit_from_bytes, preprocess
from ..explain import conv_blocks, walk

MAX_BODY = 4 * 1024 * 1024        # bytes in one request body (a 280×280 PNG is ~10 kB)
MAX_PIXELS = 4096 * 4096          # pixels of one decoded picture (checked from its header)
REQUEST_TIMEOUT = 15.0            # seconds a client may stall while sending its request
INPUT_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
ALL_INTERFACES = ("0.0.0.0", "::", "")

COMPUTE_LOCK = threading.Lock()   # see the module docstring: one jimunet computation at a time
# A picture near MAX_PIXELS takes a few hundred MB while it is decoded and normalised: only a
# couple at a time, so a burst of large uploads cannot exhaust memory.
DECODE_SLOTS = threading.BoundedSemaphore(2)

_STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".png": "image/png", ".svg": "image/svg+xml"}


class ServeError(Exception):
    """A problem the user can fix (no model, a port in use, a model that does not fit)."""


class ApiError(Exception):
    """An answer other than 200: ``status`` and a message for ``{"error": ...}``."""

    def __init__(self, status: int, message: str, headers=()):
        super().__init__(message)
        self.status, self.headers = int(status), list(headers)


# -- the application: model, data, answers ------------------------------------------------

def _rounded(a, digits=4):
    """Nested lists of floats, rounded so the JSON stays short."""
    return np.round(np.asarray(a, dtype=np.float64), digits).tolist()


def _block_json(rec) -> dict:
    keep = ("index", "name", "kind", "input_shape", "output_shape", "params", "flops", "min", "max", "mean",
            "zero_fraction", "details")
    return {k: rec[k] for k in keep}


class DigitApp:
    """What the server answers, independent of HTTP (so it is testable without sockets).

    Args:
        model: a ``Sequential`` taking 28×28×1 images and giving 10 class scores.
        model_path: how to name the model on the page.
        data_dir, download: where ``load_mnist`` finds (or fetches) MNIST for the test images.
        test_set: ``(x, y)`` test images (uint8 ``(N, 28, 28, 1)``) instead of MNIST's.
    """

    def __init__(self, model, model_path: str = "(in memory)", data_dir=None, download: bool = True,
                 test_set=None):
        try:
            out = tuple(model.summary(INPUT_SHAPE).output_shape)
        except (ValueError, AttributeError) as e:
            raise ServeError(f"{model_path}: the model cannot take 28x28x1 images ({e})") from None
        if out != (NUM_CLASSES,):
            raise ServeError(f"{model_path}: the model's output has shape {out}; serve needs 10 class scores")
        self.model, self.model_path = model, str(model_path)
        self.data_dir, self.download = data_dir, download
        self._test_set = None if test_set is None else (np.asarray(test_set[0]), np.asarray(test_set[1]))
        self._data_lock = threading.Lock()
        self._data_error = None
        self._mistakes = None
        self._info = None
        self._rng = random.Random()

    @classmethod
    def from_file(cls, path, **kw) -> "DigitApp":
        from ..model import load
        from ..serialization import CheckpointError

        if not os.path.isfile(path):
            raise ServeError(f"{path}: no such model file")
        try:
            model = load(path)
        except (CheckpointError, OSError) as e:
            raise ServeError(f"{path}: cannot load the model ({e})") from None
        return cls(model, model_path=str(path), **kw)

    # GET /api/model
    def info(self) -> dict:
        if self._info is None:
            with COMPUTE_LOCK:
                rec = walk(self.model, np.zeros(INPUT_SHAPE, np.uint8))  # shapes and sizes only
            summary = self.model.summary(INPUT_SHAPE)
            convs = [layer for layer in self.model.layers if type(layer).__name__ == "Conv2D"]
            filters = None
            if convs:
                w = np.asarray(convs[0].weight.data, dtype=np.float64)  # (kh, kw, cin, cout)
                filters = {"layer": self.model.layers.index(convs[0]), "shape": list(w.shape),
                           "note": "input channel 0, one kernel per output channel",
                           "data": _rounded(np.transpose(w[:, :, 0, :], (2, 0, 1)), 5)}
            meta = getattr(self.model, "metadata", {}) or {}
            self._info = {
                "path": self.model_path,
                "metadata": {k: meta[k] for k in ("epoch", "val_error", "test_error", "test_accuracy")
                             if k in meta},
                "summary": {"input_shape": list(summary.input_shape), "total_params": summary.total_params,
                            "total_flops": summary.total_flops, "text": str(summary),
                            "layers": [dict(r, output_shape=list(r["output_shape"])) for r in summary.rows]},
                "blocks": [{k: v for k, v in _block_json(r).items() if k not in ("min", "max", "mean",
                                                                                 "zero_fraction")}
                           for r in rec],
                "conv_blocks": [{"conv": c, "shown": s, "label": label} for c, s, label in conv_blocks(self.model)],
                "filters": filters,
            }
        return self._info

    # POST /api/predict
    def predict(self, pixels, activations: bool = False) -> dict:
        """Answer for one image of MNIST pixels ``(28, 28, 1)`` (0..255, white on black)."""
        with COMPUTE_LOCK:
            res = walk(self.model, pixels)
        probs = np.asarray(res.probabilities, dtype=np.float64)
        answer = {"top": int(np.argmax(probs)), "probabilities": _rounded(probs, 6),
                  "input": {"pixels": _rounded(np.asarray(pixels)[..., 0], 1),
                            "scaling": "(pixels - 127.5) / 255"},
                  "blocks": [_block_json(r) for r in res]}
        if activations:
            maps = []
            for conv, shown, label in conv_blocks(self.model):
                y = res.outputs[shown]  # (H, W, C)
                maps.append({"label": label, "conv": conv, "layer": shown, "shape": list(y.shape),
                             "layout": "channels, height, width", "min": float(y.min()), "max": float(y.max()),
                             "data": _rounded(np.transpose(y, (2, 0, 1)), 4)})
            answer["feature_maps"] = maps
        return answer

    def pixels_from_request(self, body: bytes, content_type: str) -> tuple:
        """``(pixels, activations_flag_or_None)`` from a request body; ``ApiError`` if unusable."""
        ctype = (content_type or "").split(";")[0].strip().lower()
        if ctype == "application/json":
            return self._pixels_from_json(body)
        if ctype == "multipart/form-data":
            body = _first_file_part(body, content_type)
            ctype = "image/*"
        if ctype.startswith("image/") or ctype == "application/octet-stream":
            if not body:
                raise ApiError(400, "the request body is empty; send a PNG or JPEG picture of one digit")
            try:
                with DECODE_SLOTS:
                    return digit_from_bytes(body, name="the uploaded image", max_pixels=MAX_PIXELS), None
            except ImportError as e:
                raise ApiError(500, str(e)) from None
            except ImageTooLarge as e:
                raise ApiError(413, str(e)) from None
            except ValueError as e:
                raise ApiError(400, str(e)) from None
        raise ApiError(415, f"unsupported Content-Type {ctype or '(none)'!r}: send image/png, image/jpeg, "
                            f"multipart/form-data with one file, or application/json {{\"pixels\": 28x28}}")

    def _pixels_from_json(self, body: bytes) -> tuple:
        try:
            doc = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise ApiError(400, f"the body is not valid JSON ({type(e).__name__}: {str(e)[:120]})") from None
        if not isinstance(doc, dict) or "pixels" not in doc:
            raise ApiError(400, 'expected a JSON object {"pixels": 28x28 array of 0..255 (white digit on black), '
                                '"activations": true|false}')
        flag = doc.get("activations")
        if flag is not None and not isinstance(flag, bool):
            raise ApiError(400, f'"activations" must be true or false, got {flag!r}')
        try:
            arr = np.asarray(doc["pixels"])
        except (ValueError, TypeError, RecursionError) as e:
            raise ApiError(400, f'"pixels" is not a rectangular array of numbers ({str(e)[:120]})') from None
        if arr.dtype == object:
            raise ApiError(400, '"pixels" is not a rectangular array of numbers')
        try:
            x = as_pixels(arr, name='"pixels"')
        except ValueError as e:
            raise ApiError(400, str(e)) from None
        if len(x) != 1:
            raise ApiError(400, f'"pixels" holds {len(x)} images; send one 28x28 image per request')
        return x[0], flag

    # GET /api/mnist
    def _test_images(self):
        with self._data_lock:
            if self._test_set is None and self._data_error is None:
                try:
                    from ..datasets import load_mnist
                    _, self._test_set = load_mnist(root=self.data_dir, download=self.download, progress=False)
                except Exception as e:  # MNISTUnavailableError, OSError, ...
                    self._data_error = (f"the MNIST test images are not available ({str(e).strip()[:400]}). "
                                        f"They are downloaded by 'python -m jimunet train' (or 'jimunet serve "
                                        f"--quick') into ~/.cache/jimunet/mnist; restart the server once "
                                        f"they are there. Drawing works without them.")
            if self._data_error is not None:
                raise ApiError(503, self._data_error)
            return self._test_set

    def test_image(self, index: int) -> dict:
        x, y = self._test_images()
        if not -len(x) <= index < len(x):
            raise ApiError(400, f"index must be in 0..{len(x) - 1}, got {index}")
        index %= len(x)
        return {"index": index, "label": int(y[index]), "count": len(x), "pixels": x[index, :, :, 0].tolist()}

    def random_mistake(self) -> dict:
        x, y = self._test_images()
        with self._data_lock:
            if self._mistakes is None:
                pred = np.empty(len(x), np.int64)
                for i in range(0, len(x), 500):  # the lock is released between chunks: drawing stays live
                    with COMPUTE_LOCK:
                        pred[i:i + 500] = self.model.predict(preprocess(x[i:i + 500]), batch_size=100).argmax(1)
                wrong = np.flatnonzero(pred != y)
                self._mistakes = (wrong, pred)
        wrong, pred = self._mistakes
        if len(wrong) == 0:
            raise ApiError(404, f"this model gets all {len(x)} test images right: there is no mistake to show")
        i = int(wrong[self._rng.randrange(len(wrong))])
        return dict(self.test_image(i), predicted=int(pred[i]), mistakes=int(len(wrong)))


def _first_file_part(body: bytes, content_type: str) -> bytes:
    """The content of the first part of a ``multipart/form-data`` body (e.g. ``curl -F f=@d.png``)."""
    from email.parser import BytesParser
    from email.policy import HTTP

    msg = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n"
                                              + body)
    if not msg.is_multipart():
        raise ApiError(400, "malformed multipart/form-data body (no boundary or no parts)")
    for part in msg.iter_parts():
        data = part.get_payload(decode=True)
        if data:
            return data
    raise ApiError(400, "the multipart/form-data body holds no file")


# -- HTTP -----------------------------------------------------------------------------------

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


def require_pillow() -> None:
    """``ServeError`` with the install hint when Pillow (needed to read the drawings) is missing."""
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise ServeError("jimunet serve reads the drawings as PNG with Pillow, which is not installed: "
                         "pip install 'jimunet[serve]'") from None


# -- choosing the model ---------------------------------------------------------------------

def newest_run_model(runs_dir="runs"):
    """The ``best.npz`` of the most recently written run under ``runs_dir``, or None."""
    try:
        candidates = [os.path.join(runs_dir, d, "best.npz") for d in os.listdir(runs_dir)]
    except OSError:
        return None
    candidates = [p for p in candidates if os.path.isfile(p)]
    return max(candidates, key=lambda p: (os.path.getmtime(p), p)) if candidates else None


def choose_model(model=None, quick: bool = False, data_dir=None, runs_dir="runs") -> str:
    """The model file to serve: the given one, a freshly trained 1-epoch one (``quick``), or the
    newest ``runs/*/best.npz``. ``ServeError`` says how to get one when there is none."""
    if model is not None and quick:
        raise ServeError("give either MODEL.npz or --quick, not both")
    if model is not None:
        return model
    if quick:
        from .recipes import MNISTConfig
        from .training import train_mnist

        result = train_mnist(MNISTConfig(epochs=1, data_dir=data_dir, report=False))
        return os.path.join(result.run_dir, "best.npz")
    found = newest_run_model(runs_dir)
    if found is None:
        raise ServeError(f"no model given and none found in {runs_dir}{os.sep}*{os.sep}best.npz. Train one with "
                         f"'python -m jimunet train' (10 epochs, about 7 minutes), or start with "
                         f"'jimunet serve --quick' (1 epoch, a minute or two), or pass MODEL.npz")
    return found


__all__ = ["DigitApp", "Server", "make_server", "run", "choose_model", "newest_run_model", "ServeError",
           "ApiError", "MAX_BODY", "MAX_PIXELS", "COMPUTE_LOCK"]
