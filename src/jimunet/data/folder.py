"""Your own images as a data set: a folder of class folders, decoded lazily with Pillow.

Layouts: ``DIR/<class>/*.png|jpg|...`` (a test split is held out, below) or ``DIR/train/<class>/``
+ ``DIR/test/<class>/`` (both must hold the same class folders). Class names are the class
folders' names in sorted (code-point) order; a label is the index of its class in that order.

The policy, the same for every file:

* **Which files.** Images by extension (``IMAGE_EXTENSIONS``, any case), in a class folder or any
  folder below it. Other files are ignored and counted in ``notes``; hidden files and folders
  (name starting with ``.``, e.g. ``.DS_Store`` or macOS's ``._x.jpg``) are ignored. Symbolic
  links to files and folders are followed; a link back to a folder above it (a loop) and a second
  link to a folder already listed for that class are skipped and counted, as are broken links.
  Images directly in ``DIR`` (in no class folder) are ignored and counted.
* **Errors.** A path that is missing or a file, no class folders, an empty class folder, a single
  class, different classes in train/ and test/: a one-line error. The scan at construction reads
  every file's header only (``Image.open``, no pixels); a file whose header cannot be read (not an
  image, truncated header, unreadable, over ``MAX_IMAGE_PIXELS``) is an error listing such files,
  or with ``skip_unreadable=True`` is left out and counted. A file that fails later, while its
  pixels are decoded, raises an error naming it. Files are only ever read, never changed.
* **Held-out test split** (``DIR/<class>/`` layout): a file is a test image when the SHA-256 of
  its path relative to ``DIR`` (``cat/0001.jpg``), read as a number in [0, 1), is below
  ``test_fraction`` (default 0.2). Each file's split depends only on its own path: adding,
  removing or renaming other files never moves it. Per class the share is ``test_fraction`` on
  average (a tiny class may get no test image; a note says when one gets no training image).
* **Size** ``(H, W)``: ``size=`` or, by default, the most common size among the headers (turned
  by an EXIF orientation found in the header; on a tie the first in file order). Another size is scaled so that it
  covers (H, W), then centre-cropped (``ImageOps.fit``, bicubic, antialiased when shrinking); a
  JPEG at least twice as large is first decoded at 1/2, 1/4 or 1/8 scale by libjpeg.
* **Colour**: ``color="rgb"`` (3 channels) or ``"gray"`` (1), by default RGB when any header is
  colour (palette images count as colour), else gray. Colour becomes gray by Pillow's ITU-R 601-2
  luma; gray becomes RGB by repeating it. Transparency (RGBA, LA, palette or grey with a
  transparent colour) is composited on white; 16-bit and 32-bit grey are scaled by their white
  level (65535 → 255, rounded), palettes converted, the EXIF orientation applied.

Example:
    >>> from jimunet.data.folder import load_folder           # doctest: +SKIP
    >>> splits = load_folder("photos")                         # doctest: +SKIP
    >>> splits.class_names, splits.image_shape                 # doctest: +SKIP
    (('cat', 'dog'), (64, 64, 3))
    >>> x, y = splits.train.get_batch(range(32))               # doctest: +SKIP
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .dataset import Splits
from .folder_scan import DEFAULT_TEST_FRACTION, Scan, check_pixels, reason, require_pillow, scan_folder
from .images import _scaled_gray, _white_level

__all__ = ["ImageFolder", "load_folder", "DEFAULT_TEST_FRACTION"]

_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_WHITE = (255, 255, 255, 255)  # what transparency is composited on


# ----------------------------------------------------------------------------- decoding

def _decode(path: str, size: tuple, channels: int) -> np.ndarray:
    """One file as uint8 ``(H, W, C)`` by the module's policy; any failure names the file."""
    Image, _ = require_pillow()
    try:
        # No warnings.catch_warnings here: it is not thread-safe. A file over Pillow's warning
        # size (89 MP) was refused at the scan; one that grew since then warns, then is refused.
        with Image.open(path) as im:
            check_pixels(*im.size, path)
            white = _white_level(im)  # from the decoder's tile: before load
            if im.format == "JPEG":
                need = max(size)  # what the shorter side must cover, whichever way the file is turned
                if min(im.size) >= 2 * need:
                    scale = need / min(im.size)
                    im.draft(im.mode, (int(np.ceil(im.size[0] * scale)), int(np.ceil(im.size[1] * scale))))
            im.load()
            return _pixels(im, size, channels, white, path)
    except ImportError:
        raise
    except Exception as e:  # Pillow raises UnidentifiedImageError, OSError, SyntaxError, ...
        message = str(e)
        if message.startswith(path):
            raise ValueError(message) from None
        raise ValueError(f"{path}: cannot decode this image ({reason(e)})") from None


def _pixels(im, size: tuple, channels: int, white: float, path: str) -> np.ndarray:
    """A loaded image turned upright, made L or RGB, and fitted to ``size``."""
    Image, ImageOps = require_pillow()
    if im.getexif().get(0x0112) in range(2, 9):  # after load: a PNG may keep its EXIF after the pixels
        im = ImageOps.exif_transpose(im)
    mode = im.mode
    if mode in ("I", "F") or mode.startswith("I;16"):
        a = np.asarray(im, np.float64)
        if not np.isfinite(a).all():
            raise ValueError(f"{path}: contains NaN or infinite pixel values")
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        gray = _scaled_gray(a, lo, hi, mode, white, path)
        im = Image.fromarray(np.clip(np.rint(gray), 0, 255).astype(np.uint8))
    elif mode in _ALPHA_MODES or "transparency" in im.info:
        im = Image.alpha_composite(Image.new("RGBA", im.size, _WHITE), im.convert("RGBA"))
    target = "RGB" if channels == 3 else "L"
    if im.mode != target:
        im = im.convert(target)
    h, w = size
    if im.size != (w, h):
        im = ImageOps.fit(im, (w, h), method=Image.Resampling.BICUBIC)
    return np.asarray(im).reshape(h, w, channels)


# ----------------------------------------------------------------------------- the data set

class ImageFolder:
    """A folder of images as a ``Dataset``: ``len``, ``ds[i]``, ``get_batch``, class names, shape.

    The scan at construction lists the files and reads their headers; pixels are decoded only in
    ``ds[i]`` and ``get_batch`` (a pool of ``workers`` threads: Pillow decodes outside the GIL),
    so a folder larger than memory trains. The layout, size, colour and malformed-folder policy
    are the module's (``jimunet.data.folder``).

    Args:
        path: the folder.
        size: ``(H, W)`` or one int for square; default the most common size of the files.
        color: ``"rgb"`` or ``"gray"``; default RGB when any file is colour.
        split: ``"train"``, ``"test"`` or None (every image).
        test_fraction: share held out as test in the ``DIR/<class>/`` layout (default 0.2).
        skip_unreadable: leave out files whose header cannot be read (counted in ``notes``)
            instead of raising.
        workers: decoding threads (default ``min(8, cpu count)``).

    Attributes: ``class_names``, ``image_shape`` (H, W, C), ``files``, ``labels`` (int64),
    ``root``, ``split``, ``notes`` (what was ignored, in words).

    Example:
        >>> ds = ImageFolder("photos", split="train")             # doctest: +SKIP
        >>> x, y = ds.get_batch([0, 1, 2]); x.shape, x.dtype     # doctest: +SKIP
        ((3, 64, 64, 3), dtype('uint8'))
    """

    def __init__(self, path, *, size=None, color=None, split=None, test_fraction=None,
                 skip_unreadable: bool = False, workers=None):
        self._setup(scan_folder(path, size, color, test_fraction, skip_unreadable), split, workers)

    @classmethod
    def _from_scan(cls, scan: Scan, split, workers) -> ImageFolder:
        ds = cls.__new__(cls)
        ds._setup(scan, split, workers)
        return ds

    def _setup(self, scan: Scan, split, workers):
        if split not in (None, "train", "test"):
            raise ValueError(f'split must be "train", "test" or None (every image), got {split!r}')
        if workers is None:
            workers = min(8, os.cpu_count() or 1)
        if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
            raise ValueError(f"workers must be a positive int, got {workers!r}")
        keep = np.ones(len(scan.files), bool) if split is None else scan.is_test == (split == "test")
        self.root, self.split, self.notes = scan.root, split, scan.notes
        self.class_names = scan.classes
        self.image_shape = (*scan.size, scan.channels)
        self.files = tuple(f for f, k in zip(scan.files, keep) if k)
        self.labels = scan.labels[keep]
        self.labels.flags.writeable = False
        self.workers = int(workers)
        self._pool, self._lock = None, threading.Lock()

    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self) -> str:
        h, w, c = self.image_shape
        return (f"ImageFolder({self.root!r}, split={self.split!r}: {len(self)} images, "
                f"{len(self.class_names)} classes, {h}x{w}x{c})")

    def __getstate__(self):  # a thread pool does not travel
        state = self.__dict__.copy()
        state["_pool"] = state["_lock"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __getitem__(self, i):
        """``(image uint8 (H, W, C), label int)``; negative indices count from the end."""
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"an image folder is indexed by one int, got {type(i).__name__}; "
                            "use get_batch(indices) for several")
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images")
        i = int(i) % len(self)
        return _decode(self.files[i], self.image_shape[:2], self.image_shape[2]), int(self.labels[i])

    def get_batch(self, indices):
        """``(x uint8 (n, H, W, C), y int64 (n,))`` for ``indices``, decoded in the thread pool."""
        idx = np.asarray(indices)
        if idx.size == 0:
            idx = idx.astype(np.int64)
        if idx.ndim != 1 or idx.dtype.kind not in "iu":
            raise ValueError(f"indices must be a 1-D sequence of ints, got shape {idx.shape} dtype {idx.dtype}")
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"indices must lie in [{-len(self)}, {len(self)}), got {idx.min()}..{idx.max()}")
        idx = idx.astype(np.int64) % max(len(self), 1)
        x = np.empty((len(idx), *self.image_shape), np.uint8)
        size, channels = self.image_shape[:2], self.image_shape[2]

        def decode(part):
            for k in part:
                x[k] = _decode(self.files[idx[k]], size, channels)

        parts = [p for p in np.array_split(np.arange(len(idx)), min(self.workers, len(idx)) or 1) if len(p)]
        if len(parts) <= 1:
            for p in parts:
                decode(p)
        else:
            for _ in self._executor().map(decode, parts):  # re-raises a worker's error here
                pass
        return x, self.labels[idx]

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="jimunet-decode")
            return self._pool


def load_folder(path, *, size=None, color=None, test_fraction=None, skip_unreadable: bool = False,
                workers=None) -> Splits:
    """The train and test splits of an image folder (one scan; arguments as ``ImageFolder``).

    ``DIR/train/`` + ``DIR/test/`` give the splits; otherwise the test split is held out by the
    module's hash rule (``test_fraction``, default 0.2). Both splits share size and colour.

    Example:
        >>> splits = load_folder("photos", size=64)              # doctest: +SKIP
        >>> len(splits.train), len(splits.test), splits.image_shape   # doctest: +SKIP
        (1612, 398, (64, 64, 3))
    """
    scan = scan_folder(path, size, color, test_fraction, skip_unreadable)
    train, test = (ImageFolder._from_scan(scan, s, workers) for s in ("train", "test"))
    return Splits(train, test, scan.classes, train.image_shape, scan.root, "folder")
