"""Hugging Face datasets as corpus and task inputs (`dataset: ...`), offline: a `save_to_disk` folder and a
local folder in the Hub's Parquet layout. The artifact id hashes what was read, never where it was."""

import copy
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import build_until, read_jsonl_gz, REUTERS
from pretrain import ingest
from pretrain.configfile import validate_config
from pretrain.core.config import IngestConfig, TaskConfig
from pretrain.core.errors import InputError
from pretrain.data.hf_datasets import records, resolve
from pretrain.data.tasks import read_task, task_sources

datasets = pytest.importorskip("datasets")


@pytest.fixture(scope="module")
def stories():
    return [r["text"] for r in read_jsonl_gz(REUTERS / "corpus.jsonl.gz", limit=120)]


@pytest.fixture(scope="module")
def r8():
    keep = {"earn": 0, "acq": 0, "crude": 0}
    rows = []
    for r in read_jsonl_gz(REUTERS / "r8_train.jsonl.gz"):
        if r["label"] in keep and keep[r["label"]] < 30:
            keep[r["label"]] += 1
            rows.append(r)
    return rows


def _hub_layout(folder, stories):
    """A dataset repository as it sits on the Hub: data/<split>-0000N-of-0000M.parquet."""
    (folder / "data").mkdir(parents=True)
    half = len(stories) // 2
    pq.write_table(pa.table({"body": stories[:half]}), folder / "data" / "train-00000-of-00002.parquet")
    pq.write_table(pa.table({"body": stories[half:-10]}), folder / "data" / "train-00001-of-00002.parquet")
    pq.write_table(pa.table({"body": stories[-10:]}), folder / "data" / "test-00000-of-00001.parquet")
    return folder


def test_a_hub_layout_folder_is_a_corpus_with_a_content_id(tmp_path, stories):
    repo = _hub_layout(tmp_path / "repo", stories)
    cfg = IngestConfig(inputs=[{"dataset": str(repo), "split": "train"}], text_field="body", min_words=1)
    texts = [record["body"] for _, record in records(resolve(cfg.inputs[0])["path"])]
    assert texts == stories[:-10]  # the train split only, in order
    moved = shutil.copytree(repo, tmp_path / "elsewhere" / "copy")
    assert ingest.stage_id(cfg) == ingest.stage_id(IngestConfig(**{**cfg.model_dump(), "inputs": [{"dataset": str(moved), "split": "train"}]}))
    assert ingest.stage_id(cfg) != ingest.stage_id(IngestConfig(**{**cfg.model_dump(), "inputs": [{"dataset": str(repo), "split": "test"}]}))
    pq.write_table(pa.table({"body": stories[-10:-1]}), moved / "data" / "test-00000-of-00001.parquet")
    assert ingest.stage_id(cfg) != ingest.stage_id(IngestConfig(**{**cfg.model_dump(), "inputs": [{"dataset": str(moved), "split": "train"}]}))


def test_a_saved_dataset_dict_feeds_ingest_and_the_corpus_names_it(tmp_path, stories, tiny_config):
    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": stories[:100]}),
                          "test": datasets.Dataset.from_dict({"text": stories[100:]})}).save_to_disk(str(saved))  # fmt: skip
    raw = copy.deepcopy(tiny_config)
    raw["ingest"]["inputs"] = [{"dataset": str(saved), "split": "train"}]
    config, store, ids = build_until(raw, "ingest")
    manifest = store.manifest(ids["ingest"])
    assert manifest["metrics"]["documents_read"] == 100
    assert manifest["sources"][0]["dataset"] == str(saved) and manifest["sources"][0]["path"].startswith("dataset:")
    with pytest.raises(InputError, match=r"no split 'validation' \(splits: train, test\)"):
        list(records(resolve(config.ingest.inputs[0].model_copy(update={"split": "validation"}))["path"]))


def test_task_data_from_datasets_with_class_label_names(tmp_path, r8):
    names = sorted({r["label"] for r in r8})
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)})
    train = datasets.Dataset.from_dict({"text": [r["text"] for r in r8], "label": [names.index(r["label"]) for r in r8]}, features=features)
    train.save_to_disk(str(tmp_path / "train"))
    cfg = TaskConfig(train_files=[{"dataset": str(tmp_path / "train")}], test_fraction=0.2)
    data = read_task(cfg, 0.1)
    assert data.labels == names  # the ClassLabel names, not 0, 1, 2
    assert data.test.locations[0].startswith(f"dataset {tmp_path / 'train'} (split train) record ")
    sources = task_sources(cfg)
    assert len(sources) == 1 and len(sources[0]["sha256"]) == 64


def test_dataset_inputs_are_checked_with_the_config(tmp_path, tiny_config):
    raw = copy.deepcopy(tiny_config)
    raw["ingest"]["inputs"] = [{"dataset": "./no/such/folder", "split": "train"}, {"dataset": "org/name", "split": "train[:10%]"}]
    with pytest.raises(Exception) as e:
        validate_config(raw)
    message = str(e.value)
    assert "ingest.inputs[0]: dataset './no/such/folder': no such folder (relative to " in message
    assert "ingest.inputs[1].split: 'train[:10%]': give a plain split name; slices cannot be streamed" in message


def test_without_datasets_installed_the_error_says_how_to_install_it(tmp_path, monkeypatch, tiny_config):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "datasets" else real(name, *a))
    raw = copy.deepcopy(tiny_config)
    raw["ingest"]["inputs"] = [{"dataset": "org/name"}]
    with pytest.raises(Exception, match=r"ingest.inputs\[0\]: dataset 'org/name': reading a Hugging Face dataset needs the datasets package: pip install 'dapt\[datasets\]'"):
        validate_config(raw)
