"""The pretrain stage under `accelerate launch` with 2 CPU processes (gloo) matches a 1-process run."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForMaskedLM

from conftest import ROOT, build_until
from pretrain.chain import plan, run_stage
from pretrain.core.errors import UserError
from pretrain.launch import launch_command, launch_pretrain


@pytest.fixture(scope="module")
def no_dropout_base(tmp_path_factory, tiny_base):
    """The tiny BERT without dropout: with dropout, each process draws its own masks, so runs differ by design."""
    folder = tmp_path_factory.mktemp("no-dropout")
    config = AutoConfig.from_pretrained(tiny_base, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    AutoModelForMaskedLM.from_pretrained(tiny_base, config=config).save_pretrained(folder)
    for f in tiny_base.glob("*token*"):
        (folder / f.name).write_bytes(f.read_bytes())
    return folder


def _built(raw):
    return build_until(raw, "tokens")


@pytest.mark.slow
@pytest.mark.parametrize("launcher", [{"num_processes": 2}, {"config_file": str(ROOT / "infra" / "accelerate" / "cpu_2proc.yaml")}])
def test_two_cpu_processes_match_one(tmp_path, tiny_config, no_dropout_base, launcher):
    tiny_config["base_model"]["source"] = str(no_dropout_base)
    tiny_config["pretrain"].update(max_steps=6, global_batch_size=8, micro_batch_size=4, log_every_steps=3)

    one = {**tiny_config, "store": str(tmp_path / "one")}
    config_one, store_one, ids = _built(one)
    aid = run_stage("pretrain", config_one, store_one, ids)
    assert store_one.manifest(aid)["metrics"]["accumulation_steps"] == 2

    two = {**tiny_config, "store": str(tmp_path / "two"), "pretrain": {**tiny_config["pretrain"], "launcher": launcher}}
    config_two, store_two, _ = _built(two)
    assert plan(config_two)["pretrain"] == aid  # where it runs is not part of what it is
    lines = []
    launch_pretrain(config_two, on_line=lines.append)
    metrics = store_two.manifest(aid)["metrics"]
    assert metrics["processes"] == 2 and metrics["accumulation_steps"] == 1
    assert metrics["ranks_in_sync"] is True

    a = load_file(store_one.local_dir(aid) / "model" / "model.safetensors")
    b = load_file(store_two.local_dir(aid) / "model" / "model.safetensors")
    for name in a:
        # the same global batches and optimisation; only the order of float sums differs
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=2e-5, msg=name)
    curve_one = json.loads((store_one.local_dir(aid) / "curve.json").read_text())
    curve_two = json.loads((store_two.local_dir(aid) / "curve.json").read_text())
    assert [round(p.get("loss", 0), 3) for p in curve_one] == [round(p.get("loss", 0), 3) for p in curve_two]


def test_launch_command_on_a_cpu_machine(tmp_path):
    from pretrain.core.config import LauncherConfig

    command, env = launch_command(LauncherConfig(num_processes=2), tmp_path / "c.yaml")
    if not torch.cuda.is_available():
        assert env["ACCELERATE_USE_CPU"] == "1"
    assert command[-4:] == ["-m", "pretrain.pretrain", "--config", str(tmp_path / "c.yaml")]
    assert "--multi_gpu" in command and command[command.index("--num_processes") + 1] == "2"
    fsdp = str(ROOT / "infra" / "accelerate" / "fsdp_8.yaml")
    command, env = launch_command(LauncherConfig(config_file=fsdp), tmp_path / "c.yaml")
    assert command[command.index("--config_file") + 1] == fsdp and "--multi_gpu" not in command
    with pytest.raises(UserError, match="launcher.config_file: .*nope.yaml does not exist"):
        launch_command(LauncherConfig(config_file=str(tmp_path / "nope.yaml")), tmp_path / "c.yaml")


def test_every_accelerate_config_loads():
    from accelerate.commands.config.config_args import load_config_from_file

    kinds = {}
    for path in sorted((ROOT / "infra" / "accelerate").glob("*.yaml")):
        config = load_config_from_file(str(path))
        kinds[path.stem] = (str(config.distributed_type).rsplit(".", 1)[-1], config.num_processes)
    assert kinds == {
        "cpu_2proc": ("MULTI_GPU", 2),
        "deepspeed_zero2_8": ("DEEPSPEED", 8),
        "fsdp_8": ("FSDP", 8),
        "gpu_1": ("NO", 1),
        "gpu_8": ("MULTI_GPU", 8),
        "multinode_2x8": ("MULTI_GPU", 16),
    }


@pytest.mark.slow
def test_two_processes_checkpoint_every_rank_and_resume_after_kill_minus_nine(tmp_path, tiny_config):
    """Checkpoints under DDP: each rank's random states saved (dropout differs per rank), resumed after a kill -9."""
    import os
    import signal
    import subprocess

    import psutil
    import yaml

    tiny_config["pretrain"].update(max_steps=24, global_batch_size=8, micro_batch_size=4, log_every_steps=3,
                                   checkpoint_every_steps=3, launcher={"num_processes": 2})  # fmt: skip
    reference, store_ref, _ = _built({**tiny_config, "store": str(tmp_path / "reference")})
    aid = plan(reference)["pretrain"]
    launch_pretrain(reference, on_line=lambda line: None)

    config, store, _ = _built({**tiny_config, "store": str(tmp_path / "killed")})
    config_path = tmp_path / "pipeline.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    command, env = launch_command(config.pretrain.launcher, config_path)
    checkpoints = store.work_dir(aid) / "checkpoints"
    killed = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as job:
        for line in job.stdout:
            if "checkpoint" in line and "step-00000006" in line:
                # The launcher and every rank, mid-run (torchrun starts the ranks in sessions of their own).
                killed = [*psutil.Process(job.pid).children(recursive=True), psutil.Process(job.pid)]
                for process in killed:
                    os.kill(process.pid, signal.SIGKILL)
                break
        job.wait(timeout=120)
    psutil.wait_procs(killed, timeout=60)
    assert killed and not store.exists(aid), "the run ended before its step-6 checkpoint"
    written = checkpoints / "step-00000006"
    assert {"rng-0.json", "rng-0.safetensors", "rng-1.json", "rng-1.safetensors", "model.safetensors"} <= {p.name for p in written.iterdir()}
    assert json.loads((written / "trainer_state.json").read_text())["processes"] == 2

    lines = []
    launch_pretrain(config, on_line=lines.append)
    assert any("resuming from" in line and "step-00000006 (step 6 of 24)" in line for line in lines), "\n".join(lines[-20:])
    a = load_file(store_ref.local_dir(aid) / "model" / "model.safetensors")
    b = load_file(store.local_dir(aid) / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)
