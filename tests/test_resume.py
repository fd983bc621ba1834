"""Exact resume: kill -9 a training process at any point, re-run the same command, get the same weights."""

import subprocess
import sys
import textwrap

import pytest
from safetensors.torch import load_file

from conftest import ROOT, make_tiny_config, write_config
from pretrain.artifacts import ArtifactStore
from pretrain.config import validate_config
from pretrain.pipeline import plan, run_stage

# Training processes killed with SIGKILL and re-run.
pytestmark = pytest.mark.slow

# Runs the pretrain stage in a fresh process and SIGKILLs it at a chosen point: no cleanup code runs.
KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from accelerate import Accelerator
    from pretrain.mlm import MaskedLM
    from pretrain.pipeline import stage_main

    where, after = sys.argv[2], int(sys.argv[3])
    calls = {"forward": 0, "save": 0}
    forward, save_state = MaskedLM.forward, Accelerator.save_state

    def killing_forward(self, *args, **kwargs):
        if self.training:
            calls["forward"] += 1
            if where == "step" and calls["forward"] > after:
                os.kill(os.getpid(), signal.SIGKILL)
        return forward(self, *args, **kwargs)

    def killing_save_state(self, output_dir=None, **kwargs):
        calls["save"] += 1
        result = save_state(self, output_dir, **kwargs)
        if where == "checkpoint" and calls["save"] == after:
            os.kill(os.getpid(), signal.SIGKILL)  # state files written, checkpoint not yet complete
        return result

    MaskedLM.forward = killing_forward
    Accelerator.save_state = killing_save_state
    stage_main("pretrain", ["--config", sys.argv[1]])
    """
)


def _pretrain(config_path, *kill):
    args = [sys.executable, "-c", KILLER, str(config_path), *(kill or ("never", "0"))]
    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=600)


def _prepared(folder, raw):
    """A config file whose pretrain inputs are already built in its store."""
    config = validate_config(raw)
    ids = {}
    for stage in ("base", "ingest", "vocab", "tokens"):
        ids[stage] = run_stage(stage, config, ArtifactStore(config.store), ids)
    return write_config(folder / "config.yaml", raw), ArtifactStore(config.store), plan(config)["pretrain"]


def _raw(store, corpus_file, task_files, tiny_base):
    raw = make_tiny_config(store, corpus_file, task_files, tiny_base)
    raw["pretrain"].update(max_steps=12, checkpoint_every_steps=4, keep_checkpoints=2, log_every_steps=2)
    return raw


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus_file, task_files, tiny_base):
    """The weights of an uninterrupted 12-step run (checkpoints every 4), in a fresh process."""
    folder = tmp_path_factory.mktemp("reference")
    config_path, store, aid = _prepared(folder, _raw(folder / "store", corpus_file, task_files, tiny_base))
    result = _pretrain(config_path)
    assert result.returncode == 0, result.stderr
    return load_file(store.local_dir(aid) / "model" / "model.safetensors")


@pytest.fixture
def setup(tmp_path, corpus_file, task_files, tiny_base, reference):
    config_path, store, aid = _prepared(tmp_path, _raw(tmp_path / "store", corpus_file, task_files, tiny_base))
    return config_path, store, aid, reference


def _assert_identical(store, aid, expected):
    resumed = load_file(store.local_dir(aid) / "model" / "model.safetensors")
    assert resumed.keys() == expected.keys()
    for name, tensor in expected.items():
        assert (resumed[name] == tensor).all(), f"{name} differs after resume"


def test_kill_minus_nine_mid_training_then_resume_is_bit_identical(setup):
    config_path, store, aid, expected = setup
    killed = _pretrain(config_path, "step", "6")
    assert killed.returncode == -9
    assert not store.exists(aid)
    checkpoints = store.work_dir(aid) / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-00000004"]
    resumed = _pretrain(config_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr and "step 4 of 12" in resumed.stderr
    _assert_identical(store, aid, expected)


def test_kill_while_writing_a_checkpoint_keeps_the_previous_one(setup):
    config_path, store, aid, expected = setup
    killed = _pretrain(config_path, "checkpoint", "2")  # dies inside the step-8 checkpoint
    assert killed.returncode == -9
    checkpoints = store.work_dir(aid) / "checkpoints"
    assert {p.name for p in checkpoints.iterdir()} == {"step-00000004", ".tmp-00000008"}
    resumed = _pretrain(config_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "step 4 of 12" in resumed.stderr
    _assert_identical(store, aid, expected)
