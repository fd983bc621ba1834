"""`compile: true`: the training step through torch.compile gives eager's losses, compiles once, and is its own artifact.

Compiling the tiny model's step on a CPU takes minutes the first time (torch caches the kernels in
/tmp/torchinductor_<user> for later runs), hence slow.
"""

import json

import pytest
import torch
import torch._inductor.config
from torch._dynamo.utils import counters
from transformers import AutoModelForMaskedLM

from conftest import build_until
from pretrain import distill
from pretrain.chain import plan, run_stage
from pretrain.training.mlm import MaskedLM

pytestmark = pytest.mark.slow

STEPS = 6


def _losses(store, aid) -> list[float]:
    curve = json.loads((store.local_dir(aid) / "curve.json").read_text())
    return [p["loss"] for p in curve if "loss" in p]


@pytest.fixture
def compiling():
    """A clean compile state, and dropout in compiled code drawn from torch's generator as in eager mode.

    (By default inductor draws dropout masks from its own generator: the losses then differ from
    eager by the different masks, ~0.2% after a few steps, and would say nothing about the arithmetic.)
    """
    torch._dynamo.reset()
    counters.clear()
    with torch._inductor.config.patch(fallback_random=True):
        yield


def _recording(monkeypatch, cls):
    """Per training call of `cls.forward`: (masked positions, graphs compiled so far)."""
    calls = []
    original = cls.forward

    def forward(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if self.training:
            calls.append((kwargs["masked_positions"].numel(), counters["stats"]["unique_graphs"]))
        return out

    monkeypatch.setattr(cls, "forward", forward)
    return calls


def test_compiled_pretraining_matches_eager_and_compiles_once(tiny_config, monkeypatch, compiling):
    tiny_config["pretrain"].update(max_steps=STEPS, log_every_steps=1, max_eval_blocks=8)
    config, store, ids = build_until(tiny_config, "pretrain")
    eager = _losses(store, ids["pretrain"])

    calls = _recording(monkeypatch, MaskedLM)
    compiled = config.model_copy(update={"pretrain": config.pretrain.model_copy(update={"compile": True})})
    aid = run_stage("pretrain", compiled, store, ids)

    # Its own artifact: compiled kernels round differently from eager ones.
    assert aid == plan(compiled)["pretrain"] != ids["pretrain"]
    assert store.manifest(aid)["config"]["compile"] is True
    assert _losses(store, aid) == pytest.approx(eager, rel=1e-4)
    # The first micro-batch runs eagerly (its FLOPs are counted); the second compiles the one graph
    # (forward and backward); every later step, whatever its number of masked tokens, reuses it.
    assert len(calls) == STEPS
    assert calls[0][1] == 0 and calls[1][1] >= 1
    assert all(graphs == calls[1][1] for _, graphs in calls[1:]), calls
    assert len({masked for masked, _ in calls[1:]}) >= 3, "the steps should mask different numbers of tokens"
    assert store.manifest(aid)["metrics"]["model_flops_per_step"] == store.manifest(ids["pretrain"])["metrics"]["model_flops_per_step"]
    AutoModelForMaskedLM.from_pretrained(store.local_dir(aid) / "model")


def test_compiled_distillation_matches_eager(tiny_config, monkeypatch, compiling):
    tiny_config["pretrain"].update(max_steps=2, max_eval_blocks=8)
    tiny_config["distill"] = {"student_layers": 1, "max_seq_length": 32, "global_batch_size": 8, "micro_batch_size": 8,
                              "max_steps": 4, "log_every_steps": 1, "max_eval_blocks": 8, "speed_rounds": 1}  # fmt: skip
    config, store, ids = build_until(tiny_config, "distill")
    eager = _losses(store, ids["distill"])

    calls = _recording(monkeypatch, distill.Distillation)
    compiled = config.model_copy(update={"distill": config.distill.model_copy(update={"compile": True})})
    aid = run_stage("distill", compiled, store, ids)
    assert aid != ids["distill"]
    assert _losses(store, aid) == pytest.approx(eager, rel=1e-4)
    # The student's step and the teacher's soft targets: compiled on the second step, then reused.
    assert calls[0][1] == 0 and calls[1][1] >= 2 and all(graphs == calls[1][1] for _, graphs in calls[1:]), calls
