"""``jimunet evaluate``: test accuracy and confusion matrix of a saved model on MNIST's test set."""
from __future__ import annotations

from ... import datasets
from ...data.images import preprocess
from ...training import evaluate
from .errors import DEVICE_HELP, EXIT_OK, add_command, int_at_least, load_model


def format_confusion(confusion) -> str:
    """An aligned table: rows the true class, columns the predicted class."""
    k = len(confusion)
    width = max(4, max(len(str(int(v))) for row in confusion for v in row) + 1)
    head = "true\\pred " + "".join(f"{j:>{width}}" for j in range(k)) + f"{'total':>{width + 2}}"
    lines = [head]
    for i, row in enumerate(confusion):
        lines.append(f"{i:>9} " + "".join(f"{int(v):>{width}}" for v in row) + f"{int(sum(row)):>{width + 2}}")
    return "\n".join(lines)


def run(args) -> int:
    """Print the accuracy, error rate and confusion matrix of ``args.model`` on the test images."""
    model = load_model(args.model, device=args.device)
    (_, _), (x, y) = datasets.load_mnist(root=args.data_dir)
    # a model of more than 10 classes gets a larger matrix
    res = evaluate(model, preprocess(x), y, batch_size=args.batch_size, num_classes=10)
    meta = getattr(model, "metadata", {}) or {}
    n = meta.get("epoch")
    epochs = f", trained for {n} epoch{'s' if n != 1 else ''}" if isinstance(n, int) else ""
    print(f"model {args.model}{epochs}")
    print(f"MNIST test set: {len(y)} images")
    print(f"accuracy {100 * res.accuracy:.2f}%   error {res.error:.2f}%   ({int(round(len(y) * (1 - res.accuracy)))} "
          f"misclassified)")
    print("confusion matrix (rows: true digit, columns: predicted digit):")
    print(format_confusion(res.confusion))
    return EXIT_OK


def register(subparsers):
    """Add ``jimunet evaluate`` to ``subparsers``; returns its parser."""
    e = add_command(subparsers, "evaluate", run, help="test accuracy and confusion matrix of a saved model",
                    description="Evaluate a saved model on the 10,000 MNIST test images: accuracy, error rate "
                    "and the confusion matrix (rows: true digit, columns: predicted).")
    e.add_argument("model", metavar="MODEL.npz", help="a model saved by jimunet (e.g. runs/X/model.npz)")
    e.add_argument("--data-dir", default=None, metavar="D", help="MNIST cache directory")
    e.add_argument("--batch-size", type=int_at_least(1), default=100, metavar="N", help="images per forward "
                   "pass (default 100)")
    e.add_argument("--device", default="cpu", metavar="D", help=DEVICE_HELP)
    return e
