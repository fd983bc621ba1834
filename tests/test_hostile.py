"""Hostile inputs and a shared store (issue 14): what an attacker or a clumsy teammate can hand the pipeline.

Each case asserts the words of the error (the culprit named), and for the security holes that the
harm did not happen: a planted pickle does not run, nothing is written outside the cache, a path in
place of an id reads nothing outside the store, a pickle-only model folder is never unpickled.
The kill -9 variants of the checkpoint cases are in test_resume.py.
"""

from __future__ import annotations

import json
import re
import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
import torch

from conftest import ROOT, build_until, make_tiny_config, write_config, write_jsonl
from flows.cli import main
from pretrain.chain import run_stage, stage_id
from pretrain.configfile import load_config, validate_config
from pretrain.core import registry
from pretrain.core.artifacts import MANIFEST, ArtifactStore
from pretrain.core.errors import ConfigError, InputError, UserError
from pretrain.training import kit

class _Payload:
    """Unpickled, it creates the file named in it: an observable side effect."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


@pytest.fixture(scope="module")
def payload(tmp_path_factory):
    """(the bytes of a pickle that runs code when loaded, the marker file it creates); proven to work once."""
    import pickle

    folder = tmp_path_factory.mktemp("payload")
    marker = folder / "pwned"
    data = pickle.dumps({"state": _Payload(marker)})
    (folder / "payload.pkl").write_bytes(data)
    subprocess.run([sys.executable, "-c", f"import pickle; pickle.load(open({str(folder / 'payload.pkl')!r}, 'rb'))"], check=True, timeout=60)
    assert marker.read_text() == "pwned"  # it runs when unpickled
    marker.unlink()
    return data, marker


def _cli(capsys, *args) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def _text_artifact(store, aid, inputs=None, content="x"):
    with store.build("ingest", aid, config={"n": aid}, inputs=inputs or {}) as b:
        (b.dir / "data.txt").write_text(content)
    return aid


def _rewrite_manifest(store, aid, change):
    path = Path(store.root) / aid / MANIFEST
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def _flip_byte(path: Path, keep_mtime: bool = True) -> None:
    """One byte changed in place, size kept, and the modification time set back as a careful tamperer would."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


A = "c-" + "a" * 20
M = "m-" + "7" * 20


# --- 1. no pickle is ever loaded from a checkpoint -------------------------------------------------------


def test_a_planted_pickle_in_a_checkpoint_folder_never_runs(tmp_path, payload):
    from accelerate import Accelerator
    from transformers import BertConfig, BertForMaskedLM

    from pretrain.core.config import PretrainConfig
    from pretrain.training.mlm import MaskedLM

    data, marker = payload
    accelerator = Accelerator(cpu=True)
    cfg = PretrainConfig(max_steps=4, checkpoint_every_steps=2)
    model = BertForMaskedLM(BertConfig(vocab_size=40, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16))
    task, optimizer, scheduler = kit.prepare(accelerator, MaskedLM(model), cfg, 4)
    kit.save_checkpoint("pretrain", accelerator, tmp_path / "checkpoints", 2, {"step": 2}, 2, task, optimizer, scheduler)
    checkpoint = kit.latest_checkpoint(tmp_path / "checkpoints")
    for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin", "pytorch_model.bin", "scheduler.bin", "model.pkl"):
        (checkpoint / name).write_bytes(data)  # every name Accelerate's pickled checkpoints used
    _, progress = kit.start_or_resume("pretrain", cfg, accelerator, tmp_path, 4, task, optimizer, scheduler)
    assert progress == {"step": 2}
    assert not marker.exists(), "a planted pickle ran on resume"


# --- 2. a manifest cannot make a download write outside the cache ------------------------------------------


@pytest.mark.parametrize(
    "name, why",
    [
        ("../../../escape.txt", "it has an empty, '.' or '..' part"),
        ("model/../../escape.txt", "it has an empty, '.' or '..' part"),
        ("/tmp/escape.txt", "it is an absolute path"),
        ("C:/escape.txt", "it is an absolute path"),
        ("..\\..\\escape.txt", "it contains a backslash"),
        ("model//escape.txt", "it has an empty, '.' or '..' part"),
        ("./escape.txt", "it has an empty, '.' or '..' part"),
        ("manifest.json", "it is the manifest itself"),
    ],
)
def test_a_manifest_file_name_outside_the_artifact_is_refused_before_any_download(tmp_path, name, why):
    store = ArtifactStore(f"memory://hostile-{uuid.uuid4().hex}", cache_dir=tmp_path / "cache" / "dapt")
    _text_artifact(store, A)
    manifest = store.manifest(A)
    content = b"written where it should not be"
    store.fs.pipe_file(f"{store.root}/{A}/{name}", content)  # the file is really there, with a matching sha256
    manifest["files"] = {name: {"size": len(content), "sha256": file_digest_bytes(content)}}
    store.fs.pipe_file(f"{store.root}/{A}/{MANIFEST}", json.dumps(manifest).encode())
    with pytest.raises(InputError) as refused:
        store.local_dir(A)
    assert f"lists the file {name!r}, which is not a plain relative path inside the artifact ({why}" in str(refused.value)
    assert "nothing was read or written" in str(refused.value)
    assert not list(tmp_path.rglob("escape.txt")) and not (tmp_path / "cache" / "dapt" / "artifacts").exists()


def file_digest_bytes(content: bytes) -> str:
    import hashlib

    return hashlib.sha256(content).hexdigest()


# --- 3. ids and alias targets cannot point outside the store ------------------------------------------------


@pytest.fixture
def store_with_outside(tmp_path):
    """A store with one artifact, and next to it a folder laid out like an artifact that must never be read."""
    store = ArtifactStore(tmp_path / "store")
    _text_artifact(store, A)
    outside = tmp_path / "outside" / "x"
    outside.mkdir(parents=True)
    (outside / MANIFEST).write_text(json.dumps({"id": "x", "stage": "pretrain", "created": "SECRET-OUTSIDE", "files": {}}))
    return store


@pytest.mark.parametrize(
    "args",
    [
        ("artifacts", "show", "../outside/x"),
        ("artifacts", "lineage", "../outside/x"),
        ("artifacts", "verify", "../outside/x"),
        ("artifacts", "rm", "../outside/x"),
        ("artifacts", "promote", "../outside/x", "production"),
        ("export", "../outside/x", "--to", "EXPORT"),
    ],
)
def test_a_path_given_as_an_artifact_id_reads_nothing_outside_the_store(store_with_outside, capsys, args):
    store = store_with_outside
    args = [a.replace("EXPORT", str(Path(store.root).parent / "exported")) for a in args]
    code, out, err = _cli(capsys, *args, "--store", store.root)
    assert code == 2
    assert "'../outside/x'" in err and ("is not an artifact id" in err or "is neither an artifact id (a stage letter" in err)
    assert "SECRET-OUTSIDE" not in out + err
    assert (Path(store.root).parent / "outside" / "x" / MANIFEST).is_file()  # rm did not touch it
    assert not (Path(store.root) / ".aliases").exists()


def test_embed_refuses_a_path_that_is_neither_a_model_folder_nor_an_id(store_with_outside, tmp_path, capsys):
    (tmp_path / "in.txt").write_text("some text\n")
    code, _, err = _cli(capsys, "embed", "../outside/x", "--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "o.parquet"),
                        "--store", store_with_outside.root)  # fmt: skip
    assert code == 2 and "'../outside/x' is neither an artifact id (a stage letter, '-' and 20 hex digits) nor an alias name" in err


def test_an_alias_whose_entry_points_outside_the_store_is_refused(store_with_outside):
    store = store_with_outside
    registry.promote(store, A, "production")
    entry = next((Path(store.root) / ".aliases" / "production").glob("*.json"))
    record = json.loads(entry.read_text())
    record["id"] = "../outside/x"  # a teammate edits the alias file by hand
    entry.write_text(json.dumps(record))
    with pytest.raises(InputError, match=r"alias 'production' points at '\.\./outside/x' is not an artifact id"):
        registry.resolve(store, "production")


@pytest.mark.parametrize("alias", ["../../elsewhere", "..", "a/b", "-rf", ".hidden"])
def test_an_alias_name_that_is_a_path_is_refused(store_with_outside, alias):
    with pytest.raises(UserError, match=f"alias {alias!r}: use letters, digits"):
        registry.promote(store_with_outside, A, alias)
    with pytest.raises(UserError, match="alias|neither an artifact id nor an alias name"):
        registry.resolve(store_with_outside, alias)


def test_an_input_id_in_a_manifest_that_is_a_path_is_refused(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    _text_artifact(store, A)
    _rewrite_manifest(store, A, lambda m: m.update(inputs={"corpus": "../outside/x"}))
    with pytest.raises(InputError, match=r"input 'corpus' in .*manifest.json '\.\./outside/x' is not an artifact id"):
        store.lineage(A)


def test_a_manifest_copied_from_another_artifact_is_refused(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    _text_artifact(store, A)
    other = "c-" + "b" * 20
    shutil.copytree(Path(store.root) / A, Path(store.root) / other)  # same files, manifest says it is A
    with pytest.raises(InputError, match=f"artifact {other}: .*says it is '{A}'; it was copied or tampered with"):
        store.manifest(other)


def test_manifests_whose_inputs_form_a_circle_are_refused(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    b = "v-" + "b" * 20
    _text_artifact(store, A)
    _text_artifact(store, b, inputs={"corpus": A})
    _rewrite_manifest(store, A, lambda m: m.update(inputs={"vocab": b}))
    with pytest.raises(InputError, match=f"inputs lead back to itself .*{b} -> {A} -> {b}"):
        store.lineage(b)


def test_a_manifest_that_is_not_json_is_named_with_the_repair(tmp_path, capsys):
    store = ArtifactStore(tmp_path / "store")
    _text_artifact(store, A)
    (Path(store.root) / A / MANIFEST).write_text('{"id": "c-')
    code, _, err = _cli(capsys, "artifacts", "show", A, "--store", store.root)
    assert code == 2 and f"artifact {A}:" in err and "manifest.json is not valid JSON" in err and f"dapt artifacts rm {A}" in err
    code, out, _ = _cli(capsys, "artifacts", "rm", A, "--store", store.root)
    assert code == 0 and f"removed {A}" in out and not (Path(store.root) / A).exists()


def test_an_alias_entry_that_is_not_json_is_named(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    _text_artifact(store, A)
    registry.promote(store, A, "production")
    entry = next((Path(store.root) / ".aliases" / "production").glob("*.json"))
    entry.write_text("not json")
    with pytest.raises(InputError, match=f"{entry.name}: not valid JSON .*not written by dapt"):
        registry.resolve(store, "production")


# --- 4. a model folder with only pickle-based weights is refused everywhere --------------------------------


@pytest.fixture
def pickled_model(tmp_path, tiny_base, payload):
    """A copy of the tiny BERT whose only weights are a pytorch_model.bin that runs code when unpickled."""
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_base, folder)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(payload[0])
    return folder


def test_embed_refuses_a_folder_with_only_pickle_weights_and_never_unpickles_it(pickled_model, payload, tmp_path, capsys):
    (tmp_path / "in.txt").write_text("some text\n")
    code, _, err = _cli(capsys, "embed", str(pickled_model), "--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "o.parquet"),
                        "--store", str(tmp_path / "store"))  # fmt: skip
    assert code == 2
    assert f"model folder {pickled_model}: no safetensors weights. It has pytorch_model.bin: pickle-based weights are never loaded" in err
    assert "save_pretrained(DIR)" in err  # how to convert
    assert not payload[1].exists() and not (tmp_path / "o.parquet").exists()


def test_every_model_loader_refuses_pickle_only_folders(pickled_model, payload):
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

    from pretrain.models.modelfiles import load_model

    for auto in (AutoModelForMaskedLM, AutoModelForSequenceClassification):
        with pytest.raises(InputError, match=f"teacher {pickled_model}: no safetensors weights. It has pytorch_model.bin"):
            load_model(auto, pickled_model, "teacher")
    assert not payload[1].exists()


def test_an_evaluate_model_folder_with_only_pickle_weights_is_refused_at_import(pickled_model, tmp_path):
    from pretrain import base
    from pretrain.core.config import BaseModelConfig

    with pytest.raises(InputError, match=f"base model {pickled_model}: no safetensors weights. It has pytorch_model.bin"):
        base.run(BaseModelConfig(source=str(pickled_model)), ArtifactStore(tmp_path / "store"))


# --- 5. corrupted inputs are refused, naming the artifact, the file and the repair --------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory, corpus_file, task_files, tiny_base):
    """A store with base, corpus, vocabulary and token shards built (copied per test before tampering)."""
    folder = tmp_path_factory.mktemp("built")
    raw = make_tiny_config(folder / "store", corpus_file, task_files, tiny_base)
    config, store, ids = build_until(raw, "tokens")
    return raw, ids


@pytest.fixture
def copy_of_built(built, tmp_path):
    raw, ids = built
    shutil.copytree(raw["store"], tmp_path / "store")
    raw = {**raw, "store": str(tmp_path / "store")}
    config = validate_config(raw)
    return config, ArtifactStore(config.store), dict(ids)


def _refused(config, store, ids, stage, artifact, name):
    with pytest.raises(InputError) as refused:
        run_stage(stage, config, store, ids)
    message = str(refused.value)
    assert f"artifact {artifact}: {name} does not match its manifest" in message
    assert f"`dapt artifacts rm {artifact} --store {store.url}`, then re-run" in message
    return message


def test_pretrain_refuses_base_weights_changed_after_publishing(copy_of_built):
    config, store, ids = copy_of_built
    _flip_byte(Path(store.root) / ids["base"] / "model.safetensors")
    message = _refused(config, store, ids, "pretrain", ids["base"], "model.safetensors")
    assert "sha256" in message  # same size, mtime set back: the change stamp (ctime) still moved
    assert not store.exists(stage_id("pretrain", config, ids))


def test_pretrain_refuses_a_corrupted_token_shard(copy_of_built):
    config, store, ids = copy_of_built
    shard = sorted((Path(store.root) / ids["tokens"]).glob("train-*.bin"))[0]
    _flip_byte(shard)
    _refused(config, store, ids, "pretrain", ids["tokens"], shard.name)


def test_vocab_and_tokens_refuse_a_corrupted_corpus_parquet(copy_of_built):
    config, store, ids = copy_of_built
    for stage in ("tokens", "vocab"):  # not built: they read the corpus
        registry.delete_artifact(store, ids[stage])
    _flip_byte(Path(store.root) / ids["ingest"] / "train.parquet")
    _refused(config, store, ids, "vocab", ids["ingest"], "train.parquet")


def test_a_truncated_or_missing_or_unlisted_file_is_refused(copy_of_built):
    config, store, ids = copy_of_built
    folder = Path(store.root) / ids["base"]
    weights = folder / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:100])
    with pytest.raises(InputError, match=r"model.safetensors does not match its manifest \(100 bytes, the manifest says"):
        store.local_dir(ids["base"])
    weights.unlink()
    with pytest.raises(InputError, match=r"model.safetensors does not match its manifest \(the file is missing\)"):
        store.local_dir(ids["base"])
    weights.write_bytes(original)
    store.local_dir(ids["base"])  # restored: fine again
    (folder / "pytorch_model.bin").write_bytes(b"planted")
    with pytest.raises(InputError, match=r"pytorch_model.bin does not match its manifest \(the file is not listed in it\)"):
        store.local_dir(ids["base"])


def test_an_unchanged_file_is_not_hashed_again_and_a_changed_one_is(copy_of_built, monkeypatch):
    from pretrain.core import artifacts

    config, store, ids = copy_of_built
    hashed = []
    real = artifacts.file_digest
    monkeypatch.setattr(artifacts, "file_digest", lambda path, *a: hashed.append(Path(path).name) or real(path, *a))
    store.local_dir(ids["tokens"])
    store.local_dir(ids["tokens"])
    # Copied (new inodes) by the fixture: each file hashed once, on first use, never again.
    files = store.manifest(ids["tokens"])["files"]
    assert sorted(hashed) == sorted(Path(n).name for n in files)
    hashed.clear()
    shard = next(Path(store.root, ids["tokens"]).glob("train-*.bin"))
    shard.write_bytes(shard.read_bytes())  # rewritten with the same bytes: the stamp moved, so it is re-hashed (and passes)
    store.local_dir(ids["tokens"])
    assert hashed == [shard.name]


def test_a_freshly_published_artifact_is_not_hashed_again_by_the_next_stage(tmp_path, monkeypatch):
    from pretrain.core import artifacts

    store = ArtifactStore(tmp_path / "store")
    _text_artifact(store, A, content="x" * 10_000)
    hashed = []
    real = artifacts.file_digest
    monkeypatch.setattr(artifacts, "file_digest", lambda path, *a: hashed.append(path) or real(path, *a))
    store.local_dir(A)
    assert hashed == []


def test_rm_then_rerun_rebuilds_a_corrupted_artifact(copy_of_built, capsys):
    config, store, ids = copy_of_built
    registry.promote(store, ids["base"], "pinned")
    _flip_byte(Path(store.root) / ids["base"] / "config.json")
    code, _, err = _cli(capsys, "artifacts", "rm", ids["base"], "--store", store.url)
    assert code == 2 and "aliases pinned point at it; promote another id first, or add --force" in err
    code, out, _ = _cli(capsys, "artifacts", "rm", ids["base"], "--force", "--store", store.url)
    assert code == 0 and f"removed {ids['base']}" in out and "aliases pinned now point at nothing" in out
    assert run_stage("base", config, store, {}) == ids["base"]  # rebuilt from the source: the same id
    assert registry.verify(store, ids["base"]) == []


# --- CSV, strict config types, overrides ----------------------------------------------------------------------


def test_a_csv_row_with_an_unterminated_quote_is_an_error_naming_file_and_line(tmp_path, tiny_config):
    from pretrain import ingest
    from pretrain.core.config import IngestConfig

    corpus = tmp_path / "corpus.csv"
    good = "".join(f'{i},"document number {i} about grain and oil prices"\n' for i in range(1, 41))
    corpus.write_text(f'id,text\n{good}41,"an unterminated quote swallows\n42,the rows that follow it\n43,and more\n')
    store = ArtifactStore(tmp_path / "store")
    settings = {"inputs": [str(corpus)], "min_words": 1, "validation_fraction": 0.3, "dedup": {"near": False}}
    with pytest.raises(InputError, match=f"{corpus}:42: a quoted field opened in the record starting on this line is never closed"):
        ingest.run(IngestConfig(**settings), store)
    aid = ingest.run(IngestConfig(**settings, on_error="skip"), store)
    manifest = json.dumps(store.manifest(aid))
    assert f"{corpus}:42: a quoted field opened" in manifest  # a counted bad record, with its place
    assert store.manifest(aid)["metrics"]["documents"] == 40


def test_a_task_csv_with_an_unterminated_quote_is_named(tmp_path):
    from pretrain.data.io import read_records

    task = tmp_path / "train.csv"
    task.write_text('text,label\nfine text,a\n"open quote,b\nnext,c\n')
    with pytest.raises(InputError, match=f"{task}:3: a quoted field opened .* never closed"):
        list(read_records(task))


@pytest.mark.parametrize(
    "override, words",
    [
        ("pretrain.max_steps=true", "pretrain.max_steps: Input should be a valid integer (got True)"),
        ('pretrain.max_steps="20"', "pretrain.max_steps: Input should be a valid integer (got '20')"),
        ("pretrain.max_steps=2.5", "pretrain.max_steps: Input should be a valid integer (got 2.5)"),
        ("pretrain.learning_rate=false", "pretrain.learning_rate: Input should be a valid number (got False)"),
        ('pretrain.learning_rate="1e-4"', "pretrain.learning_rate: Input should be a valid number (got '1e-4')"),
        ("vocab.lowercase=1", "vocab.lowercase: Input should be a valid boolean (got 1)"),
        ("evaluate.seeds=[0, true]", "evaluate.seeds[1]: Input should be a valid integer (got True)"),
        ("ingest.inputs=corpus.jsonl", "ingest.inputs: Input should be a valid list (got 'corpus.jsonl')"),
    ],
)
def test_strict_types_in_the_config(tmp_path, tiny_config, override, words):
    path = write_config(tmp_path / "c.yaml", tiny_config)
    with pytest.raises(ConfigError) as refused:
        load_config(path, [override])
    assert words in str(refused.value)


def test_numbers_from_yaml_and_overrides_are_real_numbers(tmp_path, tiny_config):
    path = tmp_path / "c.yaml"
    path.write_text(write_config(path, tiny_config).read_text().replace("learning_rate: 0.002", "learning_rate: 2e-3"))
    config = load_config(path, ["pretrain.max_steps=20", "evaluate.learning_rate=1e-4", "pretrain.warmup_steps=2"])
    assert config.pretrain.max_steps == 20 and config.pretrain.learning_rate == 2e-3 and config.evaluate.learning_rate == 1e-4


def test_an_override_that_is_not_yaml_is_one_line_naming_it(tmp_path, tiny_config, capsys):
    path = write_config(tmp_path / "c.yaml", tiny_config)
    code, _, err = _cli(capsys, "plan", str(path), "--set", "pretrain.max_steps=[1")
    assert code == 2 and "Traceback" not in err
    assert err.startswith("error: override 'pretrain.max_steps=[1': the value '[1' is not valid YAML")
    assert len(err.strip().splitlines()) == 1


# --- auto_map, stores that cannot be used, staging debris, file modes, infra -------------------------------------


def test_custom_code_in_a_base_model_is_never_run_and_the_import_says_so(tmp_path, tiny_base, caplog):
    from pretrain import base
    from pretrain.core.config import BaseModelConfig

    folder = tmp_path / "custom"
    shutil.copytree(tiny_base, folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForMaskedLM": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "evil.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').write('yes')\n")
    store = ArtifactStore(tmp_path / "store")
    aid = base.run(BaseModelConfig(source=str(folder)), store)
    assert "asks for custom code (config.json: AutoModelForMaskedLM -> evil.EvilModel). Remote code is never run" in caplog.text
    assert "'bert' classes (BertForMaskedLM" in caplog.text
    assert "Remote code is never run" in store.manifest(aid)["remote_code_ignored"]
    assert "evil.py" not in store.manifest(aid)["files"]

    config["model_type"] = "evilnet"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="model_type 'evilnet' is not built into transformers and its auto_map asks for custom code"):
        base.run(BaseModelConfig(source=str(folder)), store)
    assert not (tmp_path / "ran").exists()


def test_a_store_under_a_file_is_one_line_naming_it(tmp_path, tiny_config, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, _, err = _cli(capsys, "artifacts", "list", "--store", str(blocker / "store"))
    assert code == 2 and "Traceback" not in err
    assert f"store {blocker / 'store'}: cannot create the folder {blocker / 'store'} (Not a directory)" in err
    path = write_config(tmp_path / "c.yaml", {**tiny_config, "store": str(blocker / "store")})
    code, _, err = _cli(capsys, "plan", str(path))
    assert code == 2 and "cannot create the folder" in err


def _stage_debris(store_root: Path, name: str, hours_old: float, size: int = 4096) -> Path:
    folder = store_root / ".tmp" / name
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "model.safetensors").write_bytes(b"0" * size)
    old = time.time() - hours_old * 3600
    for path in (folder / "model" / "model.safetensors", folder / "model", folder):
        os.utime(path, (old, old))
    return folder


def test_gc_removes_staging_folders_of_interrupted_publishes_and_says_how_much(tmp_path, capsys):
    store = ArtifactStore(tmp_path / "store")
    root = Path(store.root)
    dead = _stage_debris(root, f"{M}.999999999.abcd1234", hours_old=48, size=3_000_000)
    young = _stage_debris(root, f"{M}.999999998.abcd1235", hours_old=1)
    alive = _stage_debris(root, f"{M}.{os.getpid()}.abcd1236", hours_old=72)  # a long build still running here
    code, out, _ = _cli(capsys, "artifacts", "gc", "--store", store.root)
    assert code == 0 and f"would delete  {dead}  3.0 MB  (staging folder of an interrupted publish, untouched for 48 h)" in out
    assert str(young) not in out and str(alive) not in out and dead.is_dir()
    code, out, _ = _cli(capsys, "artifacts", "gc", "--yes", "--store", store.root)
    assert code == 0 and "1 staging folders, 3.0 MB" in out and "freed 3.0 MB" in out
    assert not dead.exists() and young.is_dir() and alive.is_dir()


def test_published_weights_follow_the_umask_not_the_writers_0600(tmp_path, tiny_base):
    from safetensors.torch import save_file

    previous = os.umask(0o022)
    try:
        store = ArtifactStore(tmp_path / "store")
        with store.build("pretrain", M, config={}) as b:
            shutil.copytree(tiny_base, b.dir / "model")
            save_file({"w": torch.zeros(2)}, str(b.dir / "model" / "model.safetensors"))  # safetensors writes 0600
            assert (b.dir / "model" / "model.safetensors").stat().st_mode & 0o777 == 0o600
        folder = store.local_dir(M)
        modes = {p.relative_to(folder).as_posix(): p.stat().st_mode & 0o777 for p in folder.rglob("*")}
        assert modes["model/model.safetensors"] == 0o644
        assert {mode for name, mode in modes.items() if (folder / name).is_file()} == {0o644}
        assert modes["model"] == 0o755 and folder.stat().st_mode & 0o777 == 0o755
    finally:
        os.umask(previous)


def test_the_prefect_server_script_refuses_to_listen_beyond_loopback_without_auth(tmp_path):
    env = {**os.environ, "DAPT_PREFECT_HOST": "0.0.0.0", "PREFECT_SERVER_API_AUTH_STRING": "", "DAPT_SERVER_DIR": str(tmp_path / "state")}
    done = subprocess.run(["bash", str(ROOT / "infra" / "server.sh"), "start"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "DAPT_PREFECT_HOST=0.0.0.0 would expose the Prefect API, which has no authentication of its own" in done.stderr
    assert "set PREFECT_SERVER_API_AUTH_STRING=user:password" in done.stderr
    assert not (tmp_path / "state").exists()  # refused before anything started


def test_compose_has_no_fallback_database_password():
    compose = (ROOT / "infra" / "compose.yaml").read_text()
    uses = [line for line in compose.splitlines() if "DAPT_PG_PASSWORD" in line and not line.lstrip().startswith("#")]
    assert len(uses) == 2 and all("${DAPT_PG_PASSWORD:?" in line for line in uses)
    assert "change-me" not in compose


@pytest.mark.slow  # starts processes in a private mount namespace
def test_a_read_only_store_can_be_listed_and_planned_and_refuses_builds_in_one_line(tmp_path, tiny_config):
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs `unshare -m` (a private mount namespace) to mount the store read-only")
    store = ArtifactStore(tmp_path / "store")
    _text_artifact(store, A)
    config = write_config(tmp_path / "c.yaml", {**tiny_config, "store": store.root})
    python = sys.executable
    script = textwrap.dedent(
        f"""
        set -u
        mount --bind {store.root} {store.root} && mount -o remount,bind,ro {store.root} || exit 99
        touch {store.root}/probe 2>/dev/null && exit 98
        echo "== list"; {python} -m flows.cli artifacts list --store {store.root}; echo "rc=$?"
        echo "== plan"; {python} -m flows.cli plan {config}; echo "rc=$?"
        echo "== build"; {python} -m pretrain.base --config {config}; echo "rc=$?"
        """
    )
    done = subprocess.run(["unshare", "-m", "bash", "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=600)
    if done.returncode == 99:
        pytest.skip(f"cannot mount read-only here: {done.stderr.strip()}")
    out = done.stdout + done.stderr
    listing, planning, building = out.split("== list")[1].split("== plan")[0], out.split("== plan")[1].split("== build")[0], out.split("== build")[1]
    assert A in listing and "rc=0" in listing
    assert "base      b-" in planning and "to build" in planning and "rc=0" in planning
    assert f"store {store.root}: cannot write into {store.root}/.tmp (Read-only file system); building needs a writable store" in building
    assert "rc=2" in building and "Traceback" not in out


# --- issue 22: `export --overwrite` replaces a previous export and nothing else --------------------------------


@pytest.fixture
def base_store(tmp_path, corpus_file, task_files, tiny_base):
    """A store with the base model artifact, an alias and a recorded run, a file beside it, and a first export of it."""
    raw = make_tiny_config(tmp_path / "home" / "work" / "store", corpus_file, task_files, tiny_base)
    _, store, ids = build_until(raw, "base")
    registry.promote(store, ids["base"], "production")
    registry.record_run(store, "tiny", ids)
    (tmp_path / "home" / "work" / "notes.txt").write_text("a file beside the store")
    return store, ids["base"]


def _tree(folder: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) under `folder`."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def _refused_overwrite(capsys, store, to: str, words: str) -> None:
    before = _tree(Path(store.root).parents[2])
    code, out, err = _cli(capsys, "export", "production", "--to", to, "--overwrite", "--store", store.url)
    assert code == 2 and "exported" not in out and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and "not replacing it with --overwrite" in err
    assert words in err
    assert _tree(Path(store.root).parents[2]) == before  # nothing deleted, nothing written (no staging folder either)


def test_export_overwrite_never_replaces_the_store(base_store, capsys):
    store, _ = base_store
    _refused_overwrite(capsys, store, store.root, f"--to {store.root}: not replacing it with --overwrite: it is the artifact store {store.url}")
    assert store.ids() and registry.aliases(store)


def test_export_overwrite_never_replaces_a_folder_holding_the_store(base_store, capsys):
    store, _ = base_store
    parent = Path(store.root).parent
    _refused_overwrite(capsys, store, str(parent), f"--to {parent}: not replacing it with --overwrite: it holds the artifact store")
    assert (parent / "notes.txt").read_text() == "a file beside the store"


def test_export_overwrite_never_replaces_home_cwd_or_root(base_store, capsys, monkeypatch, tmp_path):
    store, _ = base_store
    home = Path(store.root).parents[1]
    monkeypatch.setenv("HOME", str(home))
    _refused_overwrite(capsys, store, "~", f"--to {home}: not replacing it with --overwrite: it is your home folder")
    _refused_overwrite(capsys, store, str(home), f"--to {home}: not replacing it with --overwrite: it is your home folder")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    monkeypatch.setenv("HOME", str(elsewhere / "me"))
    _refused_overwrite(capsys, store, str(elsewhere), f"--to {elsewhere}: not replacing it with --overwrite: it holds your home folder")
    monkeypatch.setenv("HOME", str(elsewhere))
    monkeypatch.chdir(elsewhere)
    _refused_overwrite(capsys, store, ".", f"--to {elsewhere}: not replacing it with --overwrite: it is your home folder")
    monkeypatch.setenv("HOME", str(tmp_path / "nobody"))
    _refused_overwrite(capsys, store, ".", f"--to {elsewhere}: not replacing it with --overwrite: it is the current folder")
    _refused_overwrite(capsys, store, "/", "--to /: not replacing it with --overwrite: it is the root folder /")
    assert (elsewhere / "keep.txt").read_text() == "mine"


def test_export_overwrite_replaces_only_a_previous_export_holding_nothing_else(base_store, capsys, tmp_path):
    store, aid = base_store
    out = tmp_path / "out"
    code, printed, _ = _cli(capsys, "export", "production", "--to", str(out), "--store", store.url)
    assert code == 0 and f"exported {aid}" in printed
    assert json.loads((out / "dapt_export.json").read_text())["dapt_export"] == 1  # the marker
    (out / "model.safetensors").write_bytes(b"stale")
    code, printed, _ = _cli(capsys, "export", "production", "--to", str(out), "--overwrite", "--store", store.url)
    assert code == 0 and (out / "model.safetensors").read_bytes() != b"stale"  # a previous export: replaced

    (out / "my-notes.txt").write_text("not the export's")
    _refused_overwrite(capsys, store, str(out), f"--to {out}: not replacing it with --overwrite: it holds files the export did not write (my-notes.txt)")
    (out / "my-notes.txt").unlink()
    (out / "dapt_export.json").write_text('{"files": {}}')  # not an export's marker
    _refused_overwrite(capsys, store, str(out), f"--to {out}: not replacing it with --overwrite: it is not a previous dapt export (no valid dapt_export.json")

    empty = tmp_path / "empty"  # an empty folder made for the export: used, with or without --overwrite
    empty.mkdir()
    code, printed, _ = _cli(capsys, "export", "production", "--to", str(empty), "--store", store.url)
    assert code == 0 and (empty / "dapt_export.json").is_file()

    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "data.csv").write_text("a,b\n")
    _refused_overwrite(capsys, store, str(plain), f"--to {plain}: not replacing it with --overwrite: it is not a previous dapt export")
    other_store = tmp_path / "other"
    (other_store / ".aliases").mkdir(parents=True)
    (other_store / "dapt_export.json").write_text('{"dapt_export": 1, "files": {}}')  # even with a marker
    _refused_overwrite(capsys, store, str(other_store), f"--to {other_store}: not replacing it with --overwrite: it holds an artifact store or artifacts (.aliases)")


# --- issue 22: silently wrong -----------------------------------------------------------------------------------


def test_predict_never_labels_a_row_without_text(classifier_folder, tmp_path, capsys):
    source = tmp_path / "in.csv"
    source.write_text('id,text\n1,oil prices rose\n2,\n3,"   "\n4,net profit up\n')
    out = tmp_path / "o.jsonl"
    code, printed, _ = _cli(capsys, "predict", str(classifier_folder), "--input", str(source), "--out", str(out))
    assert code == 0
    assert "2 texts labelled" in printed and f"skipped 2 rows with no text (not labelled): {source}:3, {source}:4" in printed
    assert [json.loads(line)["id"] for line in out.open()] == ["1", "4"]  # no invented label for rows 2 and 3
    code, _, err = _cli(capsys, "predict", str(classifier_folder), "--input", str(source), "--out", str(tmp_path / "f.jsonl"), "--on-empty", "fail")
    assert code == 2 and f"error: {source}:3: no text in 'text' (empty); remove the row, or pass --on-empty skip" in err
    assert not (tmp_path / "f.jsonl").exists()
    nulls = tmp_path / "nulls.jsonl"
    nulls.write_text('{"text": null}\n{"text": ""}\n')
    code, _, err = _cli(capsys, "predict", str(classifier_folder), "--input", str(nulls), "--out", str(tmp_path / "n.jsonl"))
    assert code == 2 and f"--input {nulls}: no records to label (all 2 have no text in 'text')" in err


@pytest.mark.parametrize("word", ["yes", "no", "on", "off", "y", "1", "'true'", '"false"'])
def test_booleans_are_only_true_or_false_in_the_file_and_in_set(tmp_path, tiny_config, word):
    path = write_config(tmp_path / "c.yaml", tiny_config)
    shown = {"'true'": "'true'", '"false"': "'false'", "1": "1"}.get(word, repr(word))
    words = f"vocab.lowercase: Input should be a valid boolean (got {shown}); write true or false"
    with pytest.raises(ConfigError) as refused:
        load_config(path, [f"vocab.lowercase={word}"])
    assert words in str(refused.value)
    path.write_text(path.read_text().replace("vocab:\n", f"vocab:\n  lowercase: {word}\n"))
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert words in str(refused.value)


def test_true_and_false_still_read_as_booleans_and_no_is_a_string(tmp_path, tiny_config):
    path = write_config(tmp_path / "c.yaml", tiny_config)
    config = load_config(path, ["vocab.lowercase=false", "ingest.dedup.near=False", "pretrain.mixed_precision=no"])
    assert config.vocab.lowercase is False and config.ingest.dedup.near is False and config.pretrain.mixed_precision == "no"


def _task_run(tmp_path, tiny_config, train_rows, held_rows, key="test_files"):
    train, held = tmp_path / "train.jsonl", tmp_path / "held.jsonl"
    write_jsonl(train, [{"text": t, "label": label} for t, label in train_rows])
    write_jsonl(held, [{"text": t, "label": label} for t, label in held_rows])
    raw = {**tiny_config, "evaluate": {**tiny_config["evaluate"], "task": {"name": "T", "train_files": [str(train)], key: [str(held)]}}}
    return raw, train, held


def _labelled(n: int, start: int = 0) -> list[tuple[str, str]]:
    return [(f"Story number {i} about {'oil' if i % 2 else 'grain'} prices and trade", "crude" if i % 2 else "grain") for i in range(start, start + n)]


@pytest.mark.parametrize("key", ["test_files", "validation_files"])
def test_a_test_or_validation_file_that_is_the_train_file_is_refused_at_plan_time(tmp_path, tiny_config, capsys, key):
    raw, train, _ = _task_run(tmp_path, tiny_config, _labelled(40), _labelled(10))
    raw["evaluate"]["task"][key] = [str(train)]
    code, _, err = _cli(capsys, "plan", str(write_config(tmp_path / "c.yaml", raw)))
    use = "scored on" if key == "test_files" else "have their epoch chosen on"
    assert code == 2 and "Traceback" not in err
    assert f"evaluate.task.{key}: {train} is the same file as the train file {train} (identical bytes): the models would be {use} their own training data" in err
    copy = tmp_path / "copy.jsonl"
    shutil.copy(train, copy)  # another name, the same bytes
    raw["evaluate"]["task"][key] = [str(copy)]
    code, _, err = _cli(capsys, "plan", str(write_config(tmp_path / "c.yaml", raw)))
    assert code == 2 and f"{copy} is the same file as the train file {train}" in err


def test_test_examples_shared_with_train_are_an_error_above_a_small_share_and_a_warning_below(tmp_path, tiny_config, capsys):
    train_rows = _labelled(100)
    held = _labelled(50, start=1000)
    raw, train, test = _task_run(tmp_path, tiny_config, train_rows, held[:45] + [(t.upper() + "  ", label) for t, label in train_rows[:5]])
    code, _, err = _cli(capsys, "plan", str(write_config(tmp_path / "c.yaml", raw)))
    assert code == 2  # 5 of 50 (10%): not a held-out test set
    assert "evaluate.task.test_files: 5 of 50 examples (10.0%) have the same text as a train example (case and spacing aside)" in err
    assert f"e.g. {test}:46 = {train}:1 ('STORY NUMBER 0 ABOUT GRAIN" in err and "(more than 5%)" in err

    raw, train, test = _task_run(tmp_path, tiny_config, train_rows, held + [train_rows[7]])
    code, out, err = _cli(capsys, "plan", str(write_config(tmp_path / "c.yaml", raw)))
    assert code == 0
    assert f"warning: evaluate.task: test_files: 1 of 51 examples (2.0%) have the same text as a train example (case and spacing aside), e.g. {test}:51 = {train}:8" in err


def test_init_says_when_the_corpus_files_are_not_text(tmp_path, tiny_base, monkeypatch, capsys):
    from test_init import _user_files

    monkeypatch.chdir(tmp_path)
    docs, _ = _user_files(tmp_path, stories=5, examples=60)
    noise = os.urandom(200_000)
    (docs / "story002.txt").write_bytes(noise)
    (docs / "story003.txt").write_bytes(bytes(b | 0x80 for b in noise[:20_000]))  # no NUL byte, but not UTF-8
    code, out, _ = _cli(capsys, "init", "--corpus", "docs", "--task-train", "labelled.csv", "--base", str(tiny_base), "--out", "my.yaml")
    assert code == 0
    assert "warning: 2 of the 5 corpus files sampled are not text (docs/story002.txt: a binary file (NUL bytes in the first 8 KiB), not text; " in out
    assert "docs/story003.txt: not UTF-8 text (" in out and "ingest stops at the first one; remove them from the corpus, or set ingest.on_error: skip in my.yaml" in out

    only = tmp_path / "binary"
    only.mkdir()
    (only / "random.txt").write_bytes(noise)
    code, out, err = _cli(capsys, "init", "--corpus", "binary", "--task-train", "labelled.csv", "--base", str(tiny_base), "--out", "b.yaml")
    assert code == 2 and "Traceback" not in err and "next:" not in out and not (tmp_path / "b.yaml").exists()
    assert "error: --corpus binary: none of the 1 text files sampled is text (e.g. binary/random.txt: a binary file (NUL bytes" in err


def test_gc_lists_and_collects_abandoned_checkpoints_past_keep_hours(tmp_path, capsys):
    store = ArtifactStore(tmp_path / "store")
    old = store.work_dir(M) / "checkpoints" / "step-00000004"
    old.mkdir(parents=True)
    (old / "model.safetensors").write_bytes(b"0" * 2_000_000)
    young = store.work_dir("m-" + "8" * 20) / "checkpoints"
    young.mkdir(parents=True)
    (young / "model.safetensors").write_bytes(b"0" * 1000)
    hours_ago = time.time() - 30 * 3600
    for path in [*old.parents[1].rglob("*"), old.parents[1]]:
        os.utime(path, (hours_ago, hours_ago))
    code, out, _ = _cli(capsys, "artifacts", "gc", "--store", store.root)
    folder = Path(store.root) / ".work" / M
    assert code == 0
    assert f"would delete  {folder}  2.0 MB  (checkpoints of a build untouched for 30 h; a re-run with {M}'s settings would resume from them)" in out
    assert "and 1 checkpoint folders, 2.0 MB; run again with --yes" in out and "8888" not in out and folder.is_dir()
    code, out, _ = _cli(capsys, "artifacts", "gc", "--yes", "--keep-hours", "48", "--store", store.root)
    assert code == 0 and folder.is_dir() and "0 checkpoint folders" in out  # younger than --keep-hours: kept
    code, out, _ = _cli(capsys, "artifacts", "gc", "--yes", "--store", store.root)
    assert code == 0 and "freed 2.0 MB" in out and not folder.exists() and young.is_dir()


def test_checkpoint_files_follow_the_umask(tmp_path):
    from accelerate import Accelerator
    from transformers import BertConfig, BertForMaskedLM

    from pretrain.core.config import PretrainConfig
    from pretrain.training.mlm import MaskedLM

    previous = os.umask(0o022)
    try:
        accelerator = Accelerator(cpu=True)
        model = BertForMaskedLM(BertConfig(vocab_size=40, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16))
        task, optimizer, scheduler = kit.prepare(accelerator, MaskedLM(model), PretrainConfig(max_steps=4), 4)
        kit.save_checkpoint("pretrain", accelerator, tmp_path / "checkpoints", 2, {"step": 2}, 2, task, optimizer, scheduler)
        checkpoint = kit.latest_checkpoint(tmp_path / "checkpoints")
        assert {p.name: p.stat().st_mode & 0o777 for p in checkpoint.iterdir()} == {p.name: 0o644 for p in checkpoint.iterdir()}
        assert "model.safetensors" in {p.name for p in checkpoint.iterdir()} and checkpoint.stat().st_mode & 0o777 == 0o755
    finally:
        os.umask(previous)


# --- issue 22 item 7 / issue 21 item 5: `dapt run` stops everything it started ------------------------------------

# `dapt run` as the console script runs it (the watchdog and the signal handlers are the process entry's), with
# each training step slowed down so that a signal lands mid-pretraining.
SLOW_RUN = textwrap.dedent(
    """
    import sys, time
    from pretrain.training.mlm import MaskedLM
    forward = MaskedLM.forward
    def slow_forward(self, *args, **kwargs):
        if self.training:
            time.sleep(0.2)
        return forward(self, *args, **kwargs)
    MaskedLM.forward = slow_forward
    from flows.cli import main
    sys.argv = ["dapt", "run", sys.argv[1]]
    sys.exit(main())
    """
)


@pytest.fixture
def slow_run(tmp_path, corpus_file, task_files, tiny_base):
    """A config pretraining 60 slowed steps with a checkpoint every 5, and a function that starts `dapt run` on it
    (its own PREFECT_HOME) and returns (the process, its descendants so far) once the temporary Prefect server
    is among them and, with `checkpoint=True`, pretraining has written a checkpoint."""
    import psutil

    raw = make_tiny_config(tmp_path / "store", corpus_file, task_files, tiny_base)
    raw["pretrain"].update(max_steps=60, checkpoint_every_steps=5, keep_checkpoints=2, log_every_steps=5)
    path = write_config(tmp_path / "c.yaml", raw)
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PYTHONUNBUFFERED": "1"}
    env.pop("PREFECT_API_URL", None)

    def start(checkpoints: Path | None = None, session: bool = False):
        process = subprocess.Popen([sys.executable, "-c", SLOW_RUN, str(path)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, start_new_session=session)  # fmt: skip
        seen: dict[int, psutil.Process] = {}
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            for child in psutil.Process(process.pid).children(recursive=True):
                seen.setdefault(child.pid, child)
            server = any("prefect.server.api.server" in " ".join(_cmdline(p)) for p in seen.values())
            if server and (checkpoints is None or (checkpoints.is_dir() and any(checkpoints.glob("step-*")))):
                break
            time.sleep(0.2)
        assert process.poll() is None, process.communicate()[0]
        return process, list(seen.values())

    return start, raw


def _cmdline(process) -> list[str]:
    import psutil

    try:
        return process.cmdline()
    except psutil.Error:
        return []


def _all_gone(processes, seconds: float) -> list:
    import psutil

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        alive = [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return []
        time.sleep(0.2)
    return [(p.pid, _cmdline(p)) for p in alive]


@pytest.mark.slow
def test_sigterm_mid_pretraining_stops_the_server_and_workers_publishes_nothing_and_the_rerun_resumes(slow_run, caplog):
    import signal

    start, raw = slow_run
    config, store, ids = build_until(raw, "tokens")
    aid = stage_id("pretrain", config, ids)
    process, children = start(checkpoints=store.work_root() / aid / "checkpoints")
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 128 + signal.SIGTERM, output
    assert "error: stopped by SIGTERM: the run, its workers and the temporary Prefect server are stopped" in output
    assert "Traceback" not in output
    assert _all_gone(children, 15) == []  # no uvicorn (nor any worker) outlives the run
    assert not store.exists(aid) and not list((Path(store.root) / ".tmp").glob(f"{aid}.*"))  # nothing half-built
    assert any((store.work_root() / aid / "checkpoints").glob("step-*"))  # kept for the re-run
    with caplog.at_level("INFO", logger="pretrain"):
        assert run_stage("pretrain", config, store, ids) == aid
    assert "pretrain: resuming from" in caplog.text and store.exists(aid)


@pytest.mark.slow
def test_kill_minus_nine_of_dapt_run_leaves_no_orphan_server(slow_run):
    import signal

    start, _ = slow_run
    process, children = start()
    time.sleep(2)  # the watchdog notes the run's processes every 0.5 s: a server younger than that is not yet on its list
    process.send_signal(signal.SIGKILL)
    output = process.communicate(timeout=60)[0]  # the watchdog shares the output pipe: this waits for it too
    assert process.returncode == -signal.SIGKILL
    assert _all_gone(children, 20) == []  # the watchdog stopped the server and the rest
    assert f"dapt: the run (pid {process.pid}) ended without stopping" in output and "temporary Prefect server (pid" in output


@pytest.mark.slow
def test_the_watchdog_stops_only_what_outlives_the_run_and_is_silent_after_a_clean_end(tmp_path):
    import psutil

    def watched(child_seconds: float) -> tuple[str, psutil.Process]:
        """A run that starts one process living `child_seconds` and ends after 5 s (the watchdog is up by then); its stderr."""
        pid_file = tmp_path / f"child-{child_seconds}"
        run = subprocess.Popen([sys.executable, "-c", (
            "import subprocess, sys, time; "
            f"child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep({child_seconds})']); "
            f"open({str(pid_file)!r}, 'w').write(str(child.pid)); time.sleep(5)")])  # fmt: skip
        watchdog = subprocess.Popen([sys.executable, "-m", "flows.lifecycle", "watch", str(run.pid)], cwd=ROOT, stderr=subprocess.PIPE, text=True)
        run.wait(timeout=30)
        err = watchdog.communicate(timeout=60)[1]
        return err, psutil.Process(int(pid_file.read_text())) if psutil.pid_exists(int(pid_file.read_text())) else None

    # A process still finishing when the run ends (a server stopping at exit) is not a leftover.
    err, child = watched(6)
    assert "ended without stopping" not in err and (child is None or not child.is_running() or child.status() == psutil.STATUS_ZOMBIE)
    # One that would outlive the run is named and stopped.
    err, child = watched(120)
    assert "ended without stopping 1 of its processes" in err
    assert child is None or not child.is_running() or child.status() == psutil.STATUS_ZOMBIE


def test_a_temporary_server_that_does_not_start_is_retried_then_one_line_saying_what_to_do(monkeypatch, tmp_path, tiny_config, capsys, caplog):
    import httpx
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows import lifecycle

    tries, waits = [], []

    def overloaded(self, timeout=None):
        tries.append(self)
        raise httpx.ReadTimeout("timed out")  # what the health check of a server on a loaded machine raised

    monkeypatch.setattr(SubprocessASGIServer, "start", overloaded)
    monkeypatch.setattr(lifecycle.time, "sleep", waits.append)
    path = write_config(tmp_path / "c.yaml", tiny_config)
    with temporary_settings(updates={PREFECT_API_URL: None}):
        code, _, err = _cli(capsys, "run", str(path))
    assert code == 2 and len(tries) == 3 and waits == [5, 10] and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    # The retries are log lines: whether they reach this stderr or only the log records depends on the handlers that
    # Prefect's logging set-up (run once per process) left in place.
    retried = [r.getMessage() for r in caplog.records if r.name == "flows.lifecycle"] or err.strip().splitlines()[:-1]
    assert len(retried) == 2 and all("the temporary Prefect server did not start (ReadTimeout: timed out); trying again in" in r for r in retried)
    assert last.startswith("error: the temporary Prefect server did not start in 3 tries (ReadTimeout: timed out): the machine is probably overloaded")
    assert "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in last and "PREFECT_API_URL=http://127.0.0.1:4200/api" in last


def test_flows_reporting_to_the_temporary_server_send_no_heartbeats_and_to_a_real_server_do():
    # Each flow's end waited for its heartbeat thread's one-second sleep: about 5 s of a cached 8-flow re-run.
    from prefect.settings import get_current_settings

    from flows.lifecycle import without_heartbeats

    default = get_current_settings().flows.heartbeat_frequency
    assert default is not None  # Prefect's default: on
    with without_heartbeats("http://127.0.0.1:8301/api"):  # the temporary server, as start_api_server returns it
        assert get_current_settings().flows.heartbeat_frequency is None
    assert get_current_settings().flows.heartbeat_frequency == default
    with without_heartbeats(None):  # PREFECT_API_URL names a server: it reads the heartbeats
        assert get_current_settings().flows.heartbeat_frequency == default


def test_an_api_call_that_still_times_out_after_prefects_retries_is_one_line(monkeypatch, tmp_path, tiny_config, capsys):
    import httpx

    import flows.pipeline

    def timing_out(**kwargs):
        raise httpx.ReadTimeout("timed out")

    monkeypatch.setattr(flows.pipeline, "start_api_server", lambda: None)
    monkeypatch.setattr(flows.pipeline, "pipeline", timing_out)
    code, _, err = _cli(capsys, "run", str(write_config(tmp_path / "c.yaml", tiny_config)))
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "did not answer (ReadTimeout: timed out) after Prefect's retries: the machine is overloaded or the server stopped. Re-run the same command" in err


def test_a_forged_checkpoint_whose_scheduler_json_is_not_json_is_set_aside_not_a_traceback(tmp_path, caplog):
    from accelerate import Accelerator
    from transformers import BertConfig, BertForMaskedLM

    from pretrain.core.config import PretrainConfig
    from pretrain.training.mlm import MaskedLM

    accelerator = Accelerator(cpu=True)
    cfg = PretrainConfig(max_steps=4, checkpoint_every_steps=2)
    model = BertForMaskedLM(BertConfig(vocab_size=40, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16))
    task, optimizer, scheduler = kit.prepare(accelerator, MaskedLM(model), cfg, 4)
    for step in (2, 4):
        kit.save_checkpoint("pretrain", accelerator, tmp_path / "checkpoints", step, {"step": step}, 2, task, optimizer, scheduler)
    newest = kit.latest_checkpoint(tmp_path / "checkpoints")
    forged = b"\xff\xfe not json \x00\x81"
    (newest / "scheduler.json").write_bytes(forged)
    state = json.loads((newest / "trainer_state.json").read_text())
    state["files"]["scheduler.json"] = {"size": len(forged), "sha256": file_digest_bytes(forged)}  # hashes forged to match
    (newest / "trainer_state.json").write_text(json.dumps(state))
    assert kit.checkpoint_problem(newest) == "scheduler.json is not JSON"
    with caplog.at_level("WARNING", logger="pretrain"):
        _, progress = kit.start_or_resume("pretrain", cfg, accelerator, tmp_path, 4, task, optimizer, scheduler)
    assert progress == {"step": 2}  # the previous checkpoint, as for a truncated one
    assert f"checkpoint {newest} cannot be restored: scheduler.json is not JSON. Set aside as broken-step-00000004" in caplog.text


@pytest.mark.slow
def test_fine_tuning_workers_killed_by_kill_minus_nine_are_one_message_without_a_traceback(tiny_config, tmp_path):
    import signal

    import psutil

    build_until(tiny_config, "pretrain")
    raw = {**tiny_config, "evaluate": {**tiny_config["evaluate"], "seeds": [0, 1], "num_epochs": 50, "patience_epochs": None, "parallel_runs": 2}}
    path = write_config(tmp_path / "c.yaml", raw)
    job = subprocess.Popen([sys.executable, "-m", "pretrain.evaluate", "--config", str(path)], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "DAPT_PROGRESS": "log", "DAPT_PROGRESS_EVERY_S": "1"})  # fmt: skip
    lines = []
    try:
        for line in job.stderr:  # both workers are fine-tuning once each has shown progress
            lines.append(line)
            if len({w for w in ("[worker 1 · evaluate", "[worker 2 · evaluate") if any(w in seen and "batch (" in seen for seen in lines)}) == 2:
                break
        for worker in psutil.Process(job.pid).children():
            if "spawn_main" in " ".join(worker.cmdline()):  # the workers (not multiprocessing's resource tracker)
                worker.send_signal(signal.SIGKILL)  # what the kernel's out-of-memory killer does
        _, rest = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 2, "".join(lines) + rest
    assert "Traceback" not in rest and "RunFailed" not in rest
    assert re.search(r"error: evaluate: worker [12] \(CPU\) died \(exit code -9\) while fine-tuning (base|adapted) lr 3e-3 seed [01]", rest), rest
    assert "killed for memory? its log lines above say how far it got; with memory short, lower evaluate.parallel_runs" in rest


# --- issue 22: one line, not a traceback ----------------------------------------------------------------------


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No credentials and no reachable Hub: every remote failure here is fast and local (.invalid names, closed ports)."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata lookup for credentials
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")


@pytest.mark.parametrize(
    "url, words",
    [
        ("s3://nobucket/p", "store s3://nobucket/p: cannot reach it: no credentials (NoCredentialsError); set AWS_ACCESS_KEY_ID"),
        ("hf://datasets/x/y", "store hf://datasets/x/y: cannot reach it: the host name does not resolve"),
        ("ftp://127.0.0.1:1/x", "store ftp://127.0.0.1:1/x: cannot reach it: the connection was refused (ConnectionRefusedError)"),
        ("nosuchproto://x", "store nosuchproto://x: not a folder or a usable fsspec URL (Protocol not known: nosuchproto)"),
    ],
)
def test_a_store_url_that_cannot_be_used_is_one_line(offline, capsys, url, words):
    code, _, err = _cli(capsys, "artifacts", "list", "--store", url)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith("error: ") and words in err


@pytest.mark.parametrize(
    "url, words",
    [
        ("https://corpus.invalid/corpus.jsonl", "the host name does not resolve (ClientConnectorDNSError)"),
        ("http://127.0.0.1:1/corpus.jsonl", "the connection was refused (ClientConnectorError)"),
        ("hf://datasets/nobody/corpus", "the host name does not resolve"),
    ],
)
def test_a_remote_corpus_input_without_network_is_one_line_naming_it(offline, tmp_path, tiny_config, capsys, url, words):
    path = write_config(tmp_path / "c.yaml", tiny_config)
    code, _, err = _cli(capsys, "plan", str(path), "--set", f"ingest.inputs=[{url}]")
    assert code == 2 and "Traceback" not in err
    assert err.startswith(f"error: {path}: 1 problem:") and f"  - ingest.inputs[0]: {url}: cannot read it: {words}" in err
    assert "check the URL, and that" in err


def test_export_to_a_read_only_or_full_folder_is_one_line_and_leaves_nothing(base_store, capsys, tmp_path, monkeypatch):
    import errno

    from pretrain.handoff import export as export_module

    store, _ = base_store
    real = shutil.copy2
    for code_, words in ((errno.EROFS, "read-only file system; choose a writable place"), (errno.ENOSPC, "no space left on the device; free some")):
        def failing(src, dst, *args, code_=code_, **kwargs):
            if Path(dst).name == "model.safetensors":
                raise OSError(code_, os.strerror(code_), str(dst))
            return real(src, dst, *args, **kwargs)

        monkeypatch.setattr(export_module.shutil, "copy2", failing)
        code, _, err = _cli(capsys, "export", "production", "--to", str(tmp_path / "out"), "--store", store.url)
        assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert f"error: --to {tmp_path / 'out'}: cannot write the export there: {tmp_path}/.out." in err and words in err
        assert "nothing was left behind" in err and not [p for p in tmp_path.iterdir() if p.name.startswith((".out", "out"))]


def test_promote_and_rm_on_a_read_only_store_are_one_line(base_store, capsys, monkeypatch):
    import errno

    from fsspec.implementations.local import LocalFileSystem

    store, aid = base_store

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "write_bytes", read_only)
    code, _, err = _cli(capsys, "artifacts", "promote", aid, "staging", "--store", store.url)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"error: store {store.url}: {store.root}/.aliases/staging/." in err and "read-only file system" in err
    monkeypatch.setattr(LocalFileSystem, "rm", lambda self, path, *a, **k: read_only(path))
    code, _, err = _cli(capsys, "artifacts", "rm", aid, "--force", "--store", store.url)
    assert code == 2 and "Traceback" not in err and f"error: store {store.url}: " in err and "read-only file system" in err
    assert store.exists(aid)


def test_the_base_stage_on_a_full_disk_is_one_line(tmp_path, tiny_config, monkeypatch, capsys):
    import errno

    from pretrain import base, stage_cli

    def full(src, dst, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(base.shutil, "copy2", full)
    with pytest.raises(SystemExit) as exited:
        stage_cli.main("base", argv=["--config", str(write_config(tmp_path / "c.yaml", tiny_config))])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "Traceback" not in err
    assert "error: " in err and "no space left on the device; free some, or choose another place" in err
    assert not list((Path(tiny_config["store"]) / ".tmp").iterdir())  # the staging folder went with the failure


def test_push_to_hub_without_network_is_one_line_and_the_token_stays_secret(base_store, offline, capsys, tmp_path, monkeypatch):
    secret = "hf_SECRETtoken1234567890abcdef"
    monkeypatch.setenv("HF_TOKEN", secret)
    store, aid = base_store
    code, out, err = _cli(capsys, "export", "production", "--to", str(tmp_path / "out"), "--push-to-hub", "org/model", "--store", store.url)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "error: --push-to-hub org/model: cannot reach the Hub: the host name does not resolve" in err
    assert f"the export in {tmp_path / 'out'} is complete, push it again later" in err and (tmp_path / "out" / "model.safetensors").is_file()
    assert secret not in out + err


def test_predict_on_a_file_that_is_not_onnx_is_one_line(classifier_folder, tmp_path, capsys):
    (classifier_folder / "model.onnx").write_bytes(b"this is not a protobuf \x00\x01\x02")
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "oil prices rose"}\n')
    code, _, err = _cli(capsys, "predict", str(classifier_folder / "model.onnx"), "--input", str(source), "--out", str(tmp_path / "o.jsonl"))
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"error: {classifier_folder / 'model.onnx'}: ONNX Runtime cannot load it (InvalidProtobuf" in err and "--format onnx" in err


def test_csv_errors_name_the_line_where_the_quote_opens(tmp_path):
    from pretrain import ingest
    from pretrain.core.config import IngestConfig
    from pretrain.data.io import read_records

    task = tmp_path / "task.csv"  # the quote opens on line 11 and closes on line 12, followed by more text
    task.write_text("text,label\n" + "".join(f"row {i},a\n" for i in range(2, 11)) + '"open quote,b\nnext" and more,c\nlast,a\n')
    with pytest.raises(InputError) as refused:
        list(read_records(task))
    assert str(refused.value).startswith(f"{task}:11: not valid CSV in the record starting on this line (',' expected after '\"', on line 12)")

    corpus = tmp_path / "corpus.csv"  # a blank line, then the quote opens on line 52 and is never closed
    good = "".join(f'{i},"document number {i} about grain and oil prices"\n' for i in range(1, 50))
    corpus.write_text(f'id,text\n{good}\n51,"an unterminated quote\n52,the rows that follow\n')
    settings = {"inputs": [str(corpus)], "min_words": 1, "validation_fraction": 0.3, "dedup": {"near": False}}
    with pytest.raises(InputError, match=f"{corpus}:52: a quoted field opened in the record starting on this line is never closed"):
        ingest.run(IngestConfig(**settings), ArtifactStore(tmp_path / "store"))


@pytest.mark.slow
def test_ctrl_c_on_a_terminal_stops_the_run_in_seconds_with_one_line(slow_run):
    import signal

    start, _ = slow_run
    process, children = start(session=True)  # a session of its own: the signal reaches it as a terminal's Ctrl-C does
    time.sleep(2)
    os.killpg(process.pid, signal.SIGINT)  # the whole foreground group: the run, its watchdog and workers
    stopped = time.monotonic()
    output = process.communicate(timeout=120)[0]
    # The temporary server is in a session of its own: it outlives the signal so the run can record how it
    # ended, instead of retrying its API calls for a minute, and is stopped at exit.
    assert time.monotonic() - stopped < 60 and process.returncode == 128 + signal.SIGINT, output
    assert "error: stopped by SIGINT: the run, its workers and the temporary Prefect server are stopped" in output
    assert "Traceback" not in output
    assert _all_gone(children, 15) == []
