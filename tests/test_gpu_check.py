"""benchmarks/gpu_check.sh: valid bash, its checks' JSON lines, and the whole script tiny on a CPU (--cpu-smoke)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402
from pretrain.training.flops import PRECISION_NAMES  # noqa: E402
from pretrain.training.precision import resolve  # noqa: E402


def test_the_script_is_valid_bash_and_refuses_unknown_options():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    done = subprocess.run(["bash", str(SCRIPT), "--gpu"], capture_output=True, text=True)
    assert done.returncode == 2 and "usage: bash benchmarks/gpu_check.sh [--cpu-smoke]" in done.stderr


def test_a_failing_check_reports_its_error_in_its_json_line(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("pretrain: {max_steps: -1}\n")  # a broken config left in the work folder
    assert gpu_check.main(["resume", "--work", str(tmp_path), "--cpu-smoke"]) == 1
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["check"] == "resume" and line["ok"] is False and line["size"] == "cpu-smoke"
    assert line["error"].startswith("ConfigError: ") and "pretrain.max_steps" in line["error"]


@pytest.mark.slow
def test_cpu_smoke_runs_every_check(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_DIR": str(tmp_path)}
    done = subprocess.run(["bash", str(SCRIPT), "--cpu-smoke"], capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["check"] for line in lines] == ["environment", "throughput", "resume", "evaluate", "compile"]
    failed = [line for line in lines if not line["ok"]]
    assert done.returncode == len(failed) == 0, failed
    environment, throughput, resume, evaluate, compiled = lines
    auto = resolve("auto", torch.device("cpu"))[0]  # bf16 on a CPU with bf16 units, else float32
    assert environment["torch"] and environment["auto_precision"] == auto
    assert environment["peak"] == f"unknown device 'cpu' for {PRECISION_NAMES[auto]}: no MFU"
    fp32, auto_bench = throughput["results"]  # float32 and auto, side by side
    assert (fp32["mixed_precision"], auto_bench["mixed_precision"], auto_bench["precision"]) == ("no", "auto", auto)
    for bench in (fp32, auto_bench):
        assert bench["model"] == "bert-tiny" and bench["ours_tokens_per_s"] > 0 and bench["baseline_tokens_per_s"] > 0
        assert bench["ratio_vs_baseline_fp32"] > 0
    # Killed right after the checkpoint at step 4 of 8, resumed there, finished in what auto picked.
    assert (resume["resumed_from_step"], resume["of_steps"], resume["steps"]) == (4, 8, 8)
    assert (resume["mixed_precision"], resume["precision"]) == ("auto", auto)
    assert resume["model_flops_per_step"] > 0 and resume["mfu"] is None
    assert {name: m["seeds"] for name, m in evaluate["models"].items()} == {"base": 2, "adapted": 2}
    assert (evaluate["mixed_precision"], evaluate["precision"]) == ("auto", auto)
    assert compiled["artifact"] != resume["artifact"] and compiled["eager"]["steps"] == compiled["compiled"]["steps"] == 8
    assert compiled["steady_tokens_per_second_ratio"] > 0
