"""``Sequential``: a stack of layers with summary, prediction, saving and loading."""
from __future__ import annotations

import copy
import math

import numpy as np

from ._version import __version__
from .backend import all_finite, to_device, to_numpy, xp_of
from .data.batching import predict_dataset
from .data.dataset import is_dataset
from .layers import MaxPool2D, ReLU
from .layers.activations import fused_relu
from .layers import memory
from .layers.base import (Layer, check_bool, check_weight_header, data_already_checked, from_config, json_kind,
                          placeholder_parameters)
from .layers.memory import (MAX_ACTIVATION_BYTES, ActivationLimitError,  # noqa: F401 (jimunet.model's API)
                            activation_elements, check_activation_bytes, check_network_activations,
                            recorded_input_shape)
from .layers.symbolic import shape_str
from .serialization import MAX_META_DEPTH, CheckpointError, NpzReader, json_depth, save_npz

MODEL_FORMAT = "jimunet-model"
MAX_LAYERS = 10_000  # a file describing more is refused before any layer object is made

_NETWORKS: dict[str, type] = {}  # network classes a file's architecture may name (see ``register_network``)


def register_network(cls):
    """Let ``load`` rebuild a network class whose ``get_config()`` has ``"class": cls.__name__``
    (``jn.Model`` registers itself; a description without ``"class"`` is a ``Sequential``)."""
    _NETWORKS[cls.__name__] = cls
    return cls


class Summary:
    """Per-layer output shapes, parameter counts and FLOPs; ``str()`` is a table."""

    def __init__(self, input_shape, rows):
        self.input_shape, self.rows = tuple(input_shape), rows

    @property
    def total_params(self) -> int:
        return sum(r["params"] for r in self.rows)

    @property
    def total_flops(self) -> int:
        return sum(r["flops"] for r in self.rows)

    @property
    def output_shape(self):
        return self.rows[-1]["output_shape"] if self.rows else self.input_shape

    @property
    def activation_elements(self) -> int:
        """Values one sample needs in memory on its way through (input, outputs and scratch)."""
        shapes = getattr(self, "input_shapes", [self.input_shape])
        return sum(math.prod(s) for s in shapes) + sum(r.get("activations", 0) for r in self.rows)

    def __str__(self):
        head = ("#", "layer", "output shape", "params", "FLOPs")
        body = [(str(i), r["layer"], shape_str(r["output_shape"]), f"{r['params']:,}",
                 f"{r['flops']:,}") for i, r in enumerate(self.rows)]
        body.append(("", "total", "", f"{self.total_params:,}", f"{self.total_flops:,}"))
        widths = [max(len(row[c]) for row in [head] + body) for c in range(5)]
        fmt = lambda row: "  ".join(v.ljust(w) if c < 3 else v.rjust(w)  # noqa: E731
                                    for c, (v, w) in enumerate(zip(row, widths)))
        rule = "-" * len(fmt(head))
        lines = [f"input: {shape_str(self.input_shape)}", fmt(head), rule] + [fmt(r) for r in body[:-1]]
        return "\n".join(lines + [rule, fmt(body[-1]), "FLOPs are per sample, forward pass."])

    __repr__ = __str__


def _named(layer, kind):
    """``(name, Parameter)`` pairs of a layer's parameters or buffers (nested models keep their indices)."""
    if hasattr(layer, f"named_{kind}"):
        return getattr(layer, f"named_{kind}")()
    return [(p.name, p) for p in getattr(layer, kind)()]


class Network(Layer):
    """What ``Sequential`` and ``jn.Model`` share: prediction, state, saving. Subclasses
    provide ``layers``, ``forward``, ``summary``, ``get_config`` and ``cache`` (the per-call
    caches of what they run, so that a network can itself be a layer of a graph)."""

    def output_shape(self, input_shape):
        return self.summary(input_shape).output_shape

    def flops(self, input_shape):
        return self.summary(input_shape).total_flops

    def predict(self, x, batch_size: int = 200, max_activation_bytes: int | None = None, *, normalize=None):
        """Outputs for ``x`` in evaluation mode, ``batch_size`` samples at a time (bounded memory).

        The default, 200, was the fastest of the chunks tried (100 to 300) for the MNIST model
        on 2 cores: 1.05-1.14x the speed of 100 in an alternating A/B (1.03-1.06x with AVX2
        kernels), for a peak of 183 MB instead of 127 MB. Larger chunks were slower again.

        Memory stays bounded whatever the architecture: a chunk holds at most as many samples
        as fit in ``max_activation_bytes`` (default ``MAX_ACTIVATION_BYTES``, 1 GiB) by the
        architecture's own count (``activation_bytes``), and ``ActivationLimitError`` (a
        ValueError) refuses, before anything is allocated, a model whose single sample needs more.

        An empty batch gives ``(0, *output_shape)`` in the dtype a forward pass would give: the
        per-sample shape is known from ``x.shape[1:]`` even without samples. ``x`` may live on
        any device: each chunk moves to the model's, and the outputs stay there.
        Or ``x`` is a ``data.Dataset``, whose images ``normalize`` turns into inputs (``predict_dataset``).
        """
        if batch_size < 1:
            raise ValueError(f"predict: batch_size must be >= 1, got {batch_size}")
        if is_dataset(x) or normalize is not None:
            return predict_dataset(self.predict, x, batch_size, normalize, max_activation_bytes)
        limit = memory.MAX_ACTIVATION_BYTES if max_activation_bytes is None else int(max_activation_bytes)
        per_sample = None if not hasattr(x, "shape") else \
            self.activation_bytes(tuple(x.shape[1:]), getattr(x, "dtype", None), quiet=True)
        if per_sample is not None:
            check_activation_bytes(per_sample, tuple(x.shape[1:]), limit, "predict: ")
            batch_size = max(1, min(batch_size, limit // max(per_sample, 1)))
        device = self.device
        if len(x) == 0:
            # Shape and dtype of the output as one sample would give them (an empty batch
            # cannot pass through Flatten's reshape); also checks the per-sample shape.
            one = to_device(np.zeros((1,) + tuple(x.shape[1:]), x.dtype), device)
            return self.forward(one, training=False)[:0]
        outs = [self.forward(to_device(x[i:i + batch_size], device), training=False)
                for i in range(0, len(x), batch_size)]
        return xp_of(outs[0]).concatenate(outs)

    def activation_bytes(self, input_shape, dtype=None, quiet: bool = False):
        """Bytes one sample of per-sample ``input_shape`` needs on its way through the network
        (``activation_elements`` of every layer, in the wider of ``dtype`` and the weights'),
        from the architecture alone; None with ``quiet`` when the shape does not fit (the
        forward pass then says why), else that ValueError."""
        try:
            elements = self.summary(input_shape).activation_elements
        except (ValueError, TypeError):
            if quiet:
                return None
            raise
        sizes = [np.dtype(p.data.dtype).itemsize for p in self.parameters()]
        if dtype is not None and np.dtype(dtype).kind == "f":
            sizes.append(np.dtype(dtype).itemsize)
        return elements * max(sizes or [4])

    # -- state -------------------------------------------------------------------------

    def named_parameters(self):
        """``[("0.weight", p), ("0.bias", p), ...]`` in layer order (a layer used twice, once)."""
        return [(f"{i}.{n}", p) for i, layer in enumerate(self.layers) for n, p in _named(layer, "parameters")]

    def named_buffers(self):
        """``[("2.running_mean", b), ...]``: saved state that no optimizer touches (see ``Layer.buffers``)."""
        return [(f"{i}.{n}", b) for i, layer in enumerate(self.layers) for n, b in _named(layer, "buffers")]

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def buffers(self):
        return [b for _, b in self.named_buffers()]

    def astype(self, dtype):
        for layer in self.layers:
            layer.astype(dtype)
        return self

    def state_dict(self) -> dict:
        """``{"0.weight": array, ..., "2.running_mean": array}``: parameters and buffers (the arrays
        themselves, not copies)."""
        return {name: p.data for name, p in self.named_parameters() + self.named_buffers()}

    def load_state_dict(self, state: dict) -> None:
        """Copy weights in, checking names, shapes, dtypes and values first so nothing is half-loaded.

        Raises ValueError for a missing or unexpected name, a shape that differs from the
        model's, an array that is not float32/float64, a NaN/infinite weight, or a buffer its
        layer refuses (e.g. a negative BatchNorm ``running_var``).
        """
        named = self.named_parameters() + self.named_buffers()
        if not isinstance(state, dict):
            raise ValueError(f"load_state_dict: expected a dict of arrays, got {type(state).__name__}")
        missing = [n for n, _ in named if n not in state]
        extra = sorted(set(state) - {n for n, _ in named})
        if missing or extra:
            raise ValueError(f"load_state_dict: parameters do not match this model (missing {missing}, "
                             f"unexpected {extra})")
        for name, p in named:
            check_weight_header(name, getattr(state[name], "shape", None), getattr(state[name], "dtype", None),
                                p.data.shape)
        problem = self.state_problem(state)
        if problem:
            raise ValueError(f"load_state_dict: {problem}")
        for name, p in named:
            p.assign(state[name])

    def named_buffer_owners(self):
        """``[(name, layer, local name)]`` for every buffer: the layer that keeps it and judges it."""
        out = []
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Network):
                out += [(f"{i}.{n}", owner, local) for n, owner, local in layer.named_buffer_owners()]
            else:
                out += [(f"{i}.{n}", layer, n) for n, _ in _named(layer, "buffers")]
        return out

    def state_problem(self, state=None) -> str | None:
        """Why ``state`` (default: the model's own) could not be loaded into this model, None if it
        could: a NaN or infinite value, or a buffer its layer refuses (``Layer.buffer_problem``).
        ``load_state_dict`` and ``jn.load`` refuse such a state, and ``save`` never writes one."""
        state = self.state_dict() if state is None else state
        if not all_finite(state.values()):
            bad = next(n for n, a in state.items() if not all_finite([a]))
            return f"{bad} contains NaN or infinite values"
        for name, layer, local in self.named_buffer_owners():
            if name in state:
                why = layer.buffer_problem(local, state[name])
                if why:
                    return f"{name} {why}"
        return None

    def rng_states(self) -> dict:
        """Bit-generator states of layers that draw random numbers (e.g. Dropout), by index
        (``"3"``; ``"3.1"`` for layer 1 of a network that is layer 3). A layer used at several
        nodes of a graph has one stream, saved once."""
        states = {}
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Network):
                states.update({f"{i}.{k}": st for k, st in layer.rng_states().items()})
            elif isinstance(getattr(layer, "rng", None), np.random.Generator):
                states[str(i)] = layer.rng.bit_generator.state
        return states

    def set_rng_states(self, states: dict) -> None:
        nested = {}
        for key, st in states.items():
            i, _, rest = key.partition(".")
            if rest:
                nested.setdefault(int(i), {})[rest] = st
            else:
                self.layers[int(i)].rng.bit_generator.state = st
        for i, sub in nested.items():
            self.layers[i].set_rng_states(sub)

    def save(self, path, metadata: dict | None = None) -> None:
        """Write weights and architecture to one ``.npz`` (atomically; no pickles).

        Args:
            path: file to write.
            metadata: optional JSON-able dict stored alongside (e.g. training config).

        Raises ValueError, writing nothing, when the state is one ``jn.load`` would refuse
        (NaN or infinite values, a negative BatchNorm variance: ``state_problem``).
        """
        problem = self.state_problem()
        if problem:
            raise ValueError(f"cannot save {path}: {problem}; jn.load would refuse the file (did training "
                             "diverge? a lower learning rate may help)")
        meta = {"format": MODEL_FORMAT, "version": 1, "jimunet": __version__,
                "architecture": self.get_config(), "metadata": metadata or {}}
        save_npz(path, {f"param/{k}": to_numpy(v) for k, v in self.state_dict().items()}, meta)  # host arrays

    def copy(self):
        """A deep copy (weights, gradients, buffers and RNG states)."""
        return copy.deepcopy(self)


class Sequential(Network):
    """Layers applied in order; ``backward`` runs them in reverse.

    Args:
        layers: a list of ``Layer`` objects.
        fuse: run each ``ReLU → MaxPool2D`` pair as ``MaxPool2D → ReLU``. Max commutes
            with ReLU, and so does the choice of the first maximum, so outputs and
            gradients are identical, while ReLU touches 4× fewer values (for 2×2 pools).
            And run each ``BatchNorm → ReLU`` as one pass (``layers.activations.fused_relu``,
            bit for bit the same). ``False`` runs the layers one by one, in list order.

    Only the first layer scans the input for NaN; the others check shapes and dtypes but
    skip that data pass over results the model made itself (a NaN arising inside the
    network, from overflow, still shows in the loss).

    Example:
        >>> import numpy as np, jimunet as jn
        >>> m = jn.Sequential([jn.layers.Flatten(), jn.layers.Dense(4, 3)])
        >>> m.forward(np.zeros((2, 2, 2), np.float32)).shape
        (2, 3)
        >>> m.summary((2, 2)).total_params
        15
    """

    def __init__(self, layers, fuse: bool = True):
        layers = list(layers)
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise ValueError(f"Sequential: item {i} is a {type(layer).__name__}, not a jimunet Layer")
        self.layers = layers
        self.fuse = check_bool("Sequential", "fuse", fuse)

    @property
    def cache(self):
        """The per-call caches of its layers, in layer order (see ``Layer.cache``)."""
        return [layer.cache for layer in self.layers]

    @cache.setter
    def cache(self, caches):
        for layer, c in zip(self.layers, caches or [None] * len(self.layers)):
            layer.cache = c

    def _order(self):
        """Indices of the layers in the order they run (see ``fuse``)."""
        order = list(range(len(self.layers)))
        if self.fuse:
            i = 0
            while i < len(order) - 1:
                if isinstance(self.layers[i], ReLU) and isinstance(self.layers[i + 1], MaxPool2D):
                    order[i], order[i + 1] = i + 1, i
                    i += 1
                i += 1
        return order

    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def __getitem__(self, i):
        return self.layers[i]

    def describe(self):
        return f"Sequential({len(self.layers)} layers)"

    def forward(self, x, training: bool = False, stages: slice = slice(None)):
        """The output for batch ``x``. ``stages``: run only these positions of the run order
        (e.g. ``slice(0, k)`` then ``slice(k, None)`` computes the same in two parts)."""
        order = self._order()
        positions = range(*stages.indices(len(order)))
        if positions and positions[0] == 0:
            x, done = self._step(x, training, order, 0, positions.stop)
            positions = positions[done:]
        with data_already_checked():  # the first layer scanned the data for NaN
            k = positions.start
            while k < positions.stop:
                x, done = self._step(x, training, order, k, positions.stop)
                k += done
        return x

    def _step(self, x, training, order, k, stop):
        """Run position ``k``, or ``k`` and ``k + 1`` as one (``fused_relu``): ``(output, positions run)``."""
        layer = self.layers[order[k]]
        if self.fuse and k + 1 < stop and fused_relu(layer, self.layers[order[k + 1]]):
            return layer.forward_relu(x, training, self.layers[order[k + 1]]), 2
        return layer.forward(x, training=training), 1

    def backward(self, grad, input_grad: bool = True, stages: slice = slice(None)):
        """Back-propagate ``grad``; with ``input_grad=False`` the first layer skips dX (returns None).
        ``stages``: only these positions of the run order, as in ``forward``."""
        order = self._order()
        for k in reversed(range(*stages.indices(len(order)))):
            grad = self.layers[order[k]].backward(grad, input_grad=input_grad or k > 0)
        return grad if input_grad else None  # layers without parameters ignore input_grad

    def stages_output_shape(self, input_shape, stages: slice) -> tuple:
        """The per-sample shape that positions ``stages`` of the run order turn ``input_shape`` into."""
        order, shape = self._order(), tuple(input_shape)
        for k in range(*stages.indices(len(order))):
            shape = tuple(self.layers[order[k]].output_shape(shape))
        return shape

    def per_sample_stages(self) -> int:
        """How many stages, from the input on in run order, are layers that compute each
        sample on its own (``Layer.per_sample``: convolutions, pooling, activations, dropout,
        flatten). A data-parallel process runs these on its share of the batch alone."""
        order = self._order()
        k = 0
        while k < len(order) and self.layers[order[k]].per_sample:
            k += 1
        return k

    def summary(self, input_shape) -> Summary:
        """Shapes, parameters and FLOPs per layer, computed by flowing ``input_shape`` through.

        Args:
            input_shape: per-sample shape, e.g. ``(28, 28, 1)`` (a leading ``None`` batch
                axis is dropped).

        Raises ValueError naming the first layer that cannot take its input.
        """
        shape = tuple(input_shape)
        if shape and shape[0] is None:
            shape = shape[1:]
        start, rows = shape, []
        for i, layer in enumerate(self.layers):
            try:
                out = tuple(layer.output_shape(shape))
            except ValueError as e:
                raise ValueError(f"layer {i} ({layer.describe()}) cannot take input {shape_str(shape)}: {e}") from None
            rows.append({"layer": layer.describe(), "output_shape": out,
                         "params": sum(p.size for p in layer.parameters()), "flops": int(layer.flops(shape)),
                         "activations": activation_elements(layer, shape, out)})
            shape = out
        return Summary(start, rows)

    def get_config(self) -> dict:
        return {"layers": [{"class": type(layer).__name__, "config": layer.get_config()} for layer in self.layers],
                "fuse": self.fuse}

    @classmethod
    def from_config(cls, config: dict) -> "Sequential":
        """Rebuild from ``get_config()``; ValueError naming the field or layer for a malformed one."""
        if not isinstance(config, dict):
            raise ValueError(f"a Sequential's description must be an object, got {type(config).__name__}")
        layers, fuse = config.get("layers"), config.get("fuse", True)
        if not isinstance(layers, list):
            raise ValueError(f"'layers' must be a list of layer descriptions, got {type(layers).__name__}")
        if len(layers) > MAX_LAYERS:
            raise ValueError(f"'layers' lists {len(layers):,} layers; at most {MAX_LAYERS:,} are built")
        if not isinstance(fuse, bool):
            raise ValueError(f"'fuse' must be true or false, got {fuse!r}"[:200])
        return cls([from_config(c, where=f"layer {i}") for i, c in enumerate(layers)], fuse=fuse)



def build_architecture(arch, path):
    """The model (``Sequential`` or ``jn.Model``) a file's architecture describes, with placeholder
    parameters; ``CheckpointError`` naming ``path`` and the field when it cannot be built.

    Every importer builds through here (``jn.load``, ``jimunet.onnx``), so a description is
    checked the same way whatever file it came from: its nesting and size first, then each
    layer's arguments by the layer's own constructor."""
    def refuse(why):
        return CheckpointError(f"{path}: cannot rebuild the architecture it describes: {why}")
    if not isinstance(arch, dict):
        raise refuse(f"the description is {json_kind(arch)}, not an object")
    if json_depth(arch) > MAX_META_DEPTH:
        raise refuse(f"it is nested more than {MAX_META_DEPTH} levels deep")
    kind = arch.get("class", "Sequential")
    if kind not in ("Sequential", *_NETWORKS) or not isinstance(kind, str):
        raise refuse(f"'class' must be one of {['Sequential', *sorted(_NETWORKS)]}, got "
                     f"{json_kind(kind) if not isinstance(kind, str) else repr(kind[:80])}")
    for key in ("layers", "nodes"):
        c = arch.get(key)
        if isinstance(c, list) and len(c) > MAX_LAYERS:
            raise refuse(f"it describes {len(c):,} {key}; at most {MAX_LAYERS:,} are built")
    try:
        with placeholder_parameters():
            return (_NETWORKS[kind] if kind in _NETWORKS else Sequential).from_config(
                {k: v for k, v in arch.items() if k != "class" or kind != "Sequential"})
    except RecursionError:
        raise refuse("it is nested too deeply") from None
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError) as e:
        raise refuse(str(e) or "malformed") from None


def load(path, max_bytes: int | None = None, input_shape=None, max_activation_bytes: int | None = None):
    """Rebuild a ``Sequential`` or a graph ``jn.Model`` saved with ``model.save(path)``.

    The file is untrusted: its architecture is built with placeholder parameters (no
    memory, no random draws: loading leaves ``jn.set_seed``'s Generator alone), every layer's
    arguments are checked by its constructor, the stored arrays' names, shapes and dtypes are
    checked against it from the .npy headers, and only then is any weight read; every weight
    must be finite and every buffer one its layer accepts (a BatchNorm variance is >= 0).

    The memory one sample needs on its way through the model is bounded too, from the
    architecture alone, for the input shape the model is for (``input_shape``, else the one the
    file records: a graph's inputs or the metadata's ``input_shape``): at most
    ``max_activation_bytes`` (default ``MAX_ACTIVATION_BYTES``, 1 GiB). ``predict`` bounds the
    same for whatever shape it is given.

    Args:
        path: a file written by ``Sequential.save``.
        max_bytes: bound on the weights' total size (default
            ``jimunet.serialization.MAX_LOAD_BYTES``, 1 GiB).
        input_shape: the per-sample shape the model will be given, e.g. ``(28, 28, 1)``.
        max_activation_bytes: bound on one sample's intermediate results (see above).

    Raises ``CheckpointError`` (a ValueError) for a corrupt file, a file of another kind,
    an architecture that cannot be built, weights that do not fit the described architecture,
    weights that are not finite float32/float64 values, or a model over the activation bound.
    """
    with NpzReader(path, kind=MODEL_FORMAT) as reader:
        meta = reader.meta
        metadata = meta.get("metadata", {})
        if not isinstance(metadata, dict):
            raise CheckpointError(f"{path}: its metadata is {json_kind(metadata)}, not an object")
        model = build_architecture(meta.get("architecture"), path)
        if input_shape is None and isinstance(model, Sequential):  # a graph records its input shapes itself
            input_shape = recorded_input_shape(metadata)
        if input_shape is not None or not isinstance(model, Sequential):  # else predict bounds it
            try:
                check_network_activations(model, input_shape, max_activation_bytes)
            except ActivationLimitError as e:
                raise CheckpointError(f"{path}: {e}") from None
        named = model.named_parameters() + model.named_buffers()
        stored = {k[len("param/"):]: h for k, h in reader.headers.items() if k.startswith("param/")}
        others = sorted(k for k in reader.headers if not k.startswith("param/"))
        missing = [n for n, _ in named if n not in stored]
        extra = sorted(set(stored) - {n for n, _ in named})
        if missing or extra or others:
            raise CheckpointError(f"{path}: the stored weights do not match this model, the architecture the file "
                                  f"describes (missing {missing[:10]}, unexpected {(extra + others)[:10]})")
        try:
            for name, p in named:
                check_weight_header(name, stored[name].shape, stored[name].dtype, p.data.shape, where="the weight ")
        except ValueError as e:
            raise CheckpointError(f"{path}: {e}") from None
        reader.check_size(max_bytes)
        weights = {}
        for name, p in named:
            w = reader.read(f"param/{name}")
            if not np.isfinite(w).all():
                raise CheckpointError(f"{path}: the weight {name} {w.shape} contains NaN or infinite values")
            weights[name] = w
        problem = model.state_problem(weights)
        if problem:
            raise CheckpointError(f"{path}: the stored {problem}")
        for name, p in named:
            p.assign(weights[name])
    model.metadata = metadata
    return model
