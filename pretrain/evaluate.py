"""Evaluate: fine-tune base, adapted (and any other listed) model the same way on the task, over several seeds.

    python -m pretrain.evaluate --config configs/demo.yaml
    python -m pretrain.evaluate --config configs/demo.yaml --set evaluate.num_epochs=1 --set evaluate.seeds=[0]

Every compared model gets the same splits, hyperparameters, learning-rate grid and seeds
(`pretrain/finetuning/finetune.py` has the recipe); the epoch is chosen on validation with early stopping, and
test is scored once per run. Compared models, each an input of the stage: `base`, `adapted` (the
pretrain stage's model), `student` when the distill stage ran (the adapted model distilled into fewer
layers, `pretrain/distill.py`), `evaluate.models`, and `adapted+tapt` or `base+tapt` when
`evaluate.tapt` is set (the tapt stage's model: task-adaptive pretraining, `pretrain/tapt.py`).

Each (model, learning rate, seed) run is a `finetune` artifact (`f-...`) of its own, found in the store
or built: a later comparison that fine-tunes the same model with the same task and settings reuses
it. With several workers (`parallel_runs`; default one per visible GPU) the runs not in the store are
built first, in worker processes (`pretrain/finetuning/runpool.py`), and then read back like cached ones.
With `evaluate.learning_rates`, each model is compared at the rate with its best mean validation
score over seeds. Each model is then compared with the base, and the student also with its teacher
(`adapted`): the difference per seed (paired: same seed, same head initialisation and data order),
a t-interval over seeds whose variance adds the test-sampling variance (a paired bootstrap over test
examples), which alone decides the verdict (`helped`/`hurt` when it excludes 0, with at least 3
seeds), and as secondary figures a paired t-test over seeds and the test-only bootstrap interval
(`pretrain/finetuning/scoring.py`). Runs whose best epoch is their last allowed one are warned about ("raise
evaluate.num_epochs").

With `evaluate.label_budgets` (a learning curve), all of the above is done once per budget: each is
a nested, stratified subset of the train split (`pretrain/finetuning/budgets.py`), validation and test stay the
same, and a budget's runs are `f-` artifacts whose ids name the subset (a later, longer list of
budgets reuses the runs of the budgets built before). The comparison at the most labels is the
headline (`models`, `comparisons`, int8, `predictions.json`); `label_budgets` in `results.json` holds
every budget's.

Output (evaluation artifact `e-...`; its manifest inputs name every `f-` run, for lineage and gc):
`results.json` (per model: the chosen learning rate, every run with its `f-` id, best epoch,
validation and test scores with per-class precision/recall/F1 and the confusion matrix; the run best
on validation (`best_run`); mean and std over seeds; the comparisons; convergence; data notes; `best`: the
run to hand over, chosen on validation alone, `best_model`) and
`predictions.json` (test gold and the compared runs' test predictions).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from pretrain import base as base_stage
from pretrain.core.artifacts import ArtifactStore
from pretrain.core.config import ARTIFACT_ID, BaseModelConfig, EvaluateConfig, ModelSource
from pretrain.core.errors import InputError
from pretrain.core.ids import artifact_id
from pretrain.core.logs import get_logger
from pretrain.data.tasks import read_task, task_sources
from pretrain.finetuning import budgets as label_budgets
from pretrain.finetuning import finetune, runpool, scoring
from pretrain.finetuning.finetune import encode, format_rate, selection_metric
from pretrain.handoff import quantize
from pretrain.models.families import max_sequence_length, uses_token_types
from pretrain.models.modelfiles import model_folder
from pretrain.models.fast_tokenizers import load_fast_tokenizer

log = get_logger(__name__)

STAGE = "evaluate"
# With `int8: true`, the models measured quantized: the ones a team would deploy.
INT8_MODELS = ("adapted", "student")
# Settings that say where the work runs, not what it computes: not in the id or the manifest's config.
EXECUTION_ONLY = {"parallel_runs"}
# Settings that make an input (the TAPT model, by the tapt stages): they count through its id, only as far as they change it.
MADE_BY_INPUTS = {"tapt"}


def _task_sources(cfg: EvaluateConfig) -> list[dict]:
    return task_sources(cfg.task)


def _source_id(model: ModelSource) -> str:
    """The artifact id of a listed model: given, or that of importing it as a base model (a content hash)."""
    if ARTIFACT_ID.fullmatch(model.source):
        return model.source
    return base_stage.stage_id(BaseModelConfig(source=model.source, revision=model.revision))


def tapt_name(cfg: EvaluateConfig) -> str:
    """The TAPT model's name in the comparison: `adapted+tapt` (DAPT + TAPT) or `base+tapt` (TAPT alone)."""
    assert cfg.tapt is not None
    return f"{cfg.tapt.start_from}+tapt"


def _identity(cfg: EvaluateConfig, base: str, model: str, student: str | None, tapt: str | None) -> tuple[str, dict[str, str], list[dict]]:
    if (cfg.tapt is None) != (tapt is None):
        raise InputError(
            "evaluate: evaluate.tapt is set but no TAPT model was given; build it with the tapt stages "
            "(`dapt run C`, or `python -m pretrain.tapt --config C`)" if tapt is None else
            f"evaluate: a TAPT model ({tapt}) was given but evaluate.tapt is not set"
        )  # fmt: skip
    sources = _task_sources(cfg)
    inputs = {"base": base, "adapted": model, **({"student": student} if student else {}), **{m.name: _source_id(m) for m in cfg.models},
              **({tapt_name(cfg): tapt} if tapt else {})}  # fmt: skip
    return artifact_id(STAGE, cfg.model_dump(exclude=EXECUTION_ONLY | MADE_BY_INPUTS), inputs=inputs, sources=sources), inputs, sources


def stage_id(cfg: EvaluateConfig, *, base: str, model: str, student: str | None = None, tapt: str | None = None) -> str:
    return _identity(cfg, base, model, student, tapt)[0]


def _compared_models(cfg: EvaluateConfig, store: ArtifactStore, inputs: dict[str, str]) -> dict[str, str]:
    """Name -> model artifact id for every compared model, importing the listed models that are not artifacts."""
    models = {"base": inputs["base"], "adapted": inputs["adapted"]}
    if "student" in inputs:
        models["student"] = inputs["student"]
    for m in cfg.models:
        if ARTIFACT_ID.fullmatch(m.source):
            if not store.exists(m.source):
                raise InputError(f"evaluate.models ({m.name}): artifact {m.source} is not in the store {store.url}")
            models[m.name] = m.source
        else:
            models[m.name] = base_stage.run(BaseModelConfig(source=m.source, revision=m.revision), store)
    if cfg.tapt is not None:
        models[tapt_name(cfg)] = inputs[tapt_name(cfg)]
    return models


def _model_config(cfg: EvaluateConfig, name: str, folder: Path) -> dict:
    config = json.loads((folder / "config.json").read_text())
    limit = max_sequence_length(config)
    if limit is not None and cfg.max_seq_length > limit:
        raise InputError(f"evaluate.max_seq_length ({cfg.max_seq_length}) exceeds the {limit} tokens the {name} model takes (its max_position_embeddings)")
    return config


def learning_rates(cfg: EvaluateConfig) -> list[float]:
    """The learning rates every model is fine-tuned with: the grid, or the single `learning_rate`."""
    return list(cfg.learning_rates) if cfg.learning_rates else [cfg.learning_rate]


def run_role(name: str, rate: float, seed: int, budget: label_budgets.Budget | None = None) -> str:
    """A fine-tuning run's role among the evaluation's inputs (its lineage); a label budget's runs say which."""
    at = f" labels/class {budget.name}" if budget is not None and budget.run_key is not None else ""
    return f"{name} lr {format_rate(rate)} seed {seed}{at}"


def choose_learning_rate(by_rate: dict[float, list[dict]], metric: str) -> float:
    """The rate whose runs have the best mean validation `metric` over seeds (ties: the first in the grid); test is not looked at."""
    return max(by_rate, key=lambda rate: statistics.fmean(r["validation"][metric] for r in by_rate[rate]))


def best_run(runs: list[dict], metric: str) -> dict:
    """The run with the best validation `metric` (ties: the first seed): the one to hand over, chosen without test."""
    return max(runs, key=lambda r: r["validation"][metric])


def best_model(results: dict[str, dict], metric: str) -> dict:
    """The task model to hand over, chosen without test: the model with the best mean validation `metric` over
    seeds (at its chosen rate; ties: the first listed, base before adapted), then its best seed on validation."""
    means = {name: statistics.fmean(r["validation"][metric] for r in entry["runs"]) for name, entry in results.items()}
    name = max(means, key=means.get)
    best = results[name]["best_run"]
    others = ", ".join(f"{other} {mean:.4f}" for other, mean in means.items() if other != name)
    tied = [other for other, mean in means.items() if other != name and mean == means[name]]
    standing = (f"{name} ties for the best mean validation {metric} over seeds with {', '.join(tied)} ({means[name]:.4f}), "
                f"and comes first of them in the list (base before adapted)") if tied else (
                f"{name} has the best mean validation {metric} over seeds ({means[name]:.4f}{'; ' + others if others else ''})")  # fmt: skip
    return {
        "model": name, "artifact": results[name]["artifact"], "finetune": best["finetune"], "seed": best["seed"],
        "learning_rate": best["learning_rate"], f"validation_{metric}": best[f"validation_{metric}"], f"mean_validation_{metric}": means[name],
        "why": f"{standing}, and seed "
               f"{best['seed']} is its best seed on validation ({best[f'validation_{metric}']:.4f}); test scores played no part in the choice",
    }  # fmt: skip


def run(cfg: EvaluateConfig, store: ArtifactStore, *, base: str, model: str, student: str | None = None, tapt: str | None = None) -> str:
    """Build (or find) the evaluation artifact; `student` is the distill stage's model, `tapt` the tapt
    stage's, if any; returns its id."""
    started = time.time()
    aid, inputs, sources = _identity(cfg, base, model, student, tapt)
    if store.exists(aid):
        log.info("evaluate %s: already built (cache hit)", aid)
        return aid
    log.info("evaluate %s: config %s", aid, cfg.model_dump_json())
    data = read_task(cfg.task, cfg.validation_fraction)  # bad data fails here, before any model is loaded
    log.info(
        "evaluate: %s (%s): %d labels; %d train, %d validation (%s), %d test examples",
        cfg.task.name, data.kind, len(data.labels), len(data.train), len(data.validation), data.validation_from, len(data.test),
    )  # fmt: skip
    budgets = label_budgets.plan(data, cfg.label_budgets, cfg.task.tag_scheme)
    notes = list(data.notes)
    for budget in budgets:
        if note := label_budgets.capped_note(budget):
            notes.append(note)
            log.warning("evaluate: %s", note)
    models = _compared_models(cfg, store, inputs)
    folders = {name: model_folder(store, artifact, f"evaluate: the {name} model") for name, artifact in models.items()}
    configs = {name: _model_config(cfg, name, folder) for name, folder in folders.items()}

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    metric = selection_metric(cfg)
    rates = learning_rates(cfg)
    # Every run's f- id is known before anything trains: the manifest names them all (lineage, gc).
    planned = {(budget.name, name, rate, seed): finetune.stage_id(cfg, model=models[name], learning_rate=rate, seed=seed, sources=sources,
                                                                  train_subset=budget.run_key)
               for budget in budgets for name in models for rate in rates for seed in cfg.seeds}  # fmt: skip
    runs_in = {run_role(name, rate, seed, budget): planned[(budget.name, name, rate, seed)]
               for budget in budgets for name in models for rate in rates for seed in cfg.seeds}  # fmt: skip
    built, counted = 0, set()  # a listed model with the base's files shares the base's runs: each is built once
    measured: list[dict] = []
    with store.build(STAGE, aid, config=cfg.model_dump(exclude=EXECUTION_ONLY), inputs={**inputs, **models, **runs_in}, sources=sources,
                     started=started) as out:
        for budget in budgets:
            headline = budget is budgets[-1]  # the most labels: the comparison the report, export and int8 take
            task = label_budgets.subset(data, budget)
            if cfg.label_budgets:
                log.info("evaluate: label budget %s per class: %d train examples", budget.name, len(task.train))
            runs = {key[1:]: fid for key, fid in planned.items() if key[0] == budget.name}
            spread = _build_in_workers(cfg, store, task, sources, models, folders, configs, runs, budget.run_key)
            m = _measure(cfg, store, task, sources, budget, models, folders, configs, runs, spread, device, int8=cfg.int8 and headline,
                         lost_words=notes if headline else [])  # fmt: skip
            for fid, new in m.pop("fids"):
                built += new and fid not in counted
                counted.add(fid)
            m["comparisons"] = compare(cfg, task, m["predictions"], m["results"])
            m["convergence"] = convergence_summary(cfg, m["results"], rates, budget.name if cfg.label_budgets else None)
            measured.append(m)
        top = measured[-1]
        results, comparisons, int8 = top["results"], top["comparisons"], top["int8"]
        convergence = {"num_epochs": cfg.num_epochs, "runs": sum(m["convergence"]["runs"] for m in measured),
                       "not_converged": sum(m["convergence"]["not_converged"] for m in measured)}  # fmt: skip
        notes += [note for m in measured for note in m["convergence"]["notes"]]
        curve = [budget_entry(budget, m, len(data.train)) for budget, m in zip(budgets, measured)] if cfg.label_budgets else None
        output = {
            "task": cfg.task.name,
            "type": data.kind,
            "tag_scheme": cfg.task.tag_scheme if data.kind == "token" else None,
            "labels": data.labels,
            "primary_metric": metric,
            "seeds": cfg.seeds,
            "learning_rates": rates,
            "sizes": {"train": len(top["task"].train), "validation": len(data.validation), "test": len(data.test)},
            "validation_from": data.validation_from,
            "notes": notes,
            "convergence": convergence,
            "interval_method": scoring.interval_method(cfg.bootstrap_samples),
            "min_seeds_for_verdict": scoring.MIN_SEEDS_FOR_VERDICT,
            "models": results,
            "best": best_model(results, metric),
            "comparisons": comparisons,
            **({"label_budgets": curve} if curve is not None else {}),
            **({"int8": int8} if int8 else {}),
        }
        (out.dir / "results.json").write_text(json.dumps(output, indent=1))
        gold = data.gold("test")
        (out.dir / "predictions.json").write_text(json.dumps({
            "labels": data.labels, "gold": scoring.to_plain(data.kind, gold),
            "models": {n: {s: scoring.to_plain(data.kind, p) for s, p in runs.items()} for n, runs in top["predictions"].items()},
        }))  # fmt: skip
        out.metrics.update(task=cfg.task.name, type=data.kind, primary_metric=metric, seeds=len(cfg.seeds), **output["sizes"],
                           finetune_runs=len(planned), finetune_runs_built=built, runs_not_converged=convergence["not_converged"])  # fmt: skip
        for name, r in results.items():
            for m in ("accuracy", metric):
                out.metrics[f"{name}_{m}_mean"] = round(r["summary"][m]["mean"], 4)
                out.metrics[f"{name}_{m}_std"] = round(r["summary"][m]["std"], 4)
            if cfg.learning_rates:
                out.metrics[f"{name}_learning_rate"] = r["learning_rate"]
        for name, q in int8.items():
            out.metrics[f"{name}_int8_{metric}_delta"] = q["delta"][metric]
            out.metrics[f"{name}_int8_throughput_speedup_batch32"] = q["speed"]["throughput_speedup_batch32"]
        out.metrics.update(headline_metrics(comparisons, metric))
        if curve is not None:
            out.metrics["label_budgets"] = {entry["name"]: budget_metrics(entry, metric) for entry in curve}
    log.info("evaluate %s: %d fine-tuning runs, %d built now, %d reused", aid, len(planned), built, len(planned) - built)
    return aid


def headline_metrics(comparisons: list[dict], metric: str) -> dict:
    """adapted − base (and student − adapted) on the primary metric: difference, interval and verdict, for the manifest."""
    out = {}
    for key, name, baseline in (("adapted_minus_base", "adapted", "base"), ("student_minus_adapted", "student", "adapted")):
        c = next((c for c in comparisons if c["model"] == name and c["baseline"] == baseline and c["metric"] == metric), None)
        if c is not None:
            out[key] = round(c["difference"], 6)
            out[f"{key}_low"] = round(c["interval"]["low"], 6)
            out[f"{key}_high"] = round(c["interval"]["high"], 6)
            out[f"{key}_verdict"] = c["verdict"]
    return out


def budget_entry(budget: label_budgets.Budget, measured: dict, train_examples: int) -> dict:
    """One point of the label-budget curve in `results.json`: the subset, each model's runs and the comparisons."""
    return {
        "name": budget.name,
        "labels_per_class": budget.labels_per_class,
        "train": len(budget.indices),
        "train_of": train_examples,
        "class_counts": budget.class_counts,
        "capped": budget.capped,
        "models": measured["results"],
        "comparisons": measured["comparisons"],
        "convergence": {k: v for k, v in measured["convergence"].items() if k != "notes"},
    }


def budget_metrics(entry: dict, metric: str) -> dict:
    """A budget's figures for the manifest (the stage table flattens them: `label_budgets.10.adapted_minus_base_verdict`)."""
    figures = {"train_examples": entry["train"]}
    for name, r in entry["models"].items():
        figures[f"{name}_{metric}_mean"] = round(r["summary"][metric]["mean"], 4)
    return {**figures, **headline_metrics(entry["comparisons"], metric)}


def _measure(cfg: EvaluateConfig, store: ArtifactStore, data, sources: list[dict], budget: label_budgets.Budget, models: dict[str, str],
             folders: dict[str, Path],
             configs: dict[str, dict], planned: dict[tuple, str], spread: dict[str, str], device: torch.device, *, int8: bool,
             lost_words: list[str]) -> dict:  # fmt: skip
    """Fine-tune (or find) every model's runs on `data` (the task, its train split cut to `budget`) and summarise them.

    Returns the results per model, the test predictions at each model's chosen rate, int8 measurements
    (with `int8`), the task, and each run's (f- id, whether it was built now). Token tasks' lost-word
    notes are appended to `lost_words`.
    """
    metric, rates = selection_metric(cfg), learning_rates(cfg)
    results: dict[str, dict] = {}
    predictions: dict[str, dict[str, object]] = {}
    measured_int8: dict[str, dict] = {}
    fids = []
    for name, folder in folders.items():
        tokenizer = load_fast_tokenizer(folder)
        segments = has_segments(configs[name])
        encoded = {split: encode(tokenizer, data, split, cfg.max_seq_length, segments) for split in ("train", "validation", "test")}
        if data.kind == "token":
            lost_words += _lost_words(cfg, name, encoded)
        by_rate: dict[float, list[dict]] = {}
        predicted: dict[float, dict[str, object]] = {}
        for rate in rates:
            by_rate[rate], predicted[rate] = [], {}
            for seed in cfg.seeds:
                if planned[(name, rate, seed)] in spread:
                    fid, new = planned[(name, rate, seed)], True
                else:
                    fid, new = finetune.build(cfg, store, model=models[name], model_dir=folder, learning_rate=rate, seed=seed, data=data,
                                              encoded=encoded, tokenizer=tokenizer, sources=sources,
                                              device=device, name=name, train_subset=budget.run_key)  # fmt: skip
                assert fid == planned[(name, rate, seed)]
                fids.append((fid, new))
                record, predicted[rate][str(seed)] = finetune.load_run(store, fid)
                by_rate[rate].append({"finetune": fid, **{k: v for k, v in record.items() if k in RUN_FIELDS}})
                at = f" labels/class {budget.name}" if cfg.label_budgets else ""
                log.info(
                    "evaluate: %s seed %d lr %s%s: best epoch %d of %d; test accuracy %.4f macro-F1 %.4f micro-F1 %.4f (%.0f s%s)",
                    name, seed, format_rate(rate), at, record["best_epoch"], record["epochs_trained"], record["test"]["accuracy"],
                    record["test"]["macro_f1"], record["test"]["micro_f1"], record["seconds"], "" if new else ", cached",
                )  # fmt: skip
                if not record["converged"]:
                    log.warning(
                        "evaluate: %s seed %d lr %s%s: the best validation %s came at the last allowed epoch (%d); the run may not "
                        "have converged: raise evaluate.num_epochs", name, seed, format_rate(rate), at, metric, cfg.num_epochs,
                    )  # fmt: skip
        chosen = choose_learning_rate(by_rate, metric)
        runs = by_rate[chosen]
        predictions[name] = predicted[chosen]
        best = best_run(runs, metric)
        results[name] = {
            "artifact": models[name],
            "learning_rate": chosen,
            "runs": runs,
            "best_run": {"seed": best["seed"], "learning_rate": chosen, "finetune": best["finetune"], f"validation_{metric}": best["validation"][metric]},
            "summary": summarise(runs),
            "per_class": per_class_summary(runs),
            "learning_rates": {format_rate(rate): _rate_summary(by_rate[rate], metric, rate == chosen) for rate in rates},
        }
        if int8 and name in INT8_MODELS:
            # The first seed's run at the chosen rate, as fine-tuned (read back from its f- artifact).
            first = next(r for r in runs if r["seed"] == cfg.seeds[0])
            trained = finetune.load_trained(store, first["finetune"], device)
            measured_int8[name] = quantize.measure_trained(trained, data, encoded["test"], cfg, tokenizer.pad_token_id or 0, cfg.seeds[0])
            del trained
    return {"results": results, "predictions": predictions, "int8": measured_int8, "task": data, "fids": fids}


def has_segments(config: dict) -> bool:
    """Whether a model has token type embeddings (BERT: yes; RoBERTa, DistilBERT: no)."""
    return uses_token_types(config)


def _build_in_workers(cfg: EvaluateConfig, store: ArtifactStore, data, sources: list[dict], models: dict[str, str],
                      folders: dict[str, Path], configs: dict[str, dict], planned: dict[tuple, str], train_subset: dict | None) -> dict[str, str]:  # fmt: skip
    """With several workers (`parallel_runs`, default one per GPU), build the runs not in the store in worker
    processes; returns f- id -> the worker that built it. One worker: nothing here, the loop builds them.
    `data` is the task cut to one label budget (`train_subset`, None: the whole train split)."""
    workers = runpool.worker_count(cfg.parallel_runs)
    jobs = [runpool.Job(name, models[name], folders[name], has_segments(configs[name]), rate, seed, fid, train_subset)
            for (name, rate, seed), fid in planned.items() if not store.exists(fid)]  # fmt: skip
    if workers < 2 or len({job.fid for job in jobs}) < 2:
        return {}
    return runpool.build_runs(cfg, store, jobs, data, sources, workers)


# What an evaluation keeps of each run record (the rest, such as the fallback tag, stays in its f- artifact).
RUN_FIELDS = ("seed", "learning_rate", "best_epoch", "epochs_trained", "converged", "validation", "test", "history", "thresholds", "seconds")


def _rate_summary(runs: list[dict], metric: str, chosen: bool) -> dict:
    """The runs of one model at one learning rate: what chose the rate, and which did not converge."""
    values = [r["validation"][metric] for r in runs]
    return {
        "chosen": chosen,
        f"validation_{metric}_mean": statistics.fmean(values),
        f"validation_{metric}_values": values,
        "not_converged_seeds": [r["seed"] for r in runs if not r["converged"]],
        "finetune": [r["finetune"] for r in runs],
    }


def convergence_summary(cfg: EvaluateConfig, results: dict[str, dict], rates: list[float], budget: str | None = None) -> dict:
    """Runs whose best epoch was their last allowed one, over every model, rate and seed, with one note per model and rate
    (naming the label budget, when one is given)."""
    total, late, notes = 0, 0, []
    within = "" if budget is None else " with all labels" if budget == "all" else f" at {budget} labels per class"
    for name, r in results.items():
        for rate, summary in r["learning_rates"].items():
            seeds = summary["not_converged_seeds"]
            total += len(summary["finetune"])
            late += len(seeds)
            if seeds:
                which = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}"
                at = f" at lr {rate}" if len(rates) > 1 else ""
                notes.append(
                    f"{name}{at}{within}: {which} chose the last allowed epoch ({cfg.num_epochs}): not converged, more epochs might score "
                    f"better; raise evaluate.num_epochs"
                )
    return {"num_epochs": cfg.num_epochs, "runs": total, "not_converged": late, "notes": notes}


def _lost_words(cfg: EvaluateConfig, name: str, encoded: dict) -> list[str]:
    """Words beyond max_seq_length (or that tokenise to nothing): counted, and scored as a miss, never dropped."""
    notes = []
    fallback = "O" if cfg.task.tag_scheme == "BIO" else "the most frequent train tag"
    for split, e in encoded.items():
        if e.unplaced_words:
            fate = "are not trained on" if split == "train" else f"are predicted {fallback} and scored"
            notes.append(f"{name}: {e.unplaced_words:,} {split} words have no sub-token within max_seq_length={cfg.max_seq_length}; they {fate}")
            log.warning("evaluate: %s", notes[-1])
    return notes


def summarise(runs: list[dict]) -> dict[str, dict]:
    """Mean, standard deviation (n-1) and per-seed values of every test metric."""
    out = {}
    for metric in scoring.METRICS:
        values = [r["test"][metric] for r in runs]
        out[metric] = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0, "values": values}
    return out


def per_class_summary(runs: list[dict]) -> dict[str, dict]:
    classes = runs[0]["test"].get("per_class", {})
    out = {}
    for name in classes:
        values = [r["test"]["per_class"].get(name, {"f1": 0.0})["f1"] for r in runs]
        out[name] = {"f1_mean": statistics.fmean(values), "f1_std": statistics.stdev(values) if len(values) > 1 else 0.0,
                     "support": classes[name]["support"]}  # fmt: skip
    return out


def compare(cfg: EvaluateConfig, data, predictions: dict[str, dict], results: dict[str, dict]) -> list[dict]:
    """Every model against the base (and the student against its teacher), paired by seed and by test example, on each metric."""
    gold = data.gold("test")
    counts = {
        name: [scoring.example_counts(data.kind, gold, runs[str(s)], data.labels, cfg.task.tag_scheme) for s in cfg.seeds]
        for name, runs in predictions.items()
    }
    pairs = [(name, "base") for name in results if name != "base"]
    if "student" in results:
        pairs.append(("student", "adapted"))  # what distillation cost: the student against its teacher
    comparisons = []
    for name, baseline in pairs:
        for metric in scoring.METRICS:
            comparison = scoring.paired_comparison(
                counts[name], counts[baseline], results[name]["summary"][metric]["values"], results[baseline]["summary"][metric]["values"],
                metric, cfg.bootstrap_samples,
            )  # fmt: skip
            comparisons.append({"model": name, "baseline": baseline, **comparison})
    return comparisons


if __name__ == "__main__":
    from pretrain.stage_cli import main

    main(STAGE)
