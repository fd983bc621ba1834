"""Content-addressed, versioned artifacts: the contract between stages.

An artifact is a folder `<store>/<id>/` with its files and a `manifest.json`. Its id is a hash of the
stage name, the stage's resolved config, the ids of its input artifacts, the content hashes of any raw
source files it read, and the stage's code version (see `code_version`: the code its output can depend
on, comments and docstrings left out). Same inputs, settings and code -> same id -> the stage is skipped.

Publishing is atomic: files are built in a staging folder, the manifest is written last, and the
folder is renamed into place (local store) or uploaded with the manifest last (remote fsspec store).
An artifact without a manifest does not exist: a crashed build is never mistaken for a finished one.
"""

from __future__ import annotations

import ast
import contextlib
import datetime as dt
import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import fsspec
from fsspec.implementations.local import LocalFileSystem

from pretrain.errors import InputError
from pretrain.logs import get_logger

log = get_logger(__name__)

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1
# One letter per stage so an id says what it is: c-3f2a... is a corpus.
PREFIXES = {
    "base": "b",
    "ingest": "c",
    "vocab": "v",
    "tokens": "t",
    "pretrain": "m",
    "distill": "d",
    "evaluate": "e",
    "finetune": "f",  # one fine-tuning run, built by the evaluate stage (pretrain/finetune.py)
    "report": "r",
}
_PACKAGE_DIR = Path(__file__).resolve().parent
_RECORDED_PACKAGES = ("torch", "transformers", "tokenizers", "accelerate", "pyarrow", "numpy", "scikit-learn", "prefect")


# --- ids ---------------------------------------------------------------------------------------------


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
        "code": code_version(f"pretrain.{stage}"),
    }
    digest = hashlib.sha256(canonical_json(payload).encode()).hexdigest()
    return f"{PREFIXES[stage]}-{digest[:20]}"


# Modules that cannot change what a stage writes, whoever imports them: they never count in a code
# version, and their own imports are not followed. Keep this list short, explicit, and true; a test
# fails if it names a module that does not exist.
NOT_CODE_DEPENDENCIES = {
    "pretrain.config": "the config schema and its validation: the resolved config section is in the id itself",
    "pretrain.errors": "exception classes",
    "pretrain.artifacts": "the store: where and how artifacts are kept and named, not what they contain",
    "pretrain.pipeline": "the chain of stages and their command line: which stage runs, not what it computes",
    "pretrain.logs": "log lines: what a stage says, not what it writes",
    "pretrain.progress": "progress bars and lines: what a stage shows while it runs",
    "pretrain.runpool": "which process builds a fine-tuning run: each run is the same `finetune.build` call wherever it runs",
}


@functools.lru_cache(maxsize=None)
def code_version(module: str) -> str:
    """The version of the code a stage's output can depend on: part of every artifact id.

    The rule: hash the stage module and every `pretrain` module it imports, transitively (imports
    inside functions included), except the modules in NOT_CODE_DEPENDENCIES; hash each in a normal
    form of its syntax tree, without docstrings (comments and formatting never reach the tree) and
    without its `if __name__ == "__main__":` block (the command-line glue). So editing a comment, a
    docstring or the layout of a line changes no id; a change to what the code does changes the id of
    each stage that imports it, and through their input ids, of everything built from them.
    """
    digest = hashlib.sha256()
    for name in sorted(code_dependencies(module)):
        digest.update(name.encode() + b"\0" + _analysed(_source(name))[0].encode() + b"\0")
    return digest.hexdigest()[:16]


def code_dependencies(module: str) -> set[str]:
    """The `pretrain` modules whose code counts in `module`'s code version (itself included)."""
    return _local_imports(module) - set(NOT_CODE_DEPENDENCIES)


def _module_path(module: str) -> Path:
    parts = module.split(".")[1:]
    path = _PACKAGE_DIR.joinpath(*parts)
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _source(module: str) -> str:
    return _module_path(module).read_text(encoding="utf-8")


@functools.lru_cache(maxsize=None)
def _analysed(source: str) -> tuple[str, tuple[str, ...]]:
    """(sha256 of the normal form, `pretrain` modules imported outside the main guard) of a module's source.

    Cached by content: each module is parsed once per process however many stages import it.
    """
    tree = ast.parse(source)
    imported: list[str] = []
    for node in _walk_without_main_guard(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        imported += [name for name in names if name == "pretrain" or name.startswith("pretrain.")]
    return hashlib.sha256(_normal_form(tree).encode()).hexdigest(), tuple(imported)


def _local_imports(module: str, seen: set[str] | None = None) -> set[str]:
    seen = set() if seen is None else seen
    if module in seen or not _module_path(module).is_file():
        return seen
    seen.add(module)
    if module in NOT_CODE_DEPENDENCIES:
        return seen  # not followed: what it imports counts only where a stage imports that itself
    for name in _analysed(_source(module))[1]:
        _local_imports(name, seen)
    return seen


def _is_main_guard(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)


def _walk_without_main_guard(tree: ast.AST) -> Iterator[ast.AST]:
    """ast.walk, skipping `if __name__ == "__main__":` blocks (the CLI glue is not the stage's code)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if _is_main_guard(node):
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def _normal_form(node: Any) -> str:
    """The code as a syntax tree, written out: no comments, formatting, docstrings or main guard.

    Written by hand rather than with `ast.dump`, whose output differs between Python versions; fields
    that are None or empty are left out, so a field a newer Python adds (e.g. `type_params`) does not
    change the hash of code that does not use it.
    """
    if isinstance(node, ast.AST):
        if _is_main_guard(node):
            return ""
        fields = []
        for name, value in ast.iter_fields(node):
            if name == "body" and isinstance(value, list):
                value = [stmt for stmt in value if not _is_string_statement(stmt) and not _is_main_guard(stmt)]
            if value is None or value == []:
                continue
            fields.append(f"{name}={_normal_form(value)}")
        return f"{type(node).__name__}({','.join(fields)})"
    if isinstance(node, list):
        return "[" + ",".join(_normal_form(item) for item in node) + "]"
    return repr(node)


def _is_string_statement(node: ast.AST) -> bool:
    """A bare string literal as a statement: a docstring, or one documenting an attribute; it does nothing."""
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def file_digest(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> dict[str, Any]:
    """Size and sha256 of a file (local path or fsspec URL), read in chunks (memory does not grow with file size)."""
    digest = hashlib.sha256()
    size = 0
    with _open_source(path) as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
            size += len(chunk)
    return {"size": size, "sha256": digest.hexdigest()}


def _open_source(path: str | os.PathLike):
    if "://" in str(path):
        fs, inner = fsspec.core.url_to_fs(str(path))
        return fs.open(inner, "rb")
    return open(path, "rb")


def describe_sources(paths: list[Path] | list[str]) -> list[dict[str, Any]]:
    """Raw input files as recorded in a manifest: path as given, size and sha256."""
    return [{"path": str(p), **source_digest(p)} for p in paths]


def source_digest(path: str | os.PathLike) -> dict[str, Any]:
    """file_digest, remembered across runs while the file's size and change stamps stay the same.

    A scheduled re-run over a large corpus then reads only new or changed files to learn their hash.
    The stamp of a local file includes its inode change time, which every write moves (unlike the
    modification time, which tools can set back); remote files use the ETag or modification time their
    file system reports. Files with no such stamp (memory://) are hashed every time.
    """
    stamp = _change_stamp(str(path))
    if stamp is None:
        return file_digest(path)
    entry = default_cache_dir() / "digests" / hashlib.sha256(canonical_json(stamp).encode()).hexdigest()[:40]
    try:
        cached = json.loads(entry.read_text())
        if cached.get("stamp") == stamp:
            return {"size": cached["size"], "sha256": cached["sha256"]}
    except (OSError, ValueError, KeyError):
        pass
    digest = file_digest(path)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(f".{entry.name}.{uuid.uuid4().hex}")
        tmp.write_text(json.dumps({"stamp": stamp, **digest}))
        os.replace(tmp, entry)
    except OSError:
        pass  # a read-only cache only costs speed
    return digest


def _change_stamp(path: str) -> list | None:
    if "://" in path:
        fs, inner = fsspec.core.url_to_fs(path)
        if not isinstance(fs, LocalFileSystem):
            if "memory" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
                return None
            info = fs.info(inner)
            keys = ("ETag", "etag", "md5Hash", "generation", "LastModified", "last_modified", "mtime", "updated")
            marks = [str(info[k]) for k in keys if info.get(k)]
            return [path, info.get("size"), *marks] if marks else None
        path = inner
    st = os.stat(path)
    return [str(Path(path).resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def default_cache_dir() -> Path:
    """Local cache (downloaded remote artifacts, file digests): $DAPT_CACHE, else ~/.cache/dapt."""
    return Path(os.environ.get("DAPT_CACHE", Path.home() / ".cache" / "dapt"))


# --- the store ---------------------------------------------------------------------------------------


@dataclass
class Build:
    """A staging folder for one artifact; fill `dir`, `metrics` and `extra`, then leave the `with` block."""

    dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


class ArtifactStore:
    """Artifacts under a root folder or fsspec URL (`artifacts`, `/data/store`, `s3://bucket/prefix`)."""

    def __init__(self, url: str | os.PathLike, cache_dir: str | os.PathLike | None = None):
        self.url = str(url)
        self.fs, root = fsspec.core.url_to_fs(self.url)
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self.root = root.rstrip("/")
        if self.is_local:
            self.root = str(Path(self.root).resolve())
            self.fs.makedirs(self.root, exist_ok=True)
        # Remote artifacts are downloaded here before a stage reads them; local ones are read in place.
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()

    def __repr__(self) -> str:
        return f"ArtifactStore({self.url!r})"

    def _path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def exists(self, aid: str) -> bool:
        self._forget_listings()
        return self.fs.exists(self._path(aid, MANIFEST))

    def _forget_listings(self) -> None:
        # Remote file systems cache directory listings (s3fs does) and fsspec shares one instance per
        # process: another process may have published since, and the manifest is the source of truth.
        if not self.is_local:
            self.fs.invalidate_cache()

    def location(self, aid: str) -> str:
        """The artifact's folder as a URL (`file:///...`, `s3://bucket/prefix/<id>`)."""
        return self.fs.unstrip_protocol(self._path(aid))

    def manifest(self, aid: str) -> dict[str, Any]:
        try:
            with self.fs.open(self._path(aid, MANIFEST), "r", encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            raise InputError(
                f"artifact {aid} is not in the store {self.url} (`dapt artifacts list --store {self.url}` shows what is)"
            ) from None

    def open(self, aid: str, name: str, mode: str = "rb"):
        """One file of an artifact, opened where it is (a remote one is read by range, not downloaded)."""
        if self.is_local:
            return open(self._path(aid, name), mode)
        return self.fs.open(self._path(aid, name), mode)

    def ids(self) -> list[str]:
        """Every complete artifact (one with a manifest), oldest first."""
        self._forget_listings()
        if not self.fs.exists(self.root):
            return []
        found = []
        for entry in self.fs.ls(self.root, detail=False):
            name = entry.rstrip("/").rsplit("/", 1)[-1]
            if not name.startswith(".") and self.fs.exists(self._path(name, MANIFEST)):
                found.append(self.manifest(name))
        return [m["id"] for m in sorted(found, key=lambda m: (m["created"], m["id"]))]

    def local_dir(self, aid: str) -> Path:
        """A local folder holding the artifact's files (downloaded and verified once for a remote store)."""
        manifest = self.manifest(aid)
        if self.is_local:
            return Path(self._path(aid))
        target = self.cache_dir / "artifacts" / aid
        if (target / MANIFEST).is_file():
            return target
        staging = target.with_name(f".{aid}.{uuid.uuid4().hex}")
        staging.mkdir(parents=True)
        for name, meta in manifest["files"].items():
            local = staging / name
            local.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get(self._path(aid, name), str(local))
            if file_digest(local)["sha256"] != meta["sha256"]:
                shutil.rmtree(staging, ignore_errors=True)
                raise InputError(f"artifact {aid}: {name} does not match the sha256 in its manifest (store corrupted?)")
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
        _rename_into_place(staging, target)
        return target

    def work_dir(self, aid: str) -> Path:
        """Local scratch space for building `aid` (checkpoints): survives a crash, so a re-run can resume."""
        base = Path(self.root) if self.is_local else self.cache_dir
        path = base / ".work" / aid
        path.mkdir(parents=True, exist_ok=True)
        return path

    def shards(self, stage: str) -> ShardCache:
        """Where `stage`'s shard tasks leave their results (see ShardCache)."""
        return ShardCache(self, stage)

    @contextlib.contextmanager
    def build(
        self,
        stage: str,
        aid: str,
        config: dict[str, Any],
        inputs: dict[str, str] | None = None,
        sources: list[dict[str, Any]] | None = None,
    ) -> Iterator[Build]:
        """Stage an artifact; on a clean exit write the manifest and publish atomically, else discard."""
        staging_root = Path(self._path(".tmp")) if self.is_local else Path(tempfile.mkdtemp(prefix="dapt-"))
        staging_root.mkdir(parents=True, exist_ok=True)
        staging = staging_root / f"{aid}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        build = Build(dir=staging)
        started = time.time()
        try:
            yield build
            files = {
                p.relative_to(staging).as_posix(): file_digest(p)
                for p in sorted(staging.rglob("*"))
                if p.is_file() and p.name != MANIFEST
            }
            manifest = {
                "schema": SCHEMA_VERSION,
                "id": aid,
                "stage": stage,
                "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "config": config,
                "inputs": inputs or {},
                "sources": sources or [],
                "code_version": code_version(f"pretrain.{stage}"),
                "files": files,
                "metrics": build.metrics,
                **build.extra,
                "duration_s": round(time.time() - started, 3),
                "environment": environment(),
            }
            # The manifest goes in last: its presence is what makes the artifact exist.
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False, default=str))
            self._publish(staging, aid)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            if not self.is_local:
                shutil.rmtree(staging_root, ignore_errors=True)

    def _publish(self, staging: Path, aid: str) -> None:
        if self.is_local:
            final = Path(self._path(aid))
            if final.exists() and not (final / MANIFEST).exists():
                shutil.rmtree(final)  # debris of a foreign, manifest-less folder: not an artifact
            _rename_into_place(staging, final)
            return
        # Object stores have no rename: upload every file, then the manifest. Readers look for the
        # manifest only, so until its single PUT lands the artifact does not exist for them.
        for path in sorted(staging.rglob("*")):
            if path.is_file() and path.name != MANIFEST:
                self._put(path, self._path(aid, path.relative_to(staging).as_posix()))
        self._put(staging / MANIFEST, self._path(aid, MANIFEST))

    def _put(self, local: Path, remote: str) -> None:
        """Upload one file, retrying transient failures (OSError: network, throttling) with backoff."""
        with_io_retries(lambda: self.fs.put_file(str(local), remote), f"uploading {local.name} to {self.fs.unstrip_protocol(remote)}")

    def lineage(self, aid: str) -> dict[str, Any]:
        """The artifact with its inputs, recursively, down to the base model and the raw source files."""
        m = self.manifest(aid)
        return {
            "id": m["id"],
            "stage": m["stage"],
            "created": m["created"],
            "sources": m.get("sources", []),
            "origin": m.get("origin"),
            "inputs": {role: self.lineage(child) for role, child in m.get("inputs", {}).items()},
        }


class ShardCache:
    """Results of shard tasks under `<store>/.shards/<stage>/`: one file per result, named by its content key.

    A shard task may run on another machine (a Dask worker), so it leaves its result in the store
    (which must then be shared: a network folder or an fsspec URL), and the stage's last step collects
    them. Each file appears atomically (renamed into place locally; one PUT on an object store), so a
    crashed task leaves nothing that looks finished, and a re-run only redoes the shards that are
    missing. These files are not artifacts: deleting the folder is always safe, it only costs a re-run.
    """

    def __init__(self, store: ArtifactStore, stage: str):
        self.store, self.stage = store, stage
        self.root = f"{store.root}/.shards/{stage}"
        if store.is_local:
            Path(self.root).mkdir(parents=True, exist_ok=True)

    def _path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def exists(self, name: str) -> bool:
        return self.store.fs.exists(self._path(name))

    def names(self) -> set[str]:
        """Every finished result (one listing, not one request per name)."""
        if not self.store.fs.exists(self.root):
            return set()
        return {p.rstrip("/").rsplit("/", 1)[-1] for p in self.store.fs.ls(self.root, detail=False)} - {""}

    def put(self, local: Path, name: str) -> None:
        """Publish a finished local file as `name` (moved, not copied, when the store is local)."""
        if self.store.is_local:
            target = Path(self._path(name))
            tmp = target.with_name(f".{name}.{uuid.uuid4().hex}")
            shutil.move(str(local), tmp)
            os.replace(tmp, target)
        else:
            self.store._put(local, self._path(name))
            local.unlink(missing_ok=True)

    def get(self, name: str) -> Path:
        """A local path to the result (downloaded once from a remote store)."""
        if self.store.is_local:
            return Path(self._path(name))
        target = self.store.cache_dir / "shards" / self.stage / name
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{name}.{uuid.uuid4().hex}")
            self.store.fs.get(self._path(name), str(tmp))
            os.replace(tmp, target)
        return target

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.store.fs.rm(self._path(name))


def with_io_retries(action, what: str, attempts: int = 4, first_delay_s: float = 1.0):
    """Run `action`, retrying an OSError after 1, 2, 4 s; other errors, and the last OSError, propagate."""
    for attempt in range(attempts):
        try:
            return action()
        except OSError as e:
            if attempt == attempts - 1:
                raise OSError(f"{what}: failed {attempts} times, last: {e}") from e
            delay = first_delay_s * 2**attempt
            log.warning("%s failed (%s); retrying in %.0f s", what, e, delay)
            time.sleep(delay)


def _rename_into_place(staging: Path, final: Path) -> None:
    try:
        os.rename(staging, final)
    except OSError:
        if (final / MANIFEST).exists():
            # Another process published the same id first: same inputs, same content. Keep theirs.
            log.info("artifact %s was published concurrently; keeping the existing copy", final.name)
            shutil.rmtree(staging, ignore_errors=True)
        else:
            raise


@functools.lru_cache(maxsize=1)
def environment() -> dict[str, Any]:
    """What produced an artifact: package versions, Python, host, and the project's git commit."""
    packages = {}
    for name in _RECORDED_PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "packages": packages,
        "git": _git_state(),
    }


def _git_state() -> dict[str, Any] | None:
    try:
        commit = subprocess.run(
            ["git", "-C", str(_PACKAGE_DIR), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(_PACKAGE_DIR), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.TimeoutExpired):
        return None


def format_lineage(tree: dict[str, Any], indent: str = "", seen: set[str] | None = None) -> str:
    """A lineage tree as indented text, one artifact or source file per line; shared ancestors once."""
    seen = set() if seen is None else seen
    if tree["id"] in seen:
        return f"{indent}{tree['id']}  {tree['stage']}  (shown above)"
    seen.add(tree["id"])
    lines = [f"{indent}{tree['id']}  {tree['stage']}  {tree['created']}"]
    if tree.get("origin"):
        lines.append(f"{indent}  <- from {tree['origin'].get('resolved') or tree['origin'].get('source')}")
    for source in tree["sources"]:
        lines.append(f"{indent}  <- file {source['path']}  sha256:{source['sha256'][:12]}  {source['size']:,} B")
    for role, child in tree["inputs"].items():
        lines.append(f"{indent}  <- {role}:")
        lines.append(format_lineage(child, indent + "     ", seen))
    return "\n".join(lines)
