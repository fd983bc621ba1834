"""Mixed precision through every training path: pretrain, distill, TAPT and the evaluate fine-tunes, in bf16 on a CPU.

Each path trains a few steps in bf16 and must (a) really run its matmuls in bf16 (the MLM head's or the
classifier's output dtype is recorded while training), (b) keep a finite loss, and (c) publish an
artifact that loads, with float32 weights (autocast keeps the master weights in float32). fp16 needs
CUDA's gradient scaler: without a GPU it is refused before anything runs, naming the key.
"""

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForMaskedLM
from transformers.models.bert import modeling_bert

from conftest import build_until
from pretrain.chain import run_stage
from pretrain.configfile import validate_config
from pretrain.core.errors import ConfigError, UserError
from pretrain.finetuning import finetune
from pretrain.training import kit, precision

SHORT = {"max_steps": 4, "log_every_steps": 2, "max_eval_blocks": 8, "mixed_precision": "bf16"}


@pytest.fixture
def head_dtypes(monkeypatch):
    """The dtype of every MLM head output computed while training (grad enabled), in order."""
    seen = []
    original = modeling_bert.BertOnlyMLMHead.forward

    def recording(self, sequence_output):
        out = original(self, sequence_output)
        if torch.is_grad_enabled():
            seen.append(out.dtype)
        return out

    monkeypatch.setattr(modeling_bert.BertOnlyMLMHead, "forward", recording)
    return seen


def _model_loads_in_float32(folder):
    model = AutoModelForMaskedLM.from_pretrained(folder)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    saved = load_file(folder / "model.safetensors")
    assert {t.dtype for t in saved.values()} == {torch.float32}
    return model


def _finite_losses(folder, keys=("loss",)):
    curve = json.loads((folder / "curve.json").read_text())
    losses = [p[k] for p in curve for k in keys if k in p]
    assert losses and all(math.isfinite(x) for x in losses)


def test_pretrain_trains_in_bf16(tiny_config, head_dtypes):
    tiny_config["pretrain"].update(SHORT)
    config, store, ids = build_until(tiny_config, "pretrain")
    assert len(head_dtypes) == 4 and set(head_dtypes) == {torch.bfloat16}  # 4 training steps, every one in bf16
    folder = store.local_dir(ids["pretrain"])
    _finite_losses(folder)
    _model_loads_in_float32(folder / "model")
    m = store.manifest(ids["pretrain"])["metrics"]
    assert m["mixed_precision"] == "bf16" and math.isfinite(m["validation_perplexity_after"])


@pytest.mark.slow
def test_distill_trains_in_bf16(tiny_config, head_dtypes):
    tiny_config["pretrain"].update(max_steps=2, max_eval_blocks=8)
    tiny_config["distill"] = {"student_layers": 1, "max_seq_length": 32, "global_batch_size": 8, "micro_batch_size": 8, "speed_rounds": 1, **SHORT}
    config, store, ids = build_until(tiny_config, "pretrain")
    head_dtypes.clear()
    ids["distill"] = run_stage("distill", config, store, ids)
    # The student's head (trained) and the teacher's (its soft targets, under no_grad: not recorded) in bf16.
    assert len(head_dtypes) == 4 and set(head_dtypes) == {torch.bfloat16}
    folder = store.local_dir(ids["distill"])
    _finite_losses(folder, keys=("loss", "distill_loss", "mlm_loss"))
    assert _model_loads_in_float32(folder / "model").config.num_hidden_layers == 1
    assert store.manifest(ids["distill"])["metrics"]["mixed_precision"] == "bf16"


@pytest.mark.slow
def test_tapt_and_the_fine_tunes_train_in_bf16(tiny_config, head_dtypes, monkeypatch):
    tiny_config["pretrain"].update(max_steps=2, max_eval_blocks=8)
    tapt = {"validation_fraction": 0.1, "pretrain": {"max_seq_length": 32, "global_batch_size": 8, "micro_batch_size": 8, **SHORT}}
    tiny_config["evaluate"].update(tapt=tapt, mixed_precision="bf16", num_epochs=2)
    config, store, ids = build_until(tiny_config, "pretrain")
    head_dtypes.clear()
    logits_dtypes = []
    original = finetune.loss_fn

    def recording(kind, logits, labels):
        logits_dtypes.append(logits.dtype)
        return original(kind, logits, labels)

    monkeypatch.setattr(finetune, "loss_fn", recording)
    for stage in ("tapt-corpus", "tapt-vocab", "tapt-tokens", "tapt", "evaluate"):
        ids[stage] = run_stage(stage, config, store, ids)
    aid = ids["evaluate"]

    assert len(head_dtypes) == 4 and set(head_dtypes) == {torch.bfloat16}  # TAPT's 4 steps
    assert logits_dtypes and set(logits_dtypes) == {torch.bfloat16}  # every fine-tuning step of the 3 models
    results = json.loads((store.local_dir(aid) / "results.json").read_text())
    assert list(results["models"]) == ["base", "adapted", "adapted+tapt"]
    for name, model in results["models"].items():
        for run in model["runs"]:
            assert all(math.isfinite(epoch["train_loss"]) for epoch in run["history"]), name
            assert 0 <= run["test"]["macro_f1"] <= 1
    tapt_model = store.local_dir(results["models"]["adapted+tapt"]["artifact"])
    _finite_losses(tapt_model)
    _model_loads_in_float32(tapt_model / "model")
    assert store.manifest(aid)["config"]["mixed_precision"] == "bf16"


def test_fp16_without_cuda_is_refused_naming_each_key(tiny_config, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    tiny_config["pretrain"]["mixed_precision"] = "fp16"
    tiny_config["distill"] = {"student_layers": 1, "max_steps": 2, "max_seq_length": 32, "global_batch_size": 8, "micro_batch_size": 8,
                              "mixed_precision": "fp16"}  # fmt: skip
    tapt = {"pretrain": {"max_steps": 2, "mixed_precision": "fp16"}}
    tiny_config["evaluate"].update(mixed_precision="fp16", tapt=tapt)
    with pytest.raises(ConfigError) as error:
        validate_config(tiny_config)
    message = str(error.value)
    assert "4 problems" in message
    for key in ("pretrain", "distill", "evaluate", "evaluate.tapt.pretrain"):
        assert f"  - {key}.mixed_precision: fp16 needs a CUDA GPU" in message
    assert "use auto, bf16 (on a CPU: fast with bf16 units, emulated and slow without) or no" in message


def test_fp16_without_cuda_is_refused_by_the_stages_themselves(tiny_config, monkeypatch, tmp_path):
    # A config built in code skips validate_config: the training kit and the fine-tunes check again,
    # before the Accelerator exists or any data is read.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = validate_config(tiny_config)
    fp16 = config.pretrain.model_copy(update={"mixed_precision": "fp16"})
    with pytest.raises(UserError, match="distill.mixed_precision: fp16 needs a CUDA GPU"):
        kit.setup("distill", fp16, tmp_path)
    with pytest.raises(UserError, match="evaluate.mixed_precision: fp16 needs a CUDA GPU"):
        finetune.mixed_precision("fp16", torch.device("cpu"))
    autocast, scaler = finetune.mixed_precision("bf16", torch.device("cpu"))
    assert autocast.fast_dtype == torch.bfloat16 and not scaler.is_enabled()


AVX512_BF16 = {"cpu_name": "AMD EPYC 9004", "avx512_f": True, "avx512_bf16": True, "amx_bf16": False}
AMX = {"cpu_name": "Intel Xeon Platinum 8480+", "avx512_f": True, "avx512_bf16": True, "amx_bf16": True}
AVX2_ONLY = {"cpu_name": "Intel Core i7-8700", "avx2": True, "avx512_bf16": False, "amx_bf16": False}


@pytest.mark.parametrize(("flags", "expected", "said"), [
    (AMX, "bf16", "Intel Xeon Platinum 8480+ has native bf16 units (AMX)"),
    (AVX512_BF16, "bf16", "AMD EPYC 9004 has native bf16 units (AVX512-BF16)"),
    (AVX2_ONLY, "no", "Intel Core i7-8700 has no native bf16 units (AMX or AVX512-BF16); float32"),
])  # fmt: skip
def test_auto_on_a_cpu_is_bf16_only_with_bf16_units(monkeypatch, flags, expected, said):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: flags)
    assert precision.resolve("auto", torch.device("cpu")) == (expected, f"auto: {said}")
    # A configured precision is never second-guessed.
    assert precision.resolve("bf16", torch.device("cpu")) == ("bf16", "as configured")
    assert precision.resolve("no", torch.device("cpu")) == ("no", "as configured")


@pytest.mark.parametrize(("bf16", "expected"), [(True, "bf16"), (False, "fp16")])
def test_auto_on_a_gpu_is_bf16_from_ampere_on_and_fp16_before(monkeypatch, bf16, expected):
    asked = {}

    def is_bf16_supported(including_emulation=True):
        asked["including_emulation"] = including_emulation
        return bf16

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100" if not bf16 else "NVIDIA A100")
    resolved, why = precision.resolve("auto", torch.device("cuda"))
    assert resolved == expected and asked == {"including_emulation": False}  # emulated bf16 is slower than fp16
    assert why.startswith("auto: the Tesla V100 has no native bf16" if not bf16 else "auto: the NVIDIA A100 computes bf16 natively")


@pytest.mark.parametrize("units", [pytest.param(None, marks=pytest.mark.slow), "AVX512-BF16"])
def test_pretrain_with_auto_trains_in_what_the_cpu_has_and_records_it(tiny_config, head_dtypes, monkeypatch, caplog, units):
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: units)
    tiny_config["pretrain"].update(SHORT, mixed_precision="auto")
    with caplog.at_level("INFO"):
        config, store, ids = build_until(tiny_config, "pretrain")
    expected = torch.bfloat16 if units else torch.float32
    assert len(head_dtypes) == 4 and set(head_dtypes) == {expected}
    manifest = store.manifest(ids["pretrain"])
    assert manifest["config"]["mixed_precision"] == "auto"  # the id hashes the setting, the same on every machine
    assert manifest["metrics"]["mixed_precision"] == ("bf16" if units else "no")  # what it resolved to here
    said = "training in bf16 (auto: " if units else "training in float32 (auto: "
    assert any(said in r.getMessage() and (units or "no native bf16 units") in r.getMessage() for r in caplog.records)
    _model_loads_in_float32(store.local_dir(ids["pretrain"]) / "model")


@pytest.mark.slow
def test_a_bf16_run_follows_the_float32_loss_curve_over_50_steps(tiny_config):
    # bf16 is forced (not auto) so the comparison means the same on a CPU without bf16 units.
    tiny_config["pretrain"].update(max_steps=50, log_every_steps=10, max_eval_blocks=8, learning_rate=5e-3)
    config, store, ids = build_until(tiny_config, "tokens")
    curves = {}
    for name in ("no", "bf16"):
        section = config.pretrain.model_copy(update={"mixed_precision": name})
        aid = run_stage("pretrain", config.model_copy(update={"pretrain": section}), store, ids)
        curves[name] = [p["loss"] for p in json.loads((store.local_dir(aid) / "curve.json").read_text()) if "loss" in p]
    fp32, bf16 = curves["no"], curves["bf16"]
    assert len(fp32) == len(bf16) == 5 and fp32 != bf16  # bf16 really ran, and rounds differently
    assert fp32[-1] < 0.95 * fp32[0] and bf16[-1] < 0.95 * bf16[0], (fp32, bf16)  # both learn
    for step, (a, b) in enumerate(zip(fp32, bf16), start=1):
        assert abs(a - b) <= 0.01 * a, f"step {10 * step}: bf16 loss {b:.4f} vs float32 {a:.4f}"  # measured: within 1e-4
