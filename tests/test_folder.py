"""Image folders (``jimunet.data.folder``): layouts, the size/colour policy, malformed folders, the real JPEGs."""
from __future__ import annotations

import hashlib
import os
import pickle
import sys

import numpy as np
import pytest

from cifar_jpeg import cifar_jpeg  # noqa: F401 - a fixture
from jimunet.data import folder_scan
from jimunet.data.folder import DEFAULT_TEST_FRACTION, ImageFolder, load_folder

PIL = pytest.importorskip("PIL", reason="Pillow (the 'image' extra) is part of the test extra")
from PIL import Image, ImageOps  # noqa: E402


def rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write(path, array=None, mode=None, **save):
    """An image file at ``path`` (folders made); ``array`` defaults to 8x8 random RGB."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":  # Pillow's fromarray no longer takes this mode
        im = Image.frombytes("I;16", array.shape[::-1], array.astype("<u2").tobytes())
    else:
        im = array if isinstance(array, Image.Image) else Image.fromarray(rgb(8, 8) if array is None else array, mode)
    im.save(path, **save)
    return path


def make_classes(root, classes=("cat", "dog"), n=4, size=(8, 8), ext="png"):
    for c in classes:
        for i in range(n):
            write(root / c / f"{i:03d}.{ext}", rgb(*size, seed=hash((c, i)) % 1000))
    return root


def snapshot(root):
    """Every entry below ``root`` with its mtime and content hash (links not followed)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            digest = None
            if os.path.isfile(p) and not os.path.islink(p) and os.access(p, os.R_OK):
                digest = hashlib.sha256(open(p, "rb").read()).hexdigest()
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_mtime_ns, st.st_size, digest)
    return out


# ----------------------------------------------------------------------------- layouts

def test_train_test_layout_gives_sorted_classes_labels_and_both_splits(tmp_path):
    for split, n in (("train", 3), ("test", 2)):
        make_classes(tmp_path / split, classes=("zebra", "ant", "Moth"), n=n)
    s = load_folder(tmp_path)
    assert s.class_names == ("Moth", "ant", "zebra")  # code-point order
    assert (len(s.train), len(s.test)) == (9, 6)
    assert s.image_shape == s.train.image_shape == s.test.image_shape == (8, 8, 3)
    assert s.name == "folder" and s.source == str(tmp_path)
    assert s.train.labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3
    assert all(f.split(os.sep)[-3] == "train" for f in s.train.files)
    assert os.path.basename(os.path.dirname(s.test.files[-1])) == "zebra"
    every = ImageFolder(tmp_path)  # split=None: both
    assert len(every) == 15 and every.split is None


def test_train_and_test_must_hold_the_same_classes(tmp_path):
    make_classes(tmp_path / "train", classes=("cat", "dog", "eel"))
    make_classes(tmp_path / "test", classes=("cat", "dog", "fox"))
    with pytest.raises(ValueError, match="same class folders; only in train: eel; only in test: fox"):
        load_folder(tmp_path)


def test_train_without_test_is_an_error(tmp_path):
    make_classes(tmp_path / "train")
    with pytest.raises(ValueError, match="has a train/ folder but no test/ folder"):
        load_folder(tmp_path)


def test_test_fraction_is_checked_and_refused_with_its_own_split(tmp_path):
    make_classes(tmp_path / "flat")
    for bad in (0, 1, 1.5, -0.1, "0.2", True, float("nan")):
        with pytest.raises(ValueError, match="test_fraction must be a number strictly between 0 and 1"):
            load_folder(tmp_path / "flat", test_fraction=bad)
    make_classes(tmp_path / "split" / "train")
    make_classes(tmp_path / "split" / "test")
    with pytest.raises(ValueError, match="has its own train/ and test/ folders"):
        load_folder(tmp_path / "split", test_fraction=0.3)


def held_out(rel, fraction=DEFAULT_TEST_FRACTION):
    digest = hashlib.sha256(rel.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64 < fraction


def test_hold_out_is_the_stated_hash_rule_and_stable_when_files_are_added(tmp_path):
    make_classes(tmp_path, n=60)
    s = load_folder(tmp_path)
    rel = lambda f: os.path.relpath(f, tmp_path).replace(os.sep, "/")  # noqa: E731
    assert all(held_out(rel(f)) for f in s.test.files)
    assert not any(held_out(rel(f)) for f in s.train.files)
    assert len(s.train) + len(s.test) == 120 and 10 <= len(s.test) <= 40  # 24 expected
    assert load_folder(tmp_path).test.files == s.test.files  # deterministic
    for i in range(60, 100):  # more files: nobody moves
        write(tmp_path / "cat" / f"{i:03d}.png", rgb(8, 8, seed=i))
    t = load_folder(tmp_path)
    assert set(s.test.files) <= set(t.test.files) and set(s.train.files) <= set(t.train.files)
    half = load_folder(tmp_path, test_fraction=0.5)
    assert all(held_out(rel(f), 0.5) for f in half.test.files) and len(half.test) > len(t.test)


def test_a_class_without_training_images_is_noted(tmp_path):
    make_classes(tmp_path, classes=("a", "b"), n=3)
    # file names whose hash puts them in the test split at test_fraction 0.2
    names = [n for n in (f"x{i}.png" for i in range(200)) if held_out(f"c/{n}")][:2]
    for n in names:
        write(tmp_path / "c" / n)
    s = load_folder(tmp_path)
    assert "class 'c' has no training images" in s.train.notes
    assert len(s.test.files) >= 2


# ----------------------------------------------------------------------------- malformed folders

def test_missing_path_and_a_file_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"no such folder: {tmp_path / 'nope'}"):
        load_folder(tmp_path / "nope")
    f = write(tmp_path / "one.png")
    with pytest.raises(ValueError, match="one.png: is a file; expected a folder of class folders"):
        ImageFolder(f)


def test_no_class_folders_images_at_the_top_are_an_error(tmp_path):
    write(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("x")
    found = r"found: 1 images directly in .*1 not images \(.txt 1\)"
    with pytest.raises(ValueError, match=r"no class folders found.*" + found):
        load_folder(tmp_path)


def test_no_images_at_all_is_an_error_that_counts_what_was_found(tmp_path):
    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        (tmp_path / c / "readme.md").write_text("x")
        (tmp_path / c / ".DS_Store").write_bytes(b"\0")
    found = r"found: 2 hidden, 2 not images \(.md 2\)"
    with pytest.raises(ValueError, match=r"no images found \(extensions .png, .jpg.*" + found):
        load_folder(tmp_path)
    with pytest.raises(ValueError, match="no class folders found"):
        load_folder(tmp_path / "cat")  # a folder with files only


def test_an_empty_class_folder_is_an_error_naming_it(tmp_path):
    make_classes(tmp_path)
    (tmp_path / "emu").mkdir()
    (tmp_path / "emu" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=f"{tmp_path / 'emu'}: this class folder holds no images"):
        load_folder(tmp_path)


def test_one_class_is_an_error(tmp_path):
    make_classes(tmp_path, classes=("cat",))
    with pytest.raises(ValueError, match="needs at least 2 classes .*found 1 with images: cat"):
        load_folder(tmp_path)


def test_non_image_and_hidden_files_are_ignored_and_counted(tmp_path):
    make_classes(tmp_path, n=3)
    (tmp_path / "cat" / "labels.csv").write_text("x")
    (tmp_path / "cat" / "notes.txt").write_text("x")
    (tmp_path / "dog" / "Makefile").write_text("x")
    (tmp_path / "dog" / "._000.png").write_bytes(b"\0\5\26\7 AppleDouble")  # macOS junk, not an image
    (tmp_path / "dog" / ".cache").mkdir()
    write(tmp_path / "dog" / ".cache" / "thumb.png")
    write(tmp_path / "dog" / "BIG.JPG")  # extensions in any case
    write(tmp_path / "dog" / "deep" / "er" / "x.png")  # subfolders belong to their class
    write(tmp_path / ".ipynb_checkpoints" / "x.png")  # a hidden folder is no class
    s = ImageFolder(tmp_path)
    assert s.class_names == ("cat", "dog")
    assert len(s) == 3 + 5 and s.labels.tolist() == [0] * 3 + [1] * 5
    assert s.notes[0] == "ignored: 3 hidden, 3 not images ((none) 1, .csv 1, .txt 1)"


def test_symlinks_files_and_folders_are_followed_and_loops_cut(tmp_path):
    data, outside = tmp_path / "data", tmp_path / "outside"
    make_classes(data, n=2)
    write(outside / "elsewhere.png")
    make_classes(outside / "more", classes=("x",), n=2)
    os.symlink(outside / "elsewhere.png", data / "cat" / "linked.png")
    os.symlink(outside / "more" / "x", data / "cat" / "linked_dir")
    os.symlink(outside / "more" / "x", data / "cat" / "same_dir_again")
    os.symlink(data / "cat", data / "cat" / "loop")
    os.symlink(data, data / "dog" / "up")  # would pull every class into dog
    os.symlink(data / "dog" / "self", data / "dog" / "self")  # a link to itself
    os.symlink(tmp_path / "gone.png", data / "dog" / "broken.png")
    os.symlink(outside / "more" / "x", data / "bird")  # a class folder that is a link
    ds = ImageFolder(data)
    assert ds.class_names == ("bird", "cat", "dog")
    assert np.bincount(ds.labels).tolist() == [2, 2 + 1 + 2, 2]
    assert sum(f.startswith(str(data / "cat" / "linked")) for f in ds.files) == 3
    assert ds.notes == ("ignored: 2 broken links, 1 folders linked twice, 2 link loops",)
    ds.get_batch(range(len(ds)))


def test_a_file_that_is_no_image_is_an_error_listing_it_or_skipped_when_asked(tmp_path):
    make_classes(tmp_path, n=3)
    bad = [tmp_path / "cat" / "fake.png", tmp_path / "dog" / "empty.jpg"]
    bad[0].write_text("not a png")
    bad[1].write_bytes(b"")
    with pytest.raises(ValueError, match=r"2 file\(s\) are not readable images: .*fake.png \(cannot identify image "
                                         r"file .*empty.jpg .*skip_unreadable=True"):
        load_folder(tmp_path)
    s = ImageFolder(tmp_path, skip_unreadable=True)
    assert len(s) == 6 and str(bad[0]) not in s.files
    assert s.notes == ("ignored: 2 unreadable images left out",)


def test_an_unreadable_file_is_named(tmp_path, monkeypatch):
    make_classes(tmp_path, n=2)
    locked = tmp_path / "cat" / "000.png"
    real_open = Image.open

    def deny(fp, *a, **k):  # what a file without read permission gives (root may read anything)
        if os.fspath(fp) == str(locked):
            raise PermissionError(13, "Permission denied", str(locked))
        return real_open(fp, *a, **k)

    monkeypatch.setattr(Image, "open", deny)
    with pytest.raises(ValueError, match=f"{locked} \\(permission denied\\)"):
        load_folder(tmp_path)
    ds = ImageFolder(tmp_path, skip_unreadable=True)
    assert len(ds) == 3
    monkeypatch.undo()
    ds = ImageFolder(tmp_path)
    monkeypatch.setattr(Image, "open", deny)
    with pytest.raises(ValueError, match=f"^{locked}: cannot decode this image \\(permission denied\\)$"):
        ds.get_batch([0, 1])


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads files without permission")
def test_an_unreadable_file_without_permission(tmp_path):  # pragma: no cover - CI runs as a user
    make_classes(tmp_path, n=2)
    locked = tmp_path / "cat" / "000.png"
    locked.chmod(0)
    try:
        with pytest.raises(ValueError, match=f"{locked} \\(permission denied\\)"):
            load_folder(tmp_path)
    finally:
        locked.chmod(0o644)


def test_a_file_that_fails_while_decoding_names_it(tmp_path):
    make_classes(tmp_path, n=2, ext="jpg")
    whole = (tmp_path / "dog" / "001.jpg").read_bytes()
    ds = ImageFolder(tmp_path)
    (tmp_path / "dog" / "001.jpg").write_bytes(whole[:len(whole) // 2])  # the header survives
    broken = tmp_path / "dog" / "001.jpg"
    with pytest.raises(ValueError, match=f"^{broken}: cannot decode this image \\((?i:.*truncated)"):
        ds.get_batch(range(len(ds)))
    with pytest.raises(ValueError, match="001.jpg: cannot decode"):
        ds[3]
    (tmp_path / "dog" / "001.jpg").unlink()
    with pytest.raises(ValueError, match=f"{tmp_path / 'dog' / '001.jpg'}: cannot decode this image \\(no such file"):
        ds[3]


def test_too_many_pixels_are_refused_from_the_header(tmp_path, monkeypatch):
    make_classes(tmp_path, n=2)
    write(tmp_path / "cat" / "huge.png", rgb(20, 30))
    monkeypatch.setattr(folder_scan, "MAX_IMAGE_PIXELS", 500)
    with pytest.raises(ValueError, match=r"huge.png: the image is 30x20 \(0.0 megapixels\); at most"):
        load_folder(tmp_path)
    assert len(ImageFolder(tmp_path, skip_unreadable=True)) == 4


def test_without_pillow_the_message_says_what_to_install(tmp_path, monkeypatch):
    make_classes(tmp_path)
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match=r'^reading image folders needs Pillow: pip install pillow \(in a checkout: pip install -e "\.\[image\]"\)$'):
        load_folder(tmp_path)


def test_arguments_are_checked(tmp_path):
    make_classes(tmp_path)
    for size in (0, (8,), (8, 0), (2.5, 3), "8", True, (4096, 4097)):
        with pytest.raises(ValueError, match="size must be a positive int or"):
            ImageFolder(tmp_path, size=size)
    with pytest.raises(ValueError, match='color must be "rgb", "gray" or None'):
        ImageFolder(tmp_path, color="cmyk")
    with pytest.raises(ValueError, match='split must be "train", "test" or None'):
        ImageFolder(tmp_path, split="val")
    for workers in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="workers must be a positive int"):
            ImageFolder(tmp_path, workers=workers)


def test_user_files_are_never_changed(tmp_path, monkeypatch):
    """Everything above, on one nasty folder: its listing, modes, mtimes and contents stay as they were."""
    root = tmp_path / "data"
    make_classes(root / "train", n=3, ext="jpg")
    make_classes(root / "test", n=2)
    write(root / "train" / "cat" / "rgba.png", np.zeros((5, 9, 4), np.uint8), "RGBA")
    write(root / "train" / "dog" / "gray16.png", np.full((8, 8), 4000, np.uint16), "I;16")
    (root / "train" / "dog" / "bad.png").write_text("nope")
    (root / "train" / "dog" / ".hidden.png").write_text("nope")
    (root / "notes.txt").write_text("x")
    os.symlink(root / "train", root / "train" / "cat" / "loop")
    before = snapshot(root)
    with pytest.raises(ValueError):
        load_folder(root)
    s = load_folder(root, skip_unreadable=True, size=(6, 6), color="gray")
    s.train.get_batch(range(len(s.train)))
    s.test.get_batch(range(len(s.test)))
    pickle.loads(pickle.dumps(s.train)).get_batch([0])
    assert snapshot(root) == before


def test_the_scan_reads_headers_only(tmp_path, monkeypatch):
    make_classes(tmp_path, n=2)
    make_classes(tmp_path, n=2, ext="jpg")
    write(tmp_path / "cat" / "x.webp")
    write(tmp_path / "dog" / "x.tif")
    from PIL import ImageFile

    def refuse(self):
        raise AssertionError("pixels decoded during the scan")

    with monkeypatch.context() as m:
        m.setattr(ImageFile.ImageFile, "load", refuse)
        ds = ImageFolder(tmp_path)
    assert len(ds) == 10 and ds.get_batch(range(10))[0].shape == (10, 8, 8, 3)


def test_a_folder_that_cannot_be_listed_is_named(tmp_path, monkeypatch):
    make_classes(tmp_path)
    real = os.scandir

    def deny(path="."):
        if os.fspath(path) == str(tmp_path / "dog"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(folder_scan.os, "scandir", deny)
    with pytest.raises(ValueError, match=f"^{tmp_path / 'dog'}: cannot list this folder \\(Permission denied\\)$"):
        load_folder(tmp_path)


# ----------------------------------------------------------------------------- size and colour

def test_size_defaults_to_the_most_common_and_others_are_fitted(tmp_path):
    make_classes(tmp_path, n=3, size=(6, 10))
    odd = write(tmp_path / "dog" / "odd.png", rgb(20, 9, seed=5))
    ds = ImageFolder(tmp_path)
    assert ds.image_shape == (6, 10, 3)
    expect = np.asarray(ImageOps.fit(Image.open(odd), (10, 6), method=Image.Resampling.BICUBIC))
    assert np.array_equal(ds[ds.files.index(str(odd))][0], expect)
    small = ImageFolder(tmp_path, size=4)
    assert small.image_shape == (4, 4, 3) and small.get_batch(range(len(small)))[0].shape == (len(small), 4, 4, 3)
    assert ImageFolder(tmp_path, size=(3, 5)).image_shape == (3, 5, 3)


def test_size_tie_goes_to_the_first_file(tmp_path):
    write(tmp_path / "a" / "1.png", rgb(5, 7))
    write(tmp_path / "b" / "1.png", rgb(9, 4))
    assert ImageFolder(tmp_path).image_shape == (5, 7, 3)


def test_large_jpegs_are_drafted_and_fitted(tmp_path):
    make_classes(tmp_path, n=2, size=(16, 16), ext="jpg")
    write(tmp_path / "cat" / "photo.jpg", rgb(200, 120, seed=3), quality=90)
    ds = ImageFolder(tmp_path, size=(16, 16))
    x = ds[ds.files.index(str(tmp_path / "cat" / "photo.jpg"))][0]
    full = np.asarray(ImageOps.fit(Image.open(tmp_path / "cat" / "photo.jpg"), (16, 16), Image.Resampling.BICUBIC))
    assert x.shape == (16, 16, 3) and np.abs(x.astype(int) - full).mean() < 12  # same picture, other decoder scale


def test_colour_is_decided_from_the_headers(tmp_path):
    for c in ("a", "b"):
        write(tmp_path / "gray" / c / "1.png", np.full((4, 4), 9, np.uint8))
        write(tmp_path / "gray" / c / "2.png", np.full((4, 4), 65535, np.uint16), "I;16")
    ds = ImageFolder(tmp_path / "gray")
    assert ds.image_shape == (4, 4, 1)
    assert ds.get_batch([0, 1])[0].reshape(2, -1).max(axis=1).tolist() == [9, 255]
    write(tmp_path / "gray" / "b" / "3.png", np.zeros((4, 4, 3), np.uint8))
    assert ImageFolder(tmp_path / "gray").image_shape == (4, 4, 3)  # one colour file: RGB
    assert ImageFolder(tmp_path / "gray", color="gray").image_shape == (4, 4, 1)


def mixed_modes(root):
    """One image of each mode, all 4x6, in class folders a and b: name -> (path, what it must decode to)."""
    px = rgb(4, 6, seed=1)
    gray = px[..., 0]
    alpha = np.tile(np.array([0, 128, 255], np.uint8), (4, 2))
    a32 = alpha[..., None].astype(np.uint32)
    lum = lambda a: np.asarray(Image.fromarray(a).convert("L"))  # noqa: E731  (ITU-R 601-2)
    on_white = lambda c: ((c.astype(np.uint32) * a32 + 255 * (255 - a32) + 127) // 255).astype(np.uint8)  # noqa: E731
    pal = Image.fromarray(px).quantize(16)
    pal_t = pal.copy()
    pal_t.info["transparency"] = int(np.asarray(pal)[0, 0])
    cases = {
        "rgb.png": (px, px),
        "gray.png": (gray, np.repeat(gray[..., None], 3, axis=2)),
        "bits16.png": ((gray.astype(np.uint16) * 257), np.repeat(gray[..., None], 3, axis=2)),
        "rgba.png": (np.dstack([px, alpha]), on_white(px)),
        "la.png": (Image.fromarray(np.dstack([gray, alpha]), "LA"), np.repeat(on_white(gray[..., None]), 3, axis=2)),
        "palette.png": (pal, np.asarray(pal.convert("RGB"))),
        "palette_t.png": (pal_t, np.asarray(Image.alpha_composite(Image.new("RGBA", (6, 4), (255,) * 4),
                                                                   pal_t.convert("RGBA")).convert("RGB"))),
        "bilevel.png": (Image.fromarray(gray > 127), np.repeat(np.where(gray > 127, 255, 0)[..., None], 3, axis=2)),
        "cmyk.jpg": (Image.fromarray(px).convert("CMYK"), None),
    }
    out = {}
    for k, (name, (img, expect)) in enumerate(cases.items()):
        path = write(root / "ab"[k % 2] / name, img, "I;16" if name == "bits16.png" else None)
        if expect is None:
            expect = np.asarray(Image.open(path).convert("RGB"))
        out[name] = (path, expect.astype(np.uint8), lum)
    return out


def test_every_mode_decodes_by_the_stated_policy(tmp_path):
    cases = mixed_modes(tmp_path)
    ds = ImageFolder(tmp_path)
    assert ds.image_shape == (4, 6, 3)
    x, _ = ds.get_batch(range(len(ds)))
    for name, (path, expect, lum) in cases.items():
        got = x[ds.files.index(str(path))]
        assert np.abs(got.astype(int) - expect).max() <= 1, name
    g = ImageFolder(tmp_path, color="gray")
    xg, _ = g.get_batch(range(len(g)))
    for name, (path, expect, lum) in cases.items():
        assert np.abs(xg[g.files.index(str(path))][..., 0].astype(int) - lum(expect)).max() <= 1, name


def test_sixteen_bit_is_scaled_by_its_white_level(tmp_path):
    levels = np.array([[0, 257, 257 * 128, 65535], [128, 129, 32896, 65534]], np.uint16)
    write(tmp_path / "a" / "x.png", levels, "I;16")
    write(tmp_path / "b" / "x.png", levels, "I;16")
    assert ImageFolder(tmp_path)[0][0][..., 0].tolist() == [[0, 1, 128, 255], [0, 1, 128, 255]]


def test_exif_orientation_is_applied(tmp_path):
    px = rgb(6, 10, seed=2)
    exif = Image.Exif()
    exif[0x0112] = 6  # turned 90° clockwise to be viewed
    for c in ("a", "b"):
        write(tmp_path / c / "turned.jpg", px, exif=exif.tobytes(), quality=95)
    ds = ImageFolder(tmp_path)
    assert ds.image_shape == (10, 6, 3)  # displayed size: width and height swapped
    expect = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "a" / "turned.jpg")))
    assert np.array_equal(ds[0][0], expect)


# ----------------------------------------------------------------------------- the Dataset protocol

def test_items_batches_and_indices(tmp_path):
    make_classes(tmp_path, n=5)
    ds = ImageFolder(tmp_path, workers=3)
    x, y = ds.get_batch([7, 0, 9, 9, -1])
    assert x.dtype == np.uint8 and x.shape == (5, 8, 8, 3) and y.dtype == np.int64
    assert y.tolist() == [1, 0, 1, 1, 1]
    for k, i in enumerate([7, 0, 9, 9, -1]):
        image, label = ds[i]
        assert np.array_equal(x[k], image) and label == y[k] and isinstance(label, int)
    assert np.array_equal(x[0], np.asarray(Image.open(ds.files[7])))
    serial = ImageFolder(tmp_path, workers=1).get_batch(range(10))
    assert np.array_equal(serial[0], ds.get_batch(np.arange(10))[0])
    empty = ds.get_batch([])
    assert empty[0].shape == (0, 8, 8, 3) and empty[1].dtype == np.int64
    with pytest.raises(IndexError, match=r"indices must lie in \[-10, 10\), got 0..10"):
        ds.get_batch([0, 10])
    with pytest.raises(IndexError, match="index 10 out of range for 10 images"):
        ds[10]
    with pytest.raises(ValueError, match="indices must be a 1-D sequence of ints"):
        ds.get_batch([0.5])
    with pytest.raises(TypeError, match="indexed by one int"):
        ds[[0, 1]]
    again = pickle.loads(pickle.dumps(ds))
    assert np.array_equal(again.get_batch([7])[0], x[:1]) and "10 images, 2 classes, 8x8x3" in repr(again)


# ----------------------------------------------------------------------------- the real JPEG folder

def test_cifar10_jpeg_folder(cifar_jpeg):
    s = load_folder(cifar_jpeg)
    assert (len(s.train), len(s.test)) == (50_000, 10_000)
    assert s.class_names == ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    assert s.image_shape == (32, 32, 3) and s.train.notes == ()
    assert np.bincount(s.train.labels).tolist() == [5000] * 10 and np.bincount(s.test.labels).tolist() == [1000] * 10
    pick = np.random.default_rng(0).choice(len(s.train), 64, replace=False)
    x, y = s.train.get_batch(pick)
    expect = np.stack([np.asarray(Image.open(s.train.files[i]).convert("RGB")) for i in pick])
    assert np.array_equal(x, expect)
    assert [s.class_names[k] for k in y] == [s.train.files[i].split(os.sep)[-2] for i in pick]
    xt, _ = s.test.get_batch([0, 9999])
    assert np.array_equal(xt[1], np.asarray(Image.open(cifar_jpeg / "test" / "truck" / "0999.jpg")))


def test_public_names():
    import jimunet as jn
    assert jn.data.load_folder is load_folder and jn.data.ImageFolder is ImageFolder


def test_load_trains_and_evaluates_on_a_folder(tmp_path):
    """``jn.data.load(PATH)`` is ``load_folder``; its splits go through BatchIterator, Trainer.fit and evaluate."""
    import jimunet as jn
    rng = np.random.default_rng(0)
    for split, n in (("train", 24), ("test", 8)):
        for k, c in enumerate(("dark", "light")):
            for i in range(n):
                write(tmp_path / split / c / f"{i}.png", rng.integers(k * 160, k * 160 + 96, (6, 6, 3), dtype=np.uint8))
    s = jn.data.load(tmp_path)
    assert isinstance(s, jn.data.Splits) and s.name == "folder" and s.source == str(tmp_path)
    assert isinstance(s.train, jn.data.Dataset) and len(s.train) == 48
    norm = jn.data.Normalize([127.5] * 3, [255.0] * 3)
    batches = list(jn.data.BatchIterator(s.train, 20, shuffle=True, rng=0, normalize=norm))
    assert [b[0].shape for b in batches] == [(20, 6, 6, 3), (20, 6, 6, 3), (8, 6, 6, 3)]
    assert sorted(np.concatenate([b[1] for b in batches]).tolist()) == [0] * 24 + [1] * 24
    model = jn.Sequential([jn.layers.Flatten(), jn.layers.Dense(6 * 6 * 3, 2)])
    trainer = jn.Trainer(model, jn.losses.SoftmaxCrossEntropy(), jn.optim.SGD(model.parameters(), lr=0.1),
                         batch_size=8, rng=0, log=False, progress=False)
    trainer.fit(s.train, epochs=3, normalize=norm)
    assert jn.evaluate(model, s.test, normalize=norm).accuracy == 1.0
