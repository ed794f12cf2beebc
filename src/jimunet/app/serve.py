"""``jimunet serve``'s application: what the page's JSON API answers, independent of HTTP.

``DigitApp`` turns a drawing (a picture, as the page sends it, or MNIST-style pixels) into the
28×28 input exactly as ``jimunet predict`` does (``jimunet.data.images``), runs it through the
model block by block (``jimunet.app.explain.walk``, the code behind ``jimunet explain``) and answers
with the probabilities, the input the model saw, the feature maps of the conv blocks and each
block's shapes, im2col/GEMM sizes and FLOPs; it also serves MNIST test images and the model's
mistakes. ``choose_model`` finds the model to serve. The HTTP side (routes, limits, the page's
static files) is ``jimunet.app.server``.

Every jimunet computation in the process runs under one lock: layers keep caches and reuse
scratch buffers between calls, and the CPU worker pool of ``jimunet.parallel`` hands results
back through one shared queue, so two forwards at once (even on two copies of the model)
would mix each other's data. One image takes milliseconds, so requests simply queue.
"""
from __future__ import annotations

import json
import os
import random
import threading

import numpy as np

from .. import datasets
from ..data.images import ImageTooLarge, as_pixels, digit_from_bytes, preprocess
from ..layers import Conv2D
from ..model import load
from ..serialization import CheckpointError
from .explain import walk
from .inspect import conv_blocks
from .recipes import MNISTConfig
from .training import train_mnist

MAX_PIXELS = 4096 * 4096          # pixels of one decoded picture (checked from its header)
MAX_PARTS = 16                    # parts read from a multipart/form-data body (curl -F sends one)
MAX_PART_HEADER = 8192            # bytes of one part's headers
INPUT_SHAPE = (28, 28, 1)
NUM_CLASSES = 10

COMPUTE_LOCK = threading.Lock()   # see the module docstring: one jimunet computation at a time
# A picture near MAX_PIXELS takes up to about 100 MB while it is decoded (jimunet.data.images):
# only a couple at a time, so a burst of large uploads stays near 200 MB.
DECODE_SLOTS = threading.BoundedSemaphore(2)


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


def _check_servable(model, model_path) -> None:
    """``ServeError`` unless ``model`` takes one 28x28x1 image and gives one output of 10 scores, as
    the page's every request needs (checked by running it once, as ``predict`` and the page do)."""
    try:
        out = model.output_shape(INPUT_SHAPE)
    except (ValueError, AttributeError, TypeError) as e:
        raise ServeError(f"{model_path}: the model cannot take 28x28x1 images ({e})") from None
    if isinstance(out, list):
        raise ServeError(f"{model_path}: the model has {len(out)} outputs; serve needs a model with one output "
                         f"of 10 class scores")
    if tuple(out) != (NUM_CLASSES,):
        raise ServeError(f"{model_path}: the model's output has shape {tuple(out)}; serve needs 10 class scores")
    try:
        with COMPUTE_LOCK:
            walk(model, np.zeros(INPUT_SHAPE, np.uint8))
            y = model.predict(preprocess(np.zeros((2, *INPUT_SHAPE), np.uint8)), batch_size=1)
    except (ValueError, TypeError, ArithmeticError, MemoryError) as e:
        raise ServeError(f"{model_path}: the model does not run on a 28x28x1 image ({str(e)[:300]})") from None
    if not hasattr(y, "shape") or tuple(y.shape) != (2, NUM_CLASSES):
        raise ServeError(f"{model_path}: the model gives {getattr(y, 'shape', type(y).__name__)} for two images; "
                         f"serve needs 10 class scores per image")


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
        _check_servable(model, model_path)
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
        if not os.path.isfile(path):
            raise ServeError(f"{path}: no such model file")
        try:
            model = load(path, input_shape=INPUT_SHAPE)  # bounds one image's activations at load
        except (CheckpointError, OSError) as e:
            raise ServeError(f"{path}: cannot load the model ({e})") from None
        return cls(model, model_path=str(path), **kw)

    # GET /api/model
    def info(self) -> dict:
        if self._info is None:
            with COMPUTE_LOCK:
                rec = walk(self.model, np.zeros(INPUT_SHAPE, np.uint8))  # shapes and sizes only
            summary = self.model.summary(INPUT_SHAPE)
            convs = [layer for layer in self.model.layers if isinstance(layer, Conv2D)]
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
        except RecursionError:
            raise ApiError(400, "the body is not valid JSON (nested too deeply)") from None
        except UnicodeDecodeError:
            raise ApiError(400, "the body is not valid JSON (not UTF-8 text)") from None
        except ValueError as e:
            raise ApiError(400, f"the body is not valid JSON ({str(e)[:120]})") from None
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
                    _, self._test_set = datasets.load_mnist(root=self.data_dir, download=self.download, progress=False)
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


def _boundary(content_type: str) -> bytes:
    """The ``boundary`` parameter of a multipart Content-Type (RFC 2046: 1 to 70 characters)."""
    for param in content_type.split(";")[1:]:
        key, sep, value = param.partition("=")
        if sep and key.strip().lower() == "boundary":
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            if 1 <= len(value) <= 70 and value.isascii() and value.isprintable() and not value.endswith(" "):
                return value.encode("ascii")
            break
    raise ApiError(400, "malformed multipart/form-data: the Content-Type needs a boundary=... of 1 to 70 "
                        "characters")


def _part_content(body: bytes, start: int, end: int) -> bytes:
    """The content of the part ``body[start:end]`` (headers, a blank line, the content)."""
    if start == end:
        return b""
    if body.startswith(b"\r\n", start):  # no headers
        return body[start + 2:end]
    stop = body.find(b"\r\n\r\n", start, min(end, start + MAX_PART_HEADER))
    if stop < 0:
        raise ApiError(400, f"malformed multipart/form-data body: a part's headers do not end with a blank line "
                            f"within {MAX_PART_HEADER:,} bytes")
    for line in body[start:stop].split(b"\r\n"):
        name, _, value = line.decode("latin-1").partition(":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == "content-type" and value.startswith("multipart/"):
            raise ApiError(400, "a multipart/form-data part that is itself multipart is not accepted: send the "
                                "picture as one file part")
        if name == "content-transfer-encoding" and value not in ("binary", "8bit", "7bit"):
            raise ApiError(400, f"Content-Transfer-Encoding {value[:40]!r} is not accepted: send the file's bytes "
                                f"as they are")
    return body[stop + 4:end]


def _first_file_part(body: bytes, content_type: str) -> bytes:
    """The content of the first non-empty part of a ``multipart/form-data`` body (``curl -F
    f=@d.png`` sends one part), reading at most ``MAX_PARTS`` parts and no nested ones."""
    delim = b"--" + _boundary(content_type)
    sep = b"\r\n" + delim
    if body.startswith(delim):
        pos = len(delim)
    else:  # a preamble before the first boundary is ignored (RFC 2046)
        pos = body.find(sep)
        if pos < 0:
            raise ApiError(400, "malformed multipart/form-data body: the boundary of its Content-Type is not in it")
        pos += len(sep)
    for _ in range(MAX_PARTS):
        if body.startswith(b"--", pos):  # the closing boundary
            raise ApiError(400, "the multipart/form-data body holds no file")
        eol = body.find(b"\r\n", pos, pos + 1024)  # the rest of the boundary line (RFC 2046: blanks only)
        if eol < 0:
            raise ApiError(400, "malformed multipart/form-data body: a boundary line does not end")
        end = body.find(sep, eol + 2)
        if end < 0:
            raise ApiError(400, "malformed multipart/form-data body: a part has no closing boundary")
        data = _part_content(body, eol + 2, end)
        if data:
            return data
        pos = end + len(sep)
    raise ApiError(400, f"the multipart/form-data body has more than {MAX_PARTS} parts and none of the first "
                        f"{MAX_PARTS} holds a file; send one file")


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
        result = train_mnist(MNISTConfig(epochs=1, data_dir=data_dir, report=False))
        return os.path.join(result.run_dir, "best.npz")
    found = newest_run_model(runs_dir)
    if found is None:
        raise ServeError(f"no model given and none found in {runs_dir}{os.sep}*{os.sep}best.npz. Train one with "
                         f"'python -m jimunet train' (10 epochs, about 4 minutes on 2 recent cores), or start with "
                         f"'jimunet serve --quick' (1 epoch, a minute or two), or pass MODEL.npz")
    return found


__all__ = ["DigitApp", "choose_model", "newest_run_model", "require_pillow", "ServeError", "ApiError", "MAX_PIXELS",
           "COMPUTE_LOCK"]