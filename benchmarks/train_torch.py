"""The TF MNIST sample's recipe in PyTorch (CPU), for a wall-time comparison with ``jimunet train``.

Same data (jimunet's loader), same preprocessing, split, batch size, epochs, schedule,
momentum, L2 on the fully connected layers, dropout and per-epoch shuffling; only the
framework differs. Prints the wall time and the test error.

    python benchmarks/train_torch.py [--epochs 10] [--threads 2] [--train-size N]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=66478)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--train-size", type=int, default=55000)
    ap.add_argument("--json", help="write the result here")
    args = ap.parse_args(argv)

    import torch
    import jimunet as jn
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    (x_train, y_train), (x_test, y_test) = jn.datasets.load_mnist(progress=False)
    prep = lambda x: torch.from_numpy(((x.astype(np.float32) - 127.5) / 255).transpose(0, 3, 1, 2).copy())  # noqa: E731
    x_val, y_val = prep(x_train[:5000]), torch.from_numpy(y_train[:5000])
    x_tr, y_tr = prep(x_train[5000:5000 + args.train_size]), torch.from_numpy(y_train[5000:5000 + args.train_size])
    x_te, y_te = prep(x_test), torch.from_numpy(y_test)

    nn = torch.nn
    model = nn.Sequential(
        nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(3136, 512), nn.ReLU(), nn.Dropout(0.5), nn.Linear(512, 10))
    with torch.no_grad():  # the sample's initialisation: truncated normal 0.1, biases 0 / 0.1
        for i, m in enumerate(m for m in model if isinstance(m, (nn.Conv2d, nn.Linear))):
            nn.init.trunc_normal_(m.weight, std=0.1, a=-0.2, b=0.2)
            m.bias.fill_(0.0 if i == 0 else 0.1)
    dense = [p for m in model if isinstance(m, nn.Linear) for p in m.parameters()]
    conv = [p for m in model if isinstance(m, nn.Conv2d) for p in m.parameters()]
    opt = torch.optim.SGD([{"params": conv}, {"params": dense, "weight_decay": 5e-4}], lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(args.seed)
    n, bs, step = len(x_tr), args.batch_size, 0

    def error(x, y):
        model.eval()
        with torch.no_grad():
            pred = torch.cat([model(x[i:i + 1000]).argmax(1) for i in range(0, len(x), 1000)])
        model.train()
        return float((pred != y).float().mean()) * 100

    start = time.perf_counter()
    for epoch in range(args.epochs):
        t = time.perf_counter()
        order = torch.randperm(n, generator=gen)
        for i in range(0, n - bs + 1, bs):
            lr = 0.01 * 0.95 ** math.floor(step * bs / n)
            for g in opt.param_groups:
                g["lr"] = lr
            idx = order[i:i + bs]
            opt.zero_grad()
            loss = loss_fn(model(x_tr[idx]), y_tr[idx])
            loss.backward()
            opt.step()
            step += 1
        print(f"epoch {epoch + 1}: loss {loss.item():.4f} val error {error(x_val, y_val):.2f}% "
              f"lr {lr:.6f} {time.perf_counter() - t:.1f}s", flush=True)
    wall = time.perf_counter() - start
    test_err = error(x_te, y_te)
    print(f"PyTorch {torch.__version__}, {args.threads} threads: test error {test_err:.2f}%, wall time {wall:.0f}s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"test_error": test_err, "wall_time_s": wall, "torch": torch.__version__,
                       "threads": args.threads, "epochs": args.epochs}, f, indent=2)


if __name__ == "__main__":
    main()
