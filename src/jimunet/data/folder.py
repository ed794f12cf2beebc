"""Your own images as a data set: a folder of class folders, decoded lazily with Pillow.

Layouts: ``DIR/<class>/*.png|jpg|...`` (a test split is held out, below) or ``DIR/train/<class>/``
+ ``DIR/test/<class>/`` (both must hold the same class folders). Class names are the class
folders' names in sorted (code-point) order; a label is the index of its class in that order.

The policy, the same for every file:

* **Which files.** Images by extension (``IMAGE_EXTENSIONS``, any case), in a class folder or any
  folder below it. Other files are ignored and counted in ``notes``; hidden files and folders
  (name starting with ``.``, e.g. ``.DS_Store`` or macOS's ``._x.jpg``) are ignored. Symbolic
  links to files and folders are followed; a link back to a folder above it (a loop) and a second
  link to a folder already listed are skipped and counted, as are broken links. Images directly in
  ``DIR`` (in no class folder) are ignored and counted.
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
* **Size** ``(H, W)``: ``size=`` or, by default, the most common size among the headers (EXIF
  orientation applied; on a tie the first in file order). Another size is scaled so that it
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

import hashlib
import os
import threading
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

from .images import IMAGE_EXTENSIONS, MAX_IMAGE_PIXELS, ImageTooLarge, _scaled_gray, _white_level

__all__ = ["ImageFolder", "load_folder", "Splits", "DEFAULT_TEST_FRACTION"]

DEFAULT_TEST_FRACTION = 0.2
_GRAY_MODES = ("1", "L", "LA", "La", "I", "F")  # and every "I;16..." mode
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_WHITE = (255, 255, 255, 255)  # what transparency is composited on
_SHOWN = 5  # bad files named in one error message


class Splits(NamedTuple):
    """Stand-in for the data layer's ``Splits`` (same fields) until it lands on main."""

    train: object
    test: object
    class_names: tuple
    image_shape: tuple
    source: str
    name: str


def _require_pillow():
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise ImportError('reading image folders needs Pillow: pip install "jimunet[image]"') from None
    return Image, ImageOps


# ----------------------------------------------------------------------------- listing the folder

def _hidden(name: str) -> bool:
    return name.startswith(".")


def _entries(folder: str):
    """The folder's entries sorted by name; a folder that cannot be listed is a one-line error."""
    try:
        with os.scandir(folder) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as e:
        raise ValueError(f"{folder}: cannot list this folder ({e.strerror or e})") from None


def _is_dir(entry) -> bool:
    try:
        return entry.is_dir()  # follows links
    except OSError:
        return False


def _walk_images(class_dir: str, tally: Counter) -> list[str]:
    """Every image file below ``class_dir`` (links followed, loops cut), sorted by path."""
    found, visited = [], {os.path.realpath(class_dir)}
    stack = [(class_dir, (os.path.realpath(class_dir),))]
    while stack:
        folder, ancestors = stack.pop()
        for e in _entries(folder):
            if _hidden(e.name):
                tally["hidden"] += 1
            elif _is_dir(e):
                real = os.path.realpath(e.path)
                inside = os.path.join(real, "")
                if any(a == real or a.startswith(inside) for a in ancestors):  # it holds this folder
                    tally["link loops"] += 1
                elif real in visited:
                    tally["folders linked twice"] += 1
                else:
                    visited.add(real)
                    stack.append((e.path, ancestors + (real,)))
            elif e.is_symlink() and not os.path.exists(e.path):
                tally["broken links"] += 1
            elif os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS and e.is_file():
                found.append(e.path)
            else:
                tally["not images"] += 1
                tally["ext " + (os.path.splitext(e.name)[1].lower() or "(none)")] += 1
    return sorted(found)


def _class_folders(folder: str, tally: Counter, where: str) -> list[str]:
    """The class folders directly in ``folder`` (hidden ones ignored); loose files are counted."""
    names = []
    for e in _entries(folder):
        if _hidden(e.name):
            tally["hidden"] += 1
        elif _is_dir(e):
            names.append(e.name)
        elif os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS:
            tally[f"images directly in {where}"] += 1
        else:
            tally["not images"] += 1
            tally["ext " + (os.path.splitext(e.name)[1].lower() or "(none)")] += 1
    return names


def _list_classes(folder: str, tally: Counter) -> dict[str, list[str]]:
    """{class name: its image files} for one layout level; empty classes are an error."""
    names = _class_folders(folder, tally, folder)
    if not names:
        raise ValueError(f"{folder}: no class folders found; expected images in {os.path.join(folder, '<class>')}"
                         f"{os.sep} (one folder per class){_found(tally)}")
    classes = {name: _walk_images(os.path.join(folder, name), tally) for name in names}
    empty = [os.path.join(folder, n) for n, files in classes.items() if not files]
    if len(empty) == len(classes):
        raise ValueError(f"{folder}: no images found (extensions {', '.join(IMAGE_EXTENSIONS)}){_found(tally)}")
    if empty:
        raise ValueError(f"{empty[0]}: this class folder holds no images{_and_more(empty)}; add images "
                         "or remove the folder (every class needs examples)")
    return classes


def _found(tally: Counter) -> str:
    counts = _counts(tally)
    return f" (found: {counts})" if counts else ""


def _counts(tally: Counter) -> str:
    """The ignored entries in words: '3 not images (.txt 2, .csv 1), 1 hidden'."""
    exts = ", ".join(f"{k[4:]} {n}" for k, n in sorted(tally.items()) if k.startswith("ext "))
    parts = []
    for key, n in sorted(tally.items()):
        if key.startswith("ext ") or not n:
            continue
        parts.append(f"{n} {key}" + (f" ({exts})" if key == "not images" and exts else ""))
    return ", ".join(parts)


def _and_more(items) -> str:
    return f" (and {len(items) - 1} more)" if len(items) > 1 else ""


def _check_root(path) -> str:
    root = os.path.abspath(os.fspath(path))
    if not os.path.exists(root):
        raise FileNotFoundError(f"no such folder: {root}")
    if not os.path.isdir(root):
        raise ValueError(f"{root}: is a file; expected a folder of class folders ({os.path.join(root, '<class>')}"
                         f"{os.sep}*.png|jpg)")
    return root


# ----------------------------------------------------------------------------- headers

def _header(path: str):
    """(height, width, mode) as displayed (EXIF orientation applied), from the header alone."""
    Image, _ = _require_pillow()
    with Image.open(path) as im:
        w, h = im.size
        _check_pixels(w, h, path)
        if im.getexif().get(0x0112) in (5, 6, 7, 8):  # turned a quarter: width and height swap
            w, h = h, w
        return h, w, im.mode


def _check_pixels(w: int, h: int, path: str) -> None:
    if w * h > MAX_IMAGE_PIXELS:
        raise ImageTooLarge(f"{path}: the image is {w}x{h} ({w * h / 1e6:.1f} megapixels); at most "
                            f"{MAX_IMAGE_PIXELS / 1e6:.1f} megapixels are decoded (scale it down)")


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror.lower()
    return str(e) or "unreadable"


def _headers(files: list[str], skip_unreadable: bool, root: str, tally: Counter):
    """Sizes and modes of ``files``, and which files could be read; bad files raise or are counted."""
    Image, _ = _require_pillow()
    sizes, modes, ok, bad = [], [], np.ones(len(files), bool), []
    with warnings.catch_warnings():  # Pillow warns of sizes that _check_pixels refuses anyway
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        for i, path in enumerate(files):
            try:
                h, w, mode = _header(path)
            except Exception as e:  # Pillow raises UnidentifiedImageError, OSError, SyntaxError, ...
                ok[i] = False
                bad.append(f"{path} ({_reason(e)})")
                continue
            sizes.append((h, w))
            modes.append(mode)
    if bad and not skip_unreadable:
        shown = "; ".join(bad[:_SHOWN]) + (f"; and {len(bad) - _SHOWN} more" if len(bad) > _SHOWN else "")
        raise ValueError(f"{root}: {len(bad)} file(s) are not readable images: {shown}. Remove or fix them, "
                         "or pass skip_unreadable=True to leave them out")
    if bad:
        tally["unreadable images left out"] += len(bad)
    return sizes, modes, ok


# ----------------------------------------------------------------------------- the scan

class _Scan(NamedTuple):
    root: str
    classes: tuple
    files: list
    labels: np.ndarray
    is_test: np.ndarray
    size: tuple
    channels: int
    notes: tuple


def _is_test(root: str, files: list[str], fraction: float) -> np.ndarray:
    """The hold-out rule: SHA-256 of the path relative to ``root``, as a fraction, below ``fraction``."""
    def u(path):
        rel = path[len(root):].lstrip(os.sep).replace(os.sep, "/")  # every path starts with root
        digest = hashlib.sha256(rel.encode("utf-8", "surrogateescape")).digest()
        return int.from_bytes(digest[:8], "big") / 2.0 ** 64
    return np.array([u(p) < fraction for p in files], bool)


def _layout(root: str, test_fraction, tally: Counter):
    """(class names, files, labels, is_test) of either layout."""
    names = {e.name for e in _entries(root) if _is_dir(e)}
    if "train" in names and "test" in names:
        if test_fraction is not None:
            raise ValueError(f"{root}: has its own train/ and test/ folders; test_fraction applies only to "
                             "a folder of class folders")
        parts = {}
        for split in ("train", "test"):
            parts[split] = _list_classes(os.path.join(root, split), tally)
        only = [f"only in {s}: {', '.join(sorted(set(parts[s]) - set(parts[t])))}"
                for s, t in (("train", "test"), ("test", "train")) if set(parts[s]) - set(parts[t])]
        if only:
            raise ValueError(f"{root}: train/ and test/ must hold the same class folders; {'; '.join(only)}")
        for other in sorted(names - {"train", "test"}):
            if not _hidden(other):
                tally[f"folders besides train/ and test/ ({other})"] += 1
        classes = tuple(sorted(parts["train"]))
        files, labels, is_test = [], [], []
        for split in ("train", "test"):
            for k, c in enumerate(classes):
                files += parts[split][c]
                labels += [k] * len(parts[split][c])
                is_test += [split == "test"] * len(parts[split][c])
        return classes, files, np.array(labels, np.int64), np.array(is_test, bool)
    if ("train" in names) != ("test" in names):
        have, lack = ("train", "test") if "train" in names else ("test", "train")
        raise ValueError(f"{root}: has a {have}/ folder but no {lack}/ folder; give both "
                         f"({have}/<class>/ and {lack}/<class>/), or put the class folders directly in it")
    fraction = DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction
    per_class = _list_classes(root, tally)
    classes = tuple(sorted(per_class))
    files = [f for c in classes for f in per_class[c]]
    labels = np.repeat(np.arange(len(classes), dtype=np.int64), [len(per_class[c]) for c in classes])
    return classes, files, labels, _is_test(root, files, fraction)


def _check_fraction(test_fraction):
    if test_fraction is None:
        return None
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) \
            or not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be a number strictly between 0 and 1, got {test_fraction!r}")
    return float(test_fraction)


def _scan(path, size, color, test_fraction, skip_unreadable) -> _Scan:
    _require_pillow()
    root = _check_root(path)
    size, channels = _check_size(size), _check_color(color)
    tally = Counter()
    classes, files, labels, is_test = _layout(root, _check_fraction(test_fraction), tally)
    sizes, modes, ok = _headers(files, skip_unreadable, root, tally)
    files = [f for f, keep in zip(files, ok) if keep]
    labels, is_test = labels[ok], is_test[ok]
    if not files:
        raise ValueError(f"{root}: no readable images{_found(tally)}")
    if len(classes) < 2 or len(np.unique(labels)) < 2:
        raise ValueError(f"{root}: a classifier needs at least 2 classes (class folders); found "
                         f"{len(np.unique(labels))} with images: {', '.join(classes[k] for k in np.unique(labels))}")
    if size is None:
        size = Counter(sizes).most_common(1)[0][0]  # ties: the first in file order
    if channels is None:
        channels = 1 if all(m in _GRAY_MODES or m.startswith("I;16") for m in modes) else 3
    notes = [f"ignored: {_counts(tally)}"] if _counts(tally) else []
    for k, c in enumerate(classes):
        if not np.any((labels == k) & ~is_test):
            notes.append(f"class {c!r} has no training images")
    return _Scan(root, classes, files, labels, is_test, size, channels, tuple(notes))


def _check_size(size):
    if size is None:
        return None
    hw = (size, size) if isinstance(size, (int, np.integer)) and not isinstance(size, bool) else size
    try:
        h, w = (int(v) for v in hw)
        valid = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in hw)
    except (TypeError, ValueError):
        valid = False
    if not valid or h < 1 or w < 1 or h * w > MAX_IMAGE_PIXELS:
        raise ValueError(f"size must be a positive int or (height, width) of at most {MAX_IMAGE_PIXELS:,} "
                         f"pixels, got {size!r}")
    return h, w


def _check_color(color):
    if color is None:
        return None
    channels = {"rgb": 3, "gray": 1, "grey": 1, "grayscale": 1}.get(str(color).lower())
    if channels is None:
        raise ValueError(f'color must be "rgb", "gray" or None (decided from the files), got {color!r}')
    return channels


# ----------------------------------------------------------------------------- decoding

def _decode(path: str, size: tuple, channels: int) -> np.ndarray:
    """One file as uint8 ``(H, W, C)`` by the module's policy; any failure names the file."""
    Image, _ = _require_pillow()
    try:
        # No warnings.catch_warnings here: it is not thread-safe. A file over Pillow's warning
        # size (89 MP) was refused at the scan; one that grew since then warns, then is refused.
        with Image.open(path) as im:
            _check_pixels(*im.size, path)
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
        raise ValueError(f"{path}: cannot decode this image ({_reason(e)})") from None


def _pixels(im, size: tuple, channels: int, white: float, path: str) -> np.ndarray:
    """A loaded image turned upright, made L or RGB, and fitted to ``size``."""
    Image, ImageOps = _require_pillow()
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
        self._setup(_scan(path, size, color, test_fraction, skip_unreadable), split, workers)

    @classmethod
    def _from_scan(cls, scan: _Scan, split, workers) -> ImageFolder:
        ds = cls.__new__(cls)
        ds._setup(scan, split, workers)
        return ds

    def _setup(self, scan: _Scan, split, workers):
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
    scan = _scan(path, size, color, test_fraction, skip_unreadable)
    train, test = (ImageFolder._from_scan(scan, s, workers) for s in ("train", "test"))
    return Splits(train, test, scan.classes, train.image_shape, scan.root, "folder")
