"""Handing artifacts over: aliases with their history, a record of pipeline runs, verify, and gc.

    dapt artifacts promote m-722717eccb734486a6b7 production
    dapt artifacts resolve production
    dapt artifacts history production
    dapt artifacts verify m-722717eccb734486a6b7
    dapt artifacts gc [--keep-runs 5] [--yes]

An alias (`production`, `latest`, any name) is a folder `<store>/.aliases/<alias>/` of immutable
entries, one per promotion: `<time in ns>-<random>.json` with the id it now points to, what it pointed
to before, when, who and on which host. The alias points at its newest entry. Entries are only ever
added (each written whole under a fresh name: renamed into place on a local store, one PUT on an
object store), never rewritten, so two processes promoting at once cannot corrupt anything or lose a
promotion: both entries are kept in the history and the later one wins. The same pattern records
each finished pipeline run under `<store>/.runs/` (its artifact ids), which `gc` keeps.

This module is not imported by any stage, on purpose: an artifact's id hashes the code of its stage
and of every `pretrain` module the stage imports, and aliases say nothing about an artifact's content.
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import json
import os
import re
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from pretrain.core.artifacts import MANIFEST, ArtifactStore
from pretrain.core.errors import InputError, UserError
from pretrain.core.ids import ID_PATTERN, check_id
from pretrain.core.logs import get_logger
from pretrain.core.progress import progress

log = get_logger(__name__)

ALIASES = ".aliases"
RUNS = ".runs"
ALIAS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
ID_PREFIX = re.compile(r"[a-z]-[0-9a-f]{3,19}")


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")


def _who() -> dict[str, Any]:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    return {"user": user, "host": socket.gethostname(), "pid": os.getpid()}


def _entry_name() -> str:
    # Sorts by time; the random part keeps two entries written in the same nanosecond apart.
    return f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}.json"


def _put_new(store: ArtifactStore, folder: str, record: dict[str, Any]) -> str:
    """Write `record` as a new entry of `folder`, whole or not at all; returns its path."""
    data = (json.dumps(record, indent=1, sort_keys=True) + "\n").encode()
    path = f"{store.root}/{folder}/{_entry_name()}"
    if store.is_local:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)  # readers never see a half-written entry
    else:
        store.fs.pipe_file(path, data)  # one PUT: an object appears whole or not at all
    return path


def _entries(store: ArtifactStore, folder: str) -> list[dict[str, Any]]:
    """Every entry of `folder`, oldest first."""
    path = f"{store.root}/{folder}"
    if not store.fs.exists(path):
        return []
    names = sorted(
        name
        for name in (p.rstrip("/").rsplit("/", 1)[-1] for p in store.fs.ls(path, detail=False))
        if name.endswith(".json") and not name.startswith(".")
    )
    out = []
    for name in names:
        where = store.fs.unstrip_protocol(f"{path}/{name}")
        # One read of the whole object (one GET on S3). Not fs.open: fsspec's memory file system hands
        # every reader of a file the same file object, so concurrent readers in threads garble each other.
        try:
            entry = json.loads(store.fs.cat_file(f"{path}/{name}"))
        except (ValueError, UnicodeDecodeError) as e:
            raise InputError(f"{where}: not valid JSON ({e}); this entry was not written by dapt: remove it") from None
        if not isinstance(entry, dict):
            raise InputError(f"{where}: expected a JSON object; this entry was not written by dapt: remove it")
        out.append(entry)
    return out


# --- aliases -----------------------------------------------------------------------------------------


def check_alias(alias: str) -> str:
    """`alias` if it is a valid alias name; a UserError naming it otherwise (so it can never be a path like `../x`)."""
    if not isinstance(alias, str) or not ALIAS_NAME.fullmatch(alias) or alias in (".", ".."):
        raise UserError(f"alias {alias!r}: use letters, digits, '.', '_' and '-' (starting with a letter or digit), at most 100 characters")
    if ID_PATTERN.fullmatch(alias):
        raise UserError(f"alias {alias!r} looks like an artifact id; pick a name such as 'production'")
    return alias


def promote(store: ArtifactStore, aid: str, alias: str, note: str | None = None) -> dict[str, Any]:
    """Point `alias` at artifact `aid` (which must exist and pass verify); returns the history entry."""
    check_alias(alias)
    check_id(aid, "promote:")
    manifest = store.manifest(aid)  # InputError naming the id when it is not in the store
    problems = verify(store, aid)
    if problems:
        raise InputError(f"artifact {aid} fails verification, not promoting it to {alias!r}:\n  " + "\n  ".join(problems))
    current = _current(store, alias)
    entry = {
        "alias": alias,
        "id": aid,
        "stage": manifest["stage"],
        "previous": current["id"] if current else None,
        "time": _now(),
        **_who(),
    }
    if note:
        entry["note"] = note
    _put_new(store, f"{ALIASES}/{alias}", entry)
    return entry


def _current(store: ArtifactStore, alias: str) -> dict[str, Any] | None:
    entries = _entries(store, f"{ALIASES}/{check_alias(alias)}")
    if not entries:
        return None
    # An alias file is written by anyone with access to the store: its target is checked before use.
    check_id(entries[-1].get("id"), f"alias {alias!r} points at")
    return entries[-1]


def aliases(store: ArtifactStore) -> dict[str, dict[str, Any]]:
    """Alias -> its newest history entry."""
    root = f"{store.root}/{ALIASES}"
    if not store.fs.exists(root):
        return {}
    out = {}
    for name in sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in store.fs.ls(root, detail=False)):
        if not ALIAS_NAME.fullmatch(name) or ID_PATTERN.fullmatch(name):
            log.warning("%s/%s/%s: not an alias name, ignored (not made by dapt)", store.url, ALIASES, name)
            continue
        if (current := _current(store, name)) is not None:
            out[name] = current
    return out


def history(store: ArtifactStore, alias: str) -> list[dict[str, Any]]:
    """Every promotion of `alias`, oldest first."""
    check_alias(alias)
    entries = _entries(store, f"{ALIASES}/{alias}")
    if not entries:
        raise InputError(_unknown_alias(store, alias))
    return entries


def _unknown_alias(store: ArtifactStore, alias: str) -> str:
    known = ", ".join(aliases(store)) or "none yet"
    return f"alias {alias!r} is not in the store {store.url} (aliases there: {known}); `dapt artifacts promote ID {alias}` creates it"


def resolve(store: ArtifactStore, name: str) -> str:
    """The artifact id `name` stands for: an id in the store, the id an alias points at, or the one id
    that starts with `name` (`m-65e1`: at least 3 hex digits; a start several ids share is an error listing them)."""
    if ID_PATTERN.fullmatch(name):
        store.manifest(name)  # raises when it is not in the store (naming it, and how to list them)
        return name
    if not ALIAS_NAME.fullmatch(name) or name in (".", ".."):
        raise InputError(
            f"{name!r} is neither an artifact id (a stage letter, '-' and 20 hex digits) nor an alias name "
            "(letters, digits, '.', '_', '-'); refusing to use it as a path"
        )
    current = _current(store, name)
    if current is None:
        if ID_PREFIX.fullmatch(name):
            matches = [aid for aid in store.ids() if aid.startswith(name)]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                shown = ", ".join(matches[:5]) + (f" and {len(matches) - 5} more" if len(matches) > 5 else "")
                raise InputError(f"{name!r} is the start of {len(matches)} artifact ids ({shown}); give more of the id")
        if re.match(r"[a-z]-", name):  # meant as an id, mistyped: say so rather than "no such alias"
            raise InputError(f"artifact {name} is not in the store {store.url} (`dapt artifacts list --store {store.url}` shows what is)")
        raise InputError(_unknown_alias(store, name))
    if not store.exists(current["id"]):
        raise InputError(f"alias {name!r} points at {current['id']}, which is no longer in the store {store.url} (deleted?); promote another id")
    return current["id"]


# --- pipeline runs -----------------------------------------------------------------------------------


def record_run(store: ArtifactStore, name: str, ids: dict[str, str]) -> None:
    """Remember a finished pipeline run's artifact ids (what `gc` keeps for the last N runs)."""
    _put_new(store, RUNS, {"name": name, "ids": ids, "finished": _now(), **_who()})


def runs(store: ArtifactStore) -> list[dict[str, Any]]:
    """Recorded pipeline runs, oldest first."""
    return _entries(store, RUNS)


# --- verify ------------------------------------------------------------------------------------------


def verify(store: ArtifactStore, aid: str) -> list[str]:
    """Re-hash every file of an artifact against its manifest; one line per problem (empty: intact)."""
    manifest = store.manifest(aid)
    folder = f"{store.root}/{aid}"
    problems = []
    total = sum(meta["size"] for meta in manifest["files"].values())
    with progress(total, f"verify {aid}", unit="B", unit_scale=True) as bar:  # a model or corpus: GBs to re-hash
        for name, meta in sorted(manifest["files"].items()):
            path = f"{folder}/{name}"
            digest, size = hashlib.sha256(), 0
            try:
                with store.fs.open(path, "rb") as f:
                    while chunk := f.read(1 << 20):
                        digest.update(chunk)
                        size += len(chunk)
                        bar.update(len(chunk))
            except FileNotFoundError:
                problems.append(f"{name}: missing")
                continue
            if size != meta["size"]:
                problems.append(f"{name}: {size:,} bytes, the manifest says {meta['size']:,}")
            elif digest.hexdigest() != meta["sha256"]:
                problems.append(f"{name}: sha256 {digest.hexdigest()[:16]}…, the manifest says {meta['sha256'][:16]}…")
    listed = set(manifest["files"]) | {MANIFEST}
    present = {p[len(folder) + 1 :] for p in store.fs.find(folder)}
    problems += [f"{name}: not in the manifest" for name in sorted(present - listed)]
    return problems


# --- gc ----------------------------------------------------------------------------------------------


def _closure(store: ArtifactStore, roots: set[str], manifests: dict[str, dict]) -> set[str]:
    """`roots` and everything they were built from, through manifest inputs."""
    keep, stack = set(), [r for r in roots if r in manifests]
    while stack:
        aid = stack.pop()
        if aid in keep:
            continue
        keep.add(aid)
        stack += [child for child in manifests[aid].get("inputs", {}).values() if child in manifests]
    return keep


def _built_from(manifest: dict, manifests: dict[str, dict]) -> set[str]:
    """An artifact's inputs, less the fine-tuning runs an evaluation built for itself (they are kept with it)."""
    return {aid for aid in manifest["inputs"].values() if manifests.get(aid, {}).get("stage") != "finetune"}


def gc_plan(store: ArtifactStore, keep_runs: int = 5, keep_hours: float = 24.0) -> dict[str, Any]:
    """What `gc` keeps and why, and what it would delete.

    Kept: what an alias points at now; every artifact of the last `keep_runs` recorded pipeline runs;
    everything those were built from (lineage); the evaluation and report artifacts whose inputs are
    all kept (the evidence a model card quotes), with an evaluation's fine-tuning runs (`f-`); and
    anything younger than `keep_hours`, which a pipeline still running may be about to use before it
    records its run. `why` gives the reason for every kept artifact (`roots`: those kept for themselves).
    """
    manifests = {aid: store.manifest(aid) for aid in store.ids()}
    reasons: dict[str, str] = {}
    for alias, entry in aliases(store).items():
        reasons.setdefault(entry["id"], f"alias {alias}")
    recorded = runs(store)
    for run in recorded[-keep_runs:] if keep_runs > 0 else []:
        for aid in run["ids"].values():
            reasons.setdefault(aid, f"run {run['name']} {run['finished']}")
    keep = _closure(store, set(reasons), manifests)
    grown = True
    while grown:  # an evaluation of a kept model (with its own fine-tuning runs), then the report that quotes that evaluation
        extra = {
            aid for aid, m in manifests.items()
            if aid not in keep and m["stage"] in ("evaluate", "report") and m.get("inputs") and _built_from(m, manifests) <= keep
        }  # fmt: skip
        keep |= _closure(store, extra, manifests)
        grown = bool(extra)
    cutoff = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=keep_hours)
    young = {aid for aid, m in manifests.items() if aid not in keep and dt.datetime.fromisoformat(m["created"]) > cutoff}
    delete = [aid for aid in manifests if aid not in keep and aid not in young]
    sizes = {aid: sum(f["size"] for f in manifests[aid]["files"].values()) for aid in manifests}
    return {
        "keep": sorted(keep),
        "roots": reasons,
        "why": _why_kept(reasons, keep, manifests),
        "young": sorted(young),
        "delete": delete,
        "delete_bytes": sum(sizes[aid] for aid in delete),
        "sizes": sizes,
        "runs_recorded": len(recorded),
    }


def _why_kept(roots: dict[str, str], keep: set[str], manifests: dict[str, dict]) -> dict[str, str]:
    """A reason for every kept artifact: its own (an alias, a recent run), input of a kept one, or evidence."""
    why = {aid: reason for aid, reason in roots.items() if aid in manifests}
    queue = list(why)
    while queue:  # breadth first: each input is explained by the nearest kept artifact that used it
        aid = queue.pop(0)
        for role, child in manifests[aid].get("inputs", {}).items():
            if child in manifests and child not in why:
                why[child] = f"{role} input of {aid}"
                queue.append(child)
    for aid in sorted(keep - set(why)):
        why[aid] = f"{manifests[aid]['stage']} of kept artifacts only (the evidence a model card quotes)"
    return why


def delete_artifact(store: ArtifactStore, aid: str) -> None:
    """Remove an artifact, manifest first: a half-deleted artifact is one that no longer exists."""
    check_id(aid)
    if store.fs.exists(f"{store.root}/{aid}/{MANIFEST}"):
        store.fs.rm(f"{store.root}/{aid}/{MANIFEST}")
    store.fs.rm(f"{store.root}/{aid}", recursive=True)


def remove(store: ArtifactStore, aid: str, force: bool = False) -> dict[str, Any]:
    """`dapt artifacts rm`: delete one artifact, e.g. a corrupted one, so the next run rebuilds it.

    Works on an artifact whose manifest is missing or malformed too (that is often why it is removed).
    Refuses, naming them, when aliases point at it, unless `force`. Returns what was removed.
    """
    check_id(aid)
    if not store.fs.exists(f"{store.root}/{aid}"):
        raise InputError(f"artifact {aid} is not in the store {store.url} (`dapt artifacts list --store {store.url}` shows what is)")
    pointing = sorted(alias for alias, entry in aliases(store).items() if entry["id"] == aid)
    if pointing and not force:
        raise UserError(f"artifact {aid}: aliases {', '.join(pointing)} point at it; promote another id first, or add --force")
    size = sum(info.get("size") or 0 for info in store.fs.find(f"{store.root}/{aid}", detail=True).values())
    delete_artifact(store, aid)
    return {"id": aid, "bytes": size, "aliases": pointing}


def stale_staging(store: ArtifactStore, keep_hours: float = 24.0) -> list[dict[str, Any]]:
    """Staging folders left by interrupted publishes and downloads, older than `keep_hours` and not in use.

    A folder whose publishing process is still alive on this machine is kept whatever its age (an
    evaluation may hold its staging folder open for hours); on a shared store, another machine's
    long-running build is protected by `keep_hours` alone.
    """
    stale = []
    for leftover in store.staging_leftovers():
        if leftover["age_hours"] < keep_hours or (leftover["pid"] is not None and _alive(leftover["pid"])):
            continue
        stale.append(leftover)
    return stale


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def remove_staging(leftover: dict[str, Any]) -> None:
    shutil.rmtree(leftover["path"], ignore_errors=True)


def abandoned_work(store: ArtifactStore, keep_hours: float = 24.0) -> list[dict[str, Any]]:
    """Work folders (`.work/<id>/`: the checkpoints of a training build) untouched for `keep_hours`: path, id, bytes, age, built.

    A killed pretraining leaves its checkpoints there so that a re-run with the same settings resumes;
    when the settings changed, nothing ever resumes from them. A build still training writes a
    checkpoint every `checkpoint_every_steps`, so `keep_hours` protects it. `built`: the artifact is in
    the store (its build finished, and only removing the folder failed).
    """
    root = store.work_root()
    found = []
    now = time.time()
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        if not path.is_dir() or not ID_PATTERN.fullmatch(path.name):
            continue
        size, newest = 0, path.stat().st_mtime
        for dirpath, _, filenames in os.walk(path):
            newest = max(newest, os.stat(dirpath).st_mtime)
            for filename in filenames:
                try:
                    st = os.stat(os.path.join(dirpath, filename))
                except OSError:
                    continue
                size, newest = size + st.st_size, max(newest, st.st_mtime)
        age = (now - newest) / 3600
        if age >= keep_hours:
            found.append({"path": str(path), "id": path.name, "bytes": size, "age_hours": age, "built": store.exists(path.name)})
    return found

