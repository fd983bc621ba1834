"""The whole pipeline as Prefect flows, on a temporary Prefect database, twice."""

import pytest

from pretrain.chain import STAGES, plan
from pretrain.configfile import validate_config
from pretrain.core.artifacts import ArtifactStore

# Prefect pipeline runs (a temporary Prefect server; the pretrain flow under accelerate launch).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prefect_harness():
    import flows  # noqa: F401  (Prefect defaults)
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


def test_pipeline_flow_with_distillation_twice_second_run_all_cache_hits(prefect_harness, tiny_config):
    from prefect.client.orchestration import get_client

    from flows.pipeline import pipeline

    tiny_config["distill"] = {"student_layers": 1, "max_seq_length": 32, "max_steps": 4, "global_batch_size": 8,
                              "micro_batch_size": 8, "max_eval_blocks": 16, "speed_rounds": 2}  # fmt: skip
    tiny_config["pretrain"]["assess"] = True  # every optional stage of the chain runs
    config = validate_config(tiny_config)
    first = pipeline(config=config)
    assert first["ids"] == plan(config)
    assert list(first["ids"]) == [s for s in STAGES if not s.startswith("tapt")]  # every stage but TAPT, which is off
    assert not any(first["cached"].values())
    store = ArtifactStore(config.store)
    assert all(store.exists(aid) for aid in first["ids"].values())
    assert [row["stage"] for row in first["rows"]] == ["base", "ingest", "vocab", "tokens", "assess", "pretrain", "distill", "evaluate"]
    assert "domain shift x" in first["rows"][4]["key figures"] and "estimate:" in first["rows"][4]["key figures"]
    assert "student 1 of 2 layers" in first["rows"][6]["key figures"]
    assert "validation perplexity" in first["rows"][5]["key figures"]
    report = (store.local_dir(first["ids"]["report"]) / "report.md").read_text()
    assert "| base (`" in report and "Validation perplexity" in report and "## Distillation: student vs teacher" in report
    assert "adapted − base macro-F1" in first["comparison"]

    async def read_artifacts():
        async with get_client() as client:
            return await client.read_artifacts()

    import asyncio

    # A run leaves few, readable cards in the UI: one table per stage, the run's summary table and the
    # report (it was 27, 7 of them file:// links a browser will not open from the UI).
    made = asyncio.run(read_artifacts())
    assert len(made) == len(first["ids"]) + 2
    assert sorted(a.key for a in made) == sorted([f"dapt-{s}" for s in first["ids"]] + ["dapt-summary", "dapt-report-page"])
    assert {a.type for a in made} == {"table", "markdown"}
    markdown = next(a for a in made if a.key == "dapt-report-page").data
    assert "file://" not in markdown and "![" in markdown
    # Images are embedded as pictures, never as a visible data-URL link line under them.
    assert all(line.startswith("![") for line in markdown.splitlines() if "data:image/png;base64," in line)

    second = pipeline(config=config)
    assert second["ids"] == first["ids"]
    assert all(second["cached"].values())
    assert len(asyncio.run(read_artifacts())) == 2 * (len(first["ids"]) + 2)

    # An artifact deleted from the store is rebuilt even though Prefect remembers the task.
    import shutil

    shutil.rmtree(store.local_dir(first["ids"]["report"]))
    third = pipeline(config=config)
    assert third["cached"]["report"] is False and third["cached"]["evaluate"] is True
    assert store.exists(first["ids"]["report"])


def test_pretrain_flow_launches_accelerate_and_streams_its_log(prefect_harness, tiny_config):
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    from flows.pipeline import pretrain_flow
    from pretrain.chain import run_stage

    tiny_config["pretrain"].update(max_steps=4, global_batch_size=8, micro_batch_size=4, launcher={"num_processes": 2})
    config = validate_config(tiny_config)
    store = ArtifactStore(config.store)
    ids = {}
    for stage in ("base", "ingest", "vocab", "tokens"):
        ids[stage] = run_stage(stage, config, store, ids)

    state = pretrain_flow(config=config, ids=ids, return_state=True)
    assert state.is_completed(), state.message
    assert store.manifest(plan(config)["pretrain"])["metrics"]["processes"] == 2

    APILogHandler().flush()  # logs reach the API in the background; wait for them

    async def messages(flow_run_id):
        async with get_client() as client:
            logs = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
            return [log.message for log in logs]

    lines = asyncio.run(messages(state.state_details.flow_run_id))
    assert any(line.startswith("launching: ") and "accelerate.commands.launch" in line for line in lines)
    assert any("pretrain: step 4/4" in line for line in lines)  # the job's own log, streamed into the run

    # A mistake the job finds (here: 8 sequences cannot split over 2 processes of 8) fails the run with it.
    bad = validate_config({**tiny_config, "pretrain": {**tiny_config["pretrain"], "micro_batch_size": 8, "max_steps": 5}})
    state = pretrain_flow(config=bad, ids=ids, return_state=True)
    assert state.is_failed()
    assert state.message.startswith("pretrain: pretrain.global_batch_size (8) is not a multiple of micro_batch_size (8) x processes (2)")
