import copy
import json
import subprocess
import sys

import pytest

from conftest import ROOT, write_config
from flows.cli import main
from pretrain.chain import run_stage
from pretrain.configfile import validate_config
from pretrain.core.artifacts import ArtifactStore


def _run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


HELP_OF_EACH = """
import contextlib, io, json, runpy, sys, warnings
warnings.simplefilter("ignore", RuntimeWarning)  # runpy: a stage module the table already imported runs again as __main__
for command in sys.argv[1:]:
    sys.argv, out = [command, "--help"], io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_module(command, run_name="__main__", alter_sys=True)
        code = None
    except SystemExit as e:
        code = e.code
    print(json.dumps([command, code, out.getvalue()]), file=sys.__stdout__)
"""


@pytest.mark.slow
def test_every_stage_command_and_the_launcher_answer_help():
    # `python -m pretrain.<stage>` runs the stage's own module: the stages stay at the top of pretrain/ (issue 25).
    # One interpreter runs each module as `python -m` does (runpy), so the imports are paid once, not eleven times.
    from pretrain import chain

    commands = sorted({stage.command for stage in chain.TABLE}) + ["pretrain.launch"]
    result = _run("-c", HELP_OF_EACH, *commands)
    assert result.returncode == 0, result.stderr[-3000:]
    answers = {command: (code, out) for command, code, out in map(json.loads, result.stdout.splitlines())}
    assert sorted(answers) == sorted(commands)
    for command, (code, out) in answers.items():
        assert code in (0, None) and f"usage: python -m {command} " in out, f"{command}: exit {code}, printed {out[-500:]!r}"


@pytest.mark.slow
def test_bad_config_is_one_message_without_traceback(tmp_path, tiny_config):
    raw = copy.deepcopy(tiny_config)
    raw["pretrain"]["max_steps"] = 0
    raw["pretrain"]["warmup"] = 10
    path = write_config(tmp_path / "bad.yaml", raw)
    result = _run("-m", "flows.cli", "run", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"error: {path}: 2 problems:" in result.stderr
    assert "pretrain.max_steps: Input should be greater than 0 (got 0)" in result.stderr
    assert "pretrain.warmup: unknown key; did you mean 'warmup_steps'?" in result.stderr


@pytest.mark.slow
def test_stage_alone_needs_its_inputs_and_says_which_command_builds_them(tmp_path, tiny_config):
    path = write_config(tmp_path / "c.yaml", tiny_config)
    result = _run("-m", "pretrain.vocab", "--config", str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "vocab needs ingest (c-" in result.stderr and "base (b-" in result.stderr
    assert f"python -m pretrain.base --config {path}" in result.stderr
    result = _run("-m", "pretrain.ingest", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("c-")
    # TAPT's stages run alone from one module; each is named when it is off or its inputs are missing.
    result = _run("-m", "pretrain.tapt", "--config", str(path))
    assert result.returncode == 2 and f"error: tapt-corpus is off: {path} has no `evaluate.tapt` section" in result.stderr
    result = _run("-m", "pretrain.tapt", "--config", str(path), "--set", "evaluate.tapt.pretrain.max_steps=2")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stdout.strip().startswith("c-")  # the task's text as a corpus needs nothing built before it
    assert "tapt-vocab needs pretrain (m-" in result.stderr and f"python -m pretrain.pretrain --config {path}" in result.stderr


@pytest.mark.slow
def test_bad_data_inside_a_stage_is_a_clear_message(tmp_path, tiny_config):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"text": "fine document with quite enough words"}\n{"text": broken\n')
    raw = copy.deepcopy(tiny_config)
    raw["ingest"]["inputs"] = [str(corpus)]
    path = write_config(tmp_path / "c.yaml", raw)
    result = _run("-m", "pretrain.ingest", "--config", str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"error: {corpus}:2: not valid JSON" in result.stderr


def test_artifacts_list_show_lineage(tiny_config, capsys):
    config = validate_config(tiny_config)
    store = ArtifactStore(config.store)
    ids = {}
    for stage in ("base", "ingest", "vocab"):
        ids[stage] = run_stage(stage, config, store, ids)

    assert main(["artifacts", "list", "--store", config.store]) == 0
    listing = capsys.readouterr().out
    assert all(aid in listing for aid in ids.values())
    assert main(["artifacts", "list", "--store", config.store, "--stage", "vocab"]) == 0
    assert capsys.readouterr().out.split()[0] == ids["vocab"]

    assert main(["artifacts", "show", ids["vocab"], "--store", config.store]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["inputs"] == {"corpus": ids["ingest"], "base": ids["base"]}

    assert main(["artifacts", "lineage", ids["vocab"], "--store", config.store]) == 0
    lineage = capsys.readouterr().out
    assert ids["ingest"] in lineage and ids["base"] in lineage and "corpus.jsonl.gz" in lineage

    assert main(["artifacts", "show", "v-doesnotexist", "--store", config.store]) == 2
    assert "artifact v-doesnotexist is not in the store" in capsys.readouterr().err


def test_plan_lists_every_stage(tmp_path, tiny_config, capsys):
    path = write_config(tmp_path / "c.yaml", tiny_config)
    assert main(["plan", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["base", "ingest", "vocab", "tokens", "pretrain", "evaluate", "report"]
    assert all(line.endswith("to build") for line in lines)
    # As the README says: this switches TAPT on, its four stages planned before evaluate.
    assert main(["plan", str(path), "--set", "evaluate.tapt.pretrain.max_steps=200"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["base", "ingest", "vocab", "tokens", "pretrain", "tapt-corpus", "tapt-vocab", "tapt-tokens",
                                                   "tapt", "evaluate", "report"]  # fmt: skip
