"""bench.py's ``cifar`` and ``airbench`` tasks: a recipe's training step (forward, label-smoothed
loss, backward, Nesterov SGD with its param groups) and inference, in jimunet and in the PyTorch
port, on random 32×32×3 batches: ``airbench=False`` the narrow ResNet-9 (batch 256,
benchmarks/cifar_torch.py), ``True`` the CIFAR-10 recipe (batch 1024, benchmarks/airbench_torch.py;
its lookahead, every 5 steps, is left out of both). ``time_fn(step, warm, iters)`` is bench.py's
timer."""
from __future__ import annotations

import numpy as np

import airbench_torch
import cifar_torch
from bench_steps import jimunet_step


def data(batch):
    rng = np.random.default_rng(0)
    return rng.standard_normal((batch, 32, 32, 3)).astype(np.float32), rng.integers(0, 10, batch).astype(np.int64)


def run_jimunet(kind, batch, warm, iters, threads, time_fn, airbench=False):
    import jimunet as jn
    from jimunet.app.recipes import AIRBENCH_DEFAULTS, CIFAR_DEFAULTS, MNISTConfig, build
    if threads and hasattr(jn, "set_num_threads"):
        jn.set_num_threads(threads)
    x, y = data(batch)
    cfg = MNISTConfig(data="cifar10", **(AIRBENCH_DEFAULTS if airbench else CIFAR_DEFAULTS))
    model, loss_fn, opt, _ = build(cfg, train_size=45000, input_shape=(32, 32, 3))
    if airbench:
        model.layers[0].weight.data[...] = jn.init.patch_whitening(x[:500], 2)
    if kind == "infer":
        return time_fn(lambda: model.predict(x), warm, iters)
    opt.set_lr(0.1)
    return time_fn(jimunet_step(model, loss_fn, opt, x, y), warm, iters)


def run_torch(kind, batch, warm, iters, threads, time_fn, airbench=False):
    import torch
    torch.set_num_threads(threads)
    x, y = data(batch)
    x, y = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(y)
    port = airbench_torch if airbench else cifar_torch
    net = port.build_net()
    port.init_like_jimunet(net, 0)
    if airbench:
        airbench_torch.whiten_from(net, x[:500])
        net.whiten.weight.requires_grad_(False)
        for bn in net.bns:
            bn.weight.requires_grad_(False)
    if kind == "infer":
        net.eval()
        with torch.no_grad():
            return time_fn(lambda: net(x), warm, iters)
    opt = port.make_optimizer(net)
    for g in opt.param_groups:
        g["lr"] = 0.1
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=port.SMOOTHING)

    def step():
        opt.zero_grad()
        loss_fn(net(x), y).backward()
        opt.step()
    return time_fn(step, warm, iters)
