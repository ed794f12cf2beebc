"""Whole-model A/B: ``mnist_cnn`` with every Conv2D forced to im2col vs ``auto``.

Each measurement is a fresh process and the two alternate round after round; prints images/s
per round and the median of the per-round ratios auto / im2col.

    python benchmarks/model_algorithms.py 5 train64 infer1000      # rounds, then tasks
"""
import statistics, subprocess, sys, time
def child(algo, task):
    import numpy as np, jimunet as jn
    kind, batch = ("train", 64) if task == "train64" else ("infer", 1000)
    rng = np.random.default_rng(0)
    x = ((rng.integers(0, 256, (batch, 28, 28, 1)) - 127.5) / 255).astype(np.float32)
    y = rng.integers(0, 10, batch)
    model = jn.models.mnist_cnn(rng=0)
    for l in model.layers:
        if hasattr(l, "algorithm"):
            l.algorithm = algo
    if kind == "infer":
        step = lambda: model.predict(x)
        warm, iters = 1, 5
    else:
        loss_fn = jn.losses.SoftmaxCrossEntropy()
        opt = jn.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        def step():
            loss_fn.forward(model.forward(x, training=True), y)
            model.backward(loss_fn.backward(), input_grad=False)
            opt.step(); opt.zero_grad()
        warm, iters = 3, 30
    for _ in range(warm): step()
    t = time.perf_counter()
    for _ in range(iters): step()
    print(batch * iters / (time.perf_counter() - t))
if sys.argv[1] == "child":
    child(sys.argv[2], sys.argv[3]); sys.exit()
rounds = int(sys.argv[1]); tasks = sys.argv[2:]
for task in tasks:
    r = {"im2col": [], "auto": []}
    for i in range(rounds):
        for a in (("im2col", "auto") if i % 2 == 0 else ("auto", "im2col")):
            out = subprocess.run([sys.executable, __file__, "child", a, task], capture_output=True, text=True, check=True).stdout
            r[a].append(float(out.split()[-1]))
    ratios = [b / a for a, b in zip(r["im2col"], r["auto"])]
    print(task, "im2col img/s", [round(v) for v in r["im2col"]], "auto", [round(v) for v in r["auto"]],
          "median im2col %.0f auto %.0f, median ratio auto/im2col %.2f" % (statistics.median(r["im2col"]), statistics.median(r["auto"]), statistics.median(ratios)), flush=True)
