"""``jimunet evaluate``: test accuracy and confusion matrix of a saved model on its data set's test images."""
from __future__ import annotations

from ...training import evaluate
from ..testdata import TestDataError, test_set
from .errors import DEVICE_HELP, EXIT_OK, UserError, add_command, int_at_least, load_model, model_info_of


def format_confusion(confusion, class_names=None) -> str:
    """An aligned table: rows the true class, columns the predicted class (by number; with
    ``class_names`` other than "0", "1", ..., a legend line names the numbers)."""
    k = len(confusion)
    width = max(4, max(len(str(int(v))) for row in confusion for v in row) + 1)
    head = "true\\pred " + "".join(f"{j:>{width}}" for j in range(k)) + f"{'total':>{width + 2}}"
    lines = [head]
    for i, row in enumerate(confusion):
        lines.append(f"{i:>9} " + "".join(f"{int(v):>{width}}" for v in row) + f"{int(sum(row)):>{width + 2}}")
    if class_names is not None and list(class_names) != [str(j) for j in range(len(class_names))]:
        lines.append("classes: " + ", ".join(f"{j} {name}" for j, name in enumerate(class_names)))
    return "\n".join(lines)


def run(args) -> int:
    """Print the accuracy, error rate and confusion matrix of ``args.model`` on the test images."""
    model = load_model(args.model, device=args.device)
    info = model_info_of(model, args.model)
    try:
        data = test_set(info, args.data, data_dir=args.data_dir)
    except TestDataError as e:
        raise UserError(str(e)) from None
    predictor = info.predictor(model)  # as the model was tested: with its test views, if any
    res = evaluate(predictor, *data.args, batch_size=args.batch_size, num_classes=info.num_classes,
                   **data.normalize)
    meta = getattr(model, "metadata", {}) or {}
    n = meta.get("epoch")
    epochs = f", trained for {n} epoch{'s' if n != 1 else ''}" if isinstance(n, int) else ""
    print(f"model {args.model}{epochs}")
    views = f", {predictor.describe()} (the model was tested so)" if info.test_flip else ""
    print(f"{data.title} test set: {data.size} images{views}")
    print(f"accuracy {100 * res.accuracy:.2f}%   error {res.error:.2f}%   "
          f"({int(round(data.size * (1 - res.accuracy)))} misclassified)")
    what = "digit" if info.is_digit_model else "class"
    print(f"confusion matrix (rows: true {what}, columns: predicted {what}):")
    print(format_confusion(res.confusion, info.class_names))
    return EXIT_OK


def register(subparsers):
    """Add ``jimunet evaluate`` to ``subparsers``; returns its parser."""
    e = add_command(subparsers, "evaluate", run, help="test accuracy and confusion matrix of a saved model",
                    description="Evaluate a saved model on the test images of the data set it was trained on "
                    "(MNIST's 10,000 for a model without that information), or of --data: accuracy, error rate "
                    "and the confusion matrix (rows: true class, columns: predicted).")
    e.add_argument("model", metavar="MODEL.npz", help="a model saved by jimunet (e.g. runs/X/model.npz)")
    e.add_argument("--data", default=None, metavar="DATA", help="mnist, fashion-mnist, cifar10 or an image "
                   "folder (default: the model's own data set)")
    e.add_argument("--data-dir", default=None, metavar="D", help="the data set's cache directory")
    e.add_argument("--batch-size", type=int_at_least(1), default=100, metavar="N", help="images per forward "
                   "pass (default 100)")
    e.add_argument("--device", default="cpu", metavar="D", help=DEVICE_HELP)
    return e
