"""Offline experiment: distil version 0 into the cross-encoder, then fuse it with version 0.

Not part of the loop: it did not lift held-out queries reliably (docs/evaluation.md)
and each training takes ~13 min on a 2-core CPU. Kept so that those figures can be
reproduced and the idea taken further, e.g. on a GPU with more epochs or pseudo-queries.
"Version 0" here is BM25 + dense, without pseudo-relevance feedback, as when the figures
were measured. For one seed of `make eval`'s split: simulated users rate version 0's top 10
of each feedback query (`make eval`'s users, offline); the teacher is version 0's fused
score over BM25's top `--candidates`, with liked results raised above its best and disliked
ones below its worst; the student (the offline weights as a cross-encoder) is trained
listwise, a query per step. Prints held-out nDCG@10 of version 0 and of
version 0 + w * student for a few w.

    .venv/bin/python -m bench.studies.distil --seed 1 [--no-feedback] [--candidates 50 --max-length 128]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from sentence_transformers import CrossEncoder

from bench.harness.collection import DEFAULT_DATASET, Collection
from bench.harness.measures import ndcg10
from shared.ml.ranking.pipeline import fuse, version_zero
from shared.ml.ranking.retrieval import CatalogueIndex
from shared.ml.runtime.device import configure_torch_threads
from shared.ml.runtime.loading import embed, load_cross_encoder, load_embedder
from shared.settings import OFFLINE_BASE_MODEL, get_settings
from tools.people import People

Group = tuple[str, list[str], np.ndarray]
"""A query, texts, and the teacher's scores of them."""


def distil(cross: CrossEncoder, groups: list[Group], epochs: int, learning_rate: float,
           max_length: int, log: Callable[[str], None] = print) -> list[float]:
    """Listwise distillation, a query per step: the student's softmax over a query's texts learns the
    teacher's. The new scoring head learns 20x faster than the body (it starts random). Returns the
    mean loss of each epoch."""
    model, tokenizer = cross.model, cross.tokenizer
    head = [p for n, p in model.named_parameters() if "classifier" in n]
    body = [p for n, p in model.named_parameters() if "classifier" not in n]
    optimizer = torch.optim.AdamW([{"params": body, "lr": learning_rate},
                                   {"params": head, "lr": learning_rate * 20}])
    model.train()
    started, losses = time.perf_counter(), []
    for epoch in range(epochs):
        order = list(groups)
        random.Random(epoch).shuffle(order)
        epoch_losses = []
        for query, texts, target in order:
            batch = tokenizer([query] * len(texts), texts, padding=True, truncation=True,
                              max_length=max_length, return_tensors="pt")
            wanted = torch.softmax(torch.tensor(target, dtype=torch.float32), 0)
            loss = -(wanted * torch.log_softmax(model(**batch).logits.squeeze(-1), 0)).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            epoch_losses.append(loss.item())
        losses.append(statistics.mean(epoch_losses))
        log(f"epoch {epoch + 1}: loss {losses[-1]:.3f}, {time.perf_counter() - started:.0f} s")
    model.eval()
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=3e-5, help="the head learns 20x faster")
    parser.add_argument("--candidates", type=int, default=50, help="teacher's top-k trained on, per query")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--no-feedback", action="store_true", help="distil version 0 alone")
    args = parser.parse_args()
    configure_torch_threads(0)
    torch.manual_seed(args.seed)

    collection = Collection.load(args.dataset)
    resources = collection.resources()
    index = CatalogueIndex(resources)
    v0 = version_zero(get_settings().model_copy(update={"base_model": OFFLINE_BASE_MODEL,
                                                        "embedding_model": OFFLINE_BASE_MODEL,
                                                        "pseudo_relevance_docs": 0}))
    embedder = load_embedder(v0.embedding_model, v0.max_length, "cpu")
    started = time.perf_counter()
    documents = embed(embedder, [r.text for r in resources])
    queries = dict(zip(collection.queries, embed(embedder, list(collection.queries.values())), strict=True))
    print(f"version 0 built in {time.perf_counter() - started:.0f} s", flush=True)
    feedback_queries, held_out = collection.split(args.seed)

    def first_stage(qid: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        top, bm25 = index.bm25_top(collection.queries[qid], 50)
        return top, {"bm25": bm25, "dense": documents[top] @ queries[qid]}

    def teacher(qid: str) -> tuple[np.ndarray, np.ndarray]:
        top, scores = first_stage(qid)
        return top, fuse(scores, v0.weights)

    def ndcg(qid: str, order: np.ndarray) -> float:
        return ndcg10([resources[p].id for p in order], collection.qrels[qid])

    users, rng = People(silent=None), random.Random(args.seed)
    labels: dict[tuple[str, int], int] = {}
    if not args.no_feedback:
        for qid in random.Random(args.seed).sample(feedback_queries, len(feedback_queries)):
            top, fused = teacher(qid)
            shown = top[np.argsort(-fused, kind="stable")][:10]
            for i, label in users.rate([resources[p].id for p in shown], collection.qrels[qid], rng):
                labels[(qid, int(shown[i]))] = int(label == "like")
    print(f"feedback: {len(labels)} ratings on {len(feedback_queries)} queries", flush=True)

    groups = []
    for qid in feedback_queries:
        top, fused = teacher(qid)
        target = fused.copy()
        for i, position in enumerate(top):
            if (qid, int(position)) in labels:
                target[i] = fused.max() + 1.0 if labels[(qid, int(position))] else fused.min()
        keep = np.argsort(-fused)[: args.candidates]
        groups.append((collection.queries[qid], [resources[top[i]].text for i in keep], target[keep]))

    cross = load_cross_encoder(OFFLINE_BASE_MODEL, args.max_length, "cpu")
    distil(cross, groups, args.epochs, args.learning_rate, args.max_length)
    model, tokenizer = cross.model, cross.tokenizer

    def logits(query: str, texts: list[str]) -> torch.Tensor:
        batch = tokenizer([query] * len(texts), texts, padding=True, truncation=True,
                          max_length=args.max_length, return_tensors="pt")
        return model(**batch).logits.squeeze(-1)

    model.eval()
    scored = []
    with torch.inference_mode():
        for qid in held_out:
            top, scores = first_stage(qid)
            scores["cross"] = logits(collection.queries[qid], [resources[p].text for p in top]).numpy()
            scored.append((qid, top, scores))
    blends = {"version 0": v0.weights,
              **{f"+ {w} student": {**v0.weights, "cross": w} for w in (0.25, 0.5, 1.0)},
              "student alone": {"cross": 1.0}}
    for name, weights in blends.items():
        values = [ndcg(qid, top[np.argsort(-fuse(scores, weights), kind="stable")])
                  for qid, top, scores in scored]
        print(f"held-out nDCG@10, {name}: {statistics.mean(values):.4f}")


if __name__ == "__main__":
    main()
