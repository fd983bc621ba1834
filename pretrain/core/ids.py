"""Artifact ids: what names an artifact, and the check every id passes before it becomes part of a path.

An id is `<stage letter>-<20 hex digits>`: a hash of the stage name, the stage's resolved config, the
ids of its input artifacts, the content hashes of any raw source files it read, and the stage's code
version (`pretrain.core.codeversion`). Same inputs, settings and code -> same id -> the stage is skipped.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from pretrain.core.codeversion import code_version
from pretrain.core.errors import InputError

# One letter per stage so an id says what it is: c-3f2a... is a corpus.
PREFIXES = {
    "base": "b",
    "ingest": "c",
    "vocab": "v",
    "tokens": "t",
    "assess": "a",  # the go/no-go estimate before pretraining (pretrain/assess.py)
    "pretrain": "m",
    "distill": "d",
    "evaluate": "e",
    "finetune": "f",  # one fine-tuning run, built by the evaluate stage (pretrain/finetuning/finetune.py)
    "report": "r",
}
# The module whose code version names each kind of artifact: the stage's own, at the top of `pretrain/`;
# a fine-tuning run's is the library module that holds its recipe.
CODE_MODULES = {stage: f"pretrain.{stage}" for stage in PREFIXES} | {"finetune": "pretrain.finetuning.finetune"}
# Every id taken from a user, an alias or a manifest must match this before it touches a path.
ID_PATTERN = re.compile(r"[a-z]-[0-9a-f]{20}")


def check_id(value: Any, what: str = "artifact id") -> str:
    """`value` if it is an artifact id (`m-471df901523b1fc7a4ff`); an InputError naming it (and `what` it is) otherwise.

    Called on every id from a user, an alias entry or a manifest before it becomes part of a path, so
    `../../elsewhere/x` can never point a command at a folder outside the store.
    """
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise InputError(
            f"{what} {value!r} is not an artifact id (a stage letter, '-' and 20 hex digits, e.g. m-471df901523b1fc7a4ff); "
            "refusing to use it as a path"
        )
    return value


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def artifact_id(
    stage: str,
    config: dict[str, Any],
    inputs: dict[str, str] | None = None,
    sources: list[dict[str, Any]] | None = None,
) -> str:
    """The id of what `stage` builds from `config`, input artifact ids and raw source file hashes."""
    payload = {
        "stage": stage,
        "config": config,
        "inputs": inputs or {},
        # Only content counts: moving or renaming a raw file does not change the id.
        "sources": [s["sha256"] for s in sources or []],
        "code": code_version(CODE_MODULES[stage]),
    }
    digest = hashlib.sha256(canonical_json(payload).encode()).hexdigest()
    return f"{PREFIXES[stage]}-{digest[:20]}"
