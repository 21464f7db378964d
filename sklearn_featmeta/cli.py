"""The ``featmeta`` command: fit, predict, evaluate, explain and a demo.

Data files are ``.npz`` archives with arrays ``X``, ``y`` and optionally
``groups`` (-1 / None / NaN where unknown); ``predict`` also takes a bare
``.npy`` matrix. Models are saved with joblib.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
import zipfile
from numbers import Integral
from pathlib import Path

import joblib
import numpy as np
from sklearn.utils._param_validation import Interval, StrOptions

from . import __version__
from ._meta_head import MetaAugmentedHeadClassifier
from ._presets import PAPER_PRESETS
from ._text import text_table

# Parameters a command line cannot express (a tuple of arrays) or that have their own option.
_NOT_OPTIONS = {"initial_head": "a (coef, intercept) tuple of arrays", "verbose": "-v"}
_DOCSTRING_SECTIONS = ("Attributes", "See Also", "References", "Examples", "Notes")


def _parameter_docs(estimator_class) -> dict[str, str]:
    """First sentence of each parameter's description in the class's numpydoc docstring."""
    lines = inspect.getdoc(estimator_class).splitlines()
    docs, name = {}, None
    for line in lines[lines.index("Parameters") + 2 :]:
        if line.strip() in _DOCSTRING_SECTIONS:
            break
        if line and not line.startswith(" "):
            name = line.split(" : ")[0].strip()
            docs[name] = []
        elif line.strip() and name:
            docs[name].append(line.strip())
    return {
        name: re.split(r"(?<=[a-z0-9)`])\. ", " ".join(text), maxsplit=1)[0].rstrip(".")
        for name, text in docs.items()
    }


def _allowed(constraints: list) -> str:
    """The values a parameter takes, in words: ``auto, none or a number > 0``."""
    words = []
    for constraint in constraints:
        if constraint is None:
            words.append("none")
        elif constraint == "boolean":
            words.append("true or false")
        elif isinstance(constraint, StrOptions):
            words.append(" or ".join(sorted(constraint.options)))
        elif isinstance(constraint, Interval):
            bounds = []
            if constraint.left is not None:
                sign = ">=" if constraint.closed in ("left", "both") else ">"
                bounds.append(f"{sign} {constraint.left:g}")
            if constraint.right is not None:
                sign = "<=" if constraint.closed in ("right", "both") else "<"
                bounds.append(f"{sign} {constraint.right:g}")
            kind = "a whole number" if constraint.type is Integral else "a number"
            words.append(" ".join([kind, " and ".join(bounds)]).strip())
        elif constraint == "random_state":
            words.append("a whole number (seed)")
        elif constraint is str:
            words.append("text")
        elif constraint == "array-like":
            words.append("numbers separated by commas")
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _parser_of(name: str, constraints: list):
    """A converter from text that accepts exactly what the parameter's constraints allow."""
    options = [c for c in constraints if isinstance(c, StrOptions)]
    intervals = [c for c in constraints if isinstance(c, Interval)]

    def convert(text: str):
        word = text.strip().lower()
        if None in constraints and word == "none":
            return None
        if "boolean" in constraints and word in ("true", "false"):
            return word == "true"
        if any(text in option.options for option in options) or str in constraints:
            return text
        for interval in intervals:
            try:
                value = int(text) if interval.type is Integral else float(text)
            except ValueError:
                continue
            if interval.is_satisfied_by(value):
                return value
        if "random_state" in constraints and re.fullmatch(r"\d+", text.strip()):
            return int(text)
        if "array-like" in constraints and "," in text:
            try:
                return tuple(float(part) for part in text.split(","))
            except ValueError:
                pass
        raise argparse.ArgumentTypeError(f"expected {_allowed(constraints)}, got {text!r}")

    convert.__name__ = name  # argparse names the converter in its messages
    return convert


def _fit_options() -> list[tuple[str, str, object, str]]:
    """``(option, parameter, converter, help, metavar)`` of every estimator parameter.

    Derived from the estimator's ``_parameter_constraints``, its defaults and its
    docstring, so the command line offers exactly what the estimator takes.
    """
    estimator = MetaAugmentedHeadClassifier
    docs = _parameter_docs(estimator)
    defaults = estimator().get_params()
    options = []
    for name, constraints in estimator._parameter_constraints.items():
        if name in _NOT_OPTIONS:
            continue
        default = "none" if defaults[name] is None else defaults[name]
        help_text = f"{docs[name]} [default: {default}; {_allowed(constraints)}]"
        option = "--" + name.replace("_", "-").lower()
        options.append(
            (
                option,
                name,
                _parser_of(name, constraints),
                help_text.replace("``", "").replace("%", "%%"),
                _metavar(constraints),
            )
        )
    return options


def _metavar(constraints: list) -> str:
    """``{auto,none,X}``, ``{class,group}``, ``N`` ...: what an option's value looks like."""
    if "array-like" in constraints:  # numbers only, here
        return "X[,X...]"
    words = []
    for constraint in constraints:
        if constraint is None:
            words.append("none")
        elif constraint == "boolean":
            words += ["true", "false"]
        elif isinstance(constraint, StrOptions):
            words += sorted(constraint.options)
        elif isinstance(constraint, Interval) or constraint == "random_state":
            integral = constraint == "random_state" or constraint.type is Integral
            words.append("N" if integral else "X")
        elif constraint is str:
            words.append("TEXT")
    return words[0] if len(words) == 1 else "{" + ",".join(words) + "}"


class CommandError(Exception):
    """A problem with the command's input, reported without a traceback."""


def _load(path: str, *, need_y: bool) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    file = Path(path)
    if not file.is_file():
        raise CommandError(f"{path}: no such file")
    if file.suffix == ".npy":
        if need_y:
            raise CommandError(
                f"{path}: a .npy file holds only X; this command needs an .npz with X and y"
            )
        try:
            return np.load(file, allow_pickle=False), None, None
        except (OSError, ValueError) as exc:
            raise CommandError(f"{path}: not a NumPy .npy matrix ({exc})") from None
    if not zipfile.is_zipfile(file):
        raise CommandError(
            f"{path}: not a NumPy .npz archive; save data with "
            "np.savez(path, X=..., y=..., groups=...), or give X alone as a .npy file"
        )
    try:
        with np.load(file, allow_pickle=True) as archive:  # object groups (None) are pickled
            keys = set(archive.files)
            missing = {"X", "y"} - keys if need_y else {"X"} - keys
            if missing:
                raise CommandError(
                    f"{path}: missing array(s) {sorted(missing)}; found {sorted(keys)}. "
                    "Save with np.savez(path, X=..., y=..., groups=...)."
                )
            return tuple(archive[key] if key in keys else None for key in ("X", "y", "groups"))
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise CommandError(f"{path}: unreadable .npz archive ({exc})") from None


def _load_model(path: str):
    if not Path(path).is_file():
        raise CommandError(f"{path}: no such model file")
    try:
        model = joblib.load(path)
    except Exception as exc:  # unpickling a file that is not a model fails in many ways
        raise CommandError(
            f"{path}: not a model saved by 'featmeta fit' ({type(exc).__name__}: {exc})"
        ) from None
    if not hasattr(model, "predict"):
        raise CommandError(f"{path}: holds a {type(model).__name__}, not a fitted classifier")
    return model


def _check_writable(path: str | None) -> None:
    """A clear error before any work when an output's folder does not exist."""
    if path is not None and not Path(path).resolve().parent.is_dir():
        raise CommandError(f"{path}: folder {Path(path).parent} does not exist")


def _cmd_fit(args) -> None:
    _check_writable(args.output)
    X, y, groups = _load(args.data, need_y=True)
    params = {
        name: getattr(args, name) for _, name, *_ in _fit_options() if hasattr(args, name)
    }  # options not given are absent (argparse.SUPPRESS): "none" can pass None
    if args.preset:
        estimator = MetaAugmentedHeadClassifier.from_preset(args.preset, **params)
    else:
        estimator = MetaAugmentedHeadClassifier(**params)
    estimator.set_params(verbose=args.verbose)
    estimator.fit(X, y, groups)
    joblib.dump(estimator, args.output)
    if estimator.best_epoch_.size == 0:  # no known group: no run, the group-free head
        print(
            f"fitted on {X.shape[0]} rows x {X.shape[1]} features without group labels: "
            f"{estimator.selected_heads_} head"
        )
        print(f"saved {args.output}")
        return
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
    _check_writable(args.output)
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

    _check_writable(args.plot)
    estimator = _load_model(args.model)
    if not hasattr(estimator, "support_edited_"):
        raise CommandError(
            f"{args.model}: no support set to explain (not a MetaAugmentedHeadClassifier, "
            "or one fitted without support edits: outer_steps=0 or no group labels)"
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
    groups, counts, _, _ = _report_columns(reports[models[0]].by_group)
    columns = {m: _report_columns(reports[m].by_group) for m in models}
    rows = [
        [str(group), f"{count:d}"]
        + [f"{columns[m][2][i]:.3f}{'*' if columns[m][3][i] else ' '}" for m in models]
        for i, (group, count) in enumerate(zip(groups, counts, strict=True))
    ]
    rows.append(None)
    for label, attr in [("average", "accuracy"), ("worst-group", "worst_group_accuracy")]:
        rows.append([label, ""] + [f"{getattr(reports[m], attr):.3f} " for m in models])
    lines = text_table(["group", "count", *models], rows)
    lines.append("(* = the model's worst group)")
    return "\n".join(lines)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="featmeta",
        description="Linear heads on frozen embeddings, robust to spurious correlations (HSFM).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    fit = commands.add_parser(
        "fit",
        help="fit a model on an .npz with X, y and optional groups",
        description="Fit MetaAugmentedHeadClassifier on an .npz archive (arrays X, y and "
        "optionally groups, -1 / None where unknown) and save it with joblib. Every estimator "
        "parameter is an option; --preset fixes the paper's settings for a data set, and "
        "the options it fixes cannot be given with it.",
    )
    fit.add_argument("data", help=".npz with arrays X, y and optionally groups (-1 = unknown)")
    fit.add_argument("-o", "--output", required=True, help="where to save the model (joblib)")
    fit.add_argument(
        "--preset",
        choices=sorted(PAPER_PRESETS),
        help="the paper's settings for a data set (fixes: "
        f"{', '.join(sorted(next(iter(PAPER_PRESETS.values()))))})",
    )
    for option, name, convert, help_text, metavar in _fit_options():
        fit.add_argument(
            option,
            dest=name,
            type=convert,
            default=argparse.SUPPRESS,
            metavar=metavar,
            help=help_text,
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
    except (CommandError, ValueError, OSError) as exc:
        print(f"featmeta {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
