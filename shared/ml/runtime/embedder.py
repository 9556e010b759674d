"""The bi-encoder on ONNX Runtime: resource texts embedded as fast as the CPU allows.

The SentenceTransformer's transformer, its mean pooling and its normalisation are exported as one
ONNX graph (`torch.onnx.export`), so a batch comes back as unit vectors; tokenization stays the
model's own. fp32 gives torch's vectors (to ~1e-6) and shares their identity in the store; int8
(dynamic quantization) gives other vectors, stored under an identity of their own. Anything the
export cannot handle (another pooling, extra modules, no ONNX Runtime) embeds with torch, and the
log says why.

On a CPU with native bf16 (AMX or AVX512-BF16, as for training) bfloat16 matrix products run in
hardware: torch in bf16 embeds 3x faster than fp32 with AMX, 2x with AVX512-BF16 alone, and closer
to its vectors than int8 (`torch-bf16`, its own identity too). Elsewhere bf16 is emulated and slower.

Which is fastest depends on the CPU, so `auto` times the candidates on the machine it runs on, once
per embedder identity, and keeps what it measured beside the exported graphs: every later start (the
trainer's too, sharing the cache) takes the same runtime, so the stored vectors keep one identity.
"""

from __future__ import annotations

import copy
import fcntl
import json
import logging
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from sentence_transformers import SentenceTransformer

from shared.ml.runtime.choice import pick_backend
from shared.ml.runtime.device import cpu_has_fast_bf16
from shared.ml.runtime.loading import embed, embedder_identity
from shared.ml.runtime.onnx import ONNX_OPSET, atomic_file, onnx_session, quantize_onnx
from shared.records import utcnow

log = logging.getLogger(__name__)

EMBEDDING_BACKENDS = ("auto", "torch", "torch-bf16", "onnx", "onnx-int8")
IDENTITY_SUFFIX = {"onnx-int8": "-int8", "torch-bf16": "-bf16"}
"""Backends whose vectors differ from fp32 torch's: stored under an identity of their own."""
BATCH = 32
"""Texts per ONNX run: the sorted-by-length batches pad little at this size, and memory stays small."""


class ExportUnsupported(ValueError):
    """The embedder is not transformer + mean pooling (+ normalisation), which the export reproduces."""


class _Pooled(torch.nn.Module):
    """Transformer, mean pooling over the attention mask, unit length: what `encode` computes."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask,
                                  token_type_ids=token_type_ids).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)


def _transformer(model: SentenceTransformer) -> torch.nn.Module:
    """The transformer to export; refuses a model whose other modules the graph would not reproduce.
    `embed` normalises whether or not the model ends with a Normalize, and so does the graph."""
    parts = list(model)
    names = [type(p).__name__ for p in parts]
    if names not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        raise ExportUnsupported(f"modules {names}: only Transformer, Pooling(mean)[, Normalize] export")
    pooling = parts[1]
    mode = getattr(pooling, "pooling_mode", None) or (
        "mean" if getattr(pooling, "pooling_mode_mean_tokens", False) else None)
    if mode != "mean":
        raise ExportUnsupported(f"pooling {mode!r}: only mean pooling exports")
    return parts[0].auto_model


def export_embedder(model: SentenceTransformer, target: Path) -> Path:
    """fp32 graph: token ids, attention mask, token types in; unit sentence vectors out."""
    wrapped = _Pooled(_transformer(model).eval()).eval()
    sample = _features(model, ["a", "a b c d e f g"])
    args = tuple(torch.from_numpy(sample[name]) for name in ("input_ids", "attention_mask", "token_type_ids"))
    axes = {n: {0: "batch", 1: "sequence"} for n in ("input_ids", "attention_mask", "token_type_ids")}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapped, args, str(target), input_names=list(axes), output_names=["embedding"],
                          dynamic_axes={**axes, "embedding": {0: "batch"}}, opset_version=ONNX_OPSET,
                          dynamo=False)
    return target


def _features(model: SentenceTransformer, texts: list[str]) -> dict[str, np.ndarray]:
    features = model.preprocess(texts)
    ids = features["input_ids"].numpy().astype(np.int64)
    types = features.get("token_type_ids")
    return {"input_ids": ids, "attention_mask": features["attention_mask"].numpy().astype(np.int64),
            "token_type_ids": types.numpy().astype(np.int64) if types is not None else np.zeros_like(ids)}


class OnnxEmbedder:
    """Embeds texts with ONNX Runtime; the SentenceTransformer only tokenizes."""

    def __init__(self, model: SentenceTransformer, path: Path, backend: str, threads: int = 0) -> None:
        self.session = onnx_session(path, threads)
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.model, self.path, self.backend = model, path, backend

    def __call__(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.model.get_embedding_dimension() or 1), np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")  # similar lengths per batch
        out = np.empty((len(texts), 0), np.float32)
        for start in range(0, len(texts), BATCH):
            batch = order[start:start + BATCH]
            feeds = {k: v for k, v in _features(self.model, [texts[i] for i in batch]).items()
                     if k in self.inputs}
            vectors = self.session.run(None, feeds)[0]
            if out.shape[1] == 0:
                out = np.empty((len(texts), vectors.shape[1]), np.float32)
            out[batch] = vectors
        return out


class Encoder:
    """How a loaded embedder turns texts into vectors, and the identity they are stored under.

    `query` embeds one search's query: the same runtime, except behind bf16 resource vectors,
    where fp32 ONNX answers (torch pays ~8 ms a call in a server's worker threads, ONNX ~4)."""

    def __init__(self, model: SentenceTransformer, backend: str = "torch",
                 run: Callable[[list[str]], np.ndarray] | None = None, reason: str = "",
                 query: Callable[[list[str]], np.ndarray] | None = None) -> None:
        self.model, self.backend, self.reason = model, backend, reason
        self._run = run or (lambda texts: embed(model, texts))
        self._query = query or self._run
        # fp32 ONNX gives torch's vectors; int8 and bf16 give others, which must not mix with them.
        self.identity = embedder_identity(model) + IDENTITY_SUFFIX.get(backend, "")

    def __call__(self, texts: list[str]) -> np.ndarray:
        return self._run(texts)

    def query(self, texts: list[str]) -> np.ndarray:
        return self._query(texts)


def onnx_embedder(model: SentenceTransformer, backend: str, cache_dir: Path,
                  threads: int = 0) -> OnnxEmbedder:
    """The exported graph (fp32, or int8 from it), cached per embedder identity."""
    folder = cache_dir / embedder_identity(model)
    fp32 = atomic_file(folder / "embedder.onnx", lambda tmp: export_embedder(model, tmp))
    path = fp32 if backend == "onnx" else atomic_file(folder / "embedder-int8.onnx",
                                                       lambda tmp: quantize_onnx(fp32, tmp))
    return OnnxEmbedder(model, path, backend, threads)


def bf16_encoder(model: SentenceTransformer, reason: str,
                 query: Callable[[list[str]], np.ndarray] | None) -> Encoder:
    """Resources embedded by a bf16 copy of the embedder (the fp32 one stays for training and the
    identity); queries by `query` (fp32 ONNX, `query_embedder`: torch's own vectors), or in bf16
    where there is none."""
    half = copy.deepcopy(model).to(torch.bfloat16)
    dimension = model.get_embedding_dimension() or 1

    def run(texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, dimension), np.float32)
        vectors = embed(half, texts, batch_size=BATCH)  # normalised in bf16: again in fp32
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

    return Encoder(model, "torch-bf16", run, reason=reason, query=query)


def query_embedder(model: SentenceTransformer, cache_dir: Path, threads: int = 0) -> OnnxEmbedder | None:
    """The fp32 ONNX embedder bf16 embeds queries with; None (logged) where the export fails."""
    try:
        return onnx_embedder(model, "onnx", cache_dir, threads)
    except Exception as exc:
        log.warning("event=embedder_onnx_unavailable backend=onnx use=queries error=%r", str(exc)[:300])
        return None


AUTO_RECORD = "auto.json"
"""Beside an embedder's exported graphs: what `auto` measured there, and what it chose."""
_PARAGRAPH = ("the boundary layer of a wing in supersonic flow changes its drag and heat transfer while "
              "students learn linear algebra probability and the history of science with worked examples")
_WORDS = _PARAGRAPH.split(" ")
TIMING_TEXTS = [" ".join(_WORDS[(i * 7 + j) % len(_WORDS)] for j in range(12 + 9 * (i % 12)))
                for i in range(48)]
"""What `auto` times: 48 texts of 12 to 111 words, catalogue-like lengths."""


def timed_backends(model: SentenceTransformer, cache_dir: Path, threads: int = 0,
                   texts: list[str] = TIMING_TEXTS) -> tuple[dict[str, Encoder], dict[str, float]]:
    """Every runtime that can embed here (bf16 only where the CPU has it natively), and its texts/s:
    best of two rounds, taken in turn so that load from other work hits each alike."""
    graphs: dict[str, OnnxEmbedder] = {}
    for backend in ("onnx", "onnx-int8"):
        try:
            graphs[backend] = onnx_embedder(model, backend, cache_dir, threads)
        except Exception as exc:  # an embedder the export cannot reproduce is timed on torch alone
            log.warning("event=embedder_onnx_unavailable backend=%s error=%r", backend, str(exc)[:300])
            break
    candidates = {"torch": Encoder(model, "torch")}
    if cpu_has_fast_bf16():  # its queries on the fp32 graph opened above: one session, not two
        candidates["torch-bf16"] = bf16_encoder(model, "", graphs.get("onnx"))
    candidates |= {backend: Encoder(model, backend, graph) for backend, graph in graphs.items()}
    best = dict.fromkeys(candidates, float("inf"))
    for encoder in candidates.values():
        encoder(texts[:2])  # lazy initialisation out of the timing
    for _ in range(2):
        for name, encoder in candidates.items():
            started = time.perf_counter()
            encoder(texts)
            best[name] = min(best[name], time.perf_counter() - started)
    return candidates, {name: round(len(texts) / seconds, 1) for name, seconds in best.items()}


def auto_backend(model: SentenceTransformer, cache_dir: Path,
                 threads: int = 0) -> tuple[str, str, Encoder | None]:
    """The runtime `auto` takes, why, and its encoder when it was timed now (built once, not twice):
    kept from an earlier start with this embedder and cache, else timed here (`timed_backends`) and
    picked by the cross-encoder's rule (`pick_backend`). Each candidate keeps version 0's Cranfield
    nDCG@10 within 0.001 of fp32 (bench/results/embedding.json)."""
    record = cache_dir / embedder_identity(model) / AUTO_RECORD
    record.parent.mkdir(parents=True, exist_ok=True)
    # One process times, the others sharing the cache (a reranker and the trainer starting together)
    # wait for its record: they must embed alike to share the stored vectors.
    with open(record.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            kept = json.loads(record.read_text())
            return kept["backend"], f"auto: kept from {kept['measured_at']}: {kept['reason']}", None
        except (OSError, ValueError, KeyError):
            pass
        encoders, speeds = timed_backends(model, cache_dir, threads)
        backend, why = pick_backend(speeds)
        reason = f"timed here, {why}; texts/s " + ", ".join(f"{name} {v}" for name, v in speeds.items())
        measured = {"backend": backend, "reason": reason, "texts_per_s": speeds,
                    "measured_at": utcnow().isoformat()}
        atomic_file(record, lambda tmp: tmp.write_text(json.dumps(measured)))
    log.info("event=embedder_backend_timed backend=%s texts_per_s=%s", backend, speeds)
    return backend, f"auto: {reason}", encoders[backend]


def load_encoder(model: SentenceTransformer, backend: str, cache_dir: Path, threads: int = 0) -> Encoder:
    """The embedder on `backend` (`auto` on a CPU: timed here, see `auto_backend`);
    torch where ONNX cannot run, logged."""
    if backend not in EMBEDDING_BACKENDS:
        raise ValueError(f"unknown embedding backend {backend!r}; one of {EMBEDDING_BACKENDS}")
    if model.device.type != "cpu" and backend != "torch":
        return Encoder(model, "torch", reason="GPU: torch")
    reason = f"EDURANKER_EMBEDDING_BACKEND={backend}"
    if backend == "auto":
        backend, reason, timed = auto_backend(model, cache_dir, threads)
        if timed is not None:
            timed.reason = reason
            return timed
    if backend == "torch":
        return Encoder(model, "torch", reason=reason)
    if backend == "torch-bf16":
        return bf16_encoder(model, reason, query_embedder(model, cache_dir, threads))
    try:
        onnx = onnx_embedder(model, backend, cache_dir, threads)
    except Exception as exc:  # an embedder the export cannot reproduce still embeds, with torch
        log.warning("event=embedder_onnx_unavailable backend=%s error=%r", backend, str(exc)[:300])
        return Encoder(model, "torch", reason=f"{backend} unavailable: {str(exc)[:200]}")
    log.info("event=embedder_onnx_ready backend=%s path=%s", backend, onnx.path)
    return Encoder(model, backend, onnx, reason=reason)
