"""bench.py's ``cifar`` tasks: the ``--model cifar`` recipe's training step (batch 256: forward,
label-smoothed loss, backward, Nesterov SGD with weight decay on conv/Dense weights) and
inference, in jimunet and in the PyTorch port (benchmarks/cifar_torch.py), on random 32×32×3
batches. ``time_fn(step, warm, iters)`` is bench.py's timer."""
from __future__ import annotations

import numpy as np

import cifar_torch
from bench_steps import jimunet_step


def data(batch):
    rng = np.random.default_rng(0)
    return rng.standard_normal((batch, 32, 32, 3)).astype(np.float32), rng.integers(0, 10, batch).astype(np.int64)


def run_jimunet(kind, batch, warm, iters, threads, time_fn):
    import jimunet as jn
    from jimunet.app.recipes import CIFAR_DEFAULTS, MNISTConfig, build
    if threads and hasattr(jn, "set_num_threads"):
        jn.set_num_threads(threads)
    x, y = data(batch)
    cfg = MNISTConfig(data="cifar10", **CIFAR_DEFAULTS)
    model, loss_fn, opt, _ = build(cfg, train_size=45000, input_shape=(32, 32, 3))
    if kind == "infer":
        return time_fn(lambda: model.predict(x), warm, iters)
    opt.set_lr(0.1)
    return time_fn(jimunet_step(model, loss_fn, opt, x, y), warm, iters)


def run_torch(kind, batch, warm, iters, threads, time_fn):
    import torch
    torch.set_num_threads(threads)
    x, y = data(batch)
    x, y = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(y)
    net = cifar_torch.build_net()
    cifar_torch.init_like_jimunet(net, 0)
    if kind == "infer":
        net.eval()
        with torch.no_grad():
            return time_fn(lambda: net(x), warm, iters)
    opt = cifar_torch.make_optimizer(net)
    for g in opt.param_groups:
        g["lr"] = 0.1
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=cifar_torch.SMOOTHING)

    def step():
        opt.zero_grad()
        loss_fn(net(x), y).backward()
        opt.step()
    return time_fn(step, warm, iters)
