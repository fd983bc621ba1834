"""Exact resume: kill -9 a training process at any point, re-run the same command, get the same weights."""

import subprocess
import sys
import textwrap

import pytest
from safetensors.torch import load_file

from conftest import ROOT, make_tiny_config, write_config
from pretrain.chain import plan, run_stage
from pretrain.configfile import validate_config
from pretrain.core.artifacts import ArtifactStore

# Training processes killed with SIGKILL and re-run.
pytestmark = pytest.mark.slow

# Runs the pretrain stage in a fresh process and SIGKILLs it at a chosen point: no cleanup code runs.
KILLER = textwrap.dedent(
    """
    import os, signal, sys
    import safetensors.torch
    from pretrain.training.mlm import MaskedLM
    from pretrain.stage_cli import main as stage_main

    where, after = sys.argv[2], int(sys.argv[3])
    calls = {"forward": 0, "checkpoint model": 0}
    forward, save_file = MaskedLM.forward, safetensors.torch.save_file

    def killing_forward(self, *args, **kwargs):
        if self.training:
            calls["forward"] += 1
            if where == "step" and calls["forward"] > after:
                os.kill(os.getpid(), signal.SIGKILL)
        return forward(self, *args, **kwargs)

    def killing_save_file(tensors, filename, *args, **kwargs):
        result = save_file(tensors, filename, *args, **kwargs)
        if filename.endswith("model.safetensors") and "checkpoints" in filename:
            calls["checkpoint model"] += 1
            if where == "checkpoint" and calls["checkpoint model"] == after:
                os.kill(os.getpid(), signal.SIGKILL)  # the weights written, the rest of the checkpoint not
        return result

    MaskedLM.forward = killing_forward
    safetensors.torch.save_file = killing_save_file
    stage_main("pretrain", argv=["--config", sys.argv[1]])
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
    killed = _pretrain(config_path, "checkpoint", "2")  # dies inside the step-8 checkpoint, its weights written
    assert killed.returncode == -9
    checkpoints = store.work_dir(aid) / "checkpoints"
    assert {p.name for p in checkpoints.iterdir()} == {"step-00000004", ".tmp-00000008"}
    assert (checkpoints / ".tmp-00000008" / "model.safetensors").is_file()
    assert not (checkpoints / ".tmp-00000008" / "trainer_state.json").exists()
    resumed = _pretrain(config_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr and "step-00000004 (step 4 of 12)" in resumed.stderr
    _assert_identical(store, aid, expected)


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def test_a_truncated_checkpoint_is_set_aside_and_the_previous_one_resumed(setup):
    config_path, store, aid, expected = setup
    assert _pretrain(config_path, "step", "10").returncode == -9
    checkpoints = store.work_dir(aid) / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-00000004", "step-00000008"]
    _truncate(checkpoints / "step-00000008" / "model.safetensors")  # e.g. a full disk
    resumed = _pretrain(config_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "step-00000008 cannot be restored: model.safetensors is" in resumed.stderr and "(truncated?)" in resumed.stderr
    assert "Set aside as broken-step-00000008; trying the previous one" in resumed.stderr
    assert "step-00000004 (step 4 of 12)" in resumed.stderr
    _assert_identical(store, aid, expected)


def test_with_no_intact_checkpoint_left_the_run_starts_over_saying_so(setup):
    config_path, store, aid, expected = setup
    assert _pretrain(config_path, "step", "6").returncode == -9
    checkpoints = store.work_dir(aid) / "checkpoints"
    _truncate(checkpoints / "step-00000004" / "optimizer.safetensors")
    resumed = _pretrain(config_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "step-00000004 cannot be restored: optimizer.safetensors is" in resumed.stderr
    assert "no checkpoint left: starting over from step 0" in resumed.stderr and "resuming from" not in resumed.stderr
    _assert_identical(store, aid, expected)


# A pickle that runs code when loaded: it creates the file named in it (an observable side effect).
PLANT = textwrap.dedent(
    """
    import sys, torch
    class Payload:
        def __reduce__(self):
            return (exec, (f"open({sys.argv[2]!r}, 'w').write('pwned')",))
    torch.save({"state": Payload()}, sys.argv[1])
    """
)


def test_a_pickle_planted_in_a_checkpoint_never_runs(setup, tmp_path):
    config_path, store, aid, expected = setup
    marker = tmp_path / "pwned"
    planted = tmp_path / "planted.pkl"
    subprocess.run([sys.executable, "-c", PLANT, str(planted), str(marker)], check=True, timeout=120)
    # The payload works: unpickled as Accelerate's load_state did (weights_only=False), it runs.
    subprocess.run([sys.executable, "-c", f"import torch; torch.load({str(planted)!r}, weights_only=False)"], check=True, timeout=120)
    assert marker.read_text() == "pwned"
    marker.unlink()

    assert _pretrain(config_path, "step", "6").returncode == -9
    checkpoint = store.work_dir(aid) / "checkpoints" / "step-00000004"
    # Every name Accelerate's checkpoints used, and the names of this format with a pickle's suffix.
    for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin", "pytorch_model.bin", "scheduler.bin",
                 "scaler.pt", "model.pkl", "trainer_state.pkl"):  # fmt: skip
        (checkpoint / name).write_bytes(planted.read_bytes())
    resumed = _pretrain(config_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "step-00000004 (step 4 of 12)" in resumed.stderr
    assert not marker.exists(), "a planted pickle ran on resume"
    _assert_identical(store, aid, expected)
