"""Team mode, really run: PostgreSQL + Prefect server on loopback (infra/server.sh), prefect.yaml deployed,
a process worker, runs triggered through the API; then the scheduled-run cases: no new data (all cache
hits, seconds of work) and one new input file (exactly the stages that depend on it re-run)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from conftest import REUTERS, ROOT, read_jsonl_gz, write_jsonl
from pretrain.chain import STAGES, plan
from pretrain.configfile import validate_config
from pretrain.core.artifacts import ArtifactStore

pytestmark = [pytest.mark.server, pytest.mark.slow]
SERVER = ROOT / "infra" / "server.sh"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _have_postgres() -> bool:
    return shutil.which("initdb") is not None or any(Path("/usr/lib/postgresql").glob("*/bin/initdb"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """PostgreSQL and a Prefect server on 127.0.0.1 through infra/server.sh; stopped and removed afterwards."""
    if not _have_postgres():
        if os.environ.get("DAPT_REQUIRE_SERVER_TEST"):
            pytest.fail("PostgreSQL server binaries (initdb) not found; CI installs Debian's postgresql (.ci/run)")
        pytest.skip("PostgreSQL server binaries (initdb) not found: apt-get install postgresql")
    state = tmp_path_factory.mktemp("server")
    # As root PostgreSQL runs as user postgres, which cannot enter pytest's private temporary folders.
    pgdata = Path("/tmp") / f"dapt-test-pg-{uuid.uuid4().hex[:8]}"
    prefect_port = _free_port()
    auth = f"dapt:{uuid.uuid4().hex}"  # basic auth on, as when the server is exposed: every client below must send it
    env = {
        **os.environ,
        "DAPT_SERVER_DIR": str(state),
        "DAPT_PG_DATA": str(pgdata),
        "DAPT_PG_PORT": str(_free_port()),
        "DAPT_PREFECT_PORT": str(prefect_port),
        "DAPT_PYTHON": sys.executable,
        "PREFECT_HOME": str(state / "prefect-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_API_AUTH_STRING": auth,
        "PREFECT_API_AUTH_STRING": auth,
        "DAPT_CACHE": str(state / "cache"),
    }
    env.pop("PREFECT_PROFILES_PATH", None)
    started = subprocess.run(["bash", str(SERVER), "start"], env=env, capture_output=True, text=True, timeout=400)
    try:
        assert started.returncode == 0, started.stdout + started.stderr + (state / "prefect.log").read_text(errors="replace") if (state / "prefect.log").exists() else started.stderr
        print(started.stdout)
        yield env
    finally:
        subprocess.run(["bash", str(SERVER), "stop"], env=env, capture_output=True, text=True, timeout=120)
        shutil.rmtree(pgdata, ignore_errors=True)


def _prefect(env, *args, timeout=300):
    done = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _stage_ids(store) -> list[str]:
    return [i for i in store.ids() if not i.startswith("f-")]


def _run_ids(store) -> set[str]:
    return {i for i in store.ids() if i.startswith("f-")}


def _run_and_read(env, deployment: str) -> tuple[object, dict[str, dict]]:
    """Trigger a run of `deployment` through the API, wait for it; its state and each stage's table artifact."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterParentFlowRunId
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"], PREFECT_API_AUTH_STRING: env["PREFECT_API_AUTH_STRING"]}):
        run = run_deployment(deployment, timeout=900, poll_interval=2)

        async def stage_tables():
            async with get_client() as client:
                # Subflows link to their parent through a task run; filter on the parent task's flow run.
                children = await client.read_flow_runs(flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id])))
                artifacts = await client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[c.id for c in children])))
                tables = {}
                for a in artifacts:
                    if a.type == "table" and a.key and a.key.removeprefix("dapt-") in STAGES:
                        data = json.loads(a.data) if isinstance(a.data, str) else a.data
                        tables[a.key.removeprefix("dapt-")] = {row["field"]: row["value"] for row in data}
                keys = {a.key for a in artifacts}
                return tables, keys

        tables, keys = asyncio.run(stage_tables())
    return run, tables, keys


def test_deploy_on_postgres_server_then_scheduled_runs_are_incremental(server, tmp_path, tiny_config):
    env = server
    inputs = tmp_path / "incoming"
    stories = read_jsonl_gz(REUTERS / "corpus.jsonl.gz", limit=460)
    write_jsonl(inputs / "week1.jsonl", stories[:400])
    raw = {
        **tiny_config,
        "store": str(tmp_path / "store"),
        "ingest": {**tiny_config["ingest"], "inputs": [str(inputs)]},
        "evaluate": {**tiny_config["evaluate"], "num_epochs": 1},  # this test is about operations, not scores
    }
    config = validate_config(raw)

    _prefect(env, "work-pool", "create", "dapt-process", "--type", "process")
    out = _prefect(env, "deploy", "-n", "weekly", "--params", json.dumps({"config": raw}))
    assert "dapt-pipeline/weekly" in out
    worker_log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", "dapt-process", "--type", "process"],
        cwd=ROOT, env={**env, "PREFECT_WORKER_QUERY_SECONDS": "1"}, stdout=worker_log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        # 1. The first run builds everything.
        run, tables, keys = _run_and_read(env, "dapt-pipeline/weekly")
        assert run.state.is_completed(), f"{run.state.message}\n{(tmp_path / 'worker.log').read_text(errors='replace')[-5000:]}"
        store = ArtifactStore(config.store)
        ids = plan(config)
        stages = list(ids)  # the stages this config runs (distill is off in it)
        assert all(store.exists(aid) for aid in ids.values())
        assert {tables[s]["artifact"] for s in stages} == set(ids.values())
        assert all(tables[s]["cache hit"] == "no" for s in stages)
        assert {f"dapt-{s}" for s in stages} <= keys  # each stage's table
        print(f"run 1: {run.state.type.value} in {run.total_run_time.total_seconds():.1f} s")

        # 2. A scheduled run with no new data: every stage a cache hit, seconds of work.
        run, tables, _ = _run_and_read(env, "dapt-pipeline/weekly")
        assert run.state.is_completed(), run.state.message
        assert all(tables[s]["cache hit"] == "yes" for s in stages)
        work = sum(tables[s]["seconds in this run"] for s in stages)
        print(f"run 2 (no new data): {run.total_run_time.total_seconds():.1f} s in the flow run, {work:.2f} s of stage work")
        assert work <= 5.0
        assert len(_stage_ids(store)) == len(stages)
        runs = _run_ids(store)  # the evaluation's fine-tuning runs: base and adapted, a run per seed

        # 3. One new input file: every stage downstream of ingest re-runs; the base model does not.
        write_jsonl(inputs / "week2.jsonl", stories[400:])
        run, tables, _ = _run_and_read(env, "dapt-pipeline/weekly")
        assert run.state.is_completed(), run.state.message
        rebuilt = {s for s in stages if tables[s]["cache hit"] == "no"}
        assert rebuilt == {"ingest", "vocab", "tokens", "pretrain", "evaluate", "report"}
        new_ids = plan(config)
        assert new_ids["base"] == ids["base"] and all(new_ids[s] != ids[s] for s in rebuilt)
        assert len(_stage_ids(store)) == len(stages) + len(rebuilt)
        assert runs < _run_ids(store) and len(_run_ids(store) - runs) == len(runs) // 2  # base's runs reused, adapted's new
        print(f"run 3 (one new file): re-ran {sorted(rebuilt)} in {run.total_run_time.total_seconds():.1f} s")
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:  # a Prefect worker slow to shut down on a loaded machine: not what this test checks
            worker.kill()
            worker.wait(timeout=30)
        worker_log.close()


def test_with_basic_auth_the_api_refuses_requests_without_the_password(server):
    import base64
    import urllib.error
    import urllib.request

    url = server["PREFECT_API_URL"]
    assert urllib.request.urlopen(f"{url}/health", timeout=10).status == 200  # probes stay open
    request = urllib.request.Request(f"{url}/flows/filter", data=b"{}", method="POST", headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401
    wrong = base64.b64encode(b"dapt:wrong").decode()
    request.add_header("Authorization", f"Basic {wrong}")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401
    request.add_header("Authorization", "Basic " + base64.b64encode(server["PREFECT_API_AUTH_STRING"].encode()).decode())
    assert urllib.request.urlopen(request, timeout=10).status == 200
