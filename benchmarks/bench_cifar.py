"""bench.py's recipe tasks: a recipe's training step (forward, loss, backward, Nesterov SGD with
its param groups) and inference, in jimunet and in the PyTorch port, on random batches. ``net``:
``"cifar"`` the narrow ResNet-9 (32×32×3, batch 256, benchmarks/cifar_torch.py), ``"airbench"``
the CIFAR-10 recipe (``CIFAR10_DEFAULTS``: 32×32×3, batch 1024, GELU; benchmarks/airbench_torch.py;
its lookahead, every 5 steps, is left out of both), ``"resnet"`` the ``--model resnet`` recipe's ``mnist_resnet``
(28×28×1, batch 128, benchmarks/resnet_torch.py). ``time_fn(step, warm, iters)`` is bench.py's
timer."""
from __future__ import annotations

import numpy as np

import airbench_torch
import cifar_torch
import resnet_torch
from bench_steps import jimunet_step

NETS = ("cifar", "airbench", "resnet")


def data(batch, net="cifar"):
    rng = np.random.default_rng(0)
    shape = (28, 28, 1) if net == "resnet" else (32, 32, 3)
    return rng.standard_normal((batch, *shape)).astype(np.float32), rng.integers(0, 10, batch).astype(np.int64)


def run_jimunet(kind, batch, warm, iters, threads, time_fn, net="cifar"):
    import jimunet as jn
    from jimunet.app.recipes import CIFAR10_DEFAULTS, CIFAR_DEFAULTS, RESNET_DEFAULTS, MNISTConfig, build
    if threads and hasattr(jn, "set_num_threads"):
        jn.set_num_threads(threads)
    x, y = data(batch, net)
    defaults = {"cifar": CIFAR_DEFAULTS, "airbench": CIFAR10_DEFAULTS, "resnet": RESNET_DEFAULTS}[net]
    cfg = MNISTConfig(data="mnist" if net == "resnet" else "cifar10", **defaults)
    model, loss_fn, opt, _ = build(cfg, train_size=45000, input_shape=x.shape[1:])
    if net == "airbench":
        model.layers[0].weight.data[...] = jn.init.patch_whitening(x[:500], 2)
    if kind == "infer":
        return time_fn(lambda: model.predict(x), warm, iters)
    opt.set_lr(0.1)
    return time_fn(jimunet_step(model, loss_fn, opt, x, y), warm, iters)


def run_torch(kind, batch, warm, iters, threads, time_fn, net="cifar"):
    import torch
    torch.set_num_threads(threads)
    x, y = data(batch, net)
    x, y = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(y)
    port = {"cifar": cifar_torch, "airbench": airbench_torch, "resnet": resnet_torch}[net]
    model = port.build_net(**({"activation": port.ACTIVATION} if net == "airbench" else {}))
    getattr(port, "init_like_jimunet", cifar_torch.init_like_jimunet)(model, 0)
    if net == "airbench":
        airbench_torch.whiten_from(model, x[:500])
        model.whiten.weight.requires_grad_(False)
        for bn in model.bns:
            bn.weight.requires_grad_(False)
    if kind == "infer":
        model.eval()
        with torch.no_grad():
            return time_fn(lambda: model(x), warm, iters)
    opt = port.make_optimizer(model)
    for g in opt.param_groups:
        g["lr"] = 0.1
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=port.SMOOTHING)

    def step():
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    return time_fn(step, warm, iters)
