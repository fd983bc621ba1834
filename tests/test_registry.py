"""Aliases, their history, verify and gc: on a local store, an fsspec store, and under concurrent promotes."""

import datetime as dt
import json
import shutil
import subprocess
import sys
import threading

import pytest

from conftest import ROOT
from flows.cli import main
from pretrain.core import registry
from pretrain.core.artifacts import ArtifactStore
from pretrain.core.errors import InputError, UserError


def _model(store, aid, base_dir, inputs=None):
    with store.build("pretrain", aid, config={"n": aid}, inputs=inputs or {}) as b:
        shutil.copytree(base_dir, b.dir / "model")
    return aid


def _text(store, aid, stage="ingest", inputs=None, created=None):
    with store.build(stage, aid, config={"n": aid}, inputs=inputs or {}) as b:
        (b.dir / "data.txt").write_text(aid)
    if created is not None:  # backdate, as if built long ago
        path = f"{store.root}/{aid}/manifest.json"
        manifest = json.loads(store.fs.cat_file(path))
        manifest["created"] = created
        store.fs.pipe_file(path, json.dumps(manifest).encode())
    return aid


OLD = "2020-01-01T00:00:00+00:00"


@pytest.mark.parametrize("url", ["local", "memory://registry-test"])
def test_promote_resolve_history(tmp_path, url):
    store = ArtifactStore(tmp_path / "s" if url == "local" else url)
    a, b = _text(store, "c-" + "a" * 20), _text(store, "c-" + "b" * 20)
    first = registry.promote(store, a, "production", note="first")
    assert first["previous"] is None and first["id"] == a and first["host"] and first["user"]
    assert registry.resolve(store, "production") == a
    registry.promote(store, b, "production")
    assert registry.resolve(store, "production") == b
    assert registry.resolve(store, a) == a  # an id resolves to itself
    log = registry.history(store, "production")
    assert [(e["id"], e["previous"]) for e in log] == [(a, None), (b, a)]
    assert log[0]["note"] == "first" and log[0]["time"] < log[1]["time"]
    assert registry.aliases(store) == {"production": log[-1]}
    with pytest.raises(InputError, match="alias 'staging' is not in the store .*aliases there: production"):
        registry.resolve(store, "staging")
    with pytest.raises(InputError, match="artifact c-0000000000000000000f is not in the store"):
        registry.promote(store, "c-0000000000000000000f", "production")
    with pytest.raises(UserError, match="looks like an artifact id"):
        registry.promote(store, a, "c-" + "c" * 20)
    with pytest.raises(UserError, match="alias 'no/slash'"):
        registry.promote(store, a, "no/slash")
    if url != "local":
        store.fs.rm(store.root, recursive=True)


@pytest.mark.slow
def test_concurrent_promotes_lose_nothing(tmp_path):
    """Three processes promote 15 times each, at once: 45 whole entries, and the alias is the newest."""
    store = ArtifactStore(tmp_path / "s")
    ids = [_text(store, f"c-{i:020x}") for i in range(3)]
    script = (
        "import sys; from pretrain.core.artifacts import ArtifactStore; from pretrain.core import registry\n"
        "store = ArtifactStore(sys.argv[1])\n"
        "for _ in range(15): registry.promote(store, sys.argv[2], 'production')\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, store.url, aid], cwd=ROOT) for aid in ids]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    log = registry.history(store, "production")
    assert len(log) == 45
    assert {e["id"] for e in log} == set(ids) and len({e["pid"] for e in log}) == 3
    assert registry.resolve(store, "production") == log[-1]["id"]
    assert not list((tmp_path / "s" / ".aliases" / "production").glob(".*"))  # no temporary debris


def test_concurrent_promotes_on_an_fsspec_store():
    store = ArtifactStore("memory://registry-threads")
    ids = [_text(store, f"c-{i:020x}") for i in range(4)]
    threads = [threading.Thread(target=lambda aid=aid: [registry.promote(store, aid, "latest") for _ in range(10)]) for aid in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log = registry.history(store, "latest")
    assert len(log) == 40 and registry.resolve(store, "latest") == log[-1]["id"]
    store.fs.rm(store.root, recursive=True)


@pytest.mark.parametrize("url", ["local", "memory://verify-test"])
def test_verify_catches_a_flipped_byte_in_the_weights(tmp_path, tiny_base, url, capsys):
    store = ArtifactStore(tmp_path / "s" if url == "local" else url)
    aid = _model(store, "m-" + "1" * 20, tiny_base)
    assert registry.verify(store, aid) == []
    weights = f"{store.root}/{aid}/model/model.safetensors"
    data = bytearray(store.fs.cat_file(weights))
    data[len(data) // 2] ^= 0x01  # one bit, same size: only the hash can tell
    store.fs.pipe_file(weights, bytes(data))
    problems = registry.verify(store, aid)
    assert len(problems) == 1 and problems[0].startswith("model/model.safetensors: sha256")
    if url == "local":
        assert main(["artifacts", "verify", aid, "--store", store.url]) == 1
        err = capsys.readouterr().err
        assert "model/model.safetensors" in err and "1 file(s) do not match" in err
        with pytest.raises(InputError, match="fails verification, not promoting"):
            registry.promote(store, aid, "production")
        (tmp_path / "s" / aid / "model" / "config.json").unlink()
        (tmp_path / "s" / aid / "stray.bin").write_bytes(b"x")
        problems = registry.verify(store, aid)
        assert "model/config.json: missing" in problems and "stray.bin: not in the manifest" in problems
    else:
        store.fs.rm(store.root, recursive=True)


def test_verify_cli_passes_on_an_intact_artifact_by_alias(tmp_path, tiny_base, capsys):
    store = ArtifactStore(tmp_path / "s")
    aid = _model(store, "m-" + "2" * 20, tiny_base)
    assert main(["artifacts", "promote", aid, "production", "--store", store.url]) == 0
    assert capsys.readouterr().out.strip() == f"production -> {aid}"
    assert main(["artifacts", "verify", "production", "--store", store.url]) == 0
    assert f"{aid}: 4 files match the manifest" in capsys.readouterr().out
    assert main(["artifacts", "resolve", "production", "--store", store.url]) == 0
    assert capsys.readouterr().out.strip() == aid
    assert main(["artifacts", "history", "production", "--store", store.url]) == 0
    assert aid in capsys.readouterr().out
    assert main(["artifacts", "resolve", "nope", "--store", store.url]) == 2
    assert "alias 'nope' is not in the store" in capsys.readouterr().err


def test_gc_keeps_aliases_recent_runs_lineage_and_evidence(tmp_path, capsys):
    store = ArtifactStore(tmp_path / "s")
    corpus = _text(store, "c-" + "0" * 19 + "1", created=OLD)
    base = _text(store, "b-" + "0" * 19 + "1", stage="base", created=OLD)
    model = _text(store, "m-" + "0" * 19 + "1", stage="pretrain", inputs={"base": base, "corpus": corpus}, created=OLD)
    evaluation = _text(store, "e-" + "0" * 19 + "1", stage="evaluate", inputs={"base": base, "adapted": model}, created=OLD)
    old_model = _text(store, "m-" + "0" * 19 + "2", stage="pretrain", inputs={"base": base}, created=OLD)
    old_eval = _text(store, "e-" + "0" * 19 + "2", stage="evaluate", inputs={"base": base, "adapted": old_model}, created=OLD)
    run_corpus = _text(store, "c-" + "0" * 19 + "3", created=OLD)
    stale_corpus = _text(store, "c-" + "0" * 19 + "4", created=OLD)
    fresh = _text(store, "c-" + "0" * 19 + "5")  # just built: a running pipeline may need it
    registry.promote(store, model, "production")
    registry.record_run(store, "older", {"ingest": stale_corpus})
    registry.record_run(store, "newest", {"ingest": run_corpus})

    plan = registry.gc_plan(store, keep_runs=1, keep_hours=24)
    assert set(plan["keep"]) == {model, base, corpus, evaluation, run_corpus}
    assert plan["young"] == [fresh]
    assert set(plan["delete"]) == {old_model, old_eval, stale_corpus}

    assert main(["artifacts", "gc", "--keep-runs", "1", "--store", store.url]) == 0  # dry run
    out = capsys.readouterr().out
    assert "dry run: would delete 3 artifacts" in out and f"would delete  {old_model}" in out
    assert all(store.exists(a) for a in (old_model, old_eval, stale_corpus))

    assert main(["artifacts", "gc", "--keep-runs", "2", "--yes", "--store", store.url]) == 0
    assert "deleted 2 artifacts" in capsys.readouterr().out
    assert not store.exists(old_model) and not store.exists(old_eval) and store.exists(stale_corpus)
    assert not (tmp_path / "s" / old_model).exists()
    assert all(store.exists(a) for a in (model, base, corpus, evaluation, run_corpus, fresh))


def test_gc_keeps_an_evaluation_with_its_fine_tuning_runs(tmp_path):
    store = ArtifactStore(tmp_path / "s")
    base = _text(store, "b-" + "0" * 19 + "1", stage="base", created=OLD)
    model = _text(store, "m-" + "0" * 19 + "1", stage="pretrain", inputs={"base": base}, created=OLD)
    runs = {f"{name} lr 5e-4 seed 0": _text(store, f"f-{i:020d}", stage="finetune", inputs={"model": aid}, created=OLD)
            for i, (name, aid) in enumerate((("base", base), ("adapted", model)))}  # fmt: skip
    evaluation = _text(store, "e-" + "0" * 19 + "1", stage="evaluate", inputs={"base": base, "adapted": model, **runs}, created=OLD)
    # a run of a kept model that no kept evaluation used (an evaluation since deleted): nothing keeps it
    orphan = _text(store, "f-" + "0" * 19 + "9", stage="finetune", inputs={"model": model}, created=OLD)
    registry.promote(store, model, "production")

    plan = registry.gc_plan(store, keep_runs=0, keep_hours=24)
    assert set(plan["keep"]) == {base, model, evaluation, *runs.values()}
    assert plan["delete"] == [orphan]


def test_pipeline_runs_are_recorded_oldest_first(tmp_path):
    store = ArtifactStore(tmp_path / "s")
    registry.record_run(store, "a", {"ingest": "c-1"})
    registry.record_run(store, "b", {"ingest": "c-2"})
    recorded = registry.runs(store)
    assert [r["name"] for r in recorded] == ["a", "b"]
    assert dt.datetime.fromisoformat(recorded[0]["finished"]) <= dt.datetime.fromisoformat(recorded[1]["finished"])
