"""The ingest and tokens flows: shard tasks on Prefect's task runners, a Dask cluster included."""

import json

import pytest

from conftest import REUTERS, read_jsonl_gz
from pretrain.configfile import validate_config
from pretrain.core.artifacts import ArtifactStore

# Prefect flows with shard tasks, on a local Dask cluster too.
pytestmark = pytest.mark.slow

TRAILER = r"(?i)\s*reuter\s*\x03\s*$"


@pytest.fixture(scope="module")
def prefect_harness():
    import flows  # noqa: F401  (Prefect defaults)
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="module")
def corpus_folder(tmp_path_factory):
    """4 files of real Reuters stories: with shard_mb 0.1, about a dozen shard tasks."""
    records = read_jsonl_gz(REUTERS / "corpus.jsonl.gz", limit=1000)
    folder = tmp_path_factory.mktemp("corpus")
    for i in range(4):
        (folder / f"part{i}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[i * 250 : (i + 1) * 250]))
    return folder


def _config(tiny_config, store, inputs, **parallel):
    raw = {**tiny_config, "store": str(store)}
    raw["ingest"] = {**tiny_config["ingest"], "inputs": inputs, "parallel": {"workers": 2, "shard_mb": 0.1, **parallel}}
    return validate_config(raw)


def test_dask_cluster_and_default_runner_give_the_byte_identical_corpus(prefect_harness, tmp_path, tiny_config, corpus_folder):
    from prefect_dask import DaskTaskRunner

    from flows.pipeline import ingest_flow

    manifests = {}
    runners = {
        "default": None,  # the flow's own: a process pool over the cores
        "dask": DaskTaskRunner(cluster_kwargs={"n_workers": 2, "threads_per_worker": 1, "processes": True, "dashboard_address": None}),
    }
    for name, runner in runners.items():
        config = _config(tiny_config, tmp_path / name, [str(corpus_folder)])
        flow = ingest_flow if runner is None else ingest_flow.with_options(task_runner=runner)
        result = flow(config=config, ids={})
        assert result["cached"] is False
        manifests[name] = ArtifactStore(config.store).manifest(result["id"])
    default, dask = manifests["default"], manifests["dask"]
    assert default["id"] == dask["id"]
    assert default["files"] == dask["files"]  # train.parquet and validation.parquet, byte for byte
    assert default["metrics"]["pieces"] >= 8 and default["metrics"]["documents_read"] == 1000


def test_a_bad_record_in_a_shard_task_fails_the_flow_with_its_message(prefect_harness, tmp_path, tiny_config, corpus_folder):
    from flows.pipeline import ingest_flow, pipeline

    folder = tmp_path / "in"
    folder.mkdir()
    for f in corpus_folder.iterdir():
        (folder / f.name).write_text(f.read_text())
    (folder / "part9.jsonl").write_text('{"text": "fine words here and more of them"}\n{oops\n')
    config = _config(tiny_config, tmp_path / "store", [str(folder)])
    state = ingest_flow(config=config, ids={}, return_state=True)
    assert state.is_failed()
    assert state.message.startswith(f"ingest: {folder / 'part9.jsonl'}:2: not valid JSON")
    assert ArtifactStore(config.store).ids() == []  # no partial corpus
    state = pipeline(config=config, return_state=True)  # the whole pipeline stops there too, same message
    assert state.is_failed() and "part9.jsonl:2: not valid JSON" in state.message
