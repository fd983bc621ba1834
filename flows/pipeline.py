"""Prefect flows: one per stage, and `pipeline` that chains them.

    dapt run configs/demo.yaml                  # the usual way in
    python -m flows.pipeline configs/demo.yaml  # the same, without the CLI

Each stage flow runs one task whose Prefect cache key is the stage's artifact id: unchanged inputs,
settings and code give the same id, so the task is a cache hit and nothing is rebuilt. The artifact
store stays the source of truth: when an id is missing from the store, the task runs again even if
Prefect remembers it (refresh_cache). Training is never retried; a failed task fails the run with
the stage's error message.
"""

from __future__ import annotations

import base64
import re
import sys
from pathlib import Path

import flows  # noqa: F401  (Prefect defaults for a first run; must precede the prefect import)
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_image_artifact, create_markdown_artifact, create_table_artifact
from prefect.states import Failed, State

from pretrain import report
from pretrain.artifacts import ArtifactStore
from pretrain.config import PipelineConfig
from pretrain.errors import UserError
from pretrain.launch import launch_pretrain, needs_launcher
from pretrain.pipeline import STAGES, run_stage, stage_id


def _artifact_id_key(context, parameters: dict) -> str:
    return parameters["artifact_id"]


def _user_error(state: State) -> State | None:
    """A Failed state carrying just the message when `state` failed on a user mistake, else None.

    User mistakes (UserError) end the run with their message and no traceback; any other exception
    is a bug and propagates with its traceback.
    """
    if state.is_failed() and state.result(raise_on_failure=False) is None:
        return Failed(message=state.message)
    return None


@task(
    name="build-artifact",
    task_run_name="{stage} {artifact_id}",
    cache_key_fn=_artifact_id_key,
    persist_result=True,
    result_serializer="json",
)
def build_artifact(stage: str, config: PipelineConfig, ids: dict[str, str], artifact_id: str) -> str | State:
    store = ArtifactStore(config.store)
    try:
        if stage == "pretrain" and needs_launcher(config.pretrain.launcher):
            # Several processes/GPUs/nodes: an `accelerate launch` job whose output goes into this run's log.
            launch_pretrain(config, on_line=get_run_logger().info)
            built = artifact_id if store.exists(artifact_id) else "(nothing published)"
        else:
            built = run_stage(stage, config, store, ids)
    except UserError as e:
        return Failed(message=f"{stage}: {e}")
    if built != artifact_id:  # the plan and the stage must agree, or caching would lie
        raise RuntimeError(f"{stage}: planned artifact {artifact_id} but built {built}")
    return built


def _stage_flow(stage: str):
    @flow(name=stage, flow_run_name=f"{stage}", validate_parameters=True)
    def stage_flow(config: PipelineConfig, ids: dict[str, str]) -> dict | State:
        """Build (or find in the store) this stage's artifact from the ids of the stages before it."""
        store = ArtifactStore(config.store)
        try:
            aid = stage_id(stage, config, ids)
        except UserError as e:
            return Failed(message=f"{stage}: {e}")
        cached = store.exists(aid)
        state = build_artifact.with_options(refresh_cache=not cached)(stage, config, ids, aid, return_state=True)
        if failed := _user_error(state):
            return failed
        state.result()  # re-raises a bug's exception
        get_run_logger().info("%s %s: %s", stage, aid, "cache hit" if cached else "built")
        return {"id": aid, "cached": cached}

    stage_flow.__name__ = f"{stage}_flow"
    return stage_flow


base_flow = _stage_flow("base")
ingest_flow = _stage_flow("ingest")
vocab_flow = _stage_flow("vocab")
tokens_flow = _stage_flow("tokens")
pretrain_flow = _stage_flow("pretrain")
evaluate_flow = _stage_flow("evaluate")
report_flow = _stage_flow("report")
STAGE_FLOWS = {
    "base": base_flow,
    "ingest": ingest_flow,
    "vocab": vocab_flow,
    "tokens": tokens_flow,
    "pretrain": pretrain_flow,
    "evaluate": evaluate_flow,
    "report": report_flow,
}


@flow(name="dapt-pipeline")
def pipeline(config: PipelineConfig) -> dict | State:
    """Ingest -> vocab -> tokens -> pretrain -> evaluate -> report; returns ids, cache hits and the table."""
    logger = get_run_logger()
    ids: dict[str, str] = {}
    cached: dict[str, bool] = {}
    for stage in STAGES:
        state = STAGE_FLOWS[stage](config=config, ids=ids, return_state=True)
        if failed := _user_error(state):
            return failed
        result = state.result()
        ids[stage], cached[stage] = result["id"], result["cached"]

    store = ArtifactStore(config.store)
    rows = report.summary_rows(store, {s: ids[s] for s in report.ROLES}, cached)
    report_dir = store.local_dir(ids["report"])
    create_table_artifact(rows, key="dapt-summary", description=f"{config.name}: artifacts of this run")
    create_markdown_artifact(_inline_images(report_dir), key="dapt-report", description=f"{config.name} report")
    for png in sorted(report_dir.glob("*.png")):
        create_image_artifact(_data_url(png), key=f"dapt-{png.stem.replace('_', '-')}", description=f"{config.name}: {png.name}")
    hits = sum(cached.values())
    logger.info("%d of %d stages were cache hits; report: %s", hits, len(STAGES), report_dir / "report.md")
    comparison = (report_dir / "comparison.txt").read_text()
    return {"ids": ids, "cached": cached, "rows": rows, "comparison": comparison, "report": str(report_dir / "report.md")}


def _data_url(png: Path) -> str:
    # The store may be a local folder the Prefect UI cannot reach: the image travels inside the artifact.
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()


def _inline_images(report_dir: Path) -> str:
    """report.md with its PNGs embedded, so the Prefect artifact is complete on its own."""
    markdown = (report_dir / "report.md").read_text()
    return re.sub(r"\]\(([\w.-]+\.png)\)", lambda m: f"]({_data_url(report_dir / m.group(1))})", markdown)


if __name__ == "__main__":
    from flows.cli import main

    sys.exit(main(["run", *sys.argv[1:]]))
