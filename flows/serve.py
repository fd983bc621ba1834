"""`dapt serve`: the pipeline on a schedule from this machine, no work pool or worker needed.

    dapt serve configs/demo.yaml --cron "0 3 * * 1"     # Mondays 03:00 UTC, until Ctrl-C

It registers the `dapt-pipeline` deployment (the config as its parameter, the cron schedule, at most
one run at a time) and one deployment per stage flow (no schedule: run one from the UI or with
`prefect deployment run <stage>/<name>`), then executes their runs in subprocesses of this process.
Needs a Prefect server (`PREFECT_API_URL`; see infra/server.sh): the temporary server of `dapt run`
stops with its process, and a schedule needs one that stays up.
"""

from __future__ import annotations

import os

from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.schedules import Cron
from pydantic import ValidationError

from flows.pipeline import STAGE_FLOWS, pipeline
from pretrain.core.config import PipelineConfig
from pretrain.core.errors import UserError


def cron_schedule(cron: str, timezone: str) -> Cron:
    """A Prefect cron schedule, or a UserError saying what is wrong with the expression or time zone."""
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise UserError(f"--timezone {timezone!r}: not a time zone; use an IANA name such as 'UTC' or 'Europe/Berlin'") from None
    try:
        return Cron(cron, timezone=timezone)
    except (ValidationError, ValueError) as e:
        first = e.errors()[0]["msg"] if isinstance(e, ValidationError) else str(e)
        raise UserError(
            f"--cron {cron!r}: {first}. Give five fields (minute hour day-of-month month "
            "day-of-week), e.g. '0 3 * * 1' for Mondays 03:00"
        ) from None


def deployments(config: PipelineConfig, name: str, cron: str | None, timezone: str = "UTC") -> list:
    """The pipeline deployment (scheduled when `cron` is given) and one unscheduled deployment per stage."""
    parameters = {"config": config.model_dump(mode="json")}
    schedules = [cron_schedule(cron, timezone)] if cron else []
    # A slow run must not overlap the next scheduled one: both would build the same artifacts.
    one_at_a_time = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)
    result = [
        pipeline.to_deployment(
            name=name,
            schedules=schedules,
            parameters=parameters,
            concurrency_limit=one_at_a_time,
            description=f"{config.name}: the whole pipeline (cache hits for every stage whose inputs did not change)",
            tags=["dapt"],
        )
    ]
    for stage, stage_flow in STAGE_FLOWS.items():
        result.append(
            stage_flow.to_deployment(
                name=name,
                parameters=parameters,
                description=f"{config.name}: the {stage} stage alone (its inputs must be in the store)",
                tags=["dapt", stage],
            )
        )
    return result


def serve_pipeline(config: PipelineConfig, name: str, cron: str | None, timezone: str = "UTC") -> None:
    """Register the deployments and run their flow runs here until interrupted."""
    from prefect import serve

    if not os.environ.get("PREFECT_API_URL"):
        from prefect.settings import PREFECT_API_URL

        if not PREFECT_API_URL.value():
            raise UserError(
                "dapt serve needs a Prefect server that stays up: start one (`make server`, or "
                "`prefect server start`) and set PREFECT_API_URL=http://127.0.0.1:4200/api"
            )
    serve(*deployments(config, name, cron, timezone))
