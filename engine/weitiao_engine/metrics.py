"""Classification metrics for label-set tasks, shared by training (per epoch) and evaluation."""

from __future__ import annotations

from typing import Any


def label_metrics(expected: list[str], predicted: list[str], labels: list[str]) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1, macro F1 and the confusion matrix (rows: answer, cols: prediction)."""
    index = {label: i for i, label in enumerate(labels)}
    k = len(labels)
    matrix = [[0] * k for _ in range(k)]
    for e, p in zip(expected, predicted):
        if e in index and p in index:
            matrix[index[e]][index[p]] += 1
    n = len(expected)
    correct = sum(1 for e, p in zip(expected, predicted) if e == p)
    per_class: dict[str, dict[str, float]] = {}
    for i, label in enumerate(labels):
        tp = matrix[i][i]
        predicted_i = sum(1 for p in predicted if p == label)
        support = sum(1 for e in expected if e == label)
        precision = tp / predicted_i if predicted_i else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    macro_f1 = sum(c["f1"] for c in per_class.values()) / k if k else 0.0
    return {
        "n": n,
        "accuracy": correct / n if n else 0.0,
        "macro_f1": macro_f1,
        "labels": labels,
        "per_class": per_class,
        "confusion_matrix": matrix,
    }
