"""Training pairs from feedback: pure functions, no I/O.

Label resolution rule, stated once: for each (query, resource), every user's latest label
counts once; the majority wins; a tie goes to the most recent label.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold

from shared.store import Feedback, Inference, Resource


@dataclass(frozen=True)
class Pair:
    query: str
    resource_id: str
    text: str
    label: int  # 1 = like, 0 = dislike
    votes: int = 1


def normalise_query(query: str) -> str:
    return " ".join(query.lower().split())


def build_pairs(feedback: list[Feedback], inferences: dict[str, Inference],
                resources: dict[str, Resource]) -> list[Pair]:
    latest: dict[tuple[str, str, str], Feedback] = {}
    for fb in feedback:
        inference = inferences.get(fb.inference_id)
        if inference is None or fb.resource_id not in resources:
            continue
        user = fb.user_id or fb.session_id or fb.inference_id
        key = (normalise_query(inference.query), fb.resource_id, user)
        if key not in latest or fb.updated_at >= latest[key].updated_at:
            latest[key] = fb
    grouped: dict[tuple[str, str], list[Feedback]] = defaultdict(list)
    queries: dict[str, str] = {}
    for (query, resource_id, _), fb in latest.items():
        grouped[(query, resource_id)].append(fb)
        queries.setdefault(query, inferences[fb.inference_id].query)
    pairs = []
    for (query, resource_id), votes in sorted(grouped.items()):
        likes = sum(v.label == "like" for v in votes)
        dislikes = len(votes) - likes
        if likes == dislikes:
            label = int(max(votes, key=lambda v: v.updated_at).label == "like")
        else:
            label = int(likes > dislikes)
        pairs.append(Pair(queries[query], resource_id, resources[resource_id].text, label, len(votes)))
    return pairs


def not_enough_reason(pairs: list[Pair], minimum: int) -> str | None:
    """Why these pairs cannot train a model, or None when they can."""
    if len(pairs) < minimum:
        return f"not enough feedback: {len(pairs)} of {minimum} needed"
    labels = {p.label for p in pairs}
    if len(labels) < 2:
        only = "like" if labels == {1} else "dislike"
        return f"only '{only}' feedback: both labels are needed to train"
    return None


def split_by_query(pairs: list[Pair], val_ratio: float = 0.2,
                   seed: int = 42) -> tuple[list[Pair], list[Pair]]:
    """No query in both halves; stratified by label when there are enough queries of each kind."""
    if not pairs:
        return [], []
    groups = np.array([normalise_query(p.query) for p in pairs])
    labels = np.array([p.label for p in pairs])
    n_splits = max(2, round(1 / val_ratio))
    train_idx = val_idx = None
    if len(set(groups)) >= n_splits:
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        try:
            train_idx, val_idx = next(splitter.split(np.zeros(len(pairs)), labels, groups))
        except ValueError:
            train_idx = None
    if train_idx is None and len(set(groups)) >= 2:
        gss = GroupShuffleSplit(n_splits=1, test_size=val_ratio, random_state=seed)
        train_idx, val_idx = next(gss.split(np.zeros(len(pairs)), labels, groups))
    if train_idx is None:
        return list(pairs), []
    return [pairs[i] for i in train_idx], [pairs[i] for i in val_idx]


def group_by_query(pairs: list[Pair]) -> dict[str, list[Pair]]:
    grouped: dict[str, list[Pair]] = defaultdict(list)
    for p in pairs:
        grouped[normalise_query(p.query)].append(p)
    return dict(grouped)
