"""Task models (`finetune` artifacts, `f-…`) for the handoff tests, made by the evaluate stage itself."""

from __future__ import annotations

import json
from pathlib import Path

from pretrain import evaluate
from pretrain.core.artifacts import ArtifactStore
from pretrain.core.config import EvaluateConfig


def task_config(task_files: tuple[Path, Path], **overrides) -> EvaluateConfig:
    train, test = task_files
    settings = {"seeds": [0], "max_seq_length": 32, "num_epochs": 3, "batch_size": 16, "learning_rate": 3e-3, **overrides}
    return EvaluateConfig(task={"name": "R8-3", "train_files": [str(train)], "test_files": [str(test)]}, **settings)


def evaluate_models(store: ArtifactStore, cfg: EvaluateConfig, base: str, adapted: str) -> tuple[str, dict[str, list[str]]]:
    """Run the evaluate stage (base vs adapted); its id and each model's fine-tuning run ids (`f-…`), in seed order."""
    eid = evaluate.run(cfg, store, base=base, model=adapted)
    results = json.loads((store.local_dir(eid) / "results.json").read_text())
    return eid, {name: [run["finetune"] for run in entry["runs"]] for name, entry in results["models"].items()}


def task_model(store: ArtifactStore, model: str, cfg: EvaluateConfig) -> str:
    """The first seed's fine-tuning run of model artifact `model` (built by the evaluate stage; an `f-` id)."""
    _, runs = evaluate_models(store, cfg, model, model)
    return runs["base"][0]
