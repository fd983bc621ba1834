"""From a config file to a checked config: YAML, `--set` overrides, and every check before anything runs.

`load_config(path, overrides)` reads the YAML (a key given twice is an error; `1e-4` is a number),
applies `key.path=value` overrides, validates every section against the schema (`pretrain/core/config.py`),
checks that every input path exists and that this machine can run the precision and compile settings,
and raises one `ConfigError` listing every problem with its key path (`pretrain.max_steps: ...`).
Relative paths are relative to the current working directory, as in the Hugging Face example scripts.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import os
import re
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from pretrain.core.config import ARTIFACT_ID, PipelineConfig, package_dir, student_problems, teacher_layer_count
from pretrain.core.errors import ConfigError, UserError
from pretrain.core.logs import get_logger
from pretrain.data.io import expand_inputs, expand_sources
from pretrain.training.machine import compile_problem, precision_problem

log = get_logger(__name__)


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> PipelineConfig:
    """Read a YAML config, apply `key.path=value` overrides, validate everything; raise one ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        raise ConfigError(f"{path}: not valid YAML at {where}: {e.problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    for override in overrides or []:
        _apply_override(raw, override, path)
    return validate_config(raw, source=str(path))


def validate_config(raw: dict[str, Any], source: str = "config") -> PipelineConfig:
    """Validate a config mapping: types and ranges, then that every input path exists."""
    problems: list[str] = []
    config = None
    try:
        config = PipelineConfig.model_validate(raw)
    except ValidationError as e:
        problems += [_describe(error) for error in e.errors()]
    problems += check_paths(raw)
    if config is not None and config.distill is not None:
        problems += distill_problems(config)
    if config is not None:
        problems += machine_problems(config)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        noun = "problem" if len(problems) == 1 else "problems"
        raise ConfigError(f"{source}: {len(problems)} {noun}:\n{lines}")
    assert config is not None
    return config


def check_paths(raw: dict[str, Any]) -> list[str]:
    """Every input path exists, on the raw mapping so they are reported alongside type errors."""
    problems = []
    ingest = raw.get("ingest") if isinstance(raw.get("ingest"), dict) else {}
    for i, item in _items(ingest.get("inputs")):
        if isinstance(item, dict):
            problems += [f"ingest.inputs[{i}]: {p}" for p in _dataset_problems(item)]
            continue
        try:
            if not expand_sources([item]):
                problems.append(f"ingest.inputs[{i}]: {item!r} matches no file{relative_to(item)}")
        except UserError as e:
            problems.append(f"ingest.inputs[{i}]: {e}")
    task = (raw.get("evaluate") or {}).get("task") if isinstance(raw.get("evaluate"), dict) else None
    if isinstance(task, dict):
        for key in ("train_files", "validation_files", "test_files"):
            for i, item in _items(task.get(key)):
                if isinstance(item, dict):
                    problems += [f"evaluate.task.{key}[{i}]: {p}" for p in _dataset_problems(item)]
                elif not expand_inputs([item]):
                    problems.append(f"evaluate.task.{key}[{i}]: {item!r} matches no file{relative_to(item)}")
    base = raw.get("base_model") if isinstance(raw.get("base_model"), dict) else {}
    if isinstance(base.get("source"), str):
        problem = _base_source_problem(base["source"])
        if problem:
            problems.append(f"base_model.source: {problem}")
        elif (raw.get("vocab") or {}).get("mode") == "extend" if isinstance(raw.get("vocab"), dict) else False:
            problem = _extend_problem(base["source"])
            if problem:
                problems.append(f"vocab.mode: extend: {problem}")
    models = raw["evaluate"].get("models") if isinstance(raw.get("evaluate"), dict) else None
    for i, model in enumerate(models if isinstance(models, list) else []):
        source = model.get("source") if isinstance(model, dict) else None
        if isinstance(source, str) and not ARTIFACT_ID.fullmatch(source):
            problem = _base_source_problem(source)
            if problem:
                problems.append(f"evaluate.models[{i}].source: {problem}")
    return problems


def machine_problems(config: PipelineConfig) -> list[str]:
    """Settings this machine cannot run (fp16 without CUDA, bf16 on a GPU without it, compile without its
    compiler), each naming its key; the config is checked on the machine that runs it, like its paths."""
    sections = {"pretrain": config.pretrain, "distill": config.distill, "evaluate": config.evaluate}
    if config.evaluate.tapt is not None:
        sections["evaluate.tapt.pretrain"] = config.evaluate.tapt.pretrain
    problems = []
    for key, section in sections.items():
        if section is None:
            continue
        problems.append(precision_problem(f"{key}.mixed_precision", section.mixed_precision))
        if getattr(section, "compile", False):
            problems.append(compile_problem(f"{key}.compile"))
    return [p for p in problems if p]


def relative_to(path: str) -> str:
    """` (relative to <cwd>)` for a relative local path, so a message says where it was looked for."""
    if "://" in path or os.path.isabs(os.path.expanduser(path)):
        return ""
    return f" (relative to {os.getcwd()})"


def _items(value: Any) -> list[tuple[int, Any]]:
    """(index, item) of the path (str) and dataset (mapping) entries of an input list."""
    return [(i, v) for i, v in enumerate(value) if isinstance(v, (str, dict))] if isinstance(value, list) else []


def _looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or os.sep != "/" and os.sep in source


def _dataset_problems(entry: dict) -> list[str]:
    """A `dataset:` input: the `datasets` package is installed, and a local folder exists (Hub ids are not looked up here)."""
    name = entry.get("dataset")
    if not isinstance(name, str):
        return []  # the schema reports it
    problems = []
    if importlib.util.find_spec("datasets") is None:
        problems.append(f"dataset {name!r}: reading a Hugging Face dataset needs the datasets package: pip install 'dapt[datasets]'")
    if not Path(name).expanduser().exists() and _looks_like_path(name):
        problems.append(f"dataset {name!r}: no such folder{relative_to(name)}")
    return problems


def distill_problems(config: PipelineConfig) -> list[str]:
    """The student must be smaller than the teacher; checked here when the base model's config is on disk.

    The teacher (the adapted model) has the base model's layers. A Hub base model is checked by the
    distill stage itself, before any data is read.
    """
    source = config.base_model.source
    folder = package_dir(source) if source.startswith("pkg:") else Path(source)
    if folder is None or not (folder / "config.json").is_file():
        return []
    try:
        layers = teacher_layer_count(json.loads((folder / "config.json").read_text()))
    except (OSError, ValueError):
        return []
    return student_problems(config.distill, layers) if layers is not None else []


def _base_source_problem(source: str) -> str | None:
    if source.startswith("pkg:"):
        folder = package_dir(source)
        if folder is None:
            module = source[4:].partition("/")[0]
            return f"{source!r}: Python package {module!r} is not installed (the Makefile installs the demo's)"
        if not (folder / "config.json").is_file():
            return f"{source!r}: {folder} has no config.json"
        return None
    path = Path(source)
    if path.exists():
        return None if (path / "config.json").is_file() else f"{source!r}: local folder has no config.json"
    if _looks_like_path(source):
        return f"{source!r}: no such folder{relative_to(source)}"
    return None  # a Hub id; resolved (with network) when the base model is imported


def _extend_problem(source: str) -> str | None:
    """Why `vocab.mode: extend` cannot work with a local base model's tokenizer (read from its files), or None."""
    from pretrain.models.families import extend_problem

    folder = package_dir(source) if source.startswith("pkg:") else Path(source).expanduser()
    if folder is None or not (folder / "config.json").is_file():
        return None  # a Hub model: the vocab stage checks it
    try:
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    return extend_problem(folder, model_type)


def _describe(error: dict[str, Any]) -> str:
    parts = _without_tags(error["loc"])
    loc = _key_path(parts)
    if error["type"] == "extra_forbidden":
        known = _known_keys(parts[:-1])
        hint = difflib.get_close_matches(str(parts[-1]), known, n=1)
        suggestion = f"; did you mean {hint[0]!r}?" if hint else (f"; known keys: {', '.join(known)}" if known else "")
        return f"{loc}: unknown key{suggestion}"
    if error["type"] == "missing":
        return f"{loc}: required key is missing"
    message = error["msg"].removeprefix("Value error, ")
    value = error.get("input")
    shown = "" if isinstance(value, (dict, list)) or value is None else f" (got {value!r})"
    if error["type"] == "bool_type":
        shown += "; write true or false"
    return f"{loc or 'top level'}: {message}{shown}"


def _without_tags(loc: tuple) -> tuple:
    """The error location without the tag pydantic adds after a list index for an `Input` (`path` or `dataset`)."""
    return tuple(part for i, part in enumerate(loc) if not (i and isinstance(loc[i - 1], int) and part in ("path", "dataset")))


def _key_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _known_keys(loc: tuple) -> list[str]:
    model: type[BaseModel] = PipelineConfig
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        found = _section_types(getattr(field, "annotation", None))
        if len(found) != 1:
            return []
        model = found[0]
    return list(model.model_fields)


def _section_types(annotation: Any) -> list[type[BaseModel]]:
    """The config sections inside a field's type (`X`, `X | None`, `list[X]`, an `Input`)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found = []
    for arg in typing.get_args(annotation):
        found += [t for t in _section_types(arg) if t not in found]
    return found


# Keys of which a section takes exactly one: `--set` of one drops the other the file gives (with a warning), so an
# override works on any config, whichever of the two it was written with (`dapt init` writes max_tokens).
EXCLUSIVE = {"max_steps": "max_tokens", "max_tokens": "max_steps", "test_files": "test_fraction", "test_fraction": "test_files"}


def _apply_override(raw: dict, override: str, path: Path) -> None:
    key, sep, value = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {override!r}: expected KEY.PATH=VALUE, e.g. pretrain.max_steps=20")
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {part!r} in {path} is not a section")
    try:
        node[parts[-1]] = yaml.load(value, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(
            f"override {override!r}: the value {value!r} is not valid YAML ({problem}); "
            f"quote a string that starts with [, {{, \" or ', e.g. --set '{key.strip()}=\"{value}\"'"
        ) from None
    other = EXCLUSIVE.get(parts[-1])
    if other and node.get(other) not in (None, []) and node[parts[-1]] not in (None, []):
        dropped = node.pop(other)
        name = ".".join([*parts[:-1], other])
        log.warning("--set %s replaces %s (%s in %s): the two are exclusive, the config takes one of them", key.strip(), name, dropped, path)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice in one mapping (plain YAML silently keeps the last).

    It also reads `1e-4` as a number, as YAML 1.2 and JSON do (YAML 1.1 wants `1.0e-4`, and reads
    `1e-4` as a string), so a learning rate written the usual way is a float, not a type error; and
    only `true` and `false` as booleans, as YAML 1.2 does: YAML 1.1 also reads yes/no/on/off/y/n, so
    `lowercase: on` would pass where `lowercase: 1` is refused, and `mixed_precision: no` would be False.
    Such words stay strings, which a boolean key refuses by name.
    """

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice in this section", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)
_UniqueKeyLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)[eE][-+]?[0-9]+$"), list("-+.0123456789")
)
