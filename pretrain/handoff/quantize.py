"""ONNX and int8 for CPU inference: export a classifier to ONNX, quantize it with ONNX Runtime, measure.

    dapt export f-… --to exported/ --format onnx --quantize int8

`export_onnx` writes `model.onnx` (fp32) with `torch.onnx.export(dynamo=True)`, the torch.export-based
exporter (the TorchScript one is deprecated; optimum-onnx would add a package whose pins trail
transformers). Batch and sequence length stay dynamic; inputs `input_ids`, `attention_mask` (and
`token_type_ids` for models with segments), output `logits`. `quantize_int8` writes `model.int8.onnx`
with ONNX Runtime's dynamic quantization: MatMul weights stored as int8, activations quantized on the
fly per batch, no calibration data. That file is what a deployment runs, and what is measured here.

`compare` runs the same test examples through PyTorch fp32, ORT fp32 and ORT int8: the largest logit
difference of ORT fp32 from PyTorch (parity, at most `PARITY_TOLERANCE`), test scores of each, the
share of predictions int8 keeps, and CPU latency at batch 1 and throughput at batch 32, the engines
alternating round by round in one process so that machine noise hits them alike.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import torch

from pretrain.core.logs import get_logger
from pretrain.core.progress import progress

log = get_logger(__name__)

EXPORTER = "torch.onnx.export(model, dynamo=True), batch and sequence dynamic"
RECIPE = "onnxruntime.quantization.quantize_dynamic('model.onnx', 'model.int8.onnx', weight_type=QuantType.QInt8)"
ONNX_FILE, INT8_FILE = "model.onnx", "model.int8.onnx"
PARITY_TOLERANCE = 1e-4  # max |logit difference| ORT fp32 may have from PyTorch fp32
ENGINES = {"fp32": "PyTorch fp32", "onnx_fp32": "ORT fp32", "int8": "ORT int8"}


def onnx_input_names(model: torch.nn.Module, tokenizer_inputs: list[str] | None = None) -> list[str]:
    """The inputs the ONNX graph takes: segments only for models with token type embeddings whose tokenizer
    returns them, so that `session.run(None, dict(tokenizer(texts, return_tensors="np")))` just works."""
    segments = getattr(model.config, "type_vocab_size", 1) > 1 and (tokenizer_inputs is None or "token_type_ids" in tokenizer_inputs)
    return ["input_ids", "attention_mask"] + (["token_type_ids"] if segments else [])


@contextlib.contextmanager
def _quiet_tools():
    """Silence the exporter's and quantizer's chatter about their own internals (not about our calls)."""

    class _DropPreprocessHint(logging.Filter):
        # ORT's quantizer logs on the root logger itself: its hint to pre-process, every call, and dozens of
        # INFO lines per model ("Quantization parameters for tensor ... not specified"). A filter on the
        # root logger sees only what is logged on it directly, never our loggers' records.
        def filter(self, record: logging.LogRecord) -> bool:
            return record.levelno >= logging.WARNING and "pre-processing before quantization" not in record.getMessage()

    root, hint = logging.getLogger(), _DropPreprocessHint()
    # The exporter's passes report each rewrite at INFO (onnx_ir, onnxscript: ~100 lines per model), and
    # torch.onnx says "torchvision is not installed. Skipping torchvision::nms" four times.
    tools = {logging.getLogger("torch.onnx"): logging.ERROR, logging.getLogger("onnx_ir"): logging.WARNING, logging.getLogger("onnxscript"): logging.WARNING}
    levels = {tool: tool.level for tool in tools}
    with warnings.catch_warnings():
        # torch.export's own pytree FutureWarning and the exporter's note on axis names: raised inside torch.
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*treespec")
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
        for tool, quiet in tools.items():
            tool.setLevel(max(levels[tool], quiet))
        root.addFilter(hint)
        try:
            yield
        finally:
            root.removeFilter(hint)
            for tool, level in levels.items():
                tool.setLevel(level)


def export_onnx(model: torch.nn.Module, path: str | Path, tokenizer_inputs: list[str] | None = None) -> Path:
    """Write `model` (a Hugging Face classifier, fp32) to `path` as ONNX; batch and sequence length dynamic.

    `tokenizer_inputs` (the tokenizer's `model_input_names`) decides whether the graph takes `token_type_ids`."""
    path = Path(path)
    model = model.cpu().eval()
    names = onnx_input_names(model, tokenizer_inputs)
    example = {name: torch.ones((2, 8), dtype=torch.long) if name != "token_type_ids" else torch.zeros((2, 8), dtype=torch.long) for name in names}
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    started = time.perf_counter()
    with _quiet_tools(), torch.no_grad():
        program = torch.onnx.export(
            model, (), kwargs=example, dynamo=True, input_names=names, output_names=["logits"],
            dynamic_shapes={name: {0: batch, 1: sequence} for name in names}, optimize=True, verbose=False,
        )  # fmt: skip
        program.save(str(path))
    log.info("quantize: exported ONNX %s (%.1f MB) in %.0f s", path, path.stat().st_size / 1e6, time.perf_counter() - started)
    return path


def quantize_int8(onnx_path: str | Path, int8_path: str | Path) -> Path:
    """ONNX Runtime dynamic int8 quantization of `onnx_path` (weights int8, activations per batch) into `int8_path`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_tools():
        quantize_dynamic(str(onnx_path), str(int8_path), weight_type=QuantType.QInt8)
    return Path(int8_path)


class OrtClassifier:
    """An ONNX Runtime session that is called like the Hugging Face model it was exported from: `model(**batch).logits`."""

    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()  # the same threads as PyTorch gets
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def eval(self) -> OrtClassifier:
        return self

    def __call__(self, **batch: Any) -> SimpleNamespace:
        ids = np.asarray(batch["input_ids"])
        feeds = {}
        for name in self.input_names:
            value = batch.get(name)
            feeds[name] = np.asarray(value, dtype=np.int64) if value is not None else (np.ones_like(ids) if name == "attention_mask" else np.zeros_like(ids))
        return SimpleNamespace(logits=torch.from_numpy(self.session.run(["logits"], feeds)[0]))


class _Recorder:
    """Passes calls through to an engine and keeps its logits, in call order (for the parity check)."""

    def __init__(self, engine, bar):
        self.engine, self.bar, self.logits = engine, bar, []

    def eval(self) -> _Recorder:
        return self

    def __call__(self, **batch):
        out = self.engine(**batch)
        self.logits.append(out.logits.detach().float().cpu().numpy())
        self.bar.update(1)
        return out


def linear_share(model: torch.nn.Module) -> float:
    """Share of the parameters that sit in Linear layers (what int8 shrinks and speeds up)."""
    total = sum(p.numel() for p in model.parameters())
    linear = sum(p.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) for p in m.parameters())
    return linear / max(total, 1)


@torch.no_grad()
def time_pair(models: dict[str, Callable], batches: list[dict], rounds: int = 5, warmup: int = 1, bar=None) -> dict[str, list[float]]:
    """Seconds per pass over `batches` for each model (PyTorch module or `OrtClassifier`), the models alternating round by round."""
    seconds: dict[str, list[float]] = {name: [] for name in models}
    for r in range(warmup + rounds):
        for name, model in models.items():
            model.eval()
            started = time.perf_counter()
            for batch in batches:
                model(**batch)
            if r >= warmup:
                seconds[name].append(time.perf_counter() - started)
            if bar is not None:
                bar.update(1)
    return seconds


def speed(engines: dict[str, Callable], batch1: list[dict], batch32: list[dict], rounds: int = 5, bar=None) -> dict[str, Any]:
    """CPU latency at batch 1 (ms per example) and throughput at batch 32 (examples/s) of each engine; int8 against PyTorch fp32."""
    out: dict[str, Any] = {"threads": torch.get_num_threads(), "rounds": rounds}
    one = time_pair(engines, batch1, rounds, bar=bar)
    many = time_pair(engines, batch32, rounds, bar=bar)
    n32 = sum(len(b["input_ids"]) for b in batch32)
    for name in engines:
        out[f"{name}_latency_ms_batch1"] = round(1000 * statistics.median(one[name]) / len(batch1), 3)
        out[f"{name}_throughput_batch32"] = round(n32 / statistics.median(many[name]), 1)
    if "int8" in engines:
        out["latency_speedup_batch1"] = round(out["fp32_latency_ms_batch1"] / out["int8_latency_ms_batch1"], 3)
        out["throughput_speedup_batch32"] = round(out["int8_throughput_batch32"] / out["fp32_throughput_batch32"], 3)
        # Per-round ratios (each fp32 round next to its int8 round) show how stable the figure is.
        out["throughput_speedup_batch32_per_round"] = [round(a / b, 3) for a, b in zip(many["fp32"], many["int8"])]
        out["latency_speedup_batch1_per_round"] = [round(a / b, 3) for a, b in zip(one["fp32"], one["int8"])]
    out["batch1_examples"], out["batch32_examples"] = len(batch1), n32
    return out


def agreement(kind: str, a, b) -> float:
    """Share of test examples (words, for token tasks) on which two engines decide the same."""
    if kind == "token":
        pairs = [(x, y) for p, q in zip(a, b) for x, y in zip(p, q)]
        return sum(x == y for x, y in pairs) / max(len(pairs), 1)
    a, b = np.asarray(a), np.asarray(b)
    same = (a == b).all(axis=1) if a.ndim == 2 else a == b
    return float(same.mean()) if len(same) else 1.0


def compare(
    model: torch.nn.Module,
    folder: str | Path,
    data,
    test,
    *,
    thresholds: np.ndarray | None,
    fallback_tag: str,
    tag_scheme: str,
    batch_size: int,
    pad_id: int,
    speed_examples: int = 128,
    rounds: int = 5,
) -> dict[str, Any]:
    """PyTorch fp32 against ORT fp32 (and ORT int8 when `folder` holds it) on the test split `test` (`finetune.Encoded`).

    `data` is the task (`tasks.TaskData`: kind, labels, gold test labels); `thresholds` the multi-label
    decision thresholds and `fallback_tag` the tag of words beyond the length limit, as the run used them.
    """
    from pretrain.finetuning import scoring
    from pretrain.finetuning.finetune import collate, length_grouped_batches, predict

    folder, cpu = Path(folder), torch.device("cpu")
    fp32 = model.cpu().eval()
    engines: dict[str, Callable] = {"fp32": fp32, "onnx_fp32": OrtClassifier(folder / ONNX_FILE)}
    if (folder / INT8_FILE).exists():
        engines["int8"] = OrtClassifier(folder / INT8_FILE)
    n = len(test.input_ids)
    scored_batches = len(length_grouped_batches([len(x) for x in test.input_ids], batch_size * 2, None))
    chosen = np.arange(min(speed_examples, n))  # the first test examples, as they come
    batch1 = [collate(test, chosen[i : i + 1], pad_id, cpu, with_targets=False) for i in range(min(32, len(chosen)))]
    batch32 = [collate(test, b, pad_id, cpu, with_targets=False) for b in length_grouped_batches([len(test.input_ids[i]) for i in chosen], 32, None)]
    gold = data.gold("test")
    total = len(engines) * scored_batches + 2 * (1 + rounds) * len(engines)
    with progress(total, desc=f"measure {' / '.join(ENGINES[e] for e in engines)} on {n:,} test examples", unit="pass") as bar:
        recorded, decided, scores = {}, {}, {}
        for name, engine in engines.items():
            recorded[name] = _Recorder(engine, bar)
            outputs = predict(recorded[name], data.kind, test, data.labels, fallback_tag, batch_size, pad_id, cpu)
            decided[name] = outputs >= thresholds if data.kind == "multi_label" else outputs
            scores[name] = scoring.scores(data.kind, gold, decided[name], data.labels, tag_scheme)
        timing = speed(engines, batch1, batch32, rounds, bar=bar)
    parity = max((float(np.abs(a - b).max()) for a, b in zip(recorded["fp32"].logits, recorded["onnx_fp32"].logits)), default=0.0)
    metrics = [m for m in ("accuracy", "macro_f1", "micro_f1") if m in scores["fp32"]]
    result: dict[str, Any] = {
        "method": RECIPE,
        "exporter": EXPORTER,
        "test_examples": n,
        "parity": {"max_abs_logit_diff": parity, "tolerance": PARITY_TOLERANCE, "within_tolerance": parity <= PARITY_TOLERANCE},
        **{name: {m: round(scores[name][m], 5) for m in metrics} for name in engines},
        "linear_parameter_share": round(linear_share(fp32), 4),
        "speed": timing,
    }
    if "int8" in engines:
        result["delta"] = {m: round(scores["int8"][m] - scores["fp32"][m], 5) for m in metrics}
        result["agreement"] = {"int8_vs_fp32": round(agreement(data.kind, decided["int8"], decided["fp32"]), 5),
                               "int8_vs_onnx_fp32": round(agreement(data.kind, decided["int8"], decided["onnx_fp32"]), 5)}  # fmt: skip
    return result


def measure_trained(trained, data, test, cfg, pad: int, seed: int, speed_examples: int = 128, rounds: int = 5) -> dict[str, Any]:
    """PyTorch fp32 vs ORT int8 of a fine-tuned classifier (`finetune.train`'s result): test scores and CPU speed.

    The evaluate stage calls this on the first seed's classifier; the ONNX files live in a temporary
    folder only (the export command writes them for keeps).
    """
    from pretrain.finetuning.finetune import selection_metric

    with tempfile.TemporaryDirectory(prefix="dapt-onnx-") as tmp:
        export_onnx(trained.model, Path(tmp) / ONNX_FILE)
        quantize_int8(Path(tmp) / ONNX_FILE, Path(tmp) / INT8_FILE)
        result = compare(
            trained.model, tmp, data, test, thresholds=trained.thresholds, fallback_tag=trained.fallback_tag,
            tag_scheme=cfg.task.tag_scheme, batch_size=cfg.batch_size, pad_id=pad, speed_examples=speed_examples, rounds=rounds,
        )  # fmt: skip
    result.update(task=cfg.task.name, seed=seed, primary_metric=selection_metric(cfg), best_epoch=trained.best_epoch, max_seq_length=cfg.max_seq_length)
    metric, timing = result["primary_metric"], result["speed"]
    log.info(
        "quantize: test %s PyTorch fp32 %.4f ORT int8 %.4f (agreement %.2f%%); batch-32 throughput x%.2f, batch-1 latency x%.2f",
        metric, result["fp32"][metric], result["int8"][metric], 100 * result["agreement"]["int8_vs_fp32"],
        timing["throughput_speedup_batch32"], timing["latency_speedup_batch1"],
    )  # fmt: skip
    return result
