"""Progress output of a fit (``verbose``): a line per run, updated in place each epoch, and
the summary of what the fit chose."""

from __future__ import annotations


class Progress:
    """``verbose`` output: a line updated in place each epoch (every epoch on its own line at 2+).

    Runs with edits go one after another: a line per run. Batched runs (no
    edits, :func:`._core.runs_in_one_batch`) step at once: one line, each run's
    latest score.
    """

    def __init__(self, estimator, n_runs: int, batched: bool):
        self.estimator, self.n_runs, self.batched = estimator, n_runs, batched
        self.open = False
        self.latest = {}  # run -> its latest record, for the line of batched runs

    def epoch(self, record) -> None:
        """Show one run's epoch (a :class:`._core.EpochRecord`)."""
        estimator = self.estimator
        line = (
            f"[{type(estimator).__name__}] run {record.run + 1}/{self.n_runs}, "
            f"epoch {record.epoch:>3}/{estimator._epoch_range()}: "
            f"worst-group acc {record.worst_group_accuracy:.4f}, "
            f"worst-group loss {record.worst_group_loss:.4f}"
        )
        if record.outer_loss is not None:
            line += f", outer loss {record.outer_loss:.4f}"
        if estimator.verbose >= 2:
            print(line, flush=True)
            return
        if self.batched:
            self.latest[record.run] = record
            scores = ", ".join(
                f"{self.latest[run].worst_group_accuracy:.4f}" for run in sorted(self.latest)
            )
            line = (
                f"[{type(estimator).__name__}] {self.n_runs} run(s), epoch "
                f"{record.epoch:>3}/{estimator._epoch_range()}: worst-group acc by run {scores}"
            )
        elif self.open and record.epoch == 1:
            print(flush=True)  # the previous run's line is complete
        print(f"\r{line}", end="", flush=True)
        self.open = True

    def close(self) -> None:
        if self.open:
            print(flush=True)
            self.open = False


def report_fit(name: str, result, seconds: float) -> None:
    """The verbose summary of a fit with groups: geometry, candidates, verdict, kept epochs."""
    from ._core import ONE_STANDARD_ERROR_TAIL as one_standard_error_tail

    if result.probe_scores is not None:
        scores = result.probe_scores
        print(
            f"[{name}] geometry: "
            f"{'whitened' if result.whitened else 'standardised'} (unedited heads' "
            f"held-out worst-group loss {scores['standardised']:.4f} standardised, "
            f"{scores['whitened']:.4f} whitened)"
        )
    if result.choice.scores is not None:
        scores = ", ".join(
            f"{head} {score['worst_group_accuracy']:.4f} / {score['worst_group_loss']:.4f}"
            for head, score in result.choice.scores.items()
        )
        print(
            f"[{name}] fitted head: {result.choice.chosen} (candidates' "
            f"held-out worst-group accuracy / loss: {scores})"
        )
        verdict = result.choice.verdict
        if verdict is not None:
            print(
                f"[{name}] the runs against the best balanced head: a "
                f"lead of {verdict.lead:.4f} where {verdict.margin:.4f} was needed, on "
                f"rows luck gives with chance {verdict.tail:.3f} (below "
                f"{one_standard_error_tail:.3f} needed), weakest run "
                f"{verdict.weakest_run_lead:+.4f}"
            )
    best = ", ".join(
        f"{run.best_epoch}{'' if run.kept_edits else ' (unedited)'}" for run in result.runs
    )
    made = ", ".join(str(run.epochs_made) for run in result.runs)
    print(
        f"[{name}] done in {seconds:.2f}s: "
        f"best epoch {best} of {made} epochs (inner_lr {result.inner_lr:.3g})"
    )


def report_fit_without_groups(estimator, result, n_rows: int, seconds: float) -> None:
    """The verbose summary of ``fit(X, y)``: the head kept, the heads' cross-fitted scores."""
    name, tolerance = type(estimator).__name__, estimator.reweight_tolerance
    scores = ""
    if result.scores:
        parts = []
        for head, score in result.scores.items():
            part = f"{head} {score['balanced_accuracy']:.4f}"
            if "largest_class_cost" in score:
                part += f" (gives up at most {score['largest_class_cost']:.4f} on a class"
                right = score.get("right_where_heads_disagree")
                part += "" if right is None else f", right on {right:.0%} of the rows it changes"
                part += ")"
            parts.append(part)
        scores = " (cross-fitted class-balanced accuracy: " + "; ".join(parts)
        scores += f"; tolerance {tolerance})"
    print(
        f"[{name}] no known group, {n_rows} rows: fitted head "
        f"{result.chosen}{scores}, in {seconds:.2f}s"
    )
