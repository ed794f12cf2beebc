"""What the importer reads from disk and checks before building anything (imports ``onnx``).

An ONNX file is untrusted. Its size and the declared sizes of its external data are held to
the byte budget ``jn.load`` uses (``max_bytes``, default ``MAX_LOAD_BYTES``, 1 GiB) before
anything is read; external data comes only from regular, non-hidden files inside the model's
directory, and the tensors that name a file must cover it exactly (each one where the last
ended, or after an alignment gap of under 64 KiB, the last one ending at the file's end), so a
model cannot copy other bytes of a file into the weights. ONNX's checker runs on a skeleton of
the model whose large tensors are stand-ins: it never reads a file itself, and never copies
the weights (the importer checks their sizes and values as it reads them).
"""
from __future__ import annotations

import math
import os

import numpy as np
import onnx
from onnx import TensorProto, helper

from .._messages import shown
from ..model import MAX_LAYERS
from ..serialization import MAX_LOAD_BYTES
from ._errors import ONNXError

MAX_ALIGNMENT_GAP = 65536    # bytes an exporter may leave between tensors in one file (to align them)
MAX_NODES = 4 * MAX_LAYERS   # nodes (and initializers, value_info) of a graph: a layer takes a few at most
_GRAPH_LISTS = {1: "nodes", 5: "initializers", 13: "value_info entries"}  # GraphProto's field numbers
_STUB_ABOVE = 4096           # tensors with more data than this are stand-ins in the checked skeleton


def byte_limit(max_bytes) -> int:
    """The byte budget: ``max_bytes``, or ``MAX_LOAD_BYTES`` (as ``jn.load``)."""
    if max_bytes is None:
        return MAX_LOAD_BYTES
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)) or max_bytes < 0:
        raise ONNXError(f"max_bytes must be a non-negative int (bytes), got {shown(max_bytes)}")
    return int(max_bytes)


def over_budget(what: str, size: int, limit: int) -> ONNXError:
    return ONNXError(f"{what} {size:,} bytes, over the limit of {limit:,} bytes (pass max_bytes=... to "
                     "import a model this large)")


def read_model_file(path, max_bytes=None):
    """``(proto, file size)`` of the ONNX file ``path``, its size checked before it is read."""
    path = os.fspath(path)
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path!r}")
    size, limit = os.path.getsize(path), byte_limit(max_bytes)
    if size > limit:
        raise over_budget(f"{path}: the file has", size, limit)
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    cost, counts = parse_cost(data, limit)
    check_counts(counts, path)
    if cost > limit:
        raise ONNXError(f"{path}: parsing it would take more than {limit:,} bytes (it holds very many small "
                        "messages or numbers); pass max_bytes=... to import a model this large")
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception as e:  # noqa: BLE001 - protobuf raises DecodeError, ValueError, RuntimeError, ...
        why = str(e).strip().splitlines()[0][:200] if str(e).strip() else "it cannot be parsed"
        raise ONNXError(f"{path}: not a readable ONNX file ({why}); it may be truncated or corrupt") from None
    return proto, len(data)


def check_counts(counts, source):
    """``ONNXError`` when a graph lists more than ``MAX_NODES`` of anything in ``counts`` ({what: n})."""
    if counts.get("messages", 0) > MAX_MESSAGES:
        raise ONNXError(f"{source}: the file holds more than {MAX_MESSAGES:,} protobuf messages; jimunet imports "
                        f"graphs of at most {MAX_NODES:,} nodes")
    for what, n in counts.items():
        if what != "messages" and n > MAX_NODES:  # (counting stops there)
            raise ONNXError(f"{source}: the graph has more than {MAX_NODES:,} {what}; jimunet imports at most "
                            f"{MAX_NODES:,} (its models have at most {MAX_LAYERS:,} layers)")


def _varint(data, i):
    value = shift = 0
    while shift < 64:
        b = data[i]
        value |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return value, i
        shift += 7
    raise ValueError("varint too long")


def _fields(data, start, end):
    """``(field number, wire type, start, end)`` of each field in ``data[start:end]`` (protobuf's wire
    format; ``start:end`` is the payload of a length-delimited field); ValueError where malformed."""
    i = start
    while i < end:
        key, i = _varint(data, i)
        wire, begin = key & 7, i
        if wire == 0:
            i = _varint(data, i)[1]
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        elif wire == 2:
            n, begin = _varint(data, i)
            i = begin + n
        else:
            raise ValueError(f"wire type {wire}")
        if i > end:
            raise ValueError("truncated")
        yield key >> 3, wire, begin, i


_MESSAGE_BYTES = 256   # what the parser allocates per message, about (1,000,000 small nodes: ~430 MB)
MAX_MESSAGES = 1_000_000  # messages in one file (a graph of MAX_NODES nodes needs a few hundred thousand)
_VARINT_TYPES = {3, 4, 5, 8, 13, 14, 17, 18}  # int64, uint64, int32, bool, uint32, enum, sint32, sint64
_MAX_DEPTH = 100       # protobuf's own nesting limit


def parse_cost(data, limit):
    """``(bytes the parser would allocate, about; {what: count} of the graph's lists})`` of a serialized
    ModelProto, from its wire format and ONNX's schema, before it is parsed: a file of tiny
    messages or packed small ints takes many times its size once parsed. The scan stops once
    the estimate passes ``limit``. ``(0, {})`` for bytes that are not well formed (the parser
    then says why)."""
    counts = dict.fromkeys(_GRAPH_LISTS.values(), 0)
    cost = messages = 0

    def walk(start, end, descriptor, depth):
        nonlocal cost, messages
        if depth > _MAX_DEPTH:
            raise ValueError("nested too deeply")
        for number, wire, begin, stop in _fields(data, start, end):
            fd = descriptor.fields_by_number.get(number) if descriptor is not None else None
            if wire != 2 or fd is None:
                cost += 8 if wire != 2 else stop - begin
            elif fd.type == fd.TYPE_MESSAGE:
                cost += _MESSAGE_BYTES
                messages += 1
                if messages > MAX_MESSAGES:
                    counts["messages"] = messages
                    return
                if descriptor is onnx.GraphProto.DESCRIPTOR and number in _GRAPH_LISTS:
                    counts[_GRAPH_LISTS[number]] += 1
                    if counts[_GRAPH_LISTS[number]] > MAX_NODES:
                        return  # check_counts says so
                walk(begin, stop, fd.message_type, depth + 1)
            else:  # bytes, a string, or packed numbers (a varint of 1 byte becomes 8, in an array grown by doubling)
                cost += (stop - begin) * (16 if fd.type in _VARINT_TYPES else 1)
            if cost > limit or messages > MAX_MESSAGES:
                return

    try:
        walk(0, len(data), onnx.ModelProto.DESCRIPTOR, 0)
    except (ValueError, IndexError):
        return 0, {}
    finally:
        walk = None  # noqa: F841 - the recursive closure refers to itself: break the cycle that would keep data
    return cost, counts


# -- external data ---------------------------------------------------------------------------

def _external_info(t, what):
    info = {}
    for e in t.external_data:
        if e.key in info:
            raise ONNXError(f"{what}: its external_data lists {e.key!r} twice")
        info[e.key] = e.value
    return info


def _inside(base_dir, loc, what):
    """The real path of external file ``loc``: relative, inside ``base_dir``, not hidden, a regular file."""
    if not loc or os.path.isabs(loc) or os.path.splitdrive(loc)[0] or "\0" in loc:
        raise ONNXError(f"{what}: expected a relative path inside the model's directory")
    base = os.path.realpath(base_dir)
    full = os.path.realpath(os.path.join(base, loc))
    if os.path.commonpath([full, base]) != base:
        raise ONNXError(f"{what}, which lies outside the model's directory {base}; jimunet reads external "
                        "data only from files inside that directory")
    parts = [p for p in loc.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    parts += os.path.relpath(full, base).split(os.sep)
    if any(p.startswith(".") and p not in (".", "..") for p in parts):
        raise ONNXError(f"{what}: a hidden file or folder (a name starting with '.'); jimunet reads external "
                        "data only from visible files next to the model")
    if not os.path.isfile(full):
        raise ONNXError(f"{what}, which does not exist or is not a regular file (looked for {full})")
    return full


def external_tensors(proto, base_dir, source, embedded, limit):
    """``{initializer name: (file, offset, length, dtype, dims)}`` for the tensors kept in external files.

    Everything is checked from the declared sizes and the files' sizes, before any is read:
    the paths, the total with the ``embedded`` bytes of the model itself against ``limit``, and
    that the tensors naming each file cover it exactly.
    """
    for node in proto.graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_location == TensorProto.EXTERNAL:
                raise ONNXError(f"{source}: node {node.name or node.op_type!r} keeps its attribute {a.name!r} in "
                                "an external file; jimunet reads external data only for initializers")
    found, spans, total = {}, {}, 0
    for t in proto.graph.initializer:
        if t.data_location != TensorProto.EXTERNAL:
            continue
        info = _external_info(t, f"{source}: weight {t.name!r}")
        loc = info.get("location", "")
        what = f"{source}: weight {t.name!r} keeps its data in an external file {loc[:200]!r}"
        if base_dir is None:
            raise ONNXError(f"{what}; load the model with jn.onnx.load(path) so that file can be found next to it")
        if t.name in found:
            raise ONNXError(f"{what}: two initializers are named {t.name!r}")
        full = _inside(base_dir, loc, what)
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type))
        except (KeyError, ValueError, TypeError):
            dtype = None
        if dtype is None or dtype.kind not in "fiub" or t.data_type == TensorProto.STRING:
            raise ONNXError(f"{what} of data type {t.data_type}; jimunet reads external float (or integer) tensors")
        if any(d < 0 for d in t.dims):
            raise ONNXError(f"{what} with negative dimensions {list(t.dims)}")
        expected = math.prod(t.dims) * dtype.itemsize
        try:
            offset = int(info.get("offset", 0))
            length = int(info.get("length", expected))
        except ValueError:
            raise ONNXError(f"{what} with an unreadable offset or length ({info.get('offset')!r}, "
                            f"{info.get('length')!r}); expected integers") from None
        if offset < 0 or length != expected:
            raise ONNXError(f"{what}: its shape {list(t.dims)} needs {expected:,} bytes, but it declares {length:,} "
                            f"bytes at offset {offset:,}")
        total += expected
        if embedded + total > limit:
            raise over_budget(f"{source}: with its external data ({total:,} bytes declared so far) the model has",
                              embedded + total, limit)
        found[t.name] = (full, offset, length, dtype, tuple(t.dims))
        spans.setdefault(full, []).append((offset, length, t.name))
    for full, ranges in spans.items():
        _check_covered(full, sorted(ranges), source)
    return found


def _check_covered(full, ranges, source):
    """The tensors ``(offset, length, name)`` in ``full`` tile it, up to alignment gaps."""
    size, end = os.path.getsize(full), 0
    for offset, length, name in ranges:
        gap = offset - end
        if gap < 0:
            raise ONNXError(f"{source}: weight {name!r} overlaps another tensor in the external file "
                            f"{os.path.basename(full)!r} (it starts at byte {offset:,}, the previous one ends at "
                            f"{end:,})")
        if gap >= MAX_ALIGNMENT_GAP:
            raise ONNXError(f"{source}: weight {name!r} starts {gap:,} bytes after the previous tensor in the external "
                            f"file {os.path.basename(full)!r}; jimunet accepts only alignment gaps under "
                            f"{MAX_ALIGNMENT_GAP:,} bytes between a file's tensors")
        end = offset + length
    if size != end:
        raise ONNXError(f"{source}: the external file {os.path.basename(full)!r} has {size:,} bytes, but the "
                        f"tensors it holds end at byte {end:,}; jimunet reads only files whose length matches the "
                        "tensors they hold exactly (it may be truncated, or not this model's data)")


def read_external(found):
    """``{name: array}`` of the tensors ``external_tensors`` checked (little-endian, as ONNX stores)."""
    out = {}
    for name, (full, offset, length, dtype, dims) in found.items():
        with open(full, "rb") as f:
            f.seek(offset)
            data = f.read(length)
        if len(data) != length:
            raise ONNXError(f"the external file {os.path.basename(full)!r} changed while it was read")
        out[name] = np.frombuffer(data, dtype.newbyteorder("<")).reshape(dims)
    return out


# -- ONNX's checker, on a skeleton -----------------------------------------------------------

def _copy_fields(dst, src, skip):
    for fd, value in src.ListFields():
        if fd.name in skip:
            continue
        repeated = fd.is_repeated if hasattr(fd, "is_repeated") else fd.label == fd.LABEL_REPEATED
        if repeated:
            getattr(dst, fd.name).extend(value)
        elif fd.type == fd.TYPE_MESSAGE:
            getattr(dst, fd.name).CopyFrom(value)
        else:
            setattr(dst, fd.name, value)


def _stand_in(t):
    """A one-element tensor of ``t``'s name and type, or ``t`` itself when it is small or odd. (The
    importer checks a large tensor's data against its shape when it reads it: ``numpy_helper``
    refuses a mismatch; one no node reads is never read.)"""
    if t.data_location != TensorProto.EXTERNAL and t.ByteSize() <= _STUB_ABOVE:
        return t
    try:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    except (KeyError, ValueError, TypeError):
        return t if t.data_location != TensorProto.EXTERNAL else TensorProto(name=t.name, data_type=t.data_type)
    return TensorProto(name=t.name, data_type=t.data_type, dims=[1], raw_data=b"\0" * itemsize)


def check_skeleton(proto, source):
    """ONNX's checker on ``proto`` with large and external tensors replaced by stand-ins."""
    skel = onnx.ModelProto()
    _copy_fields(skel, proto, {"graph"})
    _copy_fields(skel.graph, proto.graph, {"initializer"})
    skel.graph.initializer.extend(_stand_in(t) for t in proto.graph.initializer)
    try:
        onnx.checker.check_model(skel)
    except Exception as e:  # noqa: BLE001 - ValidationError, and protobuf's errors of odd files
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else "it does not pass ONNX's checker"
        raise ONNXError(f"{source}: not a valid ONNX model: {first}") from None
