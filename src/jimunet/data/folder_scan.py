"""Listing an image folder and reading its files' headers: the scan behind ``folder.ImageFolder``.

The policy it implements (which files count, the errors, the held-out test split, the default
size and colour) is stated in ``jimunet.data.folder``'s docstring.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from collections import Counter
from typing import NamedTuple

import numpy as np

from .images import IMAGE_EXTENSIONS, MAX_IMAGE_PIXELS, ImageTooLarge

__all__ = ["Scan", "scan_folder", "require_pillow", "check_pixels", "reason", "DEFAULT_TEST_FRACTION"]

DEFAULT_TEST_FRACTION = 0.2
_GRAY_MODES = ("1", "L", "LA", "La", "I", "F")  # and every "I;16..." mode
_SHOWN = 5  # bad files named in one error message


def require_pillow():
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise ImportError('reading image folders needs Pillow: pip install pillow (in a checkout: pip install -e ".[image]")') from None
    return Image, ImageOps


# ----------------------------------------------------------------------------- listing the folder

def _hidden(name: str) -> bool:
    return name.startswith(".")


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _not_image(name: str, tally: Counter) -> None:
    tally["not images"] += 1
    tally["ext " + (os.path.splitext(name)[1].lower() or "(none)")] += 1


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
            elif _is_image_name(e.name) and e.is_file():
                found.append(e.path)
            else:
                _not_image(e.name, tally)
    return sorted(found)


def _class_folders(folder: str, tally: Counter, where: str) -> list[str]:
    """The class folders directly in ``folder`` (hidden ones ignored); loose files are counted."""
    names = []
    for e in _entries(folder):
        if _hidden(e.name):
            tally["hidden"] += 1
        elif _is_dir(e):
            names.append(e.name)
        elif _is_image_name(e.name):
            tally[f"images directly in {where}"] += 1
        else:
            _not_image(e.name, tally)
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
        more = f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""
        raise ValueError(f"{empty[0]}: this class folder holds no images{more}; add images "
                         "or remove the folder (every class needs examples)")
    return classes


def _found(tally: Counter) -> str:
    return f" (found: {_counts(tally)})" if _counts(tally) else ""


def _counts(tally: Counter) -> str:
    """The ignored entries in words: '1 hidden, 3 not images (.csv 1, .txt 2)'."""
    exts = ", ".join(f"{k[4:]} {n}" for k, n in sorted(tally.items()) if k.startswith("ext "))
    return ", ".join(f"{n} {key}" + (f" ({exts})" if key == "not images" else "")
                     for key, n in sorted(tally.items()) if n and not key.startswith("ext "))


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
    Image, _ = require_pillow()
    with Image.open(path) as im:
        w, h = im.size
        check_pixels(w, h, path)
        # Image.getexif, not the file's: PNG's override decodes the pixels to look for EXIF behind them
        if Image.Image.getexif(im).get(0x0112) in (5, 6, 7, 8):  # turned a quarter: width and height swap
            w, h = h, w
        return h, w, im.mode


def check_pixels(w: int, h: int, path: str) -> None:
    if w * h > MAX_IMAGE_PIXELS:
        raise ImageTooLarge(f"{path}: the image is {w}x{h} ({w * h / 1e6:.1f} megapixels); at most "
                            f"{MAX_IMAGE_PIXELS / 1e6:.1f} megapixels are decoded (scale it down)")


def reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror.lower()
    return str(e) or "unreadable"


def _headers(files: list[str], skip_unreadable: bool, root: str, tally: Counter):
    """Sizes and modes of ``files``, and which files could be read; bad files raise or are counted."""
    Image, _ = require_pillow()
    sizes, modes, ok, bad = [], [], np.ones(len(files), bool), []
    with warnings.catch_warnings():  # Pillow warns of sizes that check_pixels refuses anyway
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        for i, path in enumerate(files):
            try:
                h, w, mode = _header(path)
            except Exception as e:  # Pillow raises UnidentifiedImageError, OSError, SyntaxError, ...
                ok[i] = False
                bad.append(f"{path} ({reason(e)})")
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

class Scan(NamedTuple):
    """A scanned folder: every readable image (both splits), its label and split, the decided size and colour."""

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


def scan_folder(path, size, color, test_fraction, skip_unreadable) -> Scan:
    """List ``path``, read every header, check the arguments and decide size and colour (``ImageFolder``'s)."""
    require_pillow()
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
    return Scan(root, classes, files, labels, is_test, size, channels, tuple(notes))


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
