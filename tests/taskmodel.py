"""Task-model artifacts (`finetune`, `f-…`) and an evaluation naming them, made the way the finetune stage will.

The finetune stage (another branch) caches each fine-tune as an `f-` artifact; until it lands, tests
make them here, in one place: a real fine-tune of a model artifact with `pretrain.finetune` on the
task files, published under the same contract (`model/` Hugging Face folder, `run.json`,
`predictions.json`, inputs `{"model": ...}`). When the stage lands, `publish_task_model` becomes a
call to it and `publish_evaluation` a call to the evaluate stage.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pretrain.artifacts import ArtifactStore, artifact_id, describe_sources
from pretrain.config import EvaluateConfig
from pretrain.finetune import encode, finetune, selection_metric
from pretrain.io import expand_inputs
from pretrain.tasks import read_task
from pretrain.vocab import load_fast_tokenizer


def task_config(task_files: tuple[Path, Path], **overrides) -> EvaluateConfig:
    train, test = task_files
    settings = {"seeds": [0], "max_seq_length": 32, "num_epochs": 3, "batch_size": 16, "learning_rate": 3e-3, **overrides}
    return EvaluateConfig(task={"name": "R8-3", "train_files": [str(train)], "test_files": [str(test)]}, **settings)


def _plain(values):
    return values.tolist() if hasattr(values, "tolist") else values


def publish_task_model(store: ArtifactStore, model_id: str, cfg: EvaluateConfig, seed: int) -> str:
    """Fine-tune model artifact `model_id` on `cfg.task` with `seed`; publish the classifier as a finetune artifact."""
    from pretrain.evaluate import model_dir

    folder = model_dir(store, model_id)
    data = read_task(cfg.task, cfg.validation_fraction)
    tokenizer = load_fast_tokenizer(folder)
    segments = json.loads((folder / "config.json").read_text()).get("type_vocab_size", 1) > 1
    encoded = {split: encode(tokenizer, data, split, cfg.max_seq_length, segments) for split in ("train", "validation", "test")}
    config = {**cfg.model_dump(exclude={"seeds", "models", "tapt", "int8", "bootstrap_samples"}), "seed": seed}
    sources = describe_sources(expand_inputs(cfg.task.train_files) + expand_inputs(cfg.task.test_files))
    aid = artifact_id("finetune", config, inputs={"model": model_id}, sources=sources)
    if store.exists(aid):
        return aid
    record, predicted, trained = finetune(folder, data, encoded, cfg, seed, tokenizer.pad_token_id or 0, torch.device("cpu"))
    metric = selection_metric(cfg)
    with store.build("finetune", aid, config=config, inputs={"model": model_id}, sources=sources) as build:
        trained.model.save_pretrained(build.dir / "model")
        tokenizer.save_pretrained(build.dir / "model")
        run = {
            "seed": seed, "learning_rate": cfg.learning_rate, "best_epoch": record["best_epoch"], "epochs_trained": record["epochs_trained"],
            "validation": record["validation"], "test": {k: v for k, v in record["test"].items() if k in ("accuracy", "macro_f1", "micro_f1")},
            "max_seq_length": cfg.max_seq_length, "batch_size": cfg.batch_size, "selection_metric": metric, "fallback_tag": trained.fallback_tag,
            "task": cfg.task.model_dump(), **({"thresholds": record["thresholds"]} if "thresholds" in record else {}),
        }  # fmt: skip
        (build.dir / "run.json").write_text(json.dumps(run, indent=1))
        gold = data.gold("test")
        (build.dir / "predictions.json").write_text(
            json.dumps({"labels": data.labels, "gold": _plain(gold), "predictions": _plain(predicted),
                        "gold_names": [data.labels[i] for i in gold], "prediction_names": [data.labels[i] for i in predicted]})
        )  # fmt: skip
        build.metrics.update(
            task=cfg.task.name, type=data.kind, seed=seed, learning_rate=cfg.learning_rate, best_epoch=record["best_epoch"],
            epochs_trained=record["epochs_trained"], converged=record["epochs_trained"] < cfg.num_epochs,
            **{f"validation_{metric}": record["validation"][metric], "test_accuracy": record["test"]["accuracy"], f"test_{metric}": record["test"][metric]},
        )  # fmt: skip
    return aid


def publish_evaluation(store: ArtifactStore, cfg: EvaluateConfig, runs: dict[str, list[str]]) -> str:
    """An evaluation artifact over finetune artifacts (`runs`: model name -> one f- id per seed of cfg.seeds):
    the evaluate stage's summaries and paired comparisons, each run named by its f- id, and each model's
    `best_run` chosen on validation."""
    from pretrain.evaluate import compare, summarise

    data = read_task(cfg.task, cfg.validation_fraction)
    metric = selection_metric(cfg)
    results, predictions, inputs = {}, {}, {}
    for name, ids in runs.items():
        records = []
        predictions[name] = {}
        for seed, fid in zip(cfg.seeds, ids):
            run = json.loads((store.local_dir(fid) / "run.json").read_text())
            records.append({**run, "finetune": fid})
            predictions[name][str(seed)] = json.load(open(store.local_dir(fid) / "predictions.json"))["predictions"]
        best = max(records, key=lambda r: r["validation"][metric])
        model = store.manifest(ids[0])["inputs"]["model"]
        inputs[name] = model
        results[name] = {"artifact": model, "runs": records, "best_run": best["finetune"], "summary": summarise(records)}
    predictions = {n: {s: __import__("numpy").asarray(p) for s, p in by_seed.items()} for n, by_seed in predictions.items()}
    output = {
        "task": cfg.task.name, "type": data.kind, "labels": data.labels, "primary_metric": metric, "seeds": cfg.seeds,
        "sizes": {"train": len(data.train), "validation": len(data.validation), "test": len(data.test)},
        "models": results, "comparisons": compare(cfg, data, predictions, results),
    }  # fmt: skip
    aid = artifact_id("evaluate", cfg.model_dump(), inputs={**inputs, **{f"{n}_runs": ",".join(ids) for n, ids in runs.items()}})
    if not store.exists(aid):
        with store.build("evaluate", aid, config=cfg.model_dump(), inputs=inputs) as build:
            (build.dir / "results.json").write_text(json.dumps(output, indent=1))
    return aid
