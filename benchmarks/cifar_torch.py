"""``jimunet train --model cifar`` in PyTorch (CPU), the reference for its accuracy and time.

The same network as ``jimunet.models.cifar_resnet`` (layer for layer, the same initialisation
scheme: truncated He-normal convs, Glorot-uniform Dense, BatchNorm momentum 0.1 and eps 1e-5),
the same recipe (batch 256, SGD with Nesterov momentum 0.9, weight decay 5e-4 on conv/Dense
weights only, label smoothing 0.2, lr rising linearly from 0 to 0.2 over the first 20% of the
steps and falling linearly to 0, random crops of the image padded by 4 black pixels and
horizontal flips, per-channel normalisation estimated on the training images, 5,000 training
images held out for validation, tested with flips: each test image's logits averaged with its
mirror image's), on the same JPEG folder read with Pillow. What differs:
the random draws (PyTorch's and NumPy's generators; which images are held out), so the two
runs agree in distribution, not bit for bit. Prints one line per epoch like ``jimunet train``.

    python benchmarks/cifar_torch.py /tmp/cifar10-jpeg/cifar10-jpeg --epochs 1 [--threads 2]
"""
from __future__ import annotations

import argparse
import concurrent.futures
import math
import os
import time

import numpy as np

WIDTH, BATCH, LR, MOMENTUM, WEIGHT_DECAY, SMOOTHING, WARMUP, CROP = 16, 256, 0.2, 0.9, 5e-4, 0.2, 0.2, 4
VALIDATION = 5000
TEST_FLIP = True  # the recipe's test_flip


def build_net(width: int = WIDTH, num_classes: int = 10, channels: int = 3):
    """``cifar_resnet``'s network as a ``torch.nn.Module`` on NCHW input; its ``convs``, ``bns``
    and ``fc`` are jimunet's Conv2D, BatchNorm and Dense layers in jimunet's order."""
    import torch
    nn = torch.nn

    class CifarResNet(nn.Module):
        def __init__(self):
            super().__init__()
            plan = [(channels, width)]  # (cin, cout) of each conv, in jimunet's creation order
            cin = width
            for cout, residual in ((2 * width, True), (4 * width, False), (8 * width, True)):
                plan += [(cin, cout)] + ([(cout, cout), (cout, cout)] if residual else [])
                cin = cout
            self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1, bias=False) for a, b in plan)
            self.bns = nn.ModuleList(nn.BatchNorm2d(b) for _, b in plan)
            self.fc = nn.Linear(cin, num_classes)

        def cbr(self, i, x, relu=True):
            x = self.bns[i](self.convs[i](x))
            return torch.relu(x) if relu else x

        def forward(self, x):
            pool = nn.functional.max_pool2d
            x = self.cbr(0, x)
            x = pool(self.cbr(1, x), 2, ceil_mode=True)
            x = torch.relu(x + self.cbr(3, self.cbr(2, x), relu=False))  # jimunet.models.residual_block
            x = pool(self.cbr(4, x), 2, ceil_mode=True)
            x = pool(self.cbr(5, x), 2, ceil_mode=True)
            x = torch.relu(x + self.cbr(7, self.cbr(6, x), relu=False))
            return self.fc(x.mean(dim=(2, 3)))

    return CifarResNet()


def init_like_jimunet(net, seed: int) -> None:
    """jimunet's initialisation scheme (not its random numbers): truncated normal at 2 std with
    std ``sqrt(2/fan_in)/0.8796`` for convs, Glorot uniform and zero bias for the Dense layer."""
    import torch
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for conv in net.convs:
            fan_in = conv.weight[0].numel()
            std = math.sqrt(2.0 / fan_in) / 0.87962566103423978
            torch.nn.init.trunc_normal_(conv.weight, std=std, a=-2 * std, b=2 * std, generator=gen)
        torch.nn.init.xavier_uniform_(net.fc.weight, generator=gen)
        net.fc.bias.zero_()


def copy_from_jimunet(net, model) -> None:
    """Copy a ``jimunet.models.cifar_resnet``'s parameters and BatchNorm statistics into ``net``
    (conv HWIO → OIHW, Dense (in, out) → (out, in)), in ``net``'s dtype."""
    import torch
    from jimunet.layers import BatchNorm, Conv2D, Dense
    convs = [l for l in model.layers if isinstance(l, Conv2D)]
    bns = [l for l in model.layers if isinstance(l, BatchNorm)]
    dense = [l for l in model.layers if isinstance(l, Dense)]
    if (len(convs), len(bns), len(dense)) != (len(net.convs), len(net.bns), 1):
        raise ValueError("copy_from_jimunet: expected a cifar_resnet of the same plan")
    dtype = net.fc.weight.dtype
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(dtype)  # noqa: E731
    with torch.no_grad():
        for src, dst in zip(convs, net.convs):
            dst.weight.copy_(t(src.weight.data.transpose(3, 2, 0, 1)))
        for src, dst in zip(bns, net.bns):
            dst.weight.copy_(t(src.weight.data)), dst.bias.copy_(t(src.bias.data))
            dst.running_mean.copy_(t(src.running_mean.data)), dst.running_var.copy_(t(src.running_var.data))
        net.fc.weight.copy_(t(dense[0].weight.data.T)), net.fc.bias.copy_(t(dense[0].bias.data))


def load_folder(root: str, split: str, threads: int = 8):
    """``root/split/<class>/*`` as ``(x uint8 (n, H, W, 3), y int64, class names)``, decoded with
    Pillow (RGB), classes sorted by name as jimunet's ``ImageFolder`` does."""
    from PIL import Image
    base = os.path.join(root, split)
    classes = sorted(d for d in os.listdir(base) if os.path.isdir(os.path.join(base, d)))
    files = [(os.path.join(base, c, f), k) for k, c in enumerate(classes)
             for f in sorted(os.listdir(os.path.join(base, c)))]

    def read(path):
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        x = np.stack(list(pool.map(read, [f for f, _ in files], chunksize=256)))
    return x, np.array([k for _, k in files], np.int64), classes


def augment(xb: np.ndarray, rng: np.random.Generator, crop: int = CROP) -> np.ndarray:
    """Random crops of the batch padded by ``crop`` black pixels, then horizontal flips (p = 0.5)."""
    n, h, w, _ = xb.shape
    padded = np.pad(xb, ((0, 0), (crop, crop), (crop, crop), (0, 0)))
    dy, dx = rng.integers(0, 2 * crop + 1, n), rng.integers(0, 2 * crop + 1, n)
    rows = dy[:, None] + np.arange(h)[None, :]
    cols = dx[:, None] + np.arange(w)[None, :]
    out = padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
    flip = rng.random(n) < 0.5
    out[flip] = out[flip, :, ::-1]
    return out


def lr_at(step: int, total: int, peak: float = LR) -> float:
    """The one-cycle schedule of ``--model cifar`` (``optim.piecewise_linear``)."""
    top = max(1, round(WARMUP * total))
    return float(np.interp(step, [0, top, max(total, top + 1)], [0.0, peak, 0.0]))


def make_optimizer(net):
    import torch
    decayed = [m.weight for m in (*net.convs, net.fc)]
    ids = {id(p) for p in decayed}
    return torch.optim.SGD([{"params": decayed, "weight_decay": WEIGHT_DECAY},
                            {"params": [p for p in net.parameters() if id(p) not in ids], "weight_decay": 0.0}],
                           lr=0.0, momentum=MOMENTUM, nesterov=True)


def scores(net, x, flip: bool = False, shift: int = 0):
    """The logits of ``x`` (NCHW) in evaluation mode; ``flip``: averaged with those of the mirror
    images, and with ``shift`` also over the views moved ``shift`` px diagonally both ways (edge
    pixels repeated), as ``jimunet.training.FlipAverage`` does."""
    import torch
    net.eval()
    views = [x]
    if flip and shift:
        padded = torch.nn.functional.pad(x, (shift,) * 4, mode="replicate")
        h, w = x.shape[2:]
        views += [padded[:, :, 2 * shift:2 * shift + h, 2 * shift:2 * shift + w], padded[:, :, :h, :w]]
    with torch.no_grad():
        if not flip:
            return net(x)
        return sum(net(v) + net(torch.flip(v, dims=(3,))) for v in views) / (2 * len(views))


def accuracy(net, x, y, prep, batch=500, flip=False, shift=0):
    import torch
    right = 0
    for i in range(0, len(x), batch):
        out = scores(net, prep(x[i:i + batch]), flip, shift)
        right += int((out.argmax(1) == torch.from_numpy(y[i:i + batch])).sum())
    return right / len(x)


def load_data(root, rng, train_size=None, validation=VALIDATION):
    """The folder's training images less ``validation`` held out (a random choice from ``rng``),
    those held out, the test images (each ``(x uint8 NHWC, y)``), and ``prep``: a uint8 batch →
    normalised float32 NCHW tensor, with per-channel statistics of 10,000 training images."""
    import torch
    x_all, y_all, _ = load_folder(root, "train")
    x_te, y_te, _ = load_folder(root, "test")
    order = rng.permutation(len(x_all))
    v = min(validation, len(x_all) // 10)
    val, tr = order[:v], order[v:v + (train_size or len(x_all))]
    x_tr = x_all[tr]
    sample = x_tr[rng.permutation(len(x_tr))[:10_000]].astype(np.float64)
    mean, std = sample.mean(axis=(0, 1, 2)), sample.std(axis=(0, 1, 2))
    prep = lambda xb: torch.from_numpy(((xb - mean) / std).astype(np.float32).transpose(0, 3, 1, 2).copy())  # noqa: E731
    return (x_tr, y_all[tr]), (x_all[val], y_all[val]), (x_te, y_te), prep


def end_epoch(net, validation, prep, epoch, epochs, losses, seconds, lr, batch, echo):
    """Validate (where images are held out), print the epoch's line as ``jimunet train`` does, and
    return its record."""
    val_acc = accuracy(net, *validation, prep) if len(validation[0]) else None
    val = "   n/a" if val_acc is None else f"{100 * (1 - val_acc):6.2f}%"
    echo(f"epoch {epoch:3d}/{epochs}  train loss {np.mean(losses):.4f}  val error {val}  "
         f"lr {lr:.6f}  {seconds:7.1f} s ({len(losses) * batch / seconds:.0f} img/s)")
    return {"epoch": epoch, "loss": float(np.mean(losses)), "val_accuracy": val_acc, "seconds": seconds}


def train(root, epochs=10, threads=2, seed=66478, train_size=None, steps=None, echo=print):
    """Run the recipe; returns ``{"test_accuracy", "train_seconds", "epochs": [...]}``. ``steps``
    stops each epoch after that many steps (a smoke test)."""
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    (x_tr, y_tr), (x_val, y_val), (x_te, y_te), prep = load_data(root, rng, train_size)
    net = build_net(num_classes=int(y_tr.max()) + 1)
    init_like_jimunet(net, seed)
    opt = make_optimizer(net)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=SMOOTHING)
    per_epoch = max(1, len(x_tr) // BATCH)
    total, step, history, spent = epochs * per_epoch, 0, [], 0.0
    for epoch in range(1, epochs + 1):
        t0, losses = time.perf_counter(), []
        net.train()
        perm = rng.permutation(len(x_tr))
        for b in range(per_epoch if steps is None else min(steps, per_epoch)):
            idx = perm[b * BATCH:(b + 1) * BATCH]
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total)
            loss = loss_fn(net(prep(augment(x_tr[idx], rng))), torch.from_numpy(y_tr[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            step += 1
        seconds = time.perf_counter() - t0
        spent += seconds
        history.append(end_epoch(net, (x_val, y_val), prep, epoch, epochs, losses, seconds, lr_at(step, total),
                                 BATCH, echo))
    test_acc = accuracy(net, x_te, y_te, prep, flip=TEST_FLIP)
    echo(f"test error {100 * (1 - test_acc):.2f}% (accuracy {100 * test_acc:.2f}%, {len(x_te)} images, each "
         f"averaged with its mirror image); "
         f"training time {spent:.1f} s, torch {torch.__version__}, {threads} threads")
    return {"test_accuracy": test_acc, "train_seconds": spent, "epochs": history}


def main(argv=None, train_fn=None, epochs: int = 10, doc: str = __doc__, activations=None, activation=None):
    """The command line of a port: ``train_fn`` (default: this recipe's ``train``) on a folder;
    ``activations``: the choices of an ``--activation`` flag (default ``activation``) passed on to
    it (None: no flag)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("folder", help="the unpacked JPEG copy: FOLDER/train/<class>/, FOLDER/test/<class>/")
    ap.add_argument("--epochs", type=int, default=epochs)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=66478)
    ap.add_argument("--train-size", type=int, default=None)
    if activations:
        ap.add_argument("--activation", choices=activations, default=activation)
    args = ap.parse_args(argv)
    extra = {"activation": args.activation} if activations else {}
    (train_fn or train)(args.folder, epochs=args.epochs, threads=args.threads, seed=args.seed,
                        train_size=args.train_size, **extra)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
