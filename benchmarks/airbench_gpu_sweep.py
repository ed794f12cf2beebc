"""Variants of the CIFAR-10 recipe, tried fast: ``airbench_torch``'s network and schedule on an
NVIDIA GPU (PyTorch CUDA; TF32 off), several seeds each, one line per run.

A pilot for choosing the recipe, not a reference: the batches are cropped and flipped on the GPU
with PyTorch's generator, so no run is the CPU port's run, and its GELU is PyTorch's exact (erf)
one, where jimunet's and the port's ``--activation gelu`` is the tanh form (they differ by less
than 5e-4). What it measures is how the variants compare, over seeds. Each plan entry is
(name, settings, seed); ``--budget`` stops starting new runs after that many seconds.

    python benchmarks/airbench_gpu_sweep.py /tmp/cifar10-jpeg/cifar10-jpeg [--budget 340]

Variants: ``widths`` (the blocks' channels), ``epochs``, ``act`` ("relu" or "gelu") and
``altflip`` (airbench's alternating flips: each image flipped at random in the first epoch, then
the other way round every other epoch, instead of a new coin each epoch).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import airbench_torch as ab  # noqa: E402
import cifar_torch as ct  # noqa: E402

WIDE, MID = (64, 256, 256), (64, 192, 192)
_FIRST = [("base15", {}), ("gelu15", {"act": "gelu"}), ("alt15", {"altflip": True}),
          ("gelu+alt15", {"act": "gelu", "altflip": True}), ("wide10", {"widths": WIDE, "epochs": 10}),
          ("wide-gelu+alt10", {"widths": WIDE, "epochs": 10, "act": "gelu", "altflip": True})]
PLAN = ([(n, kw, 1) for n, kw in _FIRST]
        + [(n, kw, s) for s in (2, 3) for n, kw in _FIRST[1:4] + _FIRST[5:6]]
        + [("gelu+alt18", {"act": "gelu", "altflip": True, "epochs": 18}, s) for s in (1, 2)]
        + [("mid-gelu+alt12", {"widths": MID, "epochs": 12, "act": "gelu", "altflip": True}, s) for s in (1, 2)]
        + [(n, kw, s) for s in (2, 3) for n, kw in (_FIRST[0], _FIRST[4])])
SMOKE_PLAN = [("smoke", {"widths": (8, 16, 16), "epochs": 2, "act": "gelu", "altflip": True}, 1)]


def run(data, dev, widths=ab.WIDTHS, epochs=15, act="relu", altflip=False, seed=1):
    """One run of the recipe with these settings: ``(test accuracy over 6 views, training seconds)``."""
    import torch
    nn = torch.nn
    x_all, y_all, x_te, y_te, x_dev, y_dev = data
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x_all))  # as cifar_torch.load_data with no validation images
    sample = x_all[order][rng.permutation(len(x_all))[:10_000]].astype(np.float64)
    mean = torch.tensor(sample.mean(axis=(0, 1, 2)), dtype=torch.float32, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(sample.std(axis=(0, 1, 2)), dtype=torch.float32, device=dev).view(1, 3, 1, 1)
    prep = lambda xb: ((xb.permute(0, 3, 1, 2).float() - mean) / std).contiguous()  # noqa: E731
    order_t = torch.from_numpy(order).to(dev)
    xtr, ytr = x_dev[order_t], y_dev[order_t]
    net = ab.build_net(widths=widths, num_classes=int(y_all.max()) + 1).to(dev)
    ab.init_like_jimunet(net, seed)
    f = torch.relu if act == "relu" else nn.functional.gelu

    def forward(x):
        x = f(net.whiten(x))
        for i in range(0, len(net.convs), 2):
            x = f(net.bns[i](nn.functional.max_pool2d(net.convs[i](x), 2)))
            x = f(net.bns[i + 1](net.convs[i + 1](x)))
        x = nn.functional.max_pool2d(x, x.shape[2:])
        return net.head(x.flatten(1)) * ab.LOGIT_SCALE
    net.forward = forward
    t_start = time.perf_counter()
    ab.whiten_from(net, prep(xtr[:ab.WHITEN_IMAGES]).cpu())
    net.whiten.weight.requires_grad_(False)
    for b in net.bns:
        b.weight.requires_grad_(False)
    opt = ab.make_optimizer(net)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=ab.SMOOTHING)
    n = len(xtr)
    per_epoch = max(1, n // ab.BATCH)
    total, step = epochs * per_epoch, 0
    lookahead = ab.Lookahead(net, total)
    g = torch.Generator(device=dev).manual_seed(seed)
    first_flip = torch.rand(n, generator=g, device=dev) < 0.5
    crop, side = ab.CROP, torch.arange(xtr.shape[1], device=dev)
    for epoch in range(1, epochs + 1):
        net.train()
        if epoch > ab.WHITEN_BIAS_EPOCHS:
            opt.param_groups[1]["scale"] = 0.0
        perm = torch.from_numpy(rng.permutation(n)).to(dev)
        for b in range(per_epoch):
            idx = perm[b * ab.BATCH:(b + 1) * ab.BATCH]
            m = len(idx)
            xb = nn.functional.pad(xtr[idx], (0, 0, crop, crop, crop, crop))
            dy = torch.randint(0, 2 * crop + 1, (m,), generator=g, device=dev)
            dx = torch.randint(0, 2 * crop + 1, (m,), generator=g, device=dev)
            rows, cols = dy[:, None] + side, dx[:, None] + side
            xb = xb[torch.arange(m, device=dev)[:, None, None], rows[:, :, None], cols[:, None, :]]
            flip = (first_flip[idx] ^ (epoch % 2 == 0)) if altflip else torch.rand(m, generator=g, device=dev) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(2), xb)
            for group in opt.param_groups:
                group["lr"] = ab.lr_at(step, total) * group["scale"]
            loss = loss_fn(net(prep(xb)), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            lookahead.step_end(step)
    if dev == "cuda":
        torch.cuda.synchronize()
    spent = time.perf_counter() - t_start
    right = 0
    for i in range(0, len(x_te), 1000):
        xt = torch.from_numpy(x_te[i:i + 1000]).to(dev)
        out = ct.scores(net, prep(xt), True, ab.TEST_SHIFT)
        right += int((out.argmax(1).cpu() == torch.from_numpy(y_te[i:i + 1000])).sum())
    return right / len(x_te), spent


def main(argv=None):
    import torch
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", help="the unpacked JPEG copy: FOLDER/train/<class>/, FOLDER/test/<class>/")
    ap.add_argument("--budget", type=float, default=340.0, help="seconds after which no new run starts")
    ap.add_argument("--smoke", action="store_true", help="one tiny run (a check of the script, on any device)")
    args = ap.parse_args(argv)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    t0 = time.perf_counter()
    x_all, y_all, _ = ct.load_folder(args.folder, "train", threads=os.cpu_count() or 1)
    x_te, y_te, _ = ct.load_folder(args.folder, "test", threads=os.cpu_count() or 1)
    print(f"loaded {len(x_all)} + {len(x_te)} images in {time.perf_counter() - t0:.1f} s; device {dev}", flush=True)
    data = (x_all, y_all, x_te, y_te, torch.from_numpy(x_all).to(dev), torch.from_numpy(y_all).to(dev))
    results = {}
    for name, settings, seed in SMOKE_PLAN if args.smoke else PLAN:
        if time.perf_counter() - t0 > args.budget:
            print("budget spent; no more runs", flush=True)
            break
        acc, spent = run(data, dev, seed=seed, **settings)
        results.setdefault(name, []).append(acc)
        print(f"{name:18s} seed {seed}  accuracy {100 * acc:.2f}%  train {spent:.1f} s", flush=True)
    print("means:")
    for name, accs in results.items():
        listed = " ".join(f"{100 * a:.2f}" for a in accs)
        print(f"{name:18s} n={len(accs)}  mean {100 * np.mean(accs):.2f}%  [{listed}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
