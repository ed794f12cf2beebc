"""``jimunet train --data cifar10 --model cifar`` (the airbench recipe) in PyTorch (CPU), the
reference for its accuracy and time.

The same network as ``jimunet.models.cifar_airbench`` (a 2×2 conv whitened on the first 5,000
training images' patches, three conv blocks, GELU in its tanh form (``--activation relu``: ReLU, as
``--model airbench``), BatchNorm eps 1e-12 and momentum 0.4, the
logits × 1/9 as airbench has them), the same recipe as ``CIFAR10_DEFAULTS`` (15 epochs, batch 1024, SGD
with Nesterov momentum 0.85, lr 1.5 from 0.2× over the first 23% of the steps to 1× and down to
0.07×, weight decay 0.0153/11.5 coupled as ``torch.optim.SGD`` has it; BatchNorm biases at 64×
the lr with 1/64 of the decay coefficient; BatchNorm scales and the whitening weights fixed;
the whitening bias trained for 3 epochs; lookahead every 5 steps; label smoothing 0.2; crops of
the image padded by 2 black pixels and flips; all training images trained on, none held out; tested over 6
views as ``FlipAverage(shift=1)``), on the same JPEG folder read with Pillow. What differs:
the random draws, so the two agree in distribution, not bit for bit.

    python benchmarks/airbench_torch.py /tmp/cifar10-jpeg/cifar10-jpeg [--epochs N] [--threads 2]
"""
from __future__ import annotations

import time

import numpy as np

import cifar_torch
from cifar_torch import accuracy, augment, end_epoch, load_data

WIDTHS, BATCH, LR, MOMENTUM, SMOOTHING, CROP, EPOCHS = (64, 128, 128), 1024, 1.5, 0.85, 0.2, 2, 15
WEIGHT_DECAY = 0.0153 / 11.5
WARMUP, LR_START, LR_END = 0.23, 0.2, 0.07
BIAS_LR, LOGIT_SCALE, WHITEN_IMAGES, WHITEN_BIAS_EPOCHS, LOOKAHEAD_EVERY = 64.0, 1 / 9, 5000, 3, 5
VALIDATION, TEST_SHIFT = 0, 1


ACTIVATIONS = ("relu", "gelu")  # as jimunet.models.cifar_airbench's; GELU in its tanh form
ACTIVATION = "gelu"  # CIFAR10_DEFAULTS's


def build_net(widths=WIDTHS, num_classes: int = 10, channels: int = 3, activation: str = "relu"):
    """airbench's network (ReLU for GELU unless ``activation="gelu"``) as a ``torch.nn.Module``
    on NCHW input: ``whiten``, ``convs``, ``bns`` (jimunet's order) and ``head``; ``forward``
    includes the 1/9 scale."""
    import torch
    nn = torch.nn
    act = torch.relu if activation == "relu" else lambda z: nn.functional.gelu(z, approximate="tanh")

    class Airbench(nn.Module):
        def __init__(self):
            super().__init__()
            self.whiten = nn.Conv2d(channels, 8 * channels, 2, padding=0, bias=True)
            plan, cin = [], 8 * channels
            for w in widths:
                plan += [(cin, w), (w, w)]
                cin = w
            self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding="same", bias=False) for a, b in plan)
            self.bns = nn.ModuleList(nn.BatchNorm2d(b, eps=1e-12, momentum=0.4) for _, b in plan)
            self.head = nn.Linear(cin, num_classes, bias=False)

        def forward(self, x):
            x = act(self.whiten(x))
            for i in range(0, len(self.convs), 2):
                x = act(self.bns[i](nn.functional.max_pool2d(self.convs[i](x), 2)))
                x = act(self.bns[i + 1](self.convs[i + 1](x)))
            x = nn.functional.max_pool2d(x, x.shape[2:])
            return self.head(x.flatten(1)) * LOGIT_SCALE

    return Airbench()


def init_like_jimunet(net, seed: int) -> None:
    """jimunet's initialisation scheme: PyTorch's default uniform, the first filters of each conv
    set to identities (``init.partial_dirac``); the whitening weights come from the data."""
    import torch
    torch.manual_seed(seed)
    with torch.no_grad():
        for conv in net.convs:
            conv.reset_parameters()
            torch.nn.init.dirac_(conv.weight[:conv.weight.shape[1]])
        net.head.reset_parameters()


def whiten_from(net, images) -> None:
    """``init.patch_whitening`` of the NCHW ``images`` into ``net.whiten`` (bias left at 0)."""
    import torch
    from jimunet.init import patch_whitening
    w = patch_whitening(images.permute(0, 2, 3, 1).double().numpy(), 2)
    with torch.no_grad():
        net.whiten.weight.copy_(torch.from_numpy(w.transpose(3, 2, 0, 1).copy()))
        net.whiten.bias.zero_()


def copy_from_jimunet(net, model) -> None:
    """Copy a ``cifar_airbench``'s parameters and statistics into ``net`` (its head × 9)."""
    import torch
    from jimunet.layers import BatchNorm, Conv2D
    convs = [l for l in model.layers if isinstance(l, Conv2D)]
    bns = [l for l in model.layers if isinstance(l, BatchNorm)]
    dtype = net.head.weight.dtype
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(dtype)  # noqa: E731
    with torch.no_grad():
        net.whiten.weight.copy_(t(convs[0].weight.data.transpose(3, 2, 0, 1)))
        net.whiten.bias.copy_(t(convs[0].bias.data))
        for src, dst in zip(convs[1:], net.convs):
            dst.weight.copy_(t(src.weight.data.transpose(3, 2, 0, 1)))
        for src, dst in zip(bns, net.bns):
            dst.weight.copy_(t(src.weight.data)), dst.bias.copy_(t(src.bias.data))
            dst.running_mean.copy_(t(src.running_mean.data)), dst.running_var.copy_(t(src.running_var.data))
        net.head.weight.copy_(t(model.layers[-1].weight.data.T / LOGIT_SCALE))


def make_optimizer(net):
    """Four groups as ``recipes._build_airbench``: convs, whitening bias, BatchNorm biases, head."""
    import torch
    wd = WEIGHT_DECAY
    return torch.optim.SGD([{"params": [c.weight for c in net.convs], "weight_decay": wd, "scale": 1.0},
                            {"params": [net.whiten.bias], "weight_decay": wd, "scale": 1.0},
                            {"params": [b.bias for b in net.bns], "weight_decay": wd / BIAS_LR, "scale": BIAS_LR},
                            {"params": [net.head.weight], "weight_decay": wd, "scale": 1.0}],
                           lr=0.0, momentum=MOMENTUM, nesterov=True)


def lr_at(step: int, total: int, peak: float = LR) -> float:
    """``recipes._build_airbench``'s schedule (``optim.piecewise_linear``)."""
    top = max(1, int(WARMUP * total))
    return float(np.interp(step, [0, top, max(total, top + 1)], [LR_START * peak, peak, LR_END * peak]))


class Lookahead:
    """``jimunet.training.Lookahead``: every 5 steps the average moves toward the weights by
    ``1 - 0.95^5·(step/total)^3`` and the weights (and BatchNorm statistics) are set to it."""

    def __init__(self, net, total: int):
        self.net, self.total = net, total
        self.avg = [t.detach().clone() for t in self._tensors()]

    def _tensors(self):
        return [t for t in self.net.state_dict().values() if t.dtype.is_floating_point]

    def step_end(self, n: int) -> None:
        import torch
        pulls = ([0.95 ** 5 * (n / self.total) ** 3] if n % LOOKAHEAD_EVERY == 0 else []) + \
            ([1.0] if n == self.total else [])
        with torch.no_grad():
            for d in pulls:
                for avg, t in zip(self.avg, self._tensors()):
                    if d != 1.0:
                        avg += (1.0 - d) * (t - avg)
                    t.copy_(avg)


def train(root, epochs=EPOCHS, threads=2, seed=66478, train_size=None, steps=None, echo=print,
          activation=ACTIVATION):
    """Run the recipe; returns ``{"test_accuracy", "train_seconds", "epochs": [...]}``. ``steps``
    stops each epoch after that many steps (a smoke test)."""
    import torch
    torch.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    (x_tr, y_tr), (x_val, y_val), (x_te, y_te), prep = load_data(root, rng, train_size, VALIDATION)
    net = build_net(num_classes=int(y_tr.max()) + 1, activation=activation)
    init_like_jimunet(net, seed)
    t_start = time.perf_counter()
    whiten_from(net, prep(x_tr[:WHITEN_IMAGES]))
    net.whiten.weight.requires_grad_(False)
    for b in net.bns:
        b.weight.requires_grad_(False)
    opt = make_optimizer(net)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=SMOOTHING)
    per_epoch = max(1, len(x_tr) // BATCH)
    total, step, history = epochs * per_epoch, 0, []
    lookahead = Lookahead(net, total)
    spent = time.perf_counter() - t_start
    for epoch in range(1, epochs + 1):
        t0, losses = time.perf_counter(), []
        net.train()
        if epoch > WHITEN_BIAS_EPOCHS:
            opt.param_groups[1]["scale"] = 0.0
        perm = rng.permutation(len(x_tr))
        for b in range(per_epoch if steps is None else min(steps, per_epoch)):
            idx = perm[b * BATCH:(b + 1) * BATCH]
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total) * g["scale"]
            loss = loss_fn(net(prep(augment(x_tr[idx], rng, CROP))), torch.from_numpy(y_tr[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            step += 1
            lookahead.step_end(step)
        seconds = time.perf_counter() - t0
        spent += seconds
        history.append(end_epoch(net, (x_val, y_val), prep, epoch, epochs, losses, seconds, lr_at(step, total),
                                 BATCH, echo))
    test_acc = accuracy(net, x_te, y_te, prep, flip=True, shift=TEST_SHIFT)
    echo(f"test error {100 * (1 - test_acc):.2f}% (accuracy {100 * test_acc:.2f}%, {len(x_te)} images, each "
         f"averaged over 6 views); training time {spent:.1f} s, torch {torch.__version__}, {threads} threads")
    return {"test_accuracy": test_acc, "train_seconds": spent, "epochs": history}


def main(argv=None):
    return cifar_torch.main(argv, train, EPOCHS, __doc__, activations=ACTIVATIONS, activation=ACTIVATION)


if __name__ == "__main__":
    raise SystemExit(main())
