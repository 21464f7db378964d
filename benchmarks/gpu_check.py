"""On a CUDA machine: device tests, CPU/CUDA agreement, and a CelebA-scale timing.

    python -m benchmarks.gpu_check [--out DIR] [--n-samples 160000] [--n-features 2048]

1. runs ``tests/test_device.py`` (the CUDA tests skip elsewhere);
2. fits the same data on CPU and CUDA with the same seed and compares them;
3. times ``MetaAugmentedHeadClassifier()`` on 160k x 2048 synthetic embeddings
   (15% annotated) on the GPU and on the CPU, after a warm-up fit.

Writes ``gpu_check.json`` and ``gpu_check.md`` to ``--out``; paste the table
into RESULTS.md ("GPU"). Exits 2 when CUDA is unavailable.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _timed_fit(X, y, groups, device):
    import torch

    from sklearn_featmeta import MetaAugmentedHeadClassifier

    MetaAugmentedHeadClassifier(random_state=0, device=device, n_epochs=2).fit(
        X[:4000], y[:4000], groups[:4000]
    )
    if device != "cpu":
        torch.cuda.synchronize()
    start = time.perf_counter()
    model = MetaAugmentedHeadClassifier(random_state=0, device=device).fit(X, y, groups)
    if device != "cpu":
        torch.cuda.synchronize()
    return model, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--n-samples", type=int, default=160_000)
    parser.add_argument("--n-features", type=int, default=2048)
    parser.add_argument("--skip-cpu-timing", action="store_true", help="time the GPU only")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("CUDA is not available here: nothing to check.", file=sys.stderr)
        return 2
    from sklearn_featmeta import MetaAugmentedHeadClassifier
    from sklearn_featmeta.datasets import make_spurious_embeddings
    from sklearn_featmeta.metrics import worst_group_accuracy_score

    report = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "tests/test_device.py"],
        capture_output=True,
        text=True,
    )
    report["device_tests"] = (
        tests.stdout.strip().splitlines()[-1] if tests.stdout.strip() else tests.stderr[-500:]
    )
    print("device tests:", report["device_tests"], flush=True)

    X, y, groups = make_spurious_embeddings(6000, 384, known_group_fraction=0.2, random_state=1)
    cpu = MetaAugmentedHeadClassifier(random_state=0, device="cpu").fit(X, y, groups)
    gpu = MetaAugmentedHeadClassifier(random_state=0, device="cuda").fit(X, y, groups)
    known = groups != -1
    report["agreement"] = {
        "max_abs_coef_difference": float(np.abs(cpu.coef_ - gpu.coef_).max()),
        "max_abs_coef": float(np.abs(cpu.coef_).max()),
        "prediction_agreement": float(np.mean(cpu.predict(X) == gpu.predict(X))),
        "cpu_wga": worst_group_accuracy_score(
            y[known], cpu.predict(X[known]), groups=groups[known]
        ),
        "gpu_wga": worst_group_accuracy_score(
            y[known], gpu.predict(X[known]), groups=groups[known]
        ),
    }
    print("agreement:", report["agreement"], flush=True)

    X, y, groups = make_spurious_embeddings(
        args.n_samples, args.n_features, known_group_fraction=0.15, random_state=0
    )
    _, report["gpu_seconds"] = _timed_fit(X, y, groups, "cuda")
    print(f"{args.n_samples} x {args.n_features} on GPU: {report['gpu_seconds']:.1f}s", flush=True)
    if not args.skip_cpu_timing:
        _, report["cpu_seconds"] = _timed_fit(X, y, groups, "cpu")
        print(
            f"{args.n_samples} x {args.n_features} on CPU: {report['cpu_seconds']:.1f}s", flush=True
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    agreement = report["agreement"]
    lines = [
        f"Command: `python -m benchmarks.gpu_check {' '.join(argv if argv is not None else sys.argv[1:])}`; "
        f"{report['device']}, torch {report['torch']}.",
        "",
        f"- device tests: {report['device_tests']}",
        f"- CPU vs CUDA (6k x 384, same seed): max |coef difference| {agreement['max_abs_coef_difference']:.2e} "
        f"(max |coef| {agreement['max_abs_coef']:.2f}), predictions agree on "
        f"{100 * agreement['prediction_agreement']:.2f}% of rows",
        f"- {args.n_samples:,} x {args.n_features} fit: GPU {report['gpu_seconds']:.1f} s"
        + (f", CPU {report['cpu_seconds']:.1f} s" if "cpu_seconds" in report else ""),
    ]
    (args.out / "gpu_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
