"""The artifact store: content-addressed, versioned artifacts, the contract between stages.

An artifact is a folder `<store>/<id>/` with its files and a `manifest.json`; its id (`pretrain.core.ids`)
hashes what made it, so the same inputs, settings and code find it here instead of building it again.
Also here: content hashes of raw files (remembered across runs), the shard cache of ingest and tokens,
and what produced an artifact (environment, lineage).

Publishing is atomic: files are built in a staging folder, the manifest is written last, and the
folder is renamed into place (local store) or uploaded with the manifest last (remote fsspec store).
An artifact without a manifest does not exist: a crashed build is never mistaken for a finished one.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import re
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

from pretrain.core.codeversion import code_version
from pretrain.core.errors import InputError, unreachable
from pretrain.core.ids import CODE_MODULES, ID_PATTERN, canonical_json, check_id
from pretrain.core.logs import get_logger

log = get_logger(__name__)

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1
STAGING = ".tmp"
_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # pretrain/
_RECORDED_PACKAGES = ("torch", "transformers", "tokenizers", "accelerate", "pyarrow", "numpy", "scikit-learn", "prefect")


# --- manifests and raw files ------------------------------------------------------------------------


_DRIVE = re.compile(r"^[A-Za-z]:")


def file_name_problem(name: Any) -> str | None:
    """Why `name` (a file listed in a manifest) is not a plain relative path inside its artifact, or None."""
    if not isinstance(name, str) or not name:
        return "not a non-empty string"
    if "\\" in name or "\0" in name:
        return "it contains a backslash or a NUL character"
    if name.startswith("/") or _DRIVE.match(name):
        return "it is an absolute path"
    if any(part in ("", ".", "..") for part in name.split("/")):
        return "it has an empty, '.' or '..' part"
    if name == MANIFEST:
        return "it is the manifest itself"
    return None


def check_manifest(manifest: Any, aid: str, where: str) -> dict[str, Any]:
    """The manifest of `aid` read from `where`, if it is well formed: its id, input ids and file names.

    One check used before any file a manifest names is read or written: a file name must be a plain
    relative path inside the artifact (no `..`, no absolute path or drive, no backslash), and every id
    it holds must be an artifact id.
    """
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise InputError(f"artifact {aid}: {where} is not an artifact manifest (no `files` mapping); remove it with `dapt artifacts rm {aid}`")
    if manifest.get("id") != aid:
        raise InputError(f"artifact {aid}: {where} says it is {manifest.get('id')!r}; it was copied or tampered with; remove it with `dapt artifacts rm {aid}`")
    for name in manifest["files"]:
        if why := file_name_problem(name):
            raise InputError(
                f"artifact {aid}: {where} lists the file {name!r}, which is not a plain relative path inside the artifact ({why}); "
                f"the manifest was tampered with or corrupted: nothing was read or written. Remove it with `dapt artifacts rm {aid}`"
            )
    for role, child in (manifest.get("inputs") or {}).items():
        check_id(child, f"input {role!r} in {where}")
    return manifest


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
    entry = _stamp_entry(stamp)
    try:
        cached = json.loads(entry.read_text())
        if cached.get("stamp") == stamp:
            return {"size": cached["size"], "sha256": cached["sha256"]}
    except (OSError, ValueError, KeyError):
        pass
    digest = file_digest(path)
    _remember_digest(stamp, digest)
    return digest


def _stamp_entry(stamp: list) -> Path:
    return default_cache_dir() / "digests" / hashlib.sha256(canonical_json(stamp).encode()).hexdigest()[:40]


def _remember_digest(stamp: list | None, digest: dict[str, Any]) -> None:
    if stamp is None:
        return
    entry = _stamp_entry(stamp)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(f".{entry.name}.{uuid.uuid4().hex}")
        tmp.write_text(json.dumps({"stamp": stamp, "size": digest["size"], "sha256": digest["sha256"]}))
        os.replace(tmp, entry)
    except OSError:
        pass  # a read-only cache only costs speed


def _change_stamp(path: str) -> list | None:
    if "://" in path:
        fs, inner = fsspec.core.url_to_fs(path)
        if not isinstance(fs, LocalFileSystem):
            if "memory" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
                return None
            info = fs.info(inner)
            # blob_id: the git blob of a file on the Hugging Face Hub (hf://), a hash of its content.
            keys = ("ETag", "etag", "md5Hash", "generation", "blob_id", "LastModified", "last_modified", "mtime", "updated")
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
        try:
            self.fs, root = fsspec.core.url_to_fs(self.url)
        except ImportError as e:  # an fsspec backend that is not installed
            raise InputError(f"store {self.url}: its file system needs a package that is not installed ({e})") from None
        except ValueError as e:  # an unknown protocol
            raise InputError(f"store {self.url}: not a folder or a usable fsspec URL ({e}); give a folder, or s3://, gs://, ... with its package") from None
        except Exception as e:  # a file system that connects when created (ftp://, sftp://)
            if (why := unreachable(e)) is None:
                raise
            raise InputError(f"store {self.url}: cannot reach it: {why}") from None
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self.root = root.rstrip("/")
        if self.is_local:
            self.root = str(Path(self.root).resolve())
            self._local_folder(Path(self.root))
        # Remote artifacts are downloaded here before a stage reads them; local ones are read in place.
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        # When this process began building an artifact (its work folder was first asked for): `build`
        # counts the manifest's duration from then, so a training stage's includes the training.
        self._began: dict[str, float] = {}

    def __repr__(self) -> str:
        return f"ArtifactStore({self.url!r})"

    def _path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def _local_folder(self, path: Path) -> Path:
        """`path` (a folder of this local store) created if missing; an InputError naming the store if it cannot be."""
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            if not path.is_dir():
                raise InputError(
                    f"store {self.url}: cannot create the folder {path} ({e.strerror or e}); "
                    "set `store:` (or --store / DAPT_STORE) to a folder you can write"
                ) from None
        return path

    def _writable_folder(self, path: Path) -> Path:
        """`path` created if missing and writable; an InputError naming the store otherwise (a read-only store can be read, not built into)."""
        self._local_folder(path)
        try:
            probe = path / f".probe-{uuid.uuid4().hex}"
            probe.touch()
            probe.unlink()
        except OSError as e:
            raise InputError(f"store {self.url}: cannot write into {path} ({e.strerror or e}); building needs a writable store") from None
        return path

    def exists(self, aid: str) -> bool:
        check_id(aid)
        self._forget_listings()
        return self.fs.exists(self._path(aid, MANIFEST))

    def _forget_listings(self) -> None:
        # Remote file systems cache directory listings (s3fs does) and fsspec shares one instance per
        # process: another process may have published since, and the manifest is the source of truth.
        if not self.is_local:
            self.fs.invalidate_cache()

    def location(self, aid: str) -> str:
        """The artifact's folder as a URL (`file:///...`, `s3://bucket/prefix/<id>`)."""
        return self.fs.unstrip_protocol(self._path(check_id(aid)))

    def manifest(self, aid: str) -> dict[str, Any]:
        """The manifest of `aid`, checked (`check_manifest`): an InputError when it is missing or malformed."""
        check_id(aid)
        path = self._path(aid, MANIFEST)
        try:
            with self.fs.open(path, "r", encoding="utf-8") as f:
                manifest = json.load(f)
        except FileNotFoundError:
            raise InputError(
                f"artifact {aid} is not in the store {self.url} (`dapt artifacts list --store {self.url}` shows what is)"
            ) from None
        except (ValueError, UnicodeDecodeError) as e:
            raise InputError(f"artifact {aid}: {self.fs.unstrip_protocol(path)} is not valid JSON ({e}); remove it with `dapt artifacts rm {aid}`") from None
        return check_manifest(manifest, aid, self.fs.unstrip_protocol(path))

    def open(self, aid: str, name: str, mode: str = "rb"):
        """One file of an artifact, verified against its manifest, opened where it is (a remote one is read by range)."""
        manifest = self.manifest(aid)
        if name not in manifest["files"]:
            raise InputError(f"artifact {aid} has no file {name!r} in its manifest")
        path = self._path(aid, name)
        self._verify_file(aid, name, manifest["files"][name], path if self.is_local else self.fs.unstrip_protocol(path))
        if self.is_local:
            return open(path, mode)
        return self.fs.open(path, mode)

    def ids(self) -> list[str]:
        """Every complete artifact (one with a manifest), oldest first; folders not named like an artifact are not artifacts."""
        self._forget_listings()
        if not self.fs.exists(self.root):
            return []
        found = []
        for entry in self.fs.ls(self.root, detail=False):
            name = entry.rstrip("/").rsplit("/", 1)[-1]
            if ID_PATTERN.fullmatch(name) and self.fs.exists(self._path(name, MANIFEST)):
                found.append(self.manifest(name))
        return [m["id"] for m in sorted(found, key=lambda m: (m["created"], m["id"]))]

    def local_dir(self, aid: str) -> Path:
        """A local folder holding the artifact's files, each verified against the manifest's size and sha256.

        Local store: the artifact's own folder. Remote store: a copy in the local cache, downloaded and
        verified once. Either way every listed file is checked before the folder is handed out, cheaply:
        a file whose size and change stamps (mtime, ctime, inode) are those it had when last hashed is
        not hashed again (the stamp cache of `source_digest`); any write to a file moves its ctime.
        A missing, changed or unlisted file is an InputError naming the artifact, the file and the repair.
        """
        manifest = self.manifest(aid)
        if self.is_local:
            folder = Path(self._path(aid))
            self._verify_folder(aid, folder, manifest)
            return folder
        target = self.cache_dir / "artifacts" / aid
        if (target / MANIFEST).is_file():
            try:
                self._verify_folder(aid, target, manifest)
                return target
            except InputError as e:  # the cached copy changed, not the store: download it again
                log.warning("%s; downloading it again from %s", e, self.url)
                shutil.rmtree(target, ignore_errors=True)
        staging = target.with_name(f".{aid}.{uuid.uuid4().hex}")
        staging.mkdir(parents=True)
        try:
            for name, meta in manifest["files"].items():
                local = staging / name  # a plain relative path: check_manifest saw to it
                local.parent.mkdir(parents=True, exist_ok=True)
                self.fs.get(self._path(aid, name), str(local))
                digest = file_digest(local)
                if digest["sha256"] != meta["sha256"]:
                    raise InputError(self._mismatch(aid, name, f"sha256 {digest['sha256'][:16]}…, the manifest says {meta['sha256'][:16]}…"))
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _rename_into_place(staging, target)
        for name, meta in manifest["files"].items():  # just hashed: the next use need not hash again
            _remember_digest(_change_stamp(str(target / name)), meta)
        return target

    def _mismatch(self, aid: str, name: str, detail: str) -> str:
        return (
            f"artifact {aid}: {name} does not match its manifest ({detail}): the store's copy is corrupted or was changed "
            f"after publishing. Repair: `dapt artifacts rm {aid} --store {self.url}`, then re-run the command that builds it "
            f"(a full check of every file: `dapt artifacts verify {aid} --store {self.url}`)"
        )

    def _verify_file(self, aid: str, name: str, meta: dict[str, Any], path: str) -> None:
        try:
            digest = source_digest(path)
        except FileNotFoundError:
            raise InputError(self._mismatch(aid, name, "the file is missing")) from None
        if digest["size"] != meta["size"]:
            raise InputError(self._mismatch(aid, name, f"{digest['size']:,} bytes, the manifest says {meta['size']:,}"))
        if digest["sha256"] != meta["sha256"]:
            raise InputError(self._mismatch(aid, name, f"sha256 {digest['sha256'][:16]}…, the manifest says {meta['sha256'][:16]}…"))

    def _verify_folder(self, aid: str, folder: Path, manifest: dict[str, Any]) -> None:
        for name, meta in manifest["files"].items():
            self._verify_file(aid, name, meta, str(folder / name))
        listed = set(manifest["files"]) | {MANIFEST}
        for dirpath, _, filenames in os.walk(folder):
            for filename in filenames:
                name = (Path(dirpath) / filename).relative_to(folder).as_posix()
                if name not in listed:
                    raise InputError(self._mismatch(aid, name, "the file is not listed in it"))

    def work_dir(self, aid: str) -> Path:
        """Local scratch space for building `aid` (checkpoints): survives a crash, so a re-run can resume."""
        self._began.setdefault(aid, time.time())
        return self._writable_folder(self.work_root() / check_id(aid))

    def work_root(self) -> Path:
        """The folder of the work folders: in a local store, else in the local cache (`dapt artifacts gc` collects old ones)."""
        return (Path(self.root) if self.is_local else self.cache_dir) / ".work"

    def staging_leftovers(self) -> list[dict[str, Any]]:
        """Staging folders of publishes and downloads that never finished (a crash, kill -9): path, bytes, age.

        `<store>/.tmp/<id>.<pid>.<random>/` (local store) and `<cache>/artifacts/.<id>.<random>/`
        (downloads from a remote store). `age_hours` is since the last change to anything inside;
        `pid` is the publishing process's, where the name says.
        """
        found = []
        roots = [(Path(self.root) / STAGING, "")] if self.is_local else []
        roots.append((self.cache_dir / "artifacts", "."))
        now = time.time()
        for root, prefix in roots:
            if not root.is_dir():
                continue
            for path in sorted(root.iterdir()):
                if not path.is_dir() or not path.name.startswith(prefix) or (prefix and (path / MANIFEST).is_file()):
                    continue
                size, newest = 0, path.stat().st_mtime
                for dirpath, _, filenames in os.walk(path):
                    newest = max(newest, os.stat(dirpath).st_mtime)
                    for filename in filenames:
                        with contextlib.suppress(OSError):
                            st = os.stat(os.path.join(dirpath, filename))
                            size, newest = size + st.st_size, max(newest, st.st_mtime)
                parts = path.name.split(".")
                pid = int(parts[1]) if not prefix and len(parts) == 3 and parts[1].isdigit() else None
                found.append({"path": str(path), "bytes": size, "age_hours": (now - newest) / 3600, "pid": pid})
        return found

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
        started: float | None = None,
    ) -> Iterator[Build]:
        """Stage an artifact; on a clean exit write the manifest and publish atomically, else discard.

        `started`: when the stage began (`time.time()`), so the manifest's `duration_s` covers the
        whole build (reading, training, ...), not only this block; default: when this process first
        asked for the artifact's `work_dir`, else now.
        """
        check_id(aid)
        staging_root = self._writable_folder(Path(self._path(STAGING))) if self.is_local else Path(tempfile.mkdtemp(prefix="dapt-"))
        staging = staging_root / f"{aid}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        build = Build(dir=staging)
        began = self._began.pop(aid, None)
        started = started if started is not None else began if began is not None else time.time()
        try:
            yield build
            respect_umask(staging)
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
                "code_version": code_version(CODE_MODULES[stage]),
                "files": files,
                "metrics": build.metrics,
                **build.extra,
                "environment": environment(),
            }
            manifest["duration_s"] = round(time.time() - started, 3)
            # The manifest goes in last: its presence is what makes the artifact exist.
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False, default=str))
            self._publish(staging, aid, files)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            if not self.is_local:
                shutil.rmtree(staging_root, ignore_errors=True)

    def _publish(self, staging: Path, aid: str, files: dict[str, dict[str, Any]]) -> None:
        if self.is_local:
            final = Path(self._path(aid))
            if final.exists() and not (final / MANIFEST).exists():
                shutil.rmtree(final)  # debris of a foreign, manifest-less folder: not an artifact
            if _rename_into_place(staging, final):
                for name, digest in files.items():  # just hashed: the stages that read it need not hash it again
                    _remember_digest(_change_stamp(str(final / name)), digest)
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

    def lineage(self, aid: str, _below: tuple[str, ...] = ()) -> dict[str, Any]:
        """The artifact with its inputs, recursively, down to the base model and the raw source files."""
        if aid in _below:  # content ids cannot form a circle; a tampered manifest can
            raise InputError(f"artifact {aid}: its manifest's inputs lead back to itself ({' -> '.join((*_below, aid))}); the store was tampered with")
        m = self.manifest(aid)
        return {
            "id": m["id"],
            "stage": m["stage"],
            "created": m["created"],
            "sources": m.get("sources", []),
            "origin": m.get("origin"),
            "inputs": {role: self.lineage(child, (*_below, aid)) for role, child in m.get("inputs", {}).items()},
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
            target = self.store._writable_folder(Path(self.root)) / name
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


def _rename_into_place(staging: Path, final: Path) -> bool:
    """Rename `staging` to `final`; False when another process published `final` first (theirs is kept)."""
    try:
        os.rename(staging, final)
        return True
    except OSError:
        if (final / MANIFEST).exists():
            # Another process published the same id first: same inputs, same content. Keep theirs.
            log.info("artifact %s was published concurrently; keeping the existing copy", final.name)
            shutil.rmtree(staging, ignore_errors=True)
            return False
        raise


def respect_umask(folder: Path) -> None:
    """Give every file and folder under `folder` the mode the umask gives a new one (0644 and 0755 under umask 022).

    Some writers create files 0600 (safetensors writes through a private temporary file), which on a
    shared store would keep teammates from reading the weights. The mode a new file gets is read off
    a probe file rather than by setting the process's umask, which other threads share.
    """
    probe = folder / f".mode-probe-{uuid.uuid4().hex}"
    probe.touch()
    file_mode = probe.stat().st_mode & 0o777
    probe.unlink()
    folder_mode = file_mode | ((file_mode & 0o444) >> 2)  # x wherever r: 0644 -> 0755, 0600 -> 0700
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), folder_mode)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path) and os.stat(path).st_mode & 0o777 != file_mode:
                os.chmod(path, file_mode)
    os.chmod(folder, folder_mode)


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
