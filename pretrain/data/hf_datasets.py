"""Hugging Face datasets as inputs: what a `dataset:` input is (its identity, for artifact ids) and its records.

    ingest:
      inputs:
        - corpus/                          # files, as ever
        - dataset: ORG/NAME                # a Hub dataset, streamed: pip install 'dapt[datasets]'
          split: train
          config: default                  # its configuration (subset), when it has several
          revision: main                   # the artifact id hashes the commit this resolves to
        - dataset: data/my_saved_dataset   # a local `save_to_disk` folder, or a folder in the Hub's layout

The same form works for the task (`evaluate.task.train_files: [{dataset: ORG/NAME, split: train}]`).
A Hub dataset is read with `datasets.load_dataset(..., streaming=True)`, so nothing is downloaded in
full before it is read; a `save_to_disk` folder with `datasets.load_from_disk` (memory-mapped).
Paths such as `hf://datasets/ORG/NAME/data/*.parquet` need none of this module: they are fsspec URLs
(huggingface_hub's HfFileSystem) and are read like any other file.

Identity: the artifact id hashes what was read, never where from. A Hub dataset counts as the commit
its `revision` resolves to (the resolved commit is also what is then read, so the hash and the data
agree even if the branch moves meanwhile); a local folder as the sha256 of its files (the same folder
copied elsewhere gives the same id); each with its config and split. Class-label columns are read as
their names, so a task's labels are the dataset's label names, not integers.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Iterator

from pretrain.core.artifacts import source_digest
from pretrain.core.errors import InputError
from pretrain.core.ids import canonical_json

# How a dataset input travels as a source string (in ingest pieces and manifests): "dataset:" + JSON.
PREFIX = "dataset:"
_COMMIT = re.compile(r"[0-9a-f]{40}")
_SAVED = ("dataset_info.json", "state.json")
_SAVED_DICT = "dataset_dict.json"


def datasets_module():
    """The `datasets` package, or an error that says how to install it."""
    try:
        import datasets
    except ImportError:
        raise InputError("reading a Hugging Face dataset (a `dataset:` input) needs the datasets package: pip install 'dapt[datasets]'") from None
    return datasets


def spec_of(source: Any) -> dict[str, Any]:
    """{dataset, split, config, revision} of a config entry (a DatasetSource) or a source string."""
    if isinstance(source, str):
        return json.loads(source[len(PREFIX) :])
    if isinstance(source, dict):
        return source
    return {"dataset": source.dataset, "split": source.split, "config": source.config, "revision": source.revision}


def is_source(source: Any) -> bool:
    """Whether a source string names a dataset input (see `source_string`)."""
    return isinstance(source, str) and source.startswith(PREFIX)


def source_string(spec: dict[str, Any]) -> str:
    return PREFIX + canonical_json({k: spec.get(k) for k in ("dataset", "split", "config", "revision")})


def display(source: Any) -> str:
    """`dataset ORG/NAME (split train)`: how messages and manifests name it."""
    spec = spec_of(source)
    extra = ", ".join(f"{k} {spec[k]}" for k in ("config", "split", "revision") if spec.get(k))
    return f"dataset {spec['dataset']} ({extra})"


def _local(name: str) -> Path | None:
    path = Path(name).expanduser()
    return path if path.is_dir() else None


def _saved_kind(folder: Path) -> str | None:
    if (folder / _SAVED_DICT).is_file():
        return "dict"
    if all((folder / name).is_file() for name in _SAVED):
        return "dataset"
    return None


def resolve(source: Any) -> dict[str, Any]:
    """The input as a manifest source: `path` (how to read it, pinned), size, and a sha256 of its identity.

    A Hub dataset's revision is resolved to a commit here (one Hub request), and reading then uses that
    commit; a local folder's files are hashed (remembered while their size and change stamps stay).
    """
    spec = spec_of(source)
    folder = _local(spec["dataset"])
    if folder is not None:
        files = sorted(p for p in folder.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))
        if not files:
            raise InputError(f"{display(spec)}: the folder {folder} holds no files")
        digests = [(p.relative_to(folder).as_posix(), source_digest(p)) for p in files]
        identity = {"files": [[name, d["sha256"]] for name, d in digests]}
        size = sum(d["size"] for _, d in digests)
        pinned = {**spec, "revision": None}
    else:
        commit = _hub_commit(spec)
        identity, size, pinned = {"commit": commit}, 0, {**spec, "revision": commit}
    identity.update(config=spec.get("config"), split=spec["split"])
    sha = hashlib.sha256(canonical_json(identity).encode()).hexdigest()
    return {"path": source_string(pinned), "size": size, "sha256": sha, "dataset": spec["dataset"]}


def _hub_commit(spec: dict[str, Any]) -> str:
    revision = spec.get("revision")
    if revision and _COMMIT.fullmatch(revision):
        return revision
    try:
        from huggingface_hub import HfApi

        info = HfApi().dataset_info(spec["dataset"], revision=revision)
    except Exception as e:  # offline, unknown repo, gated, a typo: the hub raises many kinds
        raise InputError(
            f"{display(spec)}: cannot resolve it on the Hugging Face Hub ({type(e).__name__}: {e}); check the name "
            "and your network (a local folder must exist; with no network, give the commit as `revision`)"
        ) from None
    return info.sha


def records(source: Any, columns: list[str] | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """(location, record) of every row of the dataset's split, streamed; `columns`: read only those (when all exist).

    Class-label columns (and lists of them) come back as the label names.
    """
    spec = spec_of(source)
    datasets = datasets_module()
    folder = _local(spec["dataset"])
    kind = _saved_kind(folder) if folder is not None else None
    try:
        if kind is not None:
            data = datasets.load_from_disk(str(folder))
            if kind == "dict":
                if spec["split"] not in data:
                    raise InputError(f"{display(spec)}: no split {spec['split']!r} (splits: {', '.join(data)})")
                data = data[spec["split"]]
            elif spec["split"] != "train" and data.split is not None and str(data.split) != spec["split"]:
                raise InputError(f"{display(spec)}: the saved dataset is the {data.split} split, not {spec['split']!r}")
        else:
            data = datasets.load_dataset(
                str(folder) if folder is not None else spec["dataset"], spec.get("config"), split=spec["split"],
                revision=None if folder is not None else spec.get("revision"), streaming=True,
            )  # fmt: skip
    except InputError:
        raise
    except Exception as e:  # datasets raises ValueError, FileNotFoundError, its own DatasetNotFoundError, ...
        raise InputError(f"{display(spec)}: cannot be loaded ({type(e).__name__}: {e})") from None
    features = data.features or {}
    if columns and features and all(c in features for c in columns):
        data = data.select_columns(columns)
    names = {name: _label_names(feature) for name, feature in features.items()}
    names = {name: labels for name, labels in names.items() if labels is not None}
    where = display(spec)
    for i, row in enumerate(data, start=1):
        for name, labels in names.items():
            if name in row:
                row[name] = _as_names(row[name], labels)
        yield f"{where} record {i}", row


def _label_names(feature: Any) -> list[str] | None:
    """The names of a ClassLabel feature, or of the ClassLabel inside a list feature."""
    names = getattr(feature, "names", None)
    if isinstance(names, list):
        return names
    inner = getattr(feature, "feature", None)
    if inner is None and isinstance(feature, list) and feature:
        inner = feature[0]
    return getattr(inner, "names", None) if inner is not None else None


def _as_names(value: Any, names: list[str]) -> Any:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(names):
        return names[value]
    if isinstance(value, list):
        return [_as_names(v, names) for v in value]
    return value
