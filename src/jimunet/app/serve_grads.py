"""The JSON of ``jimunet serve``'s backward view: ``/api/backward``, ``/api/gradcheck``, ``/api/step``.

The computations are ``jimunet.app.backward``'s; this module reads the requests' fields and
turns the arrays into JSON the page paints. Gradient images are sent scaled: ``data`` holds
``value / scale`` rounded to 3 decimals (``scale`` = the largest magnitude), so one colour
scale centred at zero serves every tile; the exact value of any cell is what
``/api/gradcheck`` answers. The server keeps no state between requests: a request that comes
after SGD steps carries ``steps`` and ``lr`` and the steps are taken again from the file's
weights.
"""
from __future__ import annotations

import numpy as np

from ..layers import Dense
from .backward import TENSORS, backward_view, check_lrs, formula_key, formulas, gradcheck_cell, sgd_steps

FIELDS = ("target", "block", "tensor", "index", "steps", "lr")


def fields_from_query(query) -> dict:
    """The request's fields from a URL query (for a picture body): ``target``, ``block``,
    ``steps`` integers, ``tensor`` a name, ``index`` and ``lr`` comma-separated lists."""
    out = {}
    for name in FIELDS:
        raw = (query.get(name) or [None])[-1]
        if raw is None:
            continue
        try:
            if name == "tensor":
                out[name] = raw
            elif name == "index":
                out[name] = [int(v) for v in raw.split(",")]
            elif name == "lr":
                vals = [float(v) for v in raw.split(",")]
                out[name] = vals[0] if len(vals) == 1 else vals
            else:
                out[name] = int(raw)
        except ValueError:
            raise ValueError(f"{name} must be {'integers' if name == 'index' else 'a number'}, "
                             f"got {raw[:40]!r}") from None
    return out


def check_target(fields, n_classes: int, default: int) -> int:
    t = fields.get("target", default)
    if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= t < n_classes:
        raise ValueError(f'"target" must be a class index in 0..{n_classes - 1}, got {t!r}'[:200])
    return int(t)


def _scaled(a, digits=3):
    a = np.asarray(a, np.float64)
    scale = float(np.abs(a).max()) if a.size else 0.0
    return scale, np.round(a / (scale or 1.0), digits).tolist()


def tensor_json(a) -> dict:
    """One gradient (or activation) of one sample: ``(H, W, C)`` as channels × height × width,
    anything else flattened to a vector."""
    a = np.asarray(a)
    if a.ndim == 3:
        scale, data = _scaled(np.transpose(a, (2, 0, 1)))
        return {"shape": list(a.shape), "layout": "channels, height, width", "scale": scale, "data": data}
    scale, data = _scaled(a.reshape(-1))
    return {"shape": list(a.shape), "layout": "vector", "scale": scale, "data": data}


def weight_grad_json(layer, dw, x, dy) -> dict:
    """dL/dW of a Conv2D (``(cout, cin, kh, kw)`` tiles) or a Dense (``Xᵀ·dY``: for one image the
    outer product of the block's input and dY, sent as those two vectors)."""
    if isinstance(layer, Dense):
        sx, xs = _scaled(np.asarray(x).reshape(-1), 4)
        sy, ys = _scaled(np.asarray(dy).reshape(-1), 4)
        return {"shape": list(dw.shape), "layout": "outer(x, dy)", "scale": sx * sy, "x": xs, "dy": ys,
                "norm": float(np.linalg.norm(dw))}
    scale, data = _scaled(np.transpose(dw, (3, 2, 0, 1)))
    return {"shape": list(dw.shape), "layout": "out channels, in channels, height, width", "scale": scale,
            "data": data, "norm": float(np.linalg.norm(dw))}


def _algorithm(alg):
    if alg is None:
        return None
    name, tile = alg
    return {"name": name, "tile": None if tile is None else list(tile)}


def view_json(model, scaled, pixels, target: int, class_names, steps=0, lrs=(), moves=None) -> dict:
    """The answer of ``/api/backward`` for ``model`` (already stepped, if steps were asked for)."""
    view = backward_view(model, scaled, target)
    if not (np.isfinite(view.loss) and all(np.isfinite(g).all() for g in view.grads)):
        raise ValueError(f"the loss or its gradients are not finite after {steps} SGD steps; take fewer steps or a "
                         f"smaller learning rate" if steps else "the loss or its gradients are not finite for this "
                         f"image")
    blocks = []
    for i, layer in enumerate(model.layers):
        fw_bw = formulas(layer, view.algorithms[i])
        dw = view.weight_grads[i]
        rec = {"index": i, "name": layer.describe(), "kind": type(layer).__name__,
               "input_shape": list(view.inputs[i].shape), "output_shape": list(view.inputs[i + 1].shape),
               "formula_key": formula_key(layer, view.algorithms[i]),
               "forward": fw_bw[0] if fw_bw else None, "backward": fw_bw[1] if fw_bw else None,
               "algorithm": _algorithm(view.algorithms[i]), "grad_input": i, "grad_output": i + 1,
               "grad_input_norm": float(np.linalg.norm(view.grads[i])),
               "grad_output_norm": float(np.linalg.norm(view.grads[i + 1])),
               "weight_grad": None if dw is None else weight_grad_json(layer, dw, view.inputs[i], view.grads[i + 1])}
        if moves is not None:
            rec["weight_moved"] = moves[i]
        blocks.append(rec)
    probs = view.probabilities
    inp = np.asarray(view.inputs[0], np.float64)
    px = np.asarray(pixels, np.float64)
    if inp.shape[-1] == 1:
        inp, px = inp[..., 0], px[..., 0]
    return {"target": target, "predicted": int(np.argmax(probs)), "loss": view.loss,
            "probabilities": np.round(probs, 6).tolist(), "class_names": list(class_names),
            "input": inp.tolist(), "pixels": np.round(px, 1).tolist(), "steps": int(steps), "lr": list(lrs),
            "loss_formula": {"forward": "L = logsumexp(z) − z[target]",
                             "backward": "dL/dz = softmax(z) − onehot(target)"},
            "grads": [tensor_json(g) for g in view.grads], "blocks": blocks}


def stepped(model, scaled, target, fields):
    """``(model after the request's steps, lrs, losses, moves)``; the model itself if no steps."""
    steps = fields.get("steps", 0)
    lrs = check_lrs(steps, fields.get("lr", 0.01))
    if not lrs:
        return model, [], [], None
    m, losses, moves = sgd_steps(model, scaled, target, lrs)
    return m, lrs, losses, moves


def gradcheck_json(model, scaled, target, fields) -> dict:
    for name in ("block", "tensor", "index"):
        if name not in fields:
            raise ValueError(f'give "{name}": the block index, the tensor ({"|".join(TENSORS)}) and the index '
                             f"of one number in it")
    m, lrs, _, _ = stepped(model, scaled, target, fields)
    answer = gradcheck_cell(m, scaled, target, fields["block"], fields["tensor"], fields["index"])
    return dict(answer, target=target, steps=len(lrs))


def step_json(model, scaled, pixels, target, class_names, fields) -> dict:
    """``/api/step``: the backward view after the steps, plus the loss before each step, the
    probabilities before the first and how far each block's weights moved (‖ΔW‖/‖W‖)."""
    if "steps" not in fields:
        raise ValueError('give "steps": how many SGD steps to take from the file\'s weights (and "lr")')
    before = backward_view(model, scaled, target).probabilities
    m, lrs, losses, moves = stepped(model, scaled, target, fields)
    doc = view_json(m, scaled, pixels, target, class_names, len(lrs), lrs, moves)
    doc.update(losses=losses, probabilities_before=np.round(before, 6).tolist(),
               weights_moved=[{"block": i, "relative_change": v} for i, v in enumerate(moves or []) if v is not None])
    return doc



__all__ = ["fields_from_query", "check_target", "view_json", "gradcheck_json", "step_json", "tensor_json"]
