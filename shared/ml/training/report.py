"""Training reports: `training_report.txt` and `report.html` with the plots embedded as PNG."""

from __future__ import annotations

import base64
import io
from html import escape
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from shared.ml.training.evaluate import Evaluation  # noqa: E402

COMPARED = ("ndcg@10", "mrr@10", "accuracy", "precision", "recall", "f1", "auc")


def gains(before: dict[str, float], after: dict[str, float]) -> list[dict[str, Any]]:
    rows = []
    for name in COMPARED:
        b, a = before.get(name), after.get(name)
        if b is None or a is None:
            continue
        rows.append({"metric": name, "before": b, "after": a, "delta": a - b,
                     "gain_pct": (a - b) / b * 100 if b else None})
    return rows


def comparison_figure(before: dict[str, float], after: dict[str, float]) -> Figure:
    rows = gains(before, after)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["before"] for r in rows], 0.4, label="champion")
    ax.bar(x + 0.2, [r["after"] for r in rows], 0.4, label="candidate")
    ax.set_xticks(x, [r["metric"] for r in rows])
    ax.set_ylim(0, 1.05)
    ax.legend()
    ax.set_title("Validation metrics, before and after")
    fig.tight_layout()
    return fig


def loss_figure(history: list[dict[str, float]]) -> Figure:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    if train:
        ax.plot(*zip(*train, strict=True), label="training loss")
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_title("Loss")
    ax.legend()
    fig.tight_layout()
    return fig


def roc_figure(evaluations: dict[str, Evaluation]) -> Figure:
    fig, ax = plt.subplots(figsize=(4.5, 4))
    for name, ev in evaluations.items():
        if len(set(ev.labels.tolist())) == 2:
            fpr, tpr, _ = roc_curve(ev.labels, ev.scores)
            ax.plot(fpr, tpr, label=f"{name} (AUC {ev.metrics['auc']:.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def confusion_figure(ev: Evaluation, title: str = "Confusion matrix") -> Figure:
    fig, ax = plt.subplots(figsize=(3.8, 3.5))
    matrix = np.array(ev.confusion or [[0, 0], [0, 0]])
    ax.imshow(matrix, cmap="Blues")
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center")
    ax.set_xticks([0, 1], ["dislike", "like"])
    ax.set_yticks([0, 1], ["dislike", "like"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def distribution_figure(evaluations: dict[str, Evaluation]) -> Figure:
    fig, axes = plt.subplots(1, len(evaluations), figsize=(4 * len(evaluations), 3.2), squeeze=False)
    for ax, (name, ev) in zip(axes[0], evaluations.items(), strict=True):
        for label, colour in ((1, "tab:green"), (0, "tab:red")):
            values = ev.scores[ev.labels == label]
            if values.size:
                ax.hist(values, bins=15, alpha=0.6, color=colour, label="like" if label else "dislike")
        ax.set_title(f"Scores: {name}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def moved(meta: dict[str, Any]) -> bool:
    """Whether any validation metric differs between the champion and the candidate."""
    rows = gains(meta["metrics"]["champion"], meta["metrics"]["candidate"])
    return any(abs(r["delta"]) > 1e-9 for r in rows)


def _weights(weights: dict[str, float], before: dict[str, float]) -> str:
    def one(name: str, value: float) -> str:
        if name not in before:
            return f"{name} {value:g} (new)"
        return f"{name} {value:g}" + ("" if before[name] == value else f" (was {before[name]:g})")

    return ", ".join(one(name, value) for name, value in weights.items())


def learned(meta: dict[str, Any]) -> list[str]:
    """What the run added to the served pipeline, in sentences: a run that fine-tuned nothing
    still learned a feedback memory and fusion weights, and says so instead of a flat table."""
    lines = []
    memory, weights = meta.get("memory"), meta["weights"]
    # A version written before the memory had two scorers: its neighbours weigh what its own ratings do.
    near = weights.get("neighbours", weights.get("memory", 0.0))
    if memory:
        lines.append(f"feedback memory: {memory['queries']} queries and {memory['resources']} resources "
                     f"users rated ({memory['likes']} likes, {memory['dislikes']} dislikes), recalled "
                     f"when the same query comes again (weight {weights.get('memory', 0.0):g}) and "
                     + (f"for similar queries (weight {near:g})" if near else
                        "not for other queries: on the training queries, similar queries' votes "
                        "were not surely a gain"))
    lines.append("fusion weights: " + _weights(weights, meta.get("champion_weights", {})))
    if meta.get("cross_encoder_trained"):
        weight = weights.get("cross", 0.0)
        epochs = meta.get("hyperparameters", {}).get("epochs", "?")
        lines.append(f"cross-encoder: fine-tuned from {meta.get('started_from')} ({epochs} epoch(s), "
                     f"{meta['durations']['train_s']:.0f} s), fused at weight {weight:g}"
                     + ("" if weight else ": on the training split it made the ranking no better, so "
                        "it is saved with the version but does not change what is served"))
    else:
        lines.append("cross-encoder: not fine-tuned in this run: "
                     + (meta.get("cross_encoder_skipped") or "no reason recorded"))
    if not moved(meta):
        lines.append("no validation metric moved: the candidate ranks the validation queries as the "
                     "champion does (what it learned applies to the queries users rated"
                     + (", or to ones like them)" if near or weights.get("cross") else ")"))
    return lines


def cross_encoder_reading(alone: dict[str, float], bm25: dict[str, float], base: dict[str, float],
                          weight: float, metric: str = "ndcg@10") -> str:
    """What the fine-tuned cross-encoder's own numbers mean for what is served."""
    own, lexical, before = alone.get(metric, 0.0), bm25.get(metric, 0.0), base.get(metric, 0.0)
    lines = [f"On its own the fine-tuned cross-encoder reaches {metric} {own:.3f} on the validation "
             f"queries (before fine-tuning: {before:.3f}); BM25 alone reaches {lexical:.3f}."]
    if own < lexical:
        lines.append("It ranks below BM25: a cross-encoder whose scoring head started random (the "
                     "offline weights) learns little from this much feedback. More feedback and epochs "
                     "move it, and a base that is already a cross-encoder "
                     "(cross-encoder/ms-marco-MiniLM-L-6-v2, where a model hub is reachable) starts "
                     "above BM25.")
    if weight:
        lines.append(f"The candidate fuses it at weight {weight:g}: it changes what would be served.")
    else:
        lines.append("The candidate fuses it at weight 0: the training split ranks best without it, so "
                     "it changes nothing that would be served (the candidate is the champion's scorers "
                     "plus the feedback memory). It is saved with the version all the same.")
    return "\n".join(lines)


def png(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1f}%"


def text_report(meta: dict[str, Any]) -> str:
    lines = [f"EduRanker training report — {meta['version']}", "=" * 48,
             f"decision: {meta['decision']} ({meta['reason']})",
             f"pairs: {meta['dataset']['pairs']} (train {meta['dataset']['train']}, "
             f"validation {meta['dataset']['validation']})",
             f"training seconds: {meta['durations']['train_s']:.1f}", "", "What this run learned:",
             *(f"- {line}" for line in learned(meta)), ""]
    rows = gains(meta["metrics"]["champion"], meta["metrics"]["candidate"])
    if moved(meta):
        lines.append(f"{'metric':<10}{'champion':>10}{'candidate':>11}{'gain %':>9}")
        lines += [f"{r['metric']:<10}{r['before']:>10.4f}{r['after']:>11.4f}{_pct(r['gain_pct']):>9}"
                  for r in rows]
    else:
        lines.append(f"{'metric':<10}{'champion = candidate':>22}")
        lines += [f"{r['metric']:<10}{r['before']:>22.4f}" for r in rows]
    lines += ["", f"BM25 alone ndcg@10: {meta['metrics']['bm25'].get('ndcg@10', 0):.4f}",
              f"fusion weights: {meta['weights']}"]
    return "\n".join(lines) + "\n"


def html_report(meta: dict[str, Any], history: list[dict[str, float]],
                evaluations: dict[str, Evaluation]) -> str:
    """The plots that have something to show: no loss curve without training, no before/after
    bars when no metric moved."""
    changed = moved(meta)
    rows = "".join(
        f"<tr><td>{r['metric']}</td><td>{r['before']:.4f}</td><td>{r['after']:.4f}</td>"
        + (f"<td>{_pct(r['gain_pct'])}</td>" if changed else "") + "</tr>"
        for r in gains(meta["metrics"]["champion"], meta["metrics"]["candidate"])
    )
    images = []
    if any("loss" in h or "eval_loss" in h for h in history):
        images.append(("Loss curve", png(loss_figure(history))))
    if changed:
        images.append(("Before / after", png(comparison_figure(meta["metrics"]["champion"],
                                                               meta["metrics"]["candidate"]))))
    images += [("ROC", png(roc_figure(evaluations))),
               ("Score distributions", png(distribution_figure(evaluations)))]
    for name, when in (("champion", "before"), ("candidate", "after")):
        if name in evaluations:
            title = f"Confusion matrix ({name}, {when})"
            images.append((title, png(confusion_figure(evaluations[name], title))))
    figures = "".join(f"<figure><img alt='{escape(t)}' src='data:image/png;base64,{b}'>"
                      f"<figcaption>{escape(t)}</figcaption></figure>" for t, b in images)
    return (
        "<!doctype html><html lang='en'><meta charset='utf-8'>"
        f"<title>EduRanker {escape(meta['version'])}</title>"
        "<style>body{font-family:sans-serif;max-width:960px;margin:auto;padding:1em}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}"
        "figure{display:inline-block;margin:8px}</style>"
        f"<h1>Training report: {escape(meta['version'])}</h1>"
        f"<p>Decision: <b>{escape(meta['decision'])}</b> — {escape(meta['reason'])}</p>"
        f"<p>Pairs: {meta['dataset']['pairs']} (train {meta['dataset']['train']}, "
        f"validation {meta['dataset']['validation']}); "
        f"training took {meta['durations']['train_s']:.1f} s.</p>"
        "<h2>What this run learned</h2><ul>"
        + "".join(f"<li>{escape(line)}</li>" for line in learned(meta)) + "</ul>"
        "<table><tr><th>metric</th><th>champion</th><th>candidate</th>"
        + ("<th>gain</th>" if changed else "") + f"</tr>{rows}</table>{figures}</html>"
    )
