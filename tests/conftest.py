"""Shared fixtures: a tiny slice of the real Reuters demo data and a tiny BERT built in-process."""

from __future__ import annotations

import contextlib
import getpass
import gzip
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
REUTERS = ROOT / "data" / "reuters"
sys.path.insert(0, str(ROOT / "benchmarks"))
from machine import read_jsonl_gz  # noqa: E402  (benchmarks/machine.py: one reader of the demo data for the tests and benchmarks)

# `make test` runs the suite in pytest-xdist worker processes (one per core, at most 4: see the Makefile).
# Each worker gets its own Prefect home, so that two temporary Prefect servers never share one SQLite
# database (kept between runs: its tables are created once), and one PyTorch thread, so that two workers
# training tiny models do not fight over the cores.
WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if WORKER:
    os.environ.setdefault("PREFECT_HOME", str(Path(tempfile.gettempdir()) / f"dapt-tests-{getpass.getuser()}" / f"prefect-{WORKER}"))
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)  # Prefect creates only the last level
    torch.set_num_threads(1)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Under xdist (`--dist loadgroup`): the tests that share an expensive fixture run on one worker, slow ones first.

    A module whose tests share a module- or session-scoped fixture it defines (a server, a built pipeline)
    is one group; in the encoder matrix, each family is one group (its tests reuse its store). Slow tests
    are handed out first so that neither worker is left with a long test at the end.
    """
    if not WORKER:
        return
    for item in items:
        module = item.module.__name__
        shared = any(d.scope in ("module", "session") and d.baseid == item.nodeid.split("::")[0] for defs in item._fixtureinfo.name2fixturedefs.values() for d in defs)
        family = getattr(item, "callspec", None) and item.callspec.params.get("family")
        if family:
            item.add_marker(pytest.mark.xdist_group(f"{module}-{family}"))
        elif shared:
            item.add_marker(pytest.mark.xdist_group(module))
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    return path


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    """400 real Reuters stories (raw bodies, trailer included), 2 of them duplicated."""
    records = read_jsonl_gz(REUTERS / "corpus.jsonl.gz", limit=400)
    records += records[:2]
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "corpus.jsonl.gz", records)


@pytest.fixture(scope="session")
def task_files(tmp_path_factory) -> tuple[Path, Path]:
    """A 3-label slice of R8: earn / acq / crude, ~150 train and ~60 test documents."""
    keep = {"earn", "acq", "crude"}

    def pick(name: str, per_label: int) -> list[dict]:
        out, counts = [], {label: 0 for label in keep}
        for record in read_jsonl_gz(REUTERS / name):
            if record["label"] in keep and counts[record["label"]] < per_label:
                counts[record["label"]] += 1
                out.append(record)
        return out

    folder = tmp_path_factory.mktemp("task")
    return write_jsonl(folder / "train.jsonl", pick("r8_train.jsonl.gz", 50)), write_jsonl(folder / "test.jsonl", pick("r8_test.jsonl.gz", 20))


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory, corpus_file) -> Path:
    """A 2-layer, hidden-32 BERT with an MLM head and a 600-piece WordPiece tokenizer trained in-process."""
    from transformers import BertConfig, BertForMaskedLM

    from pretrain.core.config import VocabConfig
    from pretrain.vocab import save_as_transformers, train_wordpiece

    folder = tmp_path_factory.mktemp("tiny-bert")
    texts = [r["text"] for r in read_jsonl_gz(corpus_file)]
    tokenizer = train_wordpiece(texts, VocabConfig(vocab_size=600, min_frequency=1))
    save_as_transformers(tokenizer, folder, lowercase=True)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertForMaskedLM(config).save_pretrained(folder)
    return folder


@pytest.fixture
def classifier_folder(tiny_base, tmp_path):
    """An untrained classifier folder with labels (what `dapt predict` takes), without fine-tuning."""
    from transformers import AutoModelForSequenceClassification

    folder = tmp_path / "clf"
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_base, num_labels=2, id2label={0: "a", 1: "b"}, label2id={"a": 0, "b": 1})
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_base / name, folder / name)
    return folder


@pytest.fixture
def tiny_config(tmp_path, corpus_file, task_files, tiny_base) -> dict:
    """A whole-pipeline config that runs in seconds on a CPU (as a dict, to tweak before validating)."""
    return make_tiny_config(tmp_path / "store", corpus_file, task_files, tiny_base)


def make_tiny_config(store: Path, corpus_file: Path, task_files: tuple[Path, Path], tiny_base: Path) -> dict:
    train, test = task_files
    return {
        "name": "tiny",
        "store": str(store),
        "base_model": {"source": str(tiny_base)},
        "ingest": {"inputs": [str(corpus_file)], "strip_patterns": [r"(?i)\s*reuter\s*\x03\s*$"], "validation_fraction": 0.1},
        "vocab": {"vocab_size": 300, "min_frequency": 1},
        "pretrain": {
            "max_seq_length": 32,
            "max_steps": 12,
            "global_batch_size": 8,
            "micro_batch_size": 8,
            "learning_rate": 2e-3,
            "log_every_steps": 4,
            "max_eval_blocks": 32,
        },
        "evaluate": {
            "task": {"name": "R8-3", "train_files": [str(train)], "test_files": [str(test)]},
            "seeds": [0],
            "max_seq_length": 32,
            "num_epochs": 6,
            "batch_size": 16,
            "learning_rate": 3e-3,
        },
    }


def build_until(raw: dict, until: str):
    """Validate a raw config and build every stage it runs up to `until`: (config, store, ids)."""
    from pretrain.chain import plan, run_stage
    from pretrain.configfile import validate_config
    from pretrain.core.artifacts import ArtifactStore

    config = validate_config(raw)
    store = ArtifactStore(config.store)
    ids: dict[str, str] = {}
    for stage in plan(config, until=until):
        ids[stage] = run_stage(stage, config, store, ids)
    return config, store, ids


@contextlib.contextmanager
def crash_after(module_class: type, training_calls: int):
    """Inside the block, `module_class.forward` raises KeyboardInterrupt (a simulated crash: nothing is saved)
    on its training call after `training_calls` (one per micro-batch); as it was again after the block."""
    original = module_class.forward
    calls = {"n": 0}

    def crashing_forward(self, *args, **kwargs):
        if self.training:
            calls["n"] += 1
            if calls["n"] > training_calls:
                raise KeyboardInterrupt("simulated crash")
        return original(self, *args, **kwargs)

    module_class.forward = crashing_forward
    try:
        yield
    finally:
        module_class.forward = original


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_without_project_code(script: str, *args: str, cwd: Path):
    """Run `script` with only the standard library and site-packages on sys.path: no .pth (so no editable dapt), no cwd."""
    import subprocess
    import sys
    import sysconfig

    stdlib = [p for p in sys.path if p.startswith(sys.base_prefix) and "site-packages" not in p]
    paths = [*stdlib, sysconfig.get_path("purelib"), sysconfig.get_path("platlib")]
    prologue = f"import sys; sys.path[:] = {list(dict.fromkeys(paths))!r}\n"
    return subprocess.run([sys.executable, "-I", "-S", "-c", prologue + script, *args], capture_output=True, text=True, cwd=cwd, timeout=300)
