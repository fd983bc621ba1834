"""The evaluate stage end to end on a tiny BERT: every task type, several seeds, TAPT, extra models."""

import json
import re

import pytest
import torch

from conftest import build_until, read_jsonl_gz, run_without_project_code, write_jsonl
from pretrain import evaluate, report
from pretrain.chain import plan, run_stage
from pretrain.configfile import validate_config
from pretrain.core import summaries
from pretrain.core.errors import InputError
from pretrain.data.tasks import read_task
from pretrain.finetuning import finetune as finetune_stage
from pretrain.finetuning.finetune import encode, finetune
from pretrain.models.fast_tokenizers import load_fast_tokenizer


@pytest.fixture
def upstream(tiny_config):
    return build_until(tiny_config, "pretrain")


def _with(cfg, **changes):
    task = changes.pop("task", {})
    return cfg.model_copy(update={"task": cfg.task.model_copy(update=task), **changes})


@pytest.mark.slow
def test_base_and_adapted_over_seeds_compared_and_reported(upstream):
    config, store, ids = upstream
    cfg = _with(config.evaluate, seeds=[0, 1], patience_epochs=2)
    aid = evaluate.run(cfg, store, base=ids["base"], model=ids["pretrain"])
    m = store.manifest(aid)
    runs = {role: fid for role, fid in m["inputs"].items() if fid.startswith("f-")}
    assert {role: fid for role, fid in m["inputs"].items() if role not in runs} == {"base": ids["base"], "adapted": ids["pretrain"]}
    assert sorted(runs) == ["adapted lr 3e-3 seed 0", "adapted lr 3e-3 seed 1", "base lr 3e-3 seed 0", "base lr 3e-3 seed 1"]
    assert len(m["sources"]) == 2  # the task's train and test files, hashed
    results = json.loads((store.local_dir(aid) / "results.json").read_text())
    assert results["labels"] == ["acq", "crude", "earn"] and results["primary_metric"] == "macro_f1"
    assert results["sizes"] == {"train": 135, "validation": 15, "test": 60}
    for name in ("base", "adapted"):
        runs = results["models"][name]["runs"]
        assert [r["seed"] for r in runs] == [0, 1]
        assert [r["finetune"] for r in runs] == [m["inputs"][f"{name} lr 3e-3 seed {seed}"] for seed in (0, 1)]
        best = max(runs, key=lambda r: r["validation"]["macro_f1"])
        assert results["models"][name]["best_run"] == {"seed": best["seed"], "learning_rate": 3e-3, "finetune": best["finetune"],
                                                       "validation_macro_f1": best["validation"]["macro_f1"]}  # fmt: skip
        for run in runs:
            # early stopping: the best epoch is the best validation score, and training stopped within patience
            scores = [h["validation_macro_f1"] for h in run["history"]]
            assert run["best_epoch"] == 1 + scores.index(max(scores))
            assert run["epochs_trained"] == 6 or run["epochs_trained"] - run["best_epoch"] == 2
            test = run["test"]
            assert set(test["per_class"]) == {"acq", "crude", "earn"}
            assert sum(map(sum, test["confusion"]["matrix"])) == 60
            assert test["accuracy"] == pytest.approx(sum(test["confusion"]["matrix"][i][i] for i in range(3)) / 60)
        summary = results["models"][name]["summary"]["macro_f1"]
        assert summary["values"] == [r["test"]["macro_f1"] for r in runs]
        assert m["metrics"][f"{name}_macro_f1_mean"] == round(summary["mean"], 4)
    # a model that learned something beats the majority class (20 of 60 test documents per label)
    assert max(r["test"]["accuracy"] for n in ("base", "adapted") for r in results["models"][n]["runs"]) > 0.4
    headline = next(c for c in results["comparisons"] if c["model"] == "adapted" and c["metric"] == "macro_f1")
    base_values = results["models"]["base"]["summary"]["macro_f1"]["values"]
    adapted_values = results["models"]["adapted"]["summary"]["macro_f1"]["values"]
    assert headline["per_seed"] == pytest.approx([a - b for a, b in zip(adapted_values, base_values)])
    assert headline["bootstrap"]["low"] <= headline["difference"] <= headline["bootstrap"]["high"]
    assert headline["verdict"] == "no verdict" and m["metrics"]["adapted_minus_base_verdict"] == "no verdict"  # 2 seeds: too few
    assert m["metrics"]["adapted_minus_base_low"] == round(headline["interval"]["low"], 6)
    predictions = json.loads((store.local_dir(aid) / "predictions.json").read_text())
    assert len(predictions["gold"]) == 60 and set(predictions["models"]["adapted"]) == {"0", "1"}

    text = summaries.format_comparison(results)
    assert re.search(r"^adapted +0\.\d{3} ± 0\.\d{3}", text, re.M)
    assert "adapted − base macro-F1:" in text and "95% interval over seeds and test [" in text and ": no verdict; secondary: paired t-test" in text
    assert "95% test-only bootstrap CI [" in text

    # a second run is a cache hit
    assert evaluate.run(cfg, store, base=ids["base"], model=ids["pretrain"]) == aid


@pytest.mark.slow
def test_same_seed_same_result(upstream):
    config, store, ids = upstream
    cfg = _with(config.evaluate, num_epochs=2)
    data = read_task(cfg.task, cfg.validation_fraction)
    folder = store.local_dir(ids["base"])
    tokenizer = load_fast_tokenizer(folder)
    encoded = {s: encode(tokenizer, data, s, 32) for s in ("train", "validation", "test")}
    a, pa, _ = finetune(folder, data, encoded, cfg, 7, 0, torch.device("cpu"))
    b, pb, _ = finetune(folder, data, encoded, cfg, 7, 0, torch.device("cpu"))
    c, _, _ = finetune(folder, data, encoded, cfg, 8, 0, torch.device("cpu"))
    for record in (a, b, c):
        record.pop("seconds")
    assert a == b and (pa == pb).all()
    assert a["history"] != c["history"]  # another seed: another head initialisation and data order


@pytest.mark.slow
def test_multi_label_task_with_tuned_thresholds(upstream, tmp_path):
    config, store, ids = upstream
    # R8 stories with a second, overlapping label: does the story quote dollar amounts?
    def relabel(path, name):
        rows = [{"text": r["text"], "labels": [r["label"]] + (["dollars"] if "dlrs" in r["text"] else [])} for r in read_jsonl_gz_or_plain(path)]
        return str(write_jsonl(tmp_path / name, rows))

    task = {"type": "multi_label", "label_field": "labels",
            "train_files": [relabel(config.evaluate.task.train_files[0], "train.jsonl")],
            "test_files": [relabel(config.evaluate.task.test_files[0], "test.jsonl")]}  # fmt: skip
    cfg = _with(config.evaluate, task=task, seeds=[0], num_epochs=4)
    aid = evaluate.run(cfg, store, base=ids["base"], model=ids["pretrain"])
    results = json.loads((store.local_dir(aid) / "results.json").read_text())
    assert results["labels"] == ["acq", "crude", "dollars", "earn"] and results["type"] == "multi_label"
    run = results["models"]["adapted"]["runs"][0]
    assert set(run["thresholds"]) == set(results["labels"]) and all(0.05 <= t <= 0.95 for t in run["thresholds"].values())
    per_label = run["test"]["confusion"]["per_label"]  # [[tn, fp], [fn, tp]] per label
    assert [m[1][0] + m[1][1] for m in per_label] == [run["test"]["per_class"][label]["support"] for label in results["labels"]]
    # predictions are label sets decided with the tuned thresholds
    predictions = json.loads((store.local_dir(aid) / "predictions.json").read_text())
    assert all(isinstance(p, list) for p in predictions["models"]["adapted"]["0"])
    assert 0 <= run["test"]["micro_f1"] <= 1 and run["test"]["accuracy"] <= run["test"]["micro_f1"] + 1e-9
    # the run's f- classifier says it is multi-label, so plain transformers applies the right loss
    saved = json.loads((store.local_dir(run["finetune"]) / "model" / "config.json").read_text())
    assert saved["problem_type"] == "multi_label_classification" and saved["label2id"] == {label: i for i, label in enumerate(results["labels"])}


def read_jsonl_gz_or_plain(path):
    from pathlib import Path

    path = Path(path)
    if path.suffix == ".gz":
        return read_jsonl_gz(path)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _conll_from_reuters(path, rows) -> str:
    """A token task from real Reuters sentences: numbers (B/I-NUM) and units such as mln, dlrs, pct (B-UNIT)."""
    units = {"mln", "billion", "dlrs", "pct", "cts", "shares", "tonnes"}
    lines = []
    for row in rows:
        words = row["text"].split()[:40]
        previous = "O"
        for word in words:
            if any(ch.isdigit() for ch in word):
                tag = "I-NUM" if previous.endswith("NUM") else "B-NUM"
            elif word.lower().strip(".,") in units:
                tag = "B-UNIT"
            else:
                tag = "O"
            lines.append(f"{word} {tag}")
            previous = tag
        lines.append("")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.mark.slow
def test_token_task_scored_per_entity(upstream, tmp_path):
    config, store, ids = upstream
    rows = read_jsonl_gz_or_plain(config.evaluate.task.train_files[0])
    test_rows = read_jsonl_gz_or_plain(config.evaluate.task.test_files[0])
    task = {"type": "token", "train_files": [_conll_from_reuters(tmp_path / "train.conll", rows)],
            "test_files": [_conll_from_reuters(tmp_path / "test.conll", test_rows)]}  # fmt: skip
    cfg = _with(config.evaluate, task=task, seeds=[0], num_epochs=4, max_seq_length=48)
    aid = evaluate.run(cfg, store, base=ids["base"], model=ids["pretrain"])
    results = json.loads((store.local_dir(aid) / "results.json").read_text())
    assert results["labels"] == ["O", "B-NUM", "I-NUM", "B-UNIT"] and results["primary_metric"] == "micro_f1"
    # 40 words do not fit in 48 sub-tokens: the rest are counted, predicted O and scored, not dropped
    assert any("test words have no sub-token within max_seq_length=48; they are predicted O and scored" in n for n in results["notes"])
    predictions = json.loads((store.local_dir(aid) / "predictions.json").read_text())
    assert [len(p) for p in predictions["models"]["base"]["0"]] == [len(g) for g in predictions["gold"]]
    run = results["models"]["adapted"]["runs"][0]
    assert set(run["test"]["per_class"]) == {"NUM", "UNIT"}
    assert run["test"]["micro_f1"] > 0.3  # numbers and units are easy to spot; an untrained head finds none
    saved = json.loads((store.local_dir(run["finetune"]) / "model" / "config.json").read_text())
    assert saved["architectures"] == ["BertForTokenClassification"] and saved["id2label"] == {str(i): t for i, t in enumerate(results["labels"])}
    assert json.loads((store.local_dir(run["finetune"]) / "run.json").read_text())["fallback_tag"] == "O"


TAPT = {"validation_fraction": 0.1,
        "pretrain": {"max_steps": 4, "max_seq_length": 32, "global_batch_size": 8, "micro_batch_size": 8, "max_eval_blocks": 8}}  # fmt: skip
TAPT_STAGES = ("tapt-corpus", "tapt-vocab", "tapt-tokens", "tapt")


@pytest.mark.slow
def test_tapt_and_an_extra_model_join_the_comparison(upstream, tiny_base):
    config, store, ids = upstream
    raw = config.model_dump()
    raw["evaluate"].update(tapt=TAPT, models=[{"name": "tiny-copy", "source": str(tiny_base)}], num_epochs=2)
    config = validate_config(raw)
    # TAPT is stages of the chain: planned with the others, each an artifact of its own, evaluate given the model.
    assert [s for s in plan(config) if s not in ids] == [*TAPT_STAGES, "evaluate", "report"]
    for stage in (*TAPT_STAGES, "evaluate"):
        ids[stage] = run_stage(stage, config, store, ids)
    assert ids == {s: aid for s, aid in plan(config).items() if s in ids}
    aid = ids["evaluate"]
    results = json.loads((store.local_dir(aid) / "results.json").read_text())
    assert list(results["models"]) == ["base", "adapted", "tiny-copy", "adapted+tapt"]
    assert results["models"]["tiny-copy"]["artifact"] == ids["base"]  # the same files: the same content-addressed model
    assert results["models"]["adapted+tapt"]["artifact"] == ids["tapt"] == store.manifest(aid)["inputs"]["adapted+tapt"]
    # lineage: TAPT model <- (the adapted model, the task's train text as a corpus, tokenised with the adapted model's tokenizer)
    m = store.manifest(ids["tapt"])
    assert m["stage"] == "pretrain" and m["config"]["max_steps"] == 4
    assert m["inputs"] == {"base": ids["pretrain"], "vocab": ids["tapt-vocab"], "tokens": ids["tapt-tokens"]}
    assert store.manifest(ids["tapt-vocab"])["inputs"] == {"corpus": ids["tapt-corpus"], "base": ids["pretrain"]}
    corpus = store.manifest(ids["tapt-corpus"])
    assert corpus["stage"] == "ingest" and [s["path"] for s in corpus["sources"]] == config.evaluate.task.train_files
    assert {c["model"] for c in results["comparisons"]} == {"adapted", "tiny-copy", "adapted+tapt"}

    # Another evaluation with the same TAPT settings rebuilds nothing of TAPT, only the new seed's fine-tuning runs
    before = set(store.ids())
    other_config = config.model_copy(update={"evaluate": config.evaluate.model_copy(update={"seeds": [1]})})
    assert {s: plan(other_config)[s] for s in TAPT_STAGES} == {s: ids[s] for s in TAPT_STAGES}
    other = run_stage("evaluate", other_config, store, ids)
    new = set(store.ids()) - before
    assert {a for a in new if not a.startswith("f-")} == {other}
    runs = {role: fid for role, fid in store.manifest(other)["inputs"].items() if fid.startswith("f-")}
    # tiny-copy is the base model's files, so the same artifact: its run is the base's run, built once
    assert runs["tiny-copy lr 3e-3 seed 1"] == runs["base lr 3e-3 seed 1"]
    assert {a for a in new if a.startswith("f-")} == set(runs.values())
    assert sorted(store.manifest(f)["metrics"]["seed"] for f in set(runs.values())) == [1, 1, 1]


def test_evaluate_with_tapt_on_needs_the_tapt_model(upstream):
    config, store, ids = upstream
    raw = config.model_dump()
    raw["evaluate"]["tapt"] = TAPT
    cfg = validate_config(raw).evaluate
    with pytest.raises(InputError, match=r"evaluate.tapt is set but no TAPT model was given; .*python -m pretrain.tapt --config C"):
        evaluate.stage_id(cfg, base=ids["base"], model=ids["pretrain"])
    with pytest.raises(InputError, match=r"a TAPT model \(m-0+\) was given but evaluate.tapt is not set"):
        evaluate.stage_id(config.evaluate, base=ids["base"], model=ids["pretrain"], tapt="m-" + "0" * 20)


def test_bad_task_data_fails_before_any_model_is_trained(upstream, tmp_path):
    config, store, ids = upstream
    test = write_jsonl(tmp_path / "test.jsonl", [{"text": "Gold output rose in March.", "label": "gold"}])
    cfg = _with(config.evaluate, task={"test_files": [str(test)]})
    with pytest.raises(InputError, match=r"test_files: labels \['gold'\] never occur in the train files"):
        evaluate.run(cfg, store, base=ids["base"], model=ids["pretrain"])
    train = write_jsonl(tmp_path / "train.jsonl", [{"text": "Oil rose.", "topic": "crude"}])
    cfg = _with(config.evaluate, task={"train_files": [str(train)]})
    with pytest.raises(InputError, match=r"train.jsonl:1: no field 'label' \(fields here: 'text', 'topic'\)"):
        evaluate.run(cfg, store, base=ids["base"], model=ids["pretrain"])
    assert not [a for a in store.ids() if a.startswith(("e-", "f-"))]


@pytest.mark.slow
def test_tapt_after_extended_vocabulary_continues_from_what_dapt_learned(upstream):
    """TAPT keeps the adapted model's tokenizer and embeddings: it must not extend (or re-initialise) them again."""
    from safetensors.torch import load_file

    config, store, ids = upstream
    raw = config.model_dump()
    raw["vocab"].update(mode="extend", max_new_tokens=20, min_token_count=2)
    # one step at a negligible learning rate: the TAPT weights are the starting weights, to within noise
    raw["evaluate"]["tapt"] = {"validation_fraction": 0.1, "pretrain": {"max_steps": 1, "learning_rate": 1e-9, "warmup_steps": 0,
                               "max_seq_length": 32, "global_batch_size": 8, "micro_batch_size": 8, "max_eval_blocks": 4}}  # fmt: skip
    extended = validate_config(raw)
    dapt = dict(ids)
    for stage in ("vocab", "tokens", "pretrain", *TAPT_STAGES):
        dapt[stage] = run_stage(stage, extended, store, dapt)
    added = store.manifest(dapt["vocab"])["metrics"]["added_tokens"]
    assert added > 0
    model = dapt["tapt"]
    assert store.manifest(store.manifest(model)["inputs"]["vocab"])["config"]["mode"] == "keep"
    key = "bert.embeddings.word_embeddings.weight"
    before = load_file(store.local_dir(dapt["pretrain"]) / "model" / "model.safetensors")[key]
    after = load_file(store.local_dir(model) / "model" / "model.safetensors")[key]
    assert after.shape == before.shape
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_int8_measured_on_the_adapted_classifier_and_reported(upstream):
    config, store, ids = upstream
    cfg = _with(config.evaluate, seeds=[3], num_epochs=2, int8=True)
    aid = evaluate.run(cfg, store, base=ids["base"], model=ids["pretrain"])
    results = json.loads((store.local_dir(aid) / "results.json").read_text())
    assert list(results["int8"]) == ["adapted"]  # the base is not a deployment candidate
    q = results["int8"]["adapted"]
    # the fp32 score is the seed's own test score: the same classifier, measured before quantization
    assert q["fp32"]["macro_f1"] == pytest.approx(results["models"]["adapted"]["runs"][0]["test"]["macro_f1"], abs=1e-5)
    assert q["delta"]["macro_f1"] == pytest.approx(q["int8"]["macro_f1"] - q["fp32"]["macro_f1"], abs=1e-5)
    assert q["speed"]["fp32_throughput_batch32"] > 0 and q["speed"]["int8_throughput_batch32"] > 0
    assert store.manifest(aid)["metrics"]["adapted_int8_macro_f1_delta"] == q["delta"]["macro_f1"]
    text = "\n".join(report.int8_section(results["int8"], lambda m: m))
    assert "## int8 on CPU" in text and re.search(r"^\| adapted \| \d+% \| 0\.\d{4} \| 0\.\d{4} \| [+-]0\.\d{4} \|", text, re.M)


PLAIN_TRANSFORMERS = r"""
import json, logging, sys, warnings
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

folder, texts, max_length = sys.argv[1], json.loads(open(sys.argv[2]).read()), int(sys.argv[3])
said = []
class Catch(logging.Handler):
    def emit(self, record):
        said.append(record.getMessage())
logging.getLogger("transformers").addHandler(Catch(level=logging.WARNING))
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    batch = tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    with torch.no_grad():
        predicted = model(**batch).logits.argmax(-1).tolist()
print(json.dumps({"predicted": predicted, "id2label": model.config.id2label, "warnings": said + [str(w.message) for w in caught]}))
"""


@pytest.mark.slow
def test_fine_tunes_are_artifacts_that_plain_transformers_loads_and_a_second_comparison_reuses(upstream, tmp_path, caplog):
    config, store, ids = upstream
    cfg = _with(config.evaluate, seeds=[0, 1], num_epochs=3)
    first = evaluate.run(cfg, store, base=ids["base"], model=ids["pretrain"])
    results = json.loads((store.local_dir(first) / "results.json").read_text())
    run = results["models"]["adapted"]["runs"][0]
    fid = run["finetune"]
    m = store.manifest(fid)
    assert m["stage"] == "finetune" and fid.startswith("f-") and m["inputs"] == {"model": ids["pretrain"]}
    assert m["sources"] == store.manifest(first)["sources"]  # the task files' content
    # only what changes one run: not the seed list, the models, int8, the bootstrap or the grid
    assert m["config"]["seed"] == 0 and m["config"]["learning_rate"] == 3e-3 and "seeds" not in m["config"] and "int8" not in m["config"]
    assert set(m["config"]) == {*finetune_stage.RUN_SETTINGS, "learning_rate", "seed"}
    assert {k: m["metrics"][k] for k in ("seed", "learning_rate", "best_epoch", "epochs_trained", "converged")} == {
        "seed": 0, "learning_rate": 3e-3, "best_epoch": run["best_epoch"], "epochs_trained": run["epochs_trained"], "converged": run["converged"]}
    assert m["metrics"]["test_macro_f1"] == round(run["test"]["macro_f1"], 6) and m["metrics"]["validation_macro_f1"] == round(run["validation"]["macro_f1"], 6)
    assert {"model/config.json", "model/model.safetensors", "model/tokenizer.json", "run.json", "predictions.json"} <= set(m["files"])
    assert not [f for f in m["files"] if f.endswith((".bin", ".pt", ".pkl"))]  # nothing pickled

    # The folder is a Hugging Face classifier: plain transformers, no project code, no warnings, the recorded predictions.
    data = read_task(cfg.task, cfg.validation_fraction)
    (tmp_path / "texts.json").write_text(json.dumps(data.test.texts))
    folder = store.local_dir(fid) / "model"
    result = run_without_project_code(PLAIN_TRANSFORMERS, str(folder), str(tmp_path / "texts.json"), str(cfg.max_seq_length), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    plain = json.loads(result.stdout.strip().splitlines()[-1])
    assert plain["warnings"] == []
    assert plain["id2label"] == {"0": "acq", "1": "crude", "2": "earn"}
    recorded = json.loads((store.local_dir(fid) / "predictions.json").read_text())
    assert plain["predicted"] == recorded["predicted"] and recorded["gold"] == data.gold("test").tolist()
    accuracy = sum(p == g for p, g in zip(recorded["predicted"], recorded["gold"])) / len(recorded["gold"])
    assert accuracy == pytest.approx(run["test"]["accuracy"])

    # A second comparison with the same base and settings (another adapted model) re-trains no base run.
    raw = config.model_dump()
    raw["pretrain"]["max_steps"] = 4
    other_model = run_stage("pretrain", validate_config(raw), store, ids)
    assert other_model != ids["pretrain"]
    before = set(store.ids())
    caplog.clear()
    with caplog.at_level("INFO", logger="pretrain"):
        second = evaluate.run(cfg, store, base=ids["base"], model=other_model)
    new = set(store.ids()) - before
    assert {a for a in new if not a.startswith("f-")} == {second}
    assert sorted((store.manifest(f)["inputs"]["model"], store.manifest(f)["metrics"]["seed"]) for f in new if f.startswith("f-")) == [
        (other_model, 0), (other_model, 1)]  # fmt: skip
    base_runs = [r["finetune"] for r in results["models"]["base"]["runs"]]
    assert [r["finetune"] for r in json.loads((store.local_dir(second) / "results.json").read_text())["models"]["base"]["runs"]] == base_runs
    assert sum(f"fine-tune {f} already built (cache hit)" in r.getMessage() for r in caplog.records for f in base_runs) == 2
    assert store.manifest(second)["metrics"]["finetune_runs_built"] == 2


def test_last_allowed_epoch_is_warned_about_in_log_results_and_report(upstream, caplog, monkeypatch):
    config, store, ids = upstream
    cfg = _with(config.evaluate, seeds=[0], num_epochs=1)  # one epoch allowed: every run's best is its last
    monkeypatch.setenv("DAPT_PROGRESS", "log")
    with caplog.at_level("INFO", logger="pretrain"):
        aid = evaluate.run(cfg, store, base=ids["base"], model=ids["pretrain"])
    said = [r.getMessage() for r in caplog.records]
    # one progress display per run, counting its training, validation and test batches; the per-epoch line stays
    assert sum(bool(re.match(r"evaluate adapted seed 0 lr 3e-3: (\d+)/\1 batch \(100%\)", line)) for line in said) == 1
    assert any(line.startswith("evaluate base seed 0 lr 3e-3: epoch 1: train loss ") for line in said)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "raise evaluate.num_epochs" in r.getMessage()]
    assert len(warned) == 2 and any(w.startswith("evaluate: base seed 0 lr 3e-3: the best validation macro_f1 came at the last allowed epoch (1)") for w in warned)
    results = json.loads((store.local_dir(aid) / "results.json").read_text())
    assert results["convergence"] == {"num_epochs": 1, "runs": 2, "not_converged": 2}
    assert "adapted: seed 0 chose the last allowed epoch (1): not converged, more epochs might score better; raise evaluate.num_epochs" in results["notes"]
    assert all(store.manifest(r["finetune"])["metrics"]["converged"] is False for n in ("base", "adapted") for r in results["models"][n]["runs"])
    assert store.manifest(aid)["metrics"]["runs_not_converged"] == 2
    assert "warning: 2 of 2 fine-tuning runs chose their last allowed epoch (1): not converged; raise evaluate.num_epochs" in summaries.format_comparison(results)
    text = "\n".join(report.headline_text(results, lambda m: m))
    assert "**Warning: 2 of 2 fine-tuning runs chose their last allowed epoch (1)**" in text and "Raise `evaluate.num_epochs`" in text
    assert "**No verdict on R8-3** with 1 seed (a verdict needs at least 3" in text  # and 1 seed gives no verdict


@pytest.mark.slow
def test_learning_rate_grid_is_the_same_for_every_model_and_chosen_on_validation(upstream):
    config, store, ids = upstream
    cfg = _with(config.evaluate, seeds=[0, 1], num_epochs=2, learning_rates=[1e-6, 3e-3])
    aid = evaluate.run(cfg, store, base=ids["base"], model=ids["pretrain"])
    results = json.loads((store.local_dir(aid) / "results.json").read_text())
    assert results["learning_rates"] == [1e-6, 3e-3]
    for name in ("base", "adapted"):
        r = results["models"][name]
        assert list(r["learning_rates"]) == ["1e-6", "3e-3"]
        means = {rate: s["validation_macro_f1_mean"] for rate, s in r["learning_rates"].items()}
        for rate, s in r["learning_rates"].items():  # the mean over seeds of each run's validation score, read from its f- artifact
            assert s["validation_macro_f1_mean"] == pytest.approx(sum(store.manifest(f)["metrics"]["validation_macro_f1"] for f in s["finetune"]) / 2, abs=1e-5)
            assert [store.manifest(f)["config"]["learning_rate"] for f in s["finetune"]] == [float(rate)] * 2
        chosen = max(means, key=means.get)
        assert r["learning_rate"] == float(chosen) and [run["learning_rate"] for run in r["runs"]] == [float(chosen)] * 2
        assert r["learning_rates"][chosen]["chosen"] and [run["finetune"] for run in r["runs"]] == r["learning_rates"][chosen]["finetune"]
    assert len([role for role in store.manifest(aid)["inputs"] if " lr " in role]) == 8  # 2 models x 2 rates x 2 seeds, all in the lineage
    lines = report.learning_rate_table(results, lambda m: m)
    assert lines[2] == "| model | lr 1e-06 | lr 0.003 |" and sum("**" in line for line in lines[4:]) == 2
    text = summaries.format_comparison(results)
    assert "learning rate chosen per model on mean validation macro-F1 from [1e-06, 0.003]" in text


def test_learning_rate_choice_looks_at_validation_only():
    def runs(validation, test):
        return [{"validation": {"macro_f1": v}, "test": {"macro_f1": t}} for v, t in zip(validation, test)]

    # 1e-3 is better on test, 5e-4 on validation: validation decides
    by_rate = {1e-3: runs([0.70, 0.72], [0.90, 0.91]), 5e-4: runs([0.75, 0.74], [0.60, 0.61])}
    assert evaluate.choose_learning_rate(by_rate, "macro_f1") == 5e-4
    # the mean over seeds, not the single best run
    by_rate = {1e-3: runs([0.99, 0.50], [0, 0]), 5e-4: runs([0.80, 0.80], [0, 0])}
    assert evaluate.choose_learning_rate(by_rate, "macro_f1") == 5e-4
    # ties go to the first rate of the grid
    assert evaluate.choose_learning_rate({2e-5: runs([0.8], [0]), 5e-5: runs([0.8], [1])}, "macro_f1") == 2e-5


def test_the_model_to_hand_over_is_chosen_on_validation_only():
    def entry(artifact, validation, test):
        runs = [{"seed": s, "validation": {"macro_f1": v}, "test": {"macro_f1": t}, "finetune": f"f-{artifact}{s}"}
                for s, (v, t) in enumerate(zip(validation, test))]  # fmt: skip
        best = max(runs, key=lambda r: r["validation"]["macro_f1"])
        return {"artifact": artifact, "runs": runs, "best_run": {"seed": best["seed"], "learning_rate": 1e-3, "finetune": best["finetune"],
                                                                   "validation_macro_f1": best["validation"]["macro_f1"]}}  # fmt: skip

    # adapted is far better on test, base on mean validation: validation decides, then the best seed on validation
    results = {"base": entry("b", [0.80, 0.84], [0.5, 0.5]), "adapted": entry("m", [0.90, 0.70], [0.9, 0.9])}
    best = evaluate.best_model(results, "macro_f1")
    assert (best["model"], best["seed"], best["finetune"]) == ("base", 1, "f-b1")
    assert best["why"].startswith("base has the best mean validation macro_f1 over seeds (0.8200; adapted 0.8000), and seed 1")
    # a tie goes to the model listed first (base: as good, and it needs no adapted encoder)
    tie = evaluate.best_model({"base": entry("b", [0.8], [0]), "adapted": entry("m", [0.8], [1])}, "macro_f1")
    assert tie["model"] == "base"
    assert tie["why"].startswith("base ties for the best mean validation macro_f1 over seeds with adapted (0.8000), and comes first")
