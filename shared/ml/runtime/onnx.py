"""ONNX Runtime twins of the torch models: export once per weights, int8 quantization, sessions."""

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
from sentence_transformers import CrossEncoder

from shared.ml.runtime.device import available_cores

log = logging.getLogger(__name__)


ONNX_OPSET = 17


def onnx_session(path: Path, threads: int = 0) -> Any:
    """An ONNX Runtime session on the CPU: every core for intra-op work, one graph at a time.

    Its threads sleep when idle instead of spinning: a search embeds its query in ONNX and then
    runs the cross-encoder in torch on the same cores, and ONNX Runtime's spinning threads made
    that rerank 1.4x slower on two cores (p50 165 against 116 ms, 10 Cranfield pairs in bf16)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or available_cores()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxCrossEncoder:
    """A cross-encoder run by ONNX Runtime; tokenization is the torch model's own `preprocess`."""

    def __init__(self, cross: CrossEncoder, path: Path, backend: str, threads: int = 0) -> None:
        self.session = onnx_session(path, threads)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.cross = cross
        self.path = path
        self.backend = backend

    @property
    def tokenizer(self) -> Any:
        return self.cross.tokenizer

    @property
    def max_length(self) -> int | None:
        return self.cross.max_length

    def preprocess(self, pairs: list[tuple[str, str]]) -> dict[str, Any]:
        """The torch model's inputs for `pairs`: what this graph reads too."""
        return self.cross.preprocess(pairs)

    def logits(self, pairs: list[tuple[str, str]], batch_size: int,
               features: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """`features`: the pairs' inputs already built (one batch); else tokenized here."""
        if features is not None:
            return self.session.run(None, {name: features[name] for name in self.inputs})[0].reshape(-1)
        out = []
        for start in range(0, len(pairs), batch_size):
            tokenized = self.cross.preprocess(pairs[start:start + batch_size])
            feeds = {name: tokenized[name].numpy().astype(np.int64) for name in self.inputs}
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
