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

import io
import json
import os
import random
import threading

import numpy as np

from .. import data, datasets
from ..data.images import ImageTooLarge, as_pixels, digit_from_bytes, preprocess
from ..layers import Conv2D, ReLU
from ..layers.memory import check_network_activations
from ..model import load
from ..serialization import CheckpointError
from . import serve_grads
from .backward import BackwardUnsupported
from .explain import walk
from .inspect import conv_blocks, trace
from .multipart import ApiError, first_file_part
from .modelinfo import model_info
from .picture import picture_size, scale
from .pictures import as_model_pixels, picture_pixels
from .recipes import MNISTConfig
from .training import train_mnist

MAX_PIXELS = 4096 * 4096          # pixels of one decoded picture (checked from its header)
INPUT_SHAPE = (28, 28, 1)
NUM_CLASSES = 10

COMPUTE_LOCK = threading.Lock()   # see the module docstring: one jimunet computation at a time
# A picture near MAX_PIXELS takes up to about 100 MB while it is decoded (jimunet.data.images):
# only a couple at a time, so a burst of large uploads stays near 200 MB.
DECODE_SLOTS = threading.BoundedSemaphore(2)


class ServeError(Exception):
    """A problem the user can fix (no model, a port in use, a model that does not fit)."""


# -- the application: model, data, answers ------------------------------------------------

def _rounded(a, digits=4):
    """Nested lists of floats, rounded so the JSON stays short."""
    return np.round(np.asarray(a, dtype=np.float64), digits).tolist()


def _block_json(rec) -> dict:
    keep = ("index", "name", "kind", "input_shape", "output_shape", "params", "flops", "min", "max", "mean",
            "zero_fraction", "details")
    return {k: rec[k] for k in keep}


def _check_servable(model, model_path, shape=INPUT_SHAPE, classes=NUM_CLASSES) -> None:
    """``ServeError`` unless ``model`` takes one ``shape`` image and gives one output of ``classes``
    scores, as the page's every request needs (checked by running it once, as ``predict`` and the
    page do)."""
    hw = "x".join(map(str, shape))
    try:
        out = model.output_shape(shape)
    except (ValueError, AttributeError, TypeError) as e:
        raise ServeError(f"{model_path}: the model cannot take {hw} images ({e})") from None
    if isinstance(out, list):
        raise ServeError(f"{model_path}: the model has {len(out)} outputs; serve needs a model with one output "
                         f"of {classes} class scores")
    if tuple(out) != (classes,):
        raise ServeError(f"{model_path}: the model's output has shape {tuple(out)}; serve needs {classes} class "
                         f"scores")
    try:
        with COMPUTE_LOCK:
            walk(model, np.zeros(shape, np.uint8))
            y = model.predict(preprocess(np.zeros((2, *shape), np.uint8)), batch_size=1)
    except (ValueError, TypeError, ArithmeticError, MemoryError) as e:
        raise ServeError(f"{model_path}: the model does not run on a {hw} image ({str(e)[:300]})") from None
    if not hasattr(y, "shape") or tuple(y.shape) != (2, classes):
        raise ServeError(f"{model_path}: the model gives {getattr(y, 'shape', type(y).__name__)} for two images; "
                         f"serve needs {classes} class scores per image")


class _Walked(list):
    """Per-block records with ``probabilities`` and ``outputs``, as ``walk`` gives them."""

    probabilities = None
    outputs: list = []


class DigitApp:
    """What the server answers, independent of HTTP (so it is testable without sockets).

    A digit model (28×28×1, classes 0..9: ``model_info``) gets MNIST's preprocessing and test
    images; any other model gets pictures as ``jimunet.app.pictures`` reads them and
    its data set's test images when they can be loaded.

    Args:
        model: a ``Sequential`` (or ``jn.Model``) taking images of its input shape and giving one
            score per class.
        model_path: how to name the model on the page.
        data_dir, download: where ``load_mnist`` finds (or fetches) MNIST for the test images.
        test_set: ``(x, y)`` test images (uint8 ``(N, 28, 28, 1)``) instead of MNIST's.
    """

    def __init__(self, model, model_path: str = "(in memory)", data_dir=None, download: bool = True,
                 test_set=None):
        try:
            self.model_info = model_info(model)
        except ValueError as e:  # metadata that cannot be right (ModelInfoError)
            raise ServeError(f"{model_path}: {e}") from None
        self.shape = tuple(self.model_info.input_shape)
        self.class_names = list(self.model_info.class_names)
        _check_servable(model, model_path, self.shape, len(self.class_names))
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
            model = load(path)
            # bounds one image's activations before anything runs (old files: 28x28x1)
            check_network_activations(model, model_info(model).input_shape)
        except (CheckpointError, OSError, ValueError) as e:
            raise ServeError(f"{path}: cannot load the model ({e})") from None
        return cls(model, model_path=str(path), **kw)

    # GET /api/model
    def info(self) -> dict:
        if self._info is None:
            with COMPUTE_LOCK:
                rec = walk(self.model, np.zeros(self.shape, np.uint8))  # shapes and sizes only
            summary = self.model.summary(self.shape)
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
                "input_shape": list(self.shape), "class_names": self.class_names,
                "digit_model": bool(self.model_info.is_digit_model),
                "dataset": dict(self.model_info.dataset or {}),
                "backward": hasattr(self.model, "layers") and not hasattr(self.model, "graph_steps"),
            }
        return self._info

    # POST /api/predict
    def predict(self, pixels, activations: bool = False) -> dict:
        """Answer for one image of pixels of the model's input shape (0..255; for a digit model
        MNIST-style, white on black). ``predicted`` is the class index; ``top`` is the same
        number, kept for clients written before ``predicted`` (deprecated: its name suggests
        a list)."""
        if self.model_info.is_digit_model:
            with COMPUTE_LOCK:
                res = walk(self.model, pixels)
            scaling = "(pixels - 127.5) / 255"
        else:
            res, scaling = self._walk_scaled(pixels), "(pixels - mean) / std per channel"
        probs = np.asarray(res.probabilities, dtype=np.float64)
        px = np.asarray(pixels)
        top = int(np.argmax(probs))
        answer = {"predicted": top, "predicted_name": self.class_names[top], "top": top,
                  "probabilities": _rounded(probs, 6), "class_names": self.class_names,
                  "input": {"pixels": _rounded(px[..., 0] if px.shape[-1] == 1 else px, 1), "scaling": scaling},
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

    def _walk_scaled(self, pixels):
        """What ``walk`` gives, for a model that is not a digit model (its own scaling)."""
        x = scale(pixels, self.model_info)
        with COMPUTE_LOCK:
            outs = [np.array(o)[0] for o in trace(self.model, x[None].astype(np.float32))]
        res = _Walked()
        for rec, y in zip(self.info()["blocks"], outs):
            zero = float((y == 0).mean()) if rec["kind"] == ReLU.__name__ else None
            res.append(dict(rec, min=float(y.min()), max=float(y.max()), mean=float(y.mean()), zero_fraction=zero))
        logits = outs[-1].astype(np.float64)
        e = np.exp(logits - logits.max())
        res.probabilities, res.outputs = e / e.sum(), outs
        return res

    # POST /api/backward, /api/gradcheck, /api/step
    def gradients(self, kind: str, pixels, fields: dict) -> dict:
        """The backward view (``kind`` "backward"), one finite-difference check ("gradcheck") or
        SGD steps ("step") for one image; ``fields`` as ``jimunet.app.serve_grads`` reads them."""
        x = scale(pixels, self.model_info)
        try:
            with COMPUTE_LOCK:
                default = int(np.argmax(self.model.predict(x[None], batch_size=1)[0]))
                target = serve_grads.check_target(fields, len(self.class_names), default)
                if kind == "gradcheck":
                    return serve_grads.gradcheck_json(self.model, x, target, fields)
                if kind == "step":
                    return serve_grads.step_json(self.model, x, pixels, target, self.class_names, fields)
                m, lrs, _, moves = serve_grads.stepped(self.model, x, target, fields)
                return serve_grads.view_json(m, x, pixels, target, self.class_names, len(lrs), lrs, moves)
        except BackwardUnsupported as e:
            raise ApiError(422, str(e)) from None
        except ValueError as e:
            raise ApiError(400, str(e)) from None

    def request_input(self, body: bytes, content_type: str, query=None) -> tuple:
        """``(pixels, fields)`` of a request: a picture body with the fields in the URL query, or
        JSON ``{"pixels": ..., "target": k, ...}``; ``ApiError`` if unusable."""
        ctype = (content_type or "").split(";")[0].strip().lower()
        if ctype == "application/json":
            pixels, _, doc = self._pixels_from_json(body)
            return pixels, {k: doc[k] for k in serve_grads.FIELDS if doc.get(k) is not None}
        pixels, _ = self.pixels_from_request(body, content_type)
        try:
            return pixels, serve_grads.fields_from_query(query or {})
        except ValueError as e:
            raise ApiError(400, str(e)) from None

    def pixels_from_request(self, body: bytes, content_type: str) -> tuple:
        """``(pixels, activations_flag_or_None)`` from a request body; ``ApiError`` if unusable."""
        ctype = (content_type or "").split(";")[0].strip().lower()
        if ctype == "application/json":
            return self._pixels_from_json(body)[:2]
        if ctype == "multipart/form-data":
            body = first_file_part(body, content_type)
            ctype = "image/*"
        if ctype.startswith("image/") or ctype == "application/octet-stream":
            if not body:
                raise ApiError(400, "the request body is empty; send a PNG or JPEG picture of one digit")
            try:
                with DECODE_SLOTS:
                    if not self.model_info.is_digit_model:
                        picture_size(body, "the uploaded image", MAX_PIXELS)
                        return picture_pixels(io.BytesIO(body), self.model_info, "the uploaded image"), None
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
            if self.model_info.is_digit_model:
                raise ApiError(400, 'expected a JSON object {"pixels": 28x28 array of 0..255 (white digit on black), '
                                    '"activations": true|false}')
            raise ApiError(400, f'expected a JSON object {{"pixels": {"x".join(map(str, self.shape))} array of '
                                f'0..255, "activations": true|false}}')
        flag = doc.get("activations")
        if flag is not None and not isinstance(flag, bool):
            raise ApiError(400, f'"activations" must be true or false, got {flag!r}')
        try:
            arr = np.asarray(doc["pixels"])
        except (ValueError, TypeError, RecursionError) as e:
            raise ApiError(400, f'"pixels" is not a rectangular array of numbers ({str(e)[:120]})') from None
        if arr.dtype == object:
            raise ApiError(400, '"pixels" is not a rectangular array of numbers')
        if not self.model_info.is_digit_model:
            try:
                x = as_model_pixels(arr, self.model_info, '"pixels"')
                if len(x) != 1:
                    raise ValueError(f'"pixels" holds {len(x)} images; send one image per request')
                return x[0], flag, doc
            except ValueError as e:
                raise ApiError(400, str(e)) from None
        try:
            x = as_pixels(arr, name='"pixels"')
        except ValueError as e:
            raise ApiError(400, str(e)) from None
        if len(x) != 1:
            raise ApiError(400, f'"pixels" holds {len(x)} images; send one 28x28 image per request')
        return x[0], flag, doc

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

    # GET /api/testimage?index=I: a test image of a non-digit model's data set
    def _dataset_test(self):
        with self._data_lock:
            if self._test_set is None and self._data_error is None:
                ds = dict(self.model_info.dataset or {})
                name = ds.get("path") if ds.get("name") == "folder" else ds.get("name")
                loader = getattr(data, "load", None)
                try:
                    if not name or loader is None:
                        raise ValueError("the model's file names no data set" if not name else
                                         "this jimunet cannot load data sets by name")
                    self._test_set = loader(name, root=self.data_dir, download=self.download, progress=False).test
                except Exception as e:  # the loaders' own errors (missing files, no network, ...)
                    self._data_error = (f"the test images of the model's data set ({name or 'unknown'}) are not "
                                        f"available ({str(e).strip()[:300]}). Upload or drop a picture instead.")
            if self._data_error is not None:
                raise ApiError(503, self._data_error)
            return self._test_set

    def dataset_image(self, index: int) -> dict:
        """Test image ``index`` of the model's data set (MNIST's for a digit model)."""
        if self.model_info.is_digit_model:
            doc = self.test_image(index)
            return dict(doc, class_name=self.class_names[doc["label"]], pixels=doc["pixels"])
        ds = self._dataset_test()
        if isinstance(ds, tuple):  # (x, y) arrays given to the constructor
            x, y = ds
            n, get = len(x), (lambda i: (x[i], y[i]))
        else:
            n, get = len(ds), (lambda i: ds[i])
        if not -n <= index < n:
            raise ApiError(400, f"index must be in 0..{n - 1}, got {index}")
        index %= n
        img, label = get(index)
        img = np.asarray(img)
        if img.shape != self.shape:
            raise ApiError(503, f"the data set's images have shape {img.shape}; the model takes {self.shape}")
        px = img[..., 0] if self.shape[-1] == 1 else img
        return {"index": index, "label": int(label), "class_name": self.class_names[int(label)], "count": n,
                "pixels": np.asarray(px).tolist()}

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