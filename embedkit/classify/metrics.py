"""Evaluation: accuracy, F1 and the confusion matrix of the evaluated rows, their printed report and plot, and
the phrases that say what the fit chose and which rows the saved model saw."""

from __future__ import annotations

from typing import Any

import numpy as np


def evaluate(y_true: np.ndarray, y_pred: np.ndarray, classes: list | np.ndarray) -> dict[str, Any]:
    """Accuracy, macro-F1, weighted-F1, per-class precision/recall/F1/support and the confusion matrix."""
    from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score

    classes = list(classes)
    report = classification_report(y_true, y_pred, labels=classes, output_dict=True, zero_division=0)
    per_class = {
        str(c): {k: float(v) if k != "support" else int(v) for k, v in report[str(c)].items()} for c in classes
    }
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=classes, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, labels=classes, average="weighted", zero_division=0)),
        "per_class": per_class,
        "confusion_matrix": {
            "labels": [_jsonable(c) for c in classes],
            "matrix": confusion_matrix(y_true, y_pred, labels=classes).tolist(),
        },
    }


def format_report(metrics: dict[str, Any]) -> str:
    """The per-class table printed by ``embedkit train`` (sklearn's classification_report layout)."""
    per_class = metrics["per_class"]
    width = max(12, *(len(c) for c in per_class))
    lines = [f"{'':>{width}}  precision    recall  f1-score   support", ""]
    for label, r in per_class.items():
        lines.append(
            f"{label:>{width}}  {r['precision']:9.3f} {r['recall']:9.3f} {r['f1-score']:9.3f} {r['support']:9d}"
        )
    total = sum(r["support"] for r in per_class.values())
    lines += [
        "",
        f"{'accuracy':>{width}}  {'':9} {'':9} {metrics['accuracy']:9.3f} {total:9d}",
        f"{'macro F1':>{width}}  {'':9} {'':9} {metrics['macro_f1']:9.3f} {total:9d}",
    ]
    return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def chosen_note(m: dict[str, Any]) -> str:
    """What the fit chose by itself (ridge's alpha, logreg's C and scaling), as a phrase; "" when nothing was."""
    if "search" in m:
        s = m["search"]
        scaling = "on/off" if len(s["grid_standardize"]) > 1 else ("on" if s["grid_standardize"][0] else "off")
        # Models saved before the search ranked by log-loss recorded the accuracy only.
        loss = f"log-loss {s['chosen_cv_log_loss']:.4f} (lowest), " if "chosen_cv_log_loss" in s else ""
        return (
            f"C {s['chosen_C']:g}, {'standardised' if s['chosen_standardize'] else 'unscaled'}: "
            f"{s['folds']}-fold CV {loss}accuracy {s['chosen_cv_accuracy']:.4f} on {s['rows']} rows over "
            f"C {s['grid_C'][0]:g}..{s['grid_C'][-1]:g} x {len(s['grid_C'])}, scaling {scaling}"
        )
    if "chosen_alpha" not in m:
        return ""
    grid = m.get("grid_alpha")
    over = f" over alpha {grid[0]:g}..{grid[-1]:g} x {len(grid)}" if grid else ""
    error = f" (squared error {m['chosen_alpha_loo_error']:.4f})" if "chosen_alpha_loo_error" in m else ""
    return f"alpha {m['chosen_alpha']:g}, chosen by leave-one-out{over}{error}"


def fitted_on(m: dict[str, Any]) -> str:
    """Which rows the saved model was fitted on, as a phrase for the summary and ``embedkit info``."""
    ev = m["evaluation"]
    if ev["mode"] != "holdout":
        return f"fitted on all {m['fit_rows']} rows"
    if m.get("refit_on_all_rows"):
        return f"fitted on all {m['fit_rows']} rows after the hold-out evaluation"
    return f"fitted on the {m['fit_rows']} training rows only: the evaluated fit (--no-refit)"
