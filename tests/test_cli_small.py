"""The small things of a first hour: empty alias lists say so, ids by a unique prefix, a warning when a
non-model is promoted, a reason for everything gc keeps, embed keeps the input's ids, help on every id
argument, relative paths named with their directory, warnings for a warmup or log interval longer than the run."""

import copy
import json
import os
import re
import shutil

import pyarrow.parquet as pq
import pytest

from flows.cli import build_parser, main
from pretrain.chain import preflight
from pretrain.configfile import validate_config
from pretrain.core import registry
from pretrain.core.artifacts import ArtifactStore
from pretrain.core.errors import ConfigError, InputError


def _fake(store: ArtifactStore, aid: str, stage: str, inputs: dict | None = None, folder=None) -> str:
    with store.build(stage, aid, config={}, inputs=inputs or {}) as b:
        if folder is not None:
            shutil.copytree(folder, b.dir / "model")
        else:
            (b.dir / "x.txt").write_text(aid)
    return aid


@pytest.fixture
def store(tmp_path):
    return ArtifactStore(tmp_path / "s")


def test_aliases_says_when_there_are_none(store, capsys):
    assert main(["artifacts", "aliases", "--store", store.url]) == 0
    assert capsys.readouterr().out.strip() == f"no aliases in the store {store.url}; `dapt artifacts promote ID ALIAS` creates one"


def test_ids_by_a_unique_prefix(store, capsys):
    one = _fake(store, "m-65e1" + "0" * 16, "pretrain")
    _fake(store, "m-65e2" + "0" * 16, "pretrain")
    assert registry.resolve(store, "m-65e1") == one
    assert main(["artifacts", "show", "m-65e1", "--store", store.url]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == one
    with pytest.raises(InputError, match=r"'m-65e' is the start of 2 artifact ids \(m-65e1.*, m-65e2.*\); give more of the id"):
        registry.resolve(store, "m-65e")
    with pytest.raises(InputError, match="artifact m-65 is not in the store"):  # too short to be a prefix
        registry.resolve(store, "m-65")


def test_promoting_a_non_model_warns(store, capsys):
    report = _fake(store, "r-" + "1" * 20, "report")
    assert main(["artifacts", "promote", report, "production", "--store", store.url]) == 0
    captured = capsys.readouterr()
    assert f"production -> {report}" in captured.out
    assert f"warning: {report} is a report artifact, not a model: `dapt export` and `dapt embed` cannot use 'production'" in captured.err
    model = _fake(store, "m-" + "2" * 20, "pretrain")
    assert main(["artifacts", "promote", model[:8], "production", "--store", store.url]) == 0
    captured = capsys.readouterr()
    assert f"production -> {model} (was {report})" in captured.out and "warning" not in captured.err
    # A task model is a hand-off both export and embed use; an evaluation, export alone (its best task model).
    task_model = _fake(store, "f-" + "3" * 20, "finetune")
    assert main(["artifacts", "promote", task_model, "production", "--store", store.url]) == 0
    assert capsys.readouterr().err == ""
    evaluation = _fake(store, "e-" + "4" * 20, "evaluate")
    assert main(["artifacts", "promote", evaluation, "production", "--store", store.url]) == 0
    assert capsys.readouterr().err.startswith(f"note: {evaluation} is an evaluation: `dapt export production` exports the task model it chose")


def test_gc_gives_a_reason_for_every_artifact_it_keeps(store, capsys):
    base = _fake(store, "b-" + "1" * 20, "base")
    corpus = _fake(store, "c-" + "1" * 20, "ingest")
    vocab = _fake(store, "v-" + "1" * 20, "vocab", {"corpus": corpus, "base": base})
    model = _fake(store, "m-" + "1" * 20, "pretrain", {"base": base, "vocab": vocab})
    evaluation = _fake(store, "e-" + "1" * 20, "evaluate", {"base": base, "model": model})
    tokens = _fake(store, "t-" + "9" * 20, "tokens", {"corpus": corpus, "vocab": vocab})  # not needed, but young
    registry.promote(store, model, "production")
    assert main(["artifacts", "gc", "--store", store.url]) == 0
    lines = capsys.readouterr().out.splitlines()
    kept = {line.split()[1]: line for line in lines if re.match(r"keep +[a-z]-[0-9a-f]{20} ", line)}
    assert set(kept) == {base, corpus, vocab, model, evaluation, tokens}
    assert kept[tokens].endswith("(younger than 24 h)")
    assert kept[model].endswith("(alias production)")
    assert kept[vocab].endswith(f"(vocab input of {model})") and kept[corpus].endswith(f"(corpus input of {vocab})")
    assert "the evidence a model card quotes" in kept[evaluation]


def test_embed_keeps_the_inputs_id_column(store, tmp_path, tiny_base, capsys):
    model = _fake(store, "m-" + "3" * 20, "pretrain", folder=tiny_base)
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"doc_id": f"D{i}", "text": t}) + "\n" for i, t in enumerate(["oil rose", "", "wheat fell"])))
    out = tmp_path / "o.parquet"
    assert main(["embed", model[:6], "--input", str(source), "--output", str(out), "--id-field", "doc_id", "--store", store.url]) == 0
    assert "ids from 'doc_id'" in capsys.readouterr().out
    table = pq.read_table(out)
    assert table.column("doc_id").to_pylist() == ["D0", "D2"] and table.column("text").to_pylist() == ["oil rose", "wheat fell"]
    plain = tmp_path / "plain.jsonl"
    plain.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(["oil rose", "wheat fell"])))
    assert main(["embed", model, "--input", str(plain), "--output", str(out), "--store", store.url]) == 0
    assert pq.read_table(out).column("id").to_pylist() == [0, 1]  # `id`, when there is one, without asking
    assert main(["embed", model, "--input", str(plain), "--output", str(out), "--id-field", "key", "--store", store.url]) == 2
    assert f"{plain}:1: no field 'key' (fields here: 'id', 'text'); set --id-field" in capsys.readouterr().err


def test_every_id_argument_has_help():
    parser = build_parser()
    artifacts = parser._subparsers._group_actions[0].choices["artifacts"]
    for name, action in artifacts._subparsers._group_actions[0].choices.items():
        for argument in action._actions:
            if argument.dest in ("id", "alias", "model"):
                assert argument.help, f"artifacts {name} {argument.dest}"


def test_relative_paths_in_errors_name_their_directory(tmp_path, tiny_config, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = copy.deepcopy(tiny_config)
    raw["ingest"]["inputs"] = ["corpus/*.jsonl"]
    raw["evaluate"]["task"]["test_files"] = ["task/test.jsonl"]
    with pytest.raises(ConfigError) as e:
        validate_config(raw)
    assert f"ingest.inputs[0]: 'corpus/*.jsonl' matches no file (relative to {os.getcwd()})" in str(e.value)
    assert f"evaluate.task.test_files[0]: 'task/test.jsonl' matches no file (relative to {os.getcwd()})" in str(e.value)


def test_warmup_and_log_interval_longer_than_the_run_are_warned(tiny_config):
    raw = copy.deepcopy(tiny_config)
    raw["pretrain"].update(max_steps=None, max_tokens=8 * 32 * 10, warmup_steps=10, log_every_steps=25)  # 10 steps
    lines = preflight(validate_config(raw))
    assert "warning: pretrain.warmup_steps (10) is not below the run's 10 steps: the learning rate only warms up and never decays" in lines[0]
    assert "warning: pretrain.log_every_steps (25) is more than the run's 10 steps: the loss is logged once" in lines[1]
    raw["pretrain"].update(warmup_steps=2, log_every_steps=5)
    assert not [line for line in preflight(validate_config(raw)) if line.startswith("warning: pretrain")]
