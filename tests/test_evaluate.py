import json

import pytest

from conftest import write_jsonl
from pretrain import evaluate
from pretrain.artifacts import ArtifactStore
from pretrain.config import validate_config
from pretrain.errors import InputError
from pretrain.pipeline import run_stage


@pytest.fixture
def upstream(tiny_config):
    config = validate_config(tiny_config)
    store = ArtifactStore(config.store)
    ids = {}
    for stage in ("base", "ingest", "vocab", "tokens", "pretrain"):
        ids[stage] = run_stage(stage, config, store, ids)
    return config, store, ids


def test_base_and_adapted_are_finetuned_and_compared(upstream):
    config, store, ids = upstream
    aid = run_stage("evaluate", config, store, ids)
    m = store.manifest(aid)
    assert m["inputs"] == {"base": ids["base"], "adapted": ids["pretrain"]}
    assert len(m["sources"]) == 2  # the task's train and test files, hashed
    results = json.loads((store.local_dir(aid) / "results.json").read_text())
    assert results["labels"] == ["acq", "crude", "earn"]
    for name in ("base", "adapted"):
        run = results["models"][name]["runs"][0]
        assert 0.0 <= run["test_macro_f1"] <= 1.0 and 0.0 <= run["test_accuracy"] <= 1.0
        assert 1 <= run["epoch"] <= 6
        assert m["metrics"][f"{name}_accuracy"] == round(run["test_accuracy"], 4)
    # a model that learned something beats the majority class (20 of 60 test documents per label)
    assert max(results["models"][n]["runs"][0]["test_accuracy"] for n in ("base", "adapted")) > 0.4


def test_same_seed_same_result(upstream):
    config, store, ids = upstream
    data = {}
    cfg = config.evaluate.model_copy(update={"num_epochs": 1})
    train_x, train_y = evaluate.load_task_split(cfg.task, cfg.task.train_files, "train_files")
    labels = sorted(set(train_y))
    from transformers import AutoTokenizer

    folder = store.local_dir(ids["base"])
    tokenizer = AutoTokenizer.from_pretrained(folder)
    encoded = tokenizer(train_x, truncation=True, max_length=32)["input_ids"]
    y = [labels.index(v) for v in train_y]
    data = {"pad_id": 0, "train": (encoded[:100], y[:100]), "validation": (encoded[100:], y[100:]), "test": (encoded[100:], y[100:])}
    import torch

    a = evaluate.finetune(folder, cfg, 7, data, labels, torch.device("cpu"))
    b = evaluate.finetune(folder, cfg, 7, data, labels, torch.device("cpu"))
    a.pop("seconds"), b.pop("seconds")
    assert a == b


def test_unseen_test_label_is_an_error(upstream, tmp_path):
    config, store, ids = upstream
    test = write_jsonl(tmp_path / "test.jsonl", [{"text": "Gold output rose in March.", "label": "gold"}])
    task = config.evaluate.task.model_copy(update={"test_files": [str(test)]})
    cfg = config.evaluate.model_copy(update={"task": task})
    with pytest.raises(InputError, match=r"test labels \['gold'\] never occur in the train files"):
        evaluate.run(cfg, store, base=ids["base"], model=ids["pretrain"])


def test_missing_label_column_names_the_file_and_line(upstream, tmp_path):
    config, store, ids = upstream
    train = write_jsonl(tmp_path / "train.jsonl", [{"text": "Oil rose.", "topic": "crude"}])
    task = config.evaluate.task.model_copy(update={"train_files": [str(train)]})
    cfg = config.evaluate.model_copy(update={"task": task})
    with pytest.raises(InputError, match=r"train.jsonl:1: no field 'label' \(fields here: 'text', 'topic'\)"):
        evaluate.run(cfg, store, base=ids["base"], model=ids["pretrain"])
