"""MFU: the FLOPs the training loop counts on its first micro-batch, the peak table, and where MFU is reported."""

import json

import pytest

from conftest import build_until
from pretrain import report
from pretrain.data.formats import load_meta
from pretrain.training import flops, kit


@pytest.mark.parametrize(
    "name, precision, peak",
    [
        ("NVIDIA H100 80GB HBM3", "bf16", 989e12),
        ("NVIDIA H100 PCIe", "bf16", 756e12),
        ("NVIDIA H100 NVL", "fp16", 835e12),
        ("NVIDIA H200", "bf16", 989e12),
        ("NVIDIA GH200 480GB", "no", 67e12),
        ("NVIDIA A100-SXM4-80GB", "bf16", 312e12),
        ("NVIDIA A10", "bf16", 125e12),
        ("NVIDIA A10G", "bf16", None),  # not an A10 (nor an A100): unknown rather than wrong
        ("Tesla V100-SXM2-16GB", "bf16", None),  # no bf16 on Volta
        ("Tesla V100-SXM2-16GB", "fp16", 125e12),
        ("cpu", "bf16", None),
    ],
)
def test_the_peak_is_the_named_devices_in_that_precision(name, precision, peak):
    assert flops.peak_flops(name, precision) == peak


def test_utilisation_is_per_device_and_says_why_there_is_none():
    # 2 processes, each 1 GFLOP per step, 10 steps in 2 s: 5 GFLOP/s per device, 10 GFLOP/s in all.
    m = flops.utilisation(1e9, 10, 2.0, 2, "NVIDIA H100 80GB HBM3", "bf16")
    assert m["model_flops_per_step"] == 2e9 and m["model_flops_per_second"] == 1e10
    assert m["mfu"] == round(5e9 / 989e12, 4) and m["peak_flops_per_second"] == 989e12
    m = flops.utilisation(1e9, 10, 2.0, 1, "cpu", "no")
    assert m["mfu"] is None and m["mfu_note"] == "unknown device 'cpu' for float32: no MFU"
    assert flops.describe_peak("NVIDIA H200", "bf16") == "MFU against the NVIDIA H200's bf16 dense peak of 989 TFLOP/s"


def _analytic(model_config: dict, sequences: int, seq_length: int, masked: int) -> int:
    """Forward + backward matmul and attention FLOPs of BERT with the head on `masked` positions (backward = 2 x forward)."""
    h, i, layers, v = model_config["hidden_size"], model_config["intermediate_size"], model_config["num_hidden_layers"], model_config["vocab_size"]
    per_token = layers * 2 * (4 * h * h + 2 * h * i)  # Q, K, V and output projections; the feed-forward pair
    attention = layers * 2 * 2 * seq_length * seq_length * h  # scores Q·Kᵀ and their weighted sum of V, per sequence
    head = 2 * (h * h + h * v)  # transform and decoder, per masked position
    return 3 * (sequences * seq_length * per_token + sequences * attention + masked * head)


def test_pretraining_counts_the_flops_of_its_real_first_step(tiny_config):
    config, store, ids = build_until(tiny_config, "pretrain")
    cfg = config.pretrain
    m = store.manifest(ids["pretrain"])["metrics"]
    # The first micro-batch of the run: its masked positions decide the head's share.
    folder = store.local_dir(ids["tokens"])
    blocks = kit.Blocks(folder, "train", cfg.max_seq_length)
    first = kit.MicroBatches(blocks, kit.make_masking(cfg, load_meta(folder)), cfg.micro_batch_size, cfg.seed, 1, 1, 0, 0, 1)[0]
    model_config = json.loads((store.local_dir(ids["base"]) / "config.json").read_text())
    assert m["model_flops_per_step"] == _analytic(model_config, cfg.micro_batch_size, cfg.max_seq_length, len(first["masked_labels"]))
    # train_seconds is rounded to 0.01 s in the manifest (a tiny run takes well under a second): allow that rounding.
    rounding = 0.005 / m["train_seconds"]
    assert m["model_flops_per_second"] == pytest.approx(m["model_flops_per_step"] * m["steps"] / m["train_seconds"], rel=rounding + 1e-3)
    assert m["device_name"] == "cpu" and m["mfu"] is None and m["mfu_note"] == "unknown device 'cpu' for float32: no MFU"
    assert report.utilisation(m) == ""  # a CPU run's report says nothing about MFU


def test_mfu_goes_into_the_curve_the_manifest_and_the_report_where_the_peak_is_known(tiny_config, monkeypatch):
    monkeypatch.setattr(flops, "PEAK_FLOPS", [("cpu", {"no": 1e10})])
    config, store, ids = build_until(tiny_config, "pretrain")
    m = store.manifest(ids["pretrain"])["metrics"]
    assert m["peak_flops_per_second"] == 1e10 and m["mfu"] == pytest.approx(m["model_flops_per_second"] / 1e10, abs=1e-4)
    curve = json.loads((store.local_dir(ids["pretrain"]) / "curve.json").read_text())
    points = [p for p in curve if "loss" in p]
    assert points and all(p["mfu"] > 0 for p in points)
    # Each window's MFU is its own throughput in FLOPs over the peak (a timing-free identity; window times vary with load).
    tokens_per_step = config.pretrain.global_batch_size * config.pretrain.max_seq_length
    for p in points:
        expected = p["tokens_per_second"] / tokens_per_step * m["model_flops_per_step"] / 1e10
        assert p["mfu"] == pytest.approx(expected, rel=1e-3, abs=1e-4)
    assert report.utilisation(m) == f", MFU {m['mfu']:.1%} of the cpu's float32 dense peak of 0 TFLOP/s"
    gpu = {**m, "device": "cuda", "device_name": "NVIDIA B300", "mfu": None, "mfu_note": flops.unknown("NVIDIA B300", "bf16")}
    assert report.utilisation(gpu) == "; unknown device 'NVIDIA B300' for bf16: no MFU"
