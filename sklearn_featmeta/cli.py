"""The ``featmeta`` command: fit, predict, evaluate, explain and a demo.

Data files are ``.npz`` archives with arrays ``X``, ``y`` and optionally
``groups`` (-1 / None / NaN where unknown); ``predict`` also takes a bare
``.npy`` matrix. Models are saved with joblib.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import joblib
import numpy as np

from . import __version__
from ._meta_head import MetaAugmentedHeadClassifier
from ._presets import PAPER_PRESETS


def _boolean(value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")
    return value.lower() == "true"


def _none_or_int(value: str) -> int | None:
    """``none`` (None) or a whole number."""
    if value.lower() == "none":
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number or none, got {value!r}"
        ) from None


def _auto_none_or_float(value: str) -> str | float | None:
    """``auto``, ``none`` (None) or a number."""
    word = value.lower()
    if word == "none":
        return None
    if word == "auto":
        return "auto"
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected auto, none or a number, got {value!r}"
        ) from None


# Estimator parameters offered as options: (option, parameter, type).
_FIT_OPTIONS = [
    ("--support-size-per-class", "support_size_per_class", int),
    ("--inner-steps", "inner_steps", int),
    ("--inner-lr", "inner_lr", lambda v: v if v == "auto" else float(v)),
    ("--outer-lr", "outer_lr", float),
    ("--outer-steps", "outer_steps", int),
    ("--hard-set-size", "hard_set_size", int),
    ("--hard-set", "hard_set", str),
    ("--n-epochs", "n_epochs", int),
    ("--max-epochs", "max_epochs", _none_or_int),
    ("--n-iter-no-change", "n_iter_no_change", int),
    ("--selection-metric", "selection_metric", str),
    ("--compare-unedited", "compare_unedited", _boolean),
    ("--n-repeats", "n_repeats", int),
    ("--head-update", "head_update", str),
    ("--validation-fraction", "validation_fraction", float),
    ("--head-l2", "head_l2", float),
    ("--whitening-ridge", "whitening_ridge", _auto_none_or_float),
    ("--erm-c", "erm_C", float),
    ("--device", "device", str),
    ("--n-threads", "n_threads", int),
    ("--random-state", "random_state", int),
]


class CommandError(Exception):
    """A problem with the command's input, reported without a traceback."""


def _load(path: str, *, need_y: bool) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    file = Path(path)
    if not file.exists():
        raise CommandError(f"{path}: no such file")
    if file.suffix == ".npy":
        if need_y:
            raise CommandError(
                f"{path}: a .npy file holds only X; this command needs an .npz with X and y"
            )
        return np.load(file, allow_pickle=False), None, None
    try:
        archive = np.load(file, allow_pickle=True)
    except (OSError, ValueError) as exc:
        raise CommandError(f"{path}: not a NumPy .npz/.npy file ({exc})") from exc
    keys = set(getattr(archive, "files", []))
    missing = {"X", "y"} - keys if need_y else {"X"} - keys
    if missing:
        raise CommandError(
            f"{path}: missing array(s) {sorted(missing)}; found {sorted(keys)}. "
            "Save with np.savez(path, X=..., y=..., groups=...)."
        )
    groups = archive["groups"] if "groups" in keys else None
    y = archive["y"] if "y" in keys else None
    return archive["X"], y, groups


def _load_model(path: str):
    if not Path(path).exists():
        raise CommandError(f"{path}: no such model file")
    return joblib.load(path)


def _cmd_fit(args) -> None:
    X, y, groups = _load(args.data, need_y=True)
    params = {
        name: getattr(args, name) for _, name, _ in _FIT_OPTIONS if hasattr(args, name)
    }  # options not given are absent (argparse.SUPPRESS): "none" can pass None
    if args.preset:
        estimator = MetaAugmentedHeadClassifier.from_preset(args.preset, **params)
    else:
        estimator = MetaAugmentedHeadClassifier(**params)
    estimator.set_params(verbose=args.verbose)
    estimator.fit(X, y, groups)
    joblib.dump(estimator, args.output)
    runs = zip(estimator.best_epoch_, estimator.kept_edits_, strict=True)
    kept = [
        _kept_epoch(estimator.history_, run, best, edited)
        for run, (best, edited) in enumerate(runs)
        if best > 0
    ]
    print(
        f"fitted on {X.shape[0]} rows x {X.shape[1]} features, device {estimator.device_}, "
        f"{estimator.n_iter_} epochs; held-out worst-group accuracy at the kept "
        f"epoch(s): {', '.join(kept) or 'none (initial head kept)'}"
    )
    print(f"saved {args.output}")


def _kept_epoch(history: dict, run: int, epoch: int, edited: bool) -> str:
    """``epoch N: acc`` of the head a run kept (edited or unedited), on its selection rows."""
    key = "worst_group_accuracy" if edited else "unedited_worst_group_accuracy"
    row = (history["run"] == run) & (history["epoch"] == epoch)
    return f"epoch {epoch}{'' if edited else ' (unedited)'}: {history[key][row][0]:.4f}"


def _cmd_predict(args) -> None:
    estimator = _load_model(args.model)
    X, _, _ = _load(args.data, need_y=False)
    result = estimator.predict_proba(X) if args.proba else estimator.predict(X)
    if args.output is None:
        np.savetxt(sys.stdout, result, fmt="%.6g" if args.proba else "%s")
    elif args.output.endswith(".npy"):
        np.save(args.output, result)
    else:
        np.savetxt(args.output, result, fmt="%.6g" if args.proba else "%s", delimiter=",")


def _cmd_evaluate(args) -> None:
    from .metrics import group_accuracy_report

    estimator = _load_model(args.model)
    X, y, groups = _load(args.data, need_y=True)
    if groups is None:
        raise CommandError(f"{args.data}: evaluate needs a 'groups' array for the per-group table")
    print(group_accuracy_report(y, estimator.predict(X), groups=groups))


def _load_concepts(path: str):
    """``{name: vector}`` from an .npz: arrays ``names`` + ``vectors``, or one array per name."""
    file = Path(path)
    if not file.exists():
        raise CommandError(f"{path}: no such concepts file")
    archive = np.load(file, allow_pickle=False)
    if {"names", "vectors"} <= set(archive.files):
        return dict(zip(archive["names"].tolist(), archive["vectors"], strict=True))
    return {name: archive[name] for name in archive.files}


def _cmd_explain(args) -> None:
    from .explain import concept_alignment, edit_summary, plot_edits

    estimator = _load_model(args.model)
    if not hasattr(estimator, "support_edited_"):
        raise CommandError(
            f"{args.model}: not a fitted MetaAugmentedHeadClassifier (no support set)"
        )
    print("Support-set edits per class\n")
    print(edit_summary(estimator))
    concepts = None
    if args.concepts:
        concepts = _load_concepts(args.concepts)
        alignment = concept_alignment(estimator, concepts, n_random=args.n_random)
        print(
            f"\nAlignment of the mean edit with each concept (z-score against {args.n_random} random directions)\n"
        )
        print(alignment)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        figure = plot_edits(estimator, concepts if concepts and len(concepts) >= 2 else None)
        figure.savefig(args.plot, dpi=120, bbox_inches="tight")
        print(f"\nsaved {args.plot}")


def _cmd_demo(args) -> None:
    from sklearn.linear_model import LogisticRegression

    from .datasets import _demo_problem
    from .metrics import group_accuracy_report

    (X, y, groups), (X_test, y_test, groups_test) = _demo_problem(
        n_samples=args.n_samples, n_features=args.n_features, random_state=args.random_state
    )
    train = groups == -1
    print(
        f"Synthetic embeddings: {X.shape[1]} features, {train.sum()} training rows without "
        f"groups (95% majority groups), {(~train).sum()} rows with groups, "
        f"{X_test.shape[0]} group-balanced test rows.\n"
    )
    names = np.array([f"y={g // 2},a={g % 2}" for g in groups_test])
    erm = LogisticRegression().fit(X[train], y[train])
    ours = MetaAugmentedHeadClassifier(random_state=args.random_state, device=args.device)
    ours.fit(X, y, groups)
    reports = {
        "LogisticRegression (ERM)": group_accuracy_report(
            y_test, erm.predict(X_test), groups=names
        ),
        "MetaAugmentedHeadClassifier": group_accuracy_report(
            y_test, ours.predict(X_test), groups=names
        ),
    }
    print(_side_by_side(reports))


def _side_by_side(reports: dict) -> str:
    """Per-group accuracies of several models in one table; * marks each model's worst group."""
    from .metrics import _report_columns

    models = list(reports)
    first = reports[models[0]]
    groups, counts, _, _ = _report_columns(first.by_group)
    width = max(len(m) for m in models) + 2
    lines = [f"{'group':<10}{'count':>7}" + "".join(f"{m:>{width}}" for m in models)]
    columns = {m: _report_columns(reports[m].by_group) for m in models}
    for i, (group, count) in enumerate(zip(groups, counts, strict=True)):
        cells = []
        for m in models:
            _, _, accuracy, worst = columns[m]
            cells.append(f"{accuracy[i]:.3f}{'*' if worst[i] else ' '}".rjust(width))
        lines.append(f"{str(group):<10}{count:>7d}" + "".join(cells))
    lines.append("")
    for label, attr in [("average", "accuracy"), ("worst-group", "worst_group_accuracy")]:
        lines.append(
            f"{label:<17}"
            + "".join(f"{getattr(reports[m], attr):.3f} ".rjust(width) for m in models)
        )
    lines.append("(* = the model's worst group)")
    return "\n".join(lines)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="featmeta",
        description="Linear heads on frozen embeddings, robust to spurious correlations (HSFM).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    fit = commands.add_parser("fit", help="fit a model on an .npz with X, y and optional groups")
    fit.add_argument("data", help=".npz with arrays X, y and optionally groups (-1 = unknown)")
    fit.add_argument("-o", "--output", required=True, help="where to save the model (joblib)")
    fit.add_argument(
        "--preset", choices=sorted(PAPER_PRESETS), help="the paper's settings for a data set"
    )
    for option, name, kind in _FIT_OPTIONS:
        fit.add_argument(
            option,
            dest=name,
            type=kind,
            default=argparse.SUPPRESS,
            help=f"estimator parameter {name}",
        )
    fit.add_argument("-v", "--verbose", action="count", default=0, help="progress per epoch")
    fit.set_defaults(handler=_cmd_fit)

    predict = commands.add_parser("predict", help="predict labels (or probabilities) for X")
    predict.add_argument("model")
    predict.add_argument("data", help=".npz with X, or .npy")
    predict.add_argument("-o", "--output", help=".npy or text/.csv file (default: print)")
    predict.add_argument(
        "--proba", action="store_true", help="class probabilities instead of labels"
    )
    predict.set_defaults(handler=_cmd_predict)

    evaluate = commands.add_parser(
        "evaluate", help="per-group accuracy table on an .npz with X, y, groups"
    )
    evaluate.add_argument("model")
    evaluate.add_argument("data")
    evaluate.set_defaults(handler=_cmd_evaluate)

    explain = commands.add_parser(
        "explain", help="how the support-set edits moved, and along which concepts"
    )
    explain.add_argument("model")
    explain.add_argument(
        "--concepts",
        help=".npz of concept directions: arrays names + vectors, or one array per name",
    )
    explain.add_argument("--plot", help="save a plot of the edits (PNG, needs matplotlib)")
    explain.add_argument(
        "--n-random", type=int, default=200, help="random directions for the z-scores"
    )
    explain.set_defaults(handler=_cmd_explain)

    demo = commands.add_parser("demo", help="ERM against HSFM on synthetic spurious embeddings")
    demo.add_argument("--n-samples", type=int, default=6000)
    demo.add_argument("--n-features", type=int, default=32)
    demo.add_argument("--random-state", type=int, default=0)
    demo.add_argument("--device", default="auto")
    demo.set_defaults(handler=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``featmeta`` console script."""
    args = _build_parser().parse_args(argv)
    try:
        args.handler(args)
    except (CommandError, ValueError) as exc:
        print(f"featmeta {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
