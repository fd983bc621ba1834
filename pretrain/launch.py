"""Start the pretrain stage as an `accelerate launch` job: several processes, GPUs, nodes, FSDP or DeepSpeed.

    python -m pretrain.launch --config configs/demo.yaml --set pretrain.launcher.num_processes=2

The job runs `python -m pretrain.pretrain --config <the resolved config>` under `accelerate launch`,
so it finds its inputs in the store by id exactly as a stage run alone does; rank 0 publishes the
model artifact. On a machine without GPUs, several processes train on the CPU with the gloo backend
(`accelerate launch --num_processes N` alone would start one: see infra/accelerate/cpu_2proc.yaml).
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

import yaml

from pretrain.core.config import LauncherConfig, PipelineConfig
from pretrain.core.errors import UserError


class LaunchError(RuntimeError):
    """The launched training job failed; the message ends with the last lines it printed."""


def needs_launcher(cfg: LauncherConfig) -> bool:
    return cfg.num_processes > 1 or cfg.config_file is not None


def launch_command(cfg: LauncherConfig, config_path: Path) -> tuple[list[str], dict[str, str]]:
    """The `accelerate launch` command line and environment for the pretrain stage."""
    import torch

    command = [sys.executable, "-m", "accelerate.commands.launch"]
    env = dict(os.environ)
    if cfg.config_file is not None:
        command += ["--config_file", cfg.config_file]
        if _wants_cpu(Path(cfg.config_file)) or not torch.cuda.is_available():
            env["ACCELERATE_USE_CPU"] = "1"  # accelerate's multi-process launcher does not pass use_cpu on
    if cfg.num_processes > 1 or cfg.config_file is None:
        command += ["--num_processes", str(cfg.num_processes)]
    if cfg.config_file is None and cfg.num_processes > 1:
        command += ["--num_machines", "1", "--multi_gpu"]
        if not torch.cuda.is_available():
            # Accelerate starts N CPU processes (gloo) only this way; `--cpu` would start one.
            env["ACCELERATE_USE_CPU"] = "1"
    command += [*cfg.extra_args, "-m", "pretrain.pretrain", "--config", str(config_path)]
    return command, env


def _wants_cpu(config_file: Path) -> bool:
    if not config_file.is_file():
        raise UserError(f"pretrain.launcher.config_file: {config_file} does not exist (see infra/accelerate/ for examples)")
    try:
        settings = yaml.safe_load(config_file.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"pretrain.launcher.config_file: {config_file} is not valid YAML ({e})") from None
    return bool(settings.get("use_cpu"))


def launch_pretrain(config: PipelineConfig, on_line: Callable[[str], None] = print, tail_lines: int = 40) -> None:
    """Run the pretrain stage under `accelerate launch`, passing every output line to `on_line`."""
    with tempfile.TemporaryDirectory(prefix="dapt-launch-") as folder:
        config_path = Path(folder) / "pipeline.yaml"
        config_path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
        command, env = launch_command(config.pretrain.launcher, config_path)
        on_line("launching: " + " ".join(command))
        tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        errors = []
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as job:
            assert job.stdout is not None
            for line in job.stdout:
                line = line.rstrip("\n")
                tail.append(line)
                on_line(line)
                # A stage stopping on a user mistake prints "error: ..." (torchrun may prefix "[rankN]: ").
                if (message := re.sub(r"^\[rank\d+\]:\s*", "", line)).startswith("error: "):
                    errors.append(message.removeprefix("error: "))
            code = job.wait()
    if code == 0:
        return
    if errors:
        raise UserError(errors[0])
    raise LaunchError(f"accelerate launch of the pretrain stage exited with status {code}; last lines:\n" + "\n".join(tail))


def main(argv: list[str] | None = None) -> None:
    import argparse

    from pretrain.configfile import load_config

    parser = argparse.ArgumentParser(prog="python -m pretrain.launch", description="Run the pretrain stage under accelerate launch.")
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        launch_pretrain(load_config(args.config, args.overrides))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
