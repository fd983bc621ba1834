"""Hostile inputs and a shared store (issue 14): what an attacker or a clumsy teammate can hand the pipeline.

Each case asserts the words of the error (the culprit named), and for the security holes that the
harm did not happen: a planted pickle does not run, nothing is written outside the cache, a path in
place of an id reads nothing outside the store, a pickle-only model folder is never unpickled.
The kill -9 variants of the checkpoint cases are in test_resume.py.
"""

from __future__ import annotations

import json
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

from conftest import ROOT, build_until, make_tiny_config, write_config
from flows.cli import main
from pretrain import registry, training
from pretrain.artifacts import MANIFEST, ArtifactStore, file_digest
from pretrain.chain import run_stage, stage_id
from pretrain.configfile import load_config, validate_config
from pretrain.errors import ConfigError, InputError, UserError

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

    from pretrain.config import PretrainConfig
    from pretrain.mlm import MaskedLM

    data, marker = payload
    accelerator = Accelerator(cpu=True)
    cfg = PretrainConfig(max_steps=4, checkpoint_every_steps=2)
    model = BertForMaskedLM(BertConfig(vocab_size=40, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16))
    task, optimizer, scheduler = training.prepare(accelerator, MaskedLM(model), cfg, 4)
    training.save_checkpoint("pretrain", accelerator, tmp_path / "checkpoints", 2, {"step": 2}, 2, task, optimizer, scheduler)
    checkpoint = training.latest_checkpoint(tmp_path / "checkpoints")
    for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin", "pytorch_model.bin", "scheduler.bin", "model.pkl"):
        (checkpoint / name).write_bytes(data)  # every name Accelerate's pickled checkpoints used
    _, progress = training.start_or_resume("pretrain", cfg, accelerator, tmp_path, 4, task, optimizer, scheduler)
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

    from pretrain.modelfiles import load_model

    for auto in (AutoModelForMaskedLM, AutoModelForSequenceClassification):
        with pytest.raises(InputError, match=f"teacher {pickled_model}: no safetensors weights. It has pytorch_model.bin"):
            load_model(auto, pickled_model, "teacher")
    assert not payload[1].exists()


def test_an_evaluate_model_folder_with_only_pickle_weights_is_refused_at_import(pickled_model, tmp_path):
    from pretrain import base
    from pretrain.config import BaseModelConfig

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
    from pretrain import artifacts

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
    from pretrain import artifacts

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
    from pretrain.config import IngestConfig

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
    from pretrain.io import read_records

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
    from pretrain.config import BaseModelConfig

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
