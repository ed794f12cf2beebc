"""The data-set layer: ArrayDataset, Subset, Normalize, BatchIterator (prefetching, order, shutdown),
the augmentations, and Trainer.fit / evaluate / predict on a Dataset (same numbers as on arrays)."""
import threading

import numpy as np
import pytest

import jimunet as jn
from jimunet.data import (ArrayDataset, BatchIterator, Compose, Normalize, RandomCrop, RandomFlip, RandomShift,
                          Subset, is_dataset)
from jimunet.data.batching import Prefetcher
from jimunet.data.images import preprocess
from jimunet.training import Trainer, evaluate


def _prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "jimunet-prefetch"]


def _images(n=10, h=6, w=5, c=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, h, w, c), dtype=np.uint8), rng.integers(0, 4, n)


# -- ArrayDataset, Subset ---------------------------------------------------------------------------

def test_array_dataset_follows_the_protocol():
    x, y = _images()
    ds = ArrayDataset(x, y, ["a", "b", "c", "d"])
    assert isinstance(ds, jn.data.Dataset) and is_dataset(ds) and not is_dataset(x)
    assert len(ds) == 10 and ds.image_shape == (6, 5, 3) and ds.class_names == ("a", "b", "c", "d")
    img, label = ds[3]
    assert img.shape == (6, 5, 3) and label == y[3] and isinstance(label, int)
    xb, yb = ds.get_batch(np.array([7, 2]))
    np.testing.assert_array_equal(xb, x[[7, 2]])
    assert yb.dtype == np.int64 and yb.tolist() == y[[7, 2]].tolist()


def test_array_dataset_grayscale_and_default_names():
    ds = ArrayDataset(np.zeros((4, 28, 28), np.uint8), [0, 1, 2, 1])
    assert ds.image_shape == (28, 28, 1) and ds.class_names == ("0", "1", "2")
    assert ds.get_batch([0])[0].shape == (1, 28, 28, 1)


@pytest.mark.parametrize("x, y, match", [
    (np.zeros((3, 4)), [0, 1, 2], r"x must be images \(N, H, W, C\)"),
    (np.zeros((3, 4, 4)), [0, 1], r"one label per image, shape \(3,\)"),
    (np.zeros((2, 4, 4)), [0.5, 1], "non-negative integers"),
    (np.zeros((2, 4, 4)), [0, -1], "non-negative integers"),
])
def test_array_dataset_refuses_bad_arrays(x, y, match):
    with pytest.raises(ValueError, match=match):
        ArrayDataset(x, y)


def test_array_dataset_too_few_class_names_and_bad_indices():
    with pytest.raises(ValueError, match="2 class names for labels up to 2"):
        ArrayDataset(np.zeros((3, 2, 2)), [0, 1, 2], ["a", "b"])
    ds = ArrayDataset(np.zeros((3, 2, 2)), [0, 1, 2])
    with pytest.raises(IndexError, match=r"in \[0, 3\)"):
        ds.get_batch([3])
    with pytest.raises(ValueError, match="integers"):
        ds.get_batch([0.5])


def test_subset_maps_indices():
    x, y = _images()
    sub = Subset(ArrayDataset(x, y), [9, 4, 1])
    assert len(sub) == 3 and sub.image_shape == (6, 5, 3)
    xb, yb = sub.get_batch([2, 0])
    np.testing.assert_array_equal(xb, x[[1, 9]])
    assert yb.tolist() == y[[1, 9]].tolist() and sub[1][1] == y[4]
    with pytest.raises(IndexError):
        Subset(ArrayDataset(x, y), [10])


# -- Normalize --------------------------------------------------------------------------------------

def test_normalize_mnist_is_bit_identical_to_preprocess():
    x = np.random.default_rng(0).integers(0, 256, (50, 28, 28, 1), dtype=np.uint8)
    a, b = Normalize.mnist()(x), preprocess(x)
    assert a.dtype == b.dtype == np.float32 and a.tobytes() == b.tobytes()
    xf = x.astype(np.float64) * 0.999
    assert Normalize.mnist()(xf).tobytes() == preprocess(xf).tobytes()


def test_normalize_per_channel_and_round_trip():
    n = Normalize([10.0, 20.0, 30.0], [2.0, 4.0, 5.0])
    out = n(np.full((2, 2, 2, 3), 40, np.uint8))
    assert out.dtype == np.float32 and out[0, 0, 0].tolist() == [15.0, 5.0, 2.0]
    assert Normalize.from_dict(n.to_dict()) == n
    with pytest.raises(ValueError, match="3 channels"):
        n(np.zeros((1, 2, 2, 1), np.uint8))
    for bad in ({"mean": [0], "std": [0]}, {"mean": [1, 2]}, [1, 2], {"mean": ["a"], "std": [1]}):
        with pytest.raises(ValueError, match="Normalize"):
            Normalize.from_dict(bad)


def test_normalize_estimate():
    x = np.stack([np.full((4, 4), 10), np.full((4, 4), 30), np.full((4, 4), 50)], -1)[None].repeat(4, 0)
    x[2:, ..., 0] = 20
    est = Normalize.estimate(ArrayDataset(x.astype(np.uint8), np.zeros(4, int)))
    assert est.mean == (15.0, 30.0, 50.0) and est.std == (5.0, 1.0, 1.0)  # a constant channel: std 1


# -- BatchIterator ----------------------------------------------------------------------------------

@pytest.mark.parametrize("prefetch", [0, 1, 3])
def test_batch_iterator_order_and_sizes(prefetch):
    x, y = _images(10)
    ds = ArrayDataset(x, y)
    it = BatchIterator(ds, 4, prefetch=prefetch)
    batches = list(it)
    assert len(it) == 3 and [len(b[1]) for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), x.astype(np.float32))
    assert all(b[0].dtype == np.float32 and b[1].dtype == np.int64 for b in batches)
    assert [len(b[1]) for b in BatchIterator(ds, 4, drop_last=True, prefetch=prefetch)] == [4, 4]


def test_batch_iterator_shuffles_from_its_seed_whatever_the_prefetch():
    x, y = _images(23)
    ds = ArrayDataset(x, np.arange(23))
    runs = {}
    for seed, prefetch in ((5, 0), (5, 4), (6, 2)):
        it = BatchIterator(ds, 5, shuffle=True, rng=seed, augment=RandomFlip(rng=seed), prefetch=prefetch)
        runs[seed, prefetch] = [(xb.copy(), yb.copy()) for _ in range(2) for xb, yb in it]
    a, b, c = runs[5, 0], runs[5, 4], runs[6, 2]
    assert all(np.array_equal(p[0], q[0]) and np.array_equal(p[1], q[1]) for p, q in zip(a, b))
    epoch1 = np.concatenate([yb for _, yb in a[:5]])
    assert sorted(epoch1.tolist()) == list(range(23))
    assert not np.array_equal(epoch1, np.concatenate([yb for _, yb in a[5:]]))  # a new order each epoch
    assert not np.array_equal(epoch1, np.concatenate([yb for _, yb in c[:5]]))


def test_batch_iterator_augments_then_normalizes():
    x = np.full((4, 8, 8, 1), 255, np.uint8)
    it = BatchIterator(ArrayDataset(x, np.zeros(4, int)), 4, augment=RandomCrop(3, rng=0),
                       normalize=Normalize.mnist())
    (xb, _), = list(it)
    assert set(np.unique(xb).tolist()) <= {-0.5, 0.5} and xb.min() == -0.5  # black padding, then scaled


class _SlowDataset:
    """Counts get_batch calls; can fail at one batch."""

    def __init__(self, n=100, fail_at=None):
        self.inner = ArrayDataset(np.zeros((n, 2, 2, 1), np.uint8), np.zeros(n, np.int64))
        self.class_names, self.image_shape = self.inner.class_names, self.inner.image_shape
        self.calls, self.fail_at = 0, fail_at

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        return self.inner[i]

    def get_batch(self, idx):
        self.calls += 1
        if self.calls == self.fail_at:
            raise OSError("disk on fire (test)")
        return self.inner.get_batch(idx)


def test_stopping_early_leaves_no_thread_running():
    before = len(_prefetch_threads())
    ds = _SlowDataset(1000)
    for i, _ in enumerate(BatchIterator(ds, 2, prefetch=3)):
        if i == 2:
            break
    assert len(_prefetch_threads()) == before
    assert ds.calls <= 3 + 3 + 1  # it fetched a bounded number ahead, not the whole epoch

    it = iter(BatchIterator(ds, 2, prefetch=3))
    next(it)
    with pytest.raises(RuntimeError):
        for _ in it:
            raise RuntimeError("the consumer fails (test)")
    del it
    assert len(_prefetch_threads()) == before

    p = Prefetcher(ds, [np.arange(2)] * 50, depth=2)
    next(p)
    p.close()
    p.close()
    assert len(_prefetch_threads()) == before


def test_an_error_in_get_batch_reaches_the_consumer_at_its_batch():
    ds = _SlowDataset(20, fail_at=3)
    seen = []
    with pytest.raises(OSError, match="disk on fire"):
        for xb, _ in BatchIterator(ds, 4, prefetch=2):
            seen.append(len(xb))
    assert seen == [4, 4] and not _prefetch_threads()


@pytest.mark.parametrize("kw, match", [({"batch_size": 0}, "batch_size"), ({"batch_size": 2, "prefetch": -1},
                                                                             "prefetch")])
def test_batch_iterator_validates(kw, match):
    with pytest.raises(ValueError, match=match):
        BatchIterator(ArrayDataset(np.zeros((2, 2, 2)), [0, 1]), **kw)


# -- augmentations ----------------------------------------------------------------------------------

def _batch(n=16, h=9, w=7, c=3):
    return np.random.default_rng(1).integers(1, 256, (n, h, w, c), dtype=np.uint8)


def test_random_flip_is_exactly_a_mirror_or_nothing():
    x = _batch(64)
    y = RandomFlip(rng=0)(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    flipped = np.array([np.array_equal(y[i], x[i, :, ::-1]) for i in range(64)])
    kept = np.array([np.array_equal(y[i], x[i]) for i in range(64)])
    assert (flipped | kept).all() and 10 < flipped.sum() < 54


def test_random_crop_is_a_window_of_the_zero_padded_image():
    x, p = _batch(32), 3
    aug = RandomCrop(p, rng=4)
    rng = np.random.default_rng(4)
    oy, ox = rng.integers(0, 2 * p + 1, 32), rng.integers(0, 2 * p + 1, 32)
    y = aug(x)
    padded = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    for i in range(32):
        np.testing.assert_array_equal(y[i], padded[i, oy[i]:oy[i] + 9, ox[i]:ox[i] + 7])
    assert y.shape == x.shape and y.dtype == x.dtype and (y == 0).any()
    assert RandomCrop(0, rng=0)(x) is x
    with pytest.raises(ValueError, match="padding must be a non-negative int"):
        RandomCrop(-1)
    with pytest.raises(ValueError, match="NHWC"):
        RandomCrop(2)(np.zeros((4, 4)))


@pytest.mark.parametrize("make", [lambda s: RandomCrop(2, rng=s), lambda s: RandomFlip(rng=s),
                                  lambda s: RandomShift(2, rng=s),
                                  lambda s: Compose([RandomCrop(2, rng=s), RandomFlip(rng=s + 1)])])
def test_augmentations_are_seeded_and_resume_from_their_state(make):
    x = _batch()
    a, b = make(7), make(7)
    np.testing.assert_array_equal(a(x), b(x))
    assert not all(np.array_equal(make(8)(x), a(x)) for _ in range(3))
    state = a.state()
    first = a(x)
    a(x)
    a.set_state(state)
    np.testing.assert_array_equal(a(x), first)


def test_compose_applies_in_order_and_checks_its_state():
    x = _batch()
    c = Compose([RandomCrop(2, rng=0), RandomFlip(rng=1)])
    np.testing.assert_array_equal(c(x), RandomFlip(rng=1)(RandomCrop(2, rng=0)(x)))
    with pytest.raises(ValueError, match="for 1 augmentations, this one has 2"):
        c.set_state([{}])
    with pytest.raises(ValueError, match="callable"):
        Compose([3])


# -- the Trainer, evaluate and predict on a Dataset -------------------------------------------------

def _model():
    return jn.Sequential([jn.layers.Conv2D(1, 2, 3, rng=0), jn.layers.ReLU(), jn.layers.Flatten(),
                          jn.layers.Dense(2 * 8 * 8, 3, rng=1)])


def _trainer(model, augment=None, rng=3, **kw):
    opt = jn.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return Trainer(model, jn.losses.SoftmaxCrossEntropy(), opt, batch_size=8, rng=rng, progress=False, log=False,
                   augment=augment, **kw)


def _pixels(n=44):
    rng = np.random.default_rng(5)
    return rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8), rng.integers(0, 3, n)


@pytest.mark.parametrize("shuffle", [True, False])
def test_fit_on_a_dataset_gives_the_weights_of_the_arrays(shuffle):
    x, y = _pixels()
    runs = []
    for as_dataset in (False, True):
        model = _model()
        t = _trainer(model, augment=RandomShift(1, rng=9), shuffle=shuffle)
        if as_dataset:
            h = t.fit(ArrayDataset(x[:36], y[:36]), epochs=2, x_val=ArrayDataset(x[36:], y[36:]),
                      normalize=Normalize.mnist())
        else:
            h = t.fit(preprocess(x[:36]), y[:36], 2, preprocess(x[36:]), y[36:])
        runs.append((model.parameters()[0].data.copy(), h.step_loss, [e["val_error"] for e in h.epochs]))
    assert runs[0][0].tobytes() == runs[1][0].tobytes()
    assert runs[0][1] == runs[1][1] and runs[0][2] == runs[1][2]


def test_evaluate_and_predict_on_a_dataset_match_the_arrays():
    x, y = _pixels(23)
    model = _model()
    ds = ArrayDataset(x, y)
    a = evaluate(model, preprocess(x), y, batch_size=5)
    b = evaluate(model, ds, batch_size=5, normalize=Normalize.mnist())
    assert a.accuracy == b.accuracy and np.array_equal(a.confusion, b.confusion)
    np.testing.assert_array_equal(model.predict(ds, 5, normalize=Normalize.mnist()), model.predict(preprocess(x), 5))
    assert model.predict(Subset(ds, []), 5, normalize=Normalize.mnist()).shape == (0, 3)
    with pytest.raises(ValueError, match="normalize applies to a Dataset"):
        evaluate(model, preprocess(x), y, normalize=Normalize.mnist())
    with pytest.raises(ValueError, match="normalize applies to a Dataset"):
        model.predict(preprocess(x), normalize=Normalize.mnist())
    with pytest.raises(ValueError, match="carries its labels"):
        evaluate(model, ds, y)


def test_fit_argument_errors_for_datasets():
    x, y = _pixels(16)
    t = _trainer(_model())
    with pytest.raises(ValueError, match="carries its labels"):
        t.fit(ArrayDataset(x, y), y, 1)
    with pytest.raises(ValueError, match="epochs"):
        t.fit(ArrayDataset(x, y))
    with pytest.raises(ValueError, match="normalize applies to a Dataset"):
        t.fit(preprocess(x), y, 1, normalize=Normalize.mnist())


def test_resume_with_composed_augmentation_is_bit_identical(tmp_path):
    x, y = _pixels()
    ds = ArrayDataset(x, y)

    def aug(seed):
        return Compose([RandomCrop(2, rng=seed), RandomFlip(rng=seed + 1)])

    whole_model = _model()
    whole = _trainer(whole_model, augment=aug(1))
    whole.fit(ds, epochs=3, normalize=Normalize.mnist())

    first = _trainer(_model(), augment=aug(1))
    first.fit(ds, epochs=1, normalize=Normalize.mnist())
    first.save_checkpoint(tmp_path / "c.npz")
    resumed_model = jn.Sequential([jn.layers.Conv2D(1, 2, 3, rng=7), jn.layers.ReLU(), jn.layers.Flatten(),
                                   jn.layers.Dense(2 * 8 * 8, 3, rng=8)])
    resumed = _trainer(resumed_model, augment=aug(50), rng=99)
    resumed.load_checkpoint(tmp_path / "c.npz")
    resumed.fit(ds, epochs=3, normalize=Normalize.mnist())
    for p, q in zip(whole_model.parameters(), resumed_model.parameters()):
        assert p.data.tobytes() == q.data.tobytes()
    assert whole.history.step_loss == resumed.history.step_loss


def test_an_interrupted_fit_on_a_dataset_leaves_no_thread_running():
    class StopAt(jn.training.Callback):
        def on_step_end(self, trainer, step, loss):
            if step == 1:
                raise KeyboardInterrupt

    x, y = _pixels(200)
    t = _trainer(_model(), callbacks=[StopAt()])
    with pytest.raises(jn.training.TrainingInterrupted) as e:
        t.fit(ArrayDataset(x, y), epochs=1, normalize=Normalize.mnist(), prefetch=4)
    assert not _prefetch_threads() and e.value is not None


def test_a_dataset_trains_evaluates_and_predicts_on_the_device_as_on_the_cpu():
    """The strict CuPy stand-in: each batch is fetched and normalised on the host, then moved."""
    import strict_xp

    x, y = _pixels(40)
    ds, norm = ArrayDataset(x[:32], y[:32]), Normalize.mnist()
    runs = []
    with strict_xp.installed():
        for device in ("cpu", "cuda"):
            model = _model().to(device)
            t = _trainer(model, augment=RandomShift(1, rng=2))
            t.fit(ds, epochs=2, x_val=ArrayDataset(x[32:], y[32:]), normalize=norm)
            runs.append((t, evaluate(model, ds, batch_size=7, normalize=norm),
                         jn.backend.to_numpy(model.predict(ds, 7, normalize=norm))))
        (cpu, ev_cpu, p_cpu), (dev, ev_dev, p_dev) = runs
        assert isinstance(dev.model.parameters()[0].data, strict_xp.ndarray)
        np.testing.assert_allclose(dev.history.step_loss, cpu.history.step_loss, rtol=1e-5)
        assert ev_dev.accuracy == ev_cpu.accuracy
        np.testing.assert_allclose(p_dev, p_cpu, rtol=1e-4, atol=1e-6)
