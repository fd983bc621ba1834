"""`python -m pretrain.<stage> --config X`: one stage run alone, its inputs found in the store by id.

Every stage module ends with

    if __name__ == "__main__":
        from pretrain.stage_cli import main

        main(STAGE)

and this module reads the stage's record in the table (`pretrain/chain.py`) only inside `main`: the
table imports every stage, and a stage module never imports the table (no import circle; see
tests/test_imports.py).
"""

from __future__ import annotations

import argparse
import sys

from pretrain.core.errors import UserError, os_error_line
from pretrain.core.logs import is_main_process, setup_logging


def main(*stages: str, argv: list[str] | None = None) -> None:
    """Run `stages` (one, or a module's several in table order) from the command line; their inputs must be in the store."""
    from pretrain import chain
    from pretrain.configfile import load_config
    from pretrain.core.artifacts import ArtifactStore

    records = [chain.stage(name) for name in stages]
    described = ", ".join(r.name for r in records)
    parser = argparse.ArgumentParser(prog=f"python -m {records[0].command}", description=f"Run {described} alone (stages of the chain).")
    parser.add_argument("--config", required=True, help="pipeline YAML, e.g. configs/demo.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. pretrain.max_steps=20 (repeatable)")  # fmt: skip
    args = parser.parse_args(argv)
    setup_logging()
    try:
        cfg = load_config(args.config, args.overrides)
        for record in records:
            cfg = chain.switched_on(record, cfg)  # a stage run by name runs even when its switch is off
        for record in records:
            if not chain.enabled(record, cfg):
                raise UserError(f"{record.name} is off: {args.config} has no `{record.when}` section")
        lines = chain.preflight(cfg)  # a bad task file fails now, not after the stages before evaluate
        if is_main_process():
            print("\n".join(lines), file=sys.stderr)
        store = ArtifactStore(cfg.store)
        advice = f"`python -m {{command}} --config {args.config}`, or the whole chain: `dapt run {args.config}`"
        for record in records:
            print(chain.run_stage(record, cfg, store, chain.input_ids(record, cfg, store, how_to_build=advice)))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # a read-only or full disk, a permission: one line naming the path, as `dapt` prints it
        if (line := os_error_line(e)) is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        sys.exit(2)
