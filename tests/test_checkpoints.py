"""Checkpoints hold no pickle: safetensors and JSON only, restored exactly, and broken ones set aside.

In-process and fast: a tiny real BERT, its AdamW, schedule and random states, saved and restored
through the training kit's own functions. The kill -9 and planted-pickle runs are in test_resume.py.
"""

import json
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from transformers import BertConfig, BertForMaskedLM

from pretrain.core.config import PretrainConfig
from pretrain.core.errors import UserError
from pretrain.training import kit
from pretrain.training.mlm import MaskedLM


def _trainee(seed: int):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                        max_position_embeddings=16)  # fmt: skip
    accelerator = Accelerator(cpu=True)
    cfg = PretrainConfig(max_steps=10, learning_rate=1e-2, warmup_steps=2, micro_batch_size=4, global_batch_size=4)
    return accelerator, cfg, *kit.prepare(accelerator, MaskedLM(BertForMaskedLM(config)), cfg, 10)


def _step(task, optimizer, scheduler):
    ids = torch.randint(5, 64, (4, 12))
    positions = torch.tensor([1, 13, 30, 47])
    loss = task(input_ids=ids, masked_positions=positions, masked_labels=ids.view(-1)[positions])
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    scheduler.step()


def test_a_checkpoint_is_safetensors_and_json_only_and_restores_every_state_exactly(tmp_path):
    accelerator, cfg, task, optimizer, scheduler = _trainee(0)
    for _ in range(3):
        _step(task, optimizer, scheduler)
    random.random(), np.random.rand(), torch.rand(1)  # move every generator off its seed
    kit.save_checkpoint("pretrain", accelerator, tmp_path, 3, {"step": 3, "curve": []}, 2, task, optimizer, scheduler)
    checkpoint = kit.latest_checkpoint(tmp_path)
    assert checkpoint.name == "step-00000003"
    names = sorted(p.name for p in checkpoint.iterdir())
    assert names == ["model.safetensors", "optimizer.json", "optimizer.safetensors", "rng-0.json", "rng-0.safetensors",
                     "scheduler.json", "trainer_state.json"]  # fmt: skip
    for path in checkpoint.iterdir():
        assert not path.read_bytes().startswith(b"\x80"), f"{path.name} looks like a pickle"
    expected = {
        "weights": {k: v.clone() for k, v in task.state_dict().items()},
        "lr": scheduler.get_last_lr(),
        "draws": (random.random(), float(np.random.rand()), torch.rand(3)),
    }
    exp_avg = {i: s["exp_avg"].clone() for i, s in optimizer.state_dict()["state"].items()}

    # A different run (other weights, one step further, generators elsewhere) restored from the checkpoint.
    accelerator, cfg, task, optimizer, scheduler = _trainee(1)
    for _ in range(4):
        _step(task, optimizer, scheduler)
    progress = kit.restore_checkpoint(accelerator, checkpoint, task, optimizer, scheduler)
    assert progress == {"step": 3, "curve": []}
    for name, tensor in expected["weights"].items():
        assert torch.equal(task.state_dict()[name], tensor), name
    state = optimizer.state_dict()
    assert all(torch.equal(state["state"][i]["exp_avg"], value) for i, value in exp_avg.items())
    assert isinstance(state["param_groups"][0]["betas"], tuple) and int(state["state"][0]["step"]) == 3
    assert scheduler.get_last_lr() == expected["lr"]
    draws = (random.random(), float(np.random.rand()), torch.rand(3))
    assert draws[:2] == expected["draws"][:2] and torch.equal(draws[2], expected["draws"][2])


def test_a_truncated_or_old_checkpoint_is_named_and_set_aside_for_the_previous_one(tmp_path):
    accelerator, cfg, task, optimizer, scheduler = _trainee(0)
    for step in (1, 2, 3):
        _step(task, optimizer, scheduler)
        kit.save_checkpoint("pretrain", accelerator, tmp_path / "checkpoints", step, {"step": step}, 3, task, optimizer, scheduler)
    newest, middle, oldest = kit.complete_checkpoints(tmp_path / "checkpoints")
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert "model.safetensors is" in kit.checkpoint_problem(newest) and "truncated" in kit.checkpoint_problem(newest)
    # One written by the pickle-based format of earlier versions: never loaded.
    (middle / "trainer_state.json").write_text(json.dumps({"step": 2}))
    assert "older version" in kit.checkpoint_problem(middle)

    checkpoints, progress = kit.start_or_resume("pretrain", cfg, accelerator, tmp_path, 10, task, optimizer, scheduler)
    assert progress == {"step": 1}
    assert sorted(p.name for p in checkpoints.iterdir()) == ["broken-step-00000002", "broken-step-00000003", "step-00000001"]

    data = bytearray((oldest / "optimizer.safetensors").read_bytes())
    data[-1] ^= 1  # one bit of one moment estimate: same size, another sha256
    (oldest / "optimizer.safetensors").write_bytes(bytes(data))
    assert kit.checkpoint_problem(oldest) == "optimizer.safetensors changed since it was written (sha256 differs)"
    _, progress = kit.start_or_resume("pretrain", cfg, accelerator, tmp_path, 10, task, optimizer, scheduler)
    assert progress is None  # none left: start over
    assert not kit.complete_checkpoints(checkpoints) and (checkpoints / "broken-step-00000001").is_dir()


def test_checkpoints_under_fsdp_or_deepspeed_are_refused_before_training():
    cfg = PretrainConfig(max_steps=10, checkpoint_every_steps=5)
    for kind, name in ((DistributedType.FSDP, "FSDP"), (DistributedType.DEEPSPEED, "DeepSpeed")):
        with pytest.raises(UserError, match=f"distill.checkpoint_every_steps: checkpoints under {name} are not supported.*never unpickles"):
            kit.check_checkpointable("distill", cfg, SimpleNamespace(distributed_type=kind))
    kit.check_checkpointable("distill", PretrainConfig(max_steps=10), SimpleNamespace(distributed_type=DistributedType.FSDP))
    kit.check_checkpointable("distill", cfg, SimpleNamespace(distributed_type=DistributedType.MULTI_GPU))
