"""Fine-tuning runs spread over worker processes: the same runs as the sequential loop, failures that name the run."""

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, build_until, write_config
from pretrain import evaluate
from pretrain.configfile import validate_config
from pretrain.core.artifacts import ArtifactStore, MANIFEST, file_digest
from pretrain.core.config import ModelSource
from pretrain.core.errors import ConfigError
from pretrain.finetuning import finetune, runpool


def test_parallel_runs_is_validated_and_part_of_no_id(tiny_config):
    with pytest.raises(ConfigError, match=r"evaluate\.parallel_runs"):
        validate_config({**tiny_config, "evaluate": {**tiny_config["evaluate"], "parallel_runs": 0}})
    one = validate_config(tiny_config).evaluate
    two = one.model_copy(update={"parallel_runs": 2})
    ids = {"base": "b-" + "0" * 20, "model": "m-" + "0" * 20}
    assert evaluate.stage_id(one, **ids) == evaluate.stage_id(two, **ids)
    assert finetune.stage_id(one, model=ids["model"], learning_rate=1e-3, seed=0, sources=[]) == finetune.stage_id(
        two, model=ids["model"], learning_rate=1e-3, seed=0, sources=[]
    )


def test_one_worker_per_visible_gpu_by_default_and_sequential_on_a_cpu(monkeypatch):
    monkeypatch.setattr(runpool.torch.cuda, "is_available", lambda: False)
    assert runpool.worker_count(None) == 1 and runpool.worker_count(3) == 3
    assert runpool.worker_devices(2) == [None, None]
    monkeypatch.setattr(runpool.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(runpool.torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    assert runpool.worker_count(None) == 2
    assert runpool.worker_devices(3) == ["4", "6", "4"]  # more workers than GPUs: they take turns


@pytest.fixture
def two_stores(tiny_config, tmp_path):
    """The tiny pipeline built up to pretrain, in a store and in a copy of it: (config, store, copy, ids)."""
    config, store, ids = build_until(tiny_config, "pretrain")
    shutil.copytree(store.root, tmp_path / "copy")
    return config, store, ArtifactStore(tmp_path / "copy"), ids


def _run_files(store: ArtifactStore, fid: str) -> dict:
    folder = store.local_dir(fid)
    record = json.loads((folder / "run.json").read_text())
    record.pop("seconds")  # wall time: the one thing allowed to differ
    weights = store.manifest(fid)["files"]["model/model.safetensors"]["sha256"]
    return {"record": record, "predictions": json.loads((folder / "predictions.json").read_text()), "weights": weights}


@pytest.mark.slow
def test_two_worker_processes_build_exactly_the_sequential_runs(two_stores, tiny_base, caplog):
    config, sequential, spread, ids = two_stores
    # tiny-copy is the base's files, so the base's artifact: its runs are the base's, built once.
    copy = ModelSource(name="tiny-copy", source=str(tiny_base))
    cfg = config.evaluate.model_copy(update={"seeds": [0, 1], "num_epochs": 3, "models": [copy]})
    # A CPU run's bits depend on its thread count (the order of parallel reductions), not only on its seed:
    # the sequential loop runs with the threads each of the 2 workers gets, and must then match bit for bit.
    threads = torch.get_num_threads()
    torch.set_num_threads(runpool.worker_threads(2))
    try:
        one = evaluate.run(cfg.model_copy(update={"parallel_runs": 1}), sequential, base=ids["base"], model=ids["pretrain"])
    finally:
        torch.set_num_threads(threads)
    with caplog.at_level(logging.INFO, logger="pretrain.finetuning.runpool"):
        two = evaluate.run(cfg.model_copy(update={"parallel_runs": 2}), spread, base=ids["base"], model=ids["pretrain"])
    assert one == two
    runs = sorted({fid for fid in sequential.manifest(one)["inputs"].values() if fid.startswith("f-")})
    assert len(runs) == 4 and sorted({fid for fid in spread.manifest(two)["inputs"].values() if fid.startswith("f-")}) == runs
    assert sorted(a for a in spread.ids() if a.startswith("f-")) == runs
    for fid in runs:
        assert _run_files(spread, fid) == _run_files(sequential, fid), f"run {fid} differs between 2 workers and the sequential loop"
    # The evaluation built on them is the same too (its run records carry each run's seconds: left out).
    results = [json.loads((s.local_dir(one) / "results.json").read_text()) for s in (sequential, spread)]
    for r in results:
        for model in r["models"].values():
            for run in model["runs"]:
                run.pop("seconds")
    assert results[0] == results[1]
    assert spread.manifest(two)["metrics"]["finetune_runs_built"] == sequential.manifest(one)["metrics"]["finetune_runs_built"] == 4
    # Both workers built runs, and the parent said which built which.
    builders = {m.group(1) for m in (re.search(r"(worker \d) \(CPU\) built (base|adapted) lr 3e-3 seed \d", r.getMessage()) for r in caplog.records) if m}
    assert builders == {"worker 1", "worker 2"}


@pytest.mark.slow
def test_a_failing_run_is_named_and_the_runs_built_before_it_stay(two_stores):
    config, _, store, ids = two_stores
    cfg = config.evaluate.model_copy(update={"seeds": [0, 1], "num_epochs": 2, "parallel_runs": 2})
    # The adapted model's weights are truncated and its manifest rewritten to match (a broken upload that
    # verifies): only a worker loads the weights, so only a worker fails.
    folder = store.local_dir(ids["pretrain"])
    weights = folder / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["files"]["model/model.safetensors"] = file_digest(weights)
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(runpool.RunFailed) as failed:
        evaluate.run(cfg, store, base=ids["base"], model=ids["pretrain"])
    message = str(failed.value)
    assert re.search(r"fine-tuning adapted lr 3e-3 seed [01] \(model m-\w+\) failed in worker [12] \(CPU\): ", message), message
    assert "The worker's traceback:" in message and "safetensors" in message.lower()
    assert "runs that finished are kept in the store: a re-run builds only the rest" in message
    kept = [store.manifest(a) for a in store.ids() if a.startswith("f-")]
    assert sorted((m["inputs"]["model"], m["config"]["seed"]) for m in kept) == [(ids["base"], 0), (ids["base"], 1)]


@pytest.mark.slow
def test_ctrl_c_stops_the_workers_and_leaves_no_half_built_run(two_stores, tiny_config, tmp_path):
    config, store, _, ids = two_stores
    # Runs long enough (300 epochs, no early stopping) that the signal always finds both workers mid-run:
    # with 50 epochs a loaded machine could finish every run before the test saw both workers' progress.
    raw = {**tiny_config, "evaluate": {**tiny_config["evaluate"], "seeds": [0, 1], "num_epochs": 300, "patience_epochs": None, "parallel_runs": 2}}
    path = write_config(tmp_path / "c.yaml", raw)
    # Its own session, so the signal reaches the parent and its workers as a terminal's Ctrl-C does.
    # SIGINT back to its default in the child: a shell starting the suite in the background ignores it, and
    # an ignored SIGINT is inherited (Python would then never raise KeyboardInterrupt, as on no terminal).
    job = subprocess.Popen([sys.executable, "-m", "pretrain.evaluate", "--config", str(path)], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                           start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                           env={**os.environ, "DAPT_PROGRESS": "log", "DAPT_PROGRESS_EVERY_S": "1"})  # fmt: skip
    lines, both = [], False
    try:
        for line in job.stderr:  # both workers are fine-tuning once each has shown progress
            lines.append(line)
            if len({w for w in ("[worker 1 · evaluate", "[worker 2 · evaluate") if any(w in seen and "batch (" in seen for seen in lines)}) == 2:
                both = True
                break
        assert both, "the evaluation ended before both workers showed progress:\n" + "".join(lines)
        os.killpg(job.pid, signal.SIGINT)
        _, rest = job.communicate(timeout=120)  # (stdout, stderr): stdout is not piped
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode != 0, "".join(lines) + rest
    left = subprocess.run(["ps", "-o", "pid,stat,args", "--no-headers", "-s", str(job.pid)], capture_output=True, text=True).stdout
    # Z: exited, waiting to be reaped (by this container's init, which may never do it): not running.
    running = [line for line in left.splitlines() if line.split()[1][0] != "Z"]
    assert not running, f"processes outlived the parent:\n{left}"  # no worker (or anything else it started)
    assert not [a for a in store.ids() if a.startswith("f-")]  # nothing half-built was published...
    assert not list((Path(store.root) / ".tmp").glob("f-*"))  # ...or left behind
