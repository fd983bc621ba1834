"""Deployment material: prefect.yaml, `dapt serve`'s deployments, the Kubernetes GPU template, retry policies."""

import json

import pytest
import yaml

from conftest import ROOT
from pretrain.chain import STAGES
from pretrain.configfile import load_config
from pretrain.core.config import PipelineConfig
from pretrain.core.errors import UserError

PREFECT_YAML = yaml.safe_load((ROOT / "prefect.yaml").read_text())


def test_prefect_yaml_deploys_the_demo_pipeline_weekly_and_every_stage():
    deployments = PREFECT_YAML["deployments"]
    weekly = next(d for d in deployments if d["name"] == "weekly")
    assert weekly["entrypoint"] == "flows/pipeline.py:pipeline"
    assert weekly["schedules"][0]["cron"] == "0 3 * * 1" and weekly["concurrency_limit"] == 1
    assert weekly["work_pool"]["name"] == "dapt-process"
    # The parameter is the typed config, equal to the demo's (so the two cannot drift apart).
    demo = load_config(ROOT / "configs" / "demo.yaml")
    assert PipelineConfig.model_validate(weekly["parameters"]["config"]) == demo
    stages = {d["entrypoint"].rsplit(":", 1)[1]: d for d in deployments if d["name"] == "stage"}
    assert set(stages) == {f"{s.replace('-', '_')}_flow" for s in STAGES}
    assert stages["pretrain_flow"]["work_pool"]["name"] == "dapt-gpu"

    import flows.pipeline as fp

    for entry in [weekly, *stages.values()]:
        assert callable(getattr(fp, entry["entrypoint"].rsplit(":", 1)[1]))
    assert "pull" not in PREFECT_YAML  # the worker runs in the deploy directory: relative paths resolve


def test_serve_builds_a_scheduled_pipeline_and_a_deployment_per_stage():
    from flows.serve import deployments

    config = load_config(ROOT / "configs" / "demo.yaml")
    built = deployments(config, name="nightly", cron="30 2 * * *", timezone="Europe/Berlin")
    assert [d.flow_name for d in built] == ["dapt-pipeline", *STAGES]
    pipeline = built[0]
    assert pipeline.name == "nightly"
    assert pipeline.schedules[0].schedule.cron == "30 2 * * *" and pipeline.schedules[0].schedule.timezone == "Europe/Berlin"
    assert all(not d.schedules for d in built[1:])
    assert PipelineConfig.model_validate(pipeline.parameters["config"]) == config
    # The UI renders a form from the parameter schema: the config's sections are in it.
    schema = pipeline._parameter_openapi_schema if hasattr(pipeline, "_parameter_openapi_schema") else pipeline.parameter_openapi_schema
    assert "config" in schema.properties and "PipelineConfig" in json.dumps(schema.model_dump())


@pytest.mark.parametrize(
    ("cron", "timezone", "message"),
    [("0 3 * *", "UTC", "--cron '0 3 * *': "), ("0 3 * * 1", "Mars/Olympus", "--timezone 'Mars/Olympus': not a time zone")],
)
def test_a_bad_schedule_is_a_clear_error(cron, timezone, message):
    from flows.serve import cron_schedule

    with pytest.raises(UserError, match="^" + message.replace("*", r"\*")):
        cron_schedule(cron, timezone)


def test_dapt_serve_without_a_server_says_how_to_start_one(monkeypatch, capsys):
    from flows.cli import main

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: None}):
        assert main(["serve", str(ROOT / "configs" / "demo.yaml"), "--cron", "0 3 * * 1"]) == 2
    assert "make server" in capsys.readouterr().err


def test_the_kubernetes_gpu_template_requests_gpus():
    from prefect.utilities.templating import apply_values

    template = json.loads((ROOT / "infra" / "k8s" / "gpu-base-job-template.json").read_text())
    defaults = {name: spec.get("default") for name, spec in template["variables"]["properties"].items()}
    job = apply_values(template["job_configuration"], {**defaults, "gpu_count": 8, "command": "python -m prefect.engine"})
    container = job["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert container["image"] == "dapt:cuda" and container["args"] == "python -m prefect.engine"
    assert defaults["gpu_count"] == 1


def test_retries_are_for_io_only():
    from flows import pipeline as fp

    assert fp.ingest_shard.retries > 0 and fp.tokens_shard.retries > 0
    assert fp._build_task("base").retries > 0
    for stage in ("pretrain", "evaluate", "vocab"):
        assert fp._build_task(stage).retries == 0, stage
    delays = fp.ingest_shard.retry_delay_seconds
    assert list(delays) == sorted(delays) and delays[0] < delays[-1]  # exponential backoff

    class Done:
        def __init__(self, error):
            self.error = error

        def result(self):
            raise self.error

    assert fp._retry_on_io(None, None, Done(ConnectionResetError("reset"))) is True
    assert fp._retry_on_io(None, None, Done(ValueError("a bug"))) is False
