"""Evaluation metrics: accuracy, F1, Pearson / Spearman correlation."""

from __future__ import annotations

import numpy as np


def accuracy(predictions, labels) -> float:
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    return float((predictions == labels).mean())


def f1(predictions, labels, positive: int = 1) -> float:
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    true_positive = float(((predictions == positive) & (labels == positive)).sum())
    predicted, actual = float((predictions == positive).sum()), float((labels == positive).sum())
    if true_positive == 0:
        return 0.0
    precision, recall = true_positive / predicted, true_positive / actual
    return 2 * precision * recall / (precision + recall)


def macro_f1(predictions, labels) -> float:
    classes = sorted(set(np.asarray(labels).tolist()) | set(np.asarray(predictions).tolist()))
    return float(np.mean([f1(predictions, labels, c) for c in classes]))


def classification_metrics(predictions, labels) -> dict[str, float]:
    result = {"accuracy": accuracy(predictions, labels)}
    if len(set(np.asarray(labels).tolist())) <= 2:
        result["f1"] = f1(predictions, labels)
        result["accuracy_f1_mean"] = (result["accuracy"] + result["f1"]) / 2
    else:
        result["macro_f1"] = macro_f1(predictions, labels)
    return result


def regression_metrics(predictions, targets) -> dict[str, float]:
    predictions, targets = np.asarray(predictions, dtype=float), np.asarray(targets, dtype=float)
    from scipy import stats  # here, not at import: it takes most of a second

    pearson = float(stats.pearsonr(predictions, targets).statistic)
    spearman = float(stats.spearmanr(predictions, targets).statistic)
    return {"pearson": pearson, "spearman": spearman, "pearson_spearman_mean": (pearson + spearman) / 2}


MAIN_METRICS = ("accuracy_f1_mean", "accuracy", "pearson_spearman_mean", "perplexity")  # in this order
LOWER_IS_BETTER = ("perplexity", "loss")


def main_metric(evaluation: dict) -> str | None:
    """The one number that sums up an evaluation: the task's usual summary (None: none of them)."""
    return next((key for key in MAIN_METRICS if key in evaluation), None)


def better(new: dict, old: dict | None) -> bool:
    """Whether evaluation `new` beats `old` on the main metric (None: nothing to beat)."""
    if old is None:
        return True
    metric = main_metric(new)
    if metric is None:
        return False
    return new[metric] < old[metric] if metric in LOWER_IS_BETTER else new[metric] > old[metric]
