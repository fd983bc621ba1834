"""The whole pipeline as Prefect flows, on a temporary Prefect database, twice."""

import pytest

from pretrain.artifacts import ArtifactStore
from pretrain.config import validate_config
from pretrain.pipeline import STAGES, plan


@pytest.fixture(scope="module")
def prefect_harness():
    import flows  # noqa: F401  (Prefect defaults)
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


def test_pipeline_flow_twice_second_run_all_cache_hits(prefect_harness, tiny_config):
    from prefect.client.orchestration import get_client

    from flows.pipeline import pipeline

    config = validate_config(tiny_config)
    first = pipeline(config=config)
    assert set(first["ids"]) == set(STAGES)
    assert first["ids"] == plan(config)
    assert not any(first["cached"].values())
    store = ArtifactStore(config.store)
    assert all(store.exists(aid) for aid in first["ids"].values())
    assert [row["stage"] for row in first["rows"]] == ["base", "ingest", "vocab", "tokens", "pretrain", "evaluate"]
    assert "validation perplexity" in first["rows"][4]["key figures"]
    report = (store.local_dir(first["ids"]["report"]) / "report.md").read_text()
    assert "| base (`" in report and "Validation perplexity" in report
    assert "adapted − base macro-F1" in first["comparison"]

    second = pipeline(config=config)
    assert second["ids"] == first["ids"]
    assert all(second["cached"].values())

    async def artifact_keys():
        async with get_client() as client:
            return {a.key for a in await client.read_artifacts()}

    import asyncio

    keys = asyncio.run(artifact_keys())
    assert {"dapt-summary", "dapt-report", "dapt-comparison", "dapt-per-class-f1", "dapt-confusion-matrix", "dapt-fertility"} <= keys

    # An artifact deleted from the store is rebuilt even though Prefect remembers the task.
    import shutil

    shutil.rmtree(store.local_dir(first["ids"]["report"]))
    third = pipeline(config=config)
    assert third["cached"]["report"] is False and third["cached"]["evaluate"] is True
    assert store.exists(first["ids"]["report"])
