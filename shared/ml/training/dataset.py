"""What a run learns from, out of what people did: pure functions, no I/O.

The evidence (shared/evidence) judges every (query, resource) people were shown, each person one
voice, corrected for position. A run fine-tunes on one pair per (query, resource) somebody acted
on (rated or opened), labelled by the sign of its evidence, and remembers every non-zero value
in its feedback memory (a result seen often and never opened included).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold

from shared.evidence.clicks import Examination, Search, estimate
from shared.evidence.judgments import Action, Impression, Judgment, judge
from shared.evidence.outcomes import voice
from shared.records import Feedback, Inference, Interaction, Resource, normalise_query


@dataclass(frozen=True)
class Pair:
    query: str
    resource_id: str
    text: str
    label: int  # 1 = liked or satisfied more than an average result, 0 = less
    votes: int = 1  # voices that acted on it
    value: float = 0.0  # what the feedback memory adds for it (shared/evidence/judgments.py)
    rank: float = 0.0  # where people saw it, on average


@dataclass(frozen=True)
class Evidence:
    """A run's evidence: where people look, and what they said of each (query, resource)."""

    examination: Examination
    judgments: dict[tuple[str, str], Judgment]


def impressions_and_actions(inferences: Iterable[Inference], feedback: Iterable[Feedback],
                            interactions: Iterable[Interaction]) -> tuple[list[Impression], list[Action]]:
    """The logged searches and what was done on them, in the evidence's terms: a search's voice is
    its own user or session id, else that of the first action on it that names one."""
    named: dict[str, str] = {}
    actions = []
    for item in sorted([*feedback, *interactions], key=lambda a: a.updated_at):
        who = voice(item.user_id, item.session_id, item.inference_id)
        if item.user_id or item.session_id:
            named.setdefault(item.inference_id, who)
        if isinstance(item, Feedback):
            actions.append(Action(item.inference_id, item.resource_id, who, label=item.label))
        else:
            actions.append(Action(item.inference_id, item.resource_id, who, opened=True,
                                  dwell_s=item.dwell_s))
    impressions = [
        Impression(i.inference_id, normalise_query(i.query),
                   voice(i.user_id, i.session_id, i.inference_id) if (i.user_id or i.session_id)
                   else named.get(i.inference_id, voice(None, None, i.inference_id)),
                   tuple(r.resource_id for r in sorted(i.results, key=lambda r: r.rank)),
                   i.interleaving.experiment_id if i.interleaving else f"{i.model_version}:{i.use_reranker}")
        for i in inferences]
    return impressions, actions


def estimate_examination(impressions: Iterable[Impression],
                         interactions: Iterable[Interaction]) -> Examination:
    """Where people look, from the searches and the results opened on them.

    A (query, resource) is compared with itself only under one ranker: a version trained on earlier
    opens moves up what was opened low, so across versions the ranks follow the opens (impressions
    at a deep rank end with the open that lifted it: deep ranks look examined more than they are).
    Under one ranker the rank varies only by the search's own coin (an explored swap, an
    interleaving draw), which the opens cannot have caused."""
    opened: dict[str, set[str]] = defaultdict(set)
    for item in interactions:
        opened[item.inference_id].add(item.resource_id)
    return estimate([Search(i.query, i.shown, frozenset(opened.get(i.inference_id, ())), i.ranker)
                     for i in impressions])


def gather_evidence(inferences: Iterable[Inference], feedback: Iterable[Feedback],
                    interactions: Iterable[Interaction]) -> Evidence:
    """Examination estimated from the searches' opens, then every (query, resource) judged with it."""
    interactions = list(interactions)
    impressions, actions = impressions_and_actions(inferences, feedback, interactions)
    examination = estimate_examination(impressions, interactions)
    return Evidence(examination, judge(impressions, actions, examination))


def build_pairs(evidence: Evidence, resources: dict[str, Resource]) -> list[Pair]:
    """One pair per (query, resource) somebody acted on whose voices do not cancel out."""
    pairs = []
    for (query, resource_id), judgment in sorted(evidence.judgments.items()):
        label = judgment.label
        if label is None or resource_id not in resources:
            continue
        pairs.append(Pair(query, resource_id, resources[resource_id].text, label, judgment.acted,
                          judgment.value, judgment.rank))
    return pairs


def memory_entries(evidence: Evidence, resources: dict[str, Resource]) -> list[tuple[str, str, float]]:
    """(query, resource, value) for every judgment the memory should recall (value not 0)."""
    return [(query, resource_id, j.value) for (query, resource_id), j in sorted(evidence.judgments.items())
            if j.value and resource_id in resources]


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
