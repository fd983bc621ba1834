"""Ingest: read the domain corpus, clean and filter it, remove exact and near duplicates, split it.

    python -m pretrain.ingest --config configs/demo.yaml
    python -m pretrain.ingest --config configs/demo.yaml --set ingest.parallel.workers=1   # one process

Output (corpus artifact `c-...`): `train.parquet` and `validation.parquet` (column `text`), and in the
manifest: documents and bytes read, what each filter removed, exact and near duplicates removed, PII
replaced, bad records skipped, and per input file its records, invalid UTF-8 lines and problems; with
decontamination, the documents removed for overlapping the task's test and validation texts, per kind
and per task file, with examples.

How it scales to corpora larger than memory, on one machine or many:
1. Plan (`make_plan`). The inputs are listed and hashed (sha256; a file whose size and change stamps
   did not move is not read again), once per run. The corpus id hashes the settings, the code and
   those hashes. Each file becomes one or more *pieces*: byte ranges of about `parallel.shard_mb` for
   uncompressed JSONL and line-mode text, row-group ranges for Parquet, the whole file otherwise.
2. Pieces. Each piece is read as a stream, cleaned and filtered (pretrain/data/clean.py) and signed (a
   128-bit hash of the text and MinHash LSH band keys of its word shingles: pretrain/data/dedup.py) on its
   own, into one Parquet file in the store's shard cache named by a hash of the file's content, the
   range, the settings and this code. Decontamination happens here too (pretrain/data/decontaminate.py):
   a document overlapping a text of the task's test or validation files is counted and not written,
   so it streams and runs on every core; the task texts' hash is part of the piece's name. Pieces
   already there are not redone: a weekly re-run where a few files are new or changed reads only
   those. Pieces are grouped into shard tasks of about
   `shard_mb`, run on every core (a process pool), or as Prefect tasks on any task runner, a Dask
   cluster included (flows/pipeline.py).
3. Assemble. Deduplication is global and keeps the first occurrence in input order, out of core
   (pretrain/data/dedup.py: memory stays flat as the corpus grows). Kept documents go to train or
   validation by a hash of their text.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pretrain.core.artifacts import ArtifactStore, source_digest
from pretrain.core.codeversion import code_version
from pretrain.core.config import DatasetSource, IngestConfig
from pretrain.core.errors import InputError
from pretrain.core.ids import artifact_id, canonical_json
from pretrain.core.logs import get_logger
from pretrain.core.progress import progress
from pretrain.data.clean import COUNTERS, Cleaner
from pretrain.data.decontaminate import Decontaminator, Targets, decontaminator, merge
from pretrain.data.dedup import Signer, find_duplicates, lsh_shape
from pretrain.data.formats import SPLITS
from pretrain.data.hf_datasets import resolve as resolve_dataset
from pretrain.data.io import FileStats, RecordSource, compression_of, expand_sources, file_format, iter_texts, parquet_row_groups
from pretrain.data.shards import report_progress, run_local

log = get_logger(__name__)

STAGE = "ingest"
# Where and how it runs, not what it computes: left out of the corpus id and the piece keys.
EXECUTION_ONLY = {"parallel"}
# Whether the run may go on, not what it writes: left out of the corpus id and the piece keys.
DECONTAMINATE_CHECKS = {"enabled", "max_removed_fraction"}
_SCHEMA = pa.schema([("text", pa.string())])
_WRITE_BATCH = 2048
_WRITE_BYTES = 8 << 20  # also close a corpus row group at this much text (long documents)
_PIECE_BATCH = 1024
_PROGRESS_FILES = 20
_HINT = " (ingest.on_error: skip skips such records, counts them and goes on)"


def split_of(text: str, validation_fraction: float) -> str:
    """train or validation, from a hash of the text: deterministic and independent of corpus order."""
    h = int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8, person=b"dapt-split").digest(), "big")
    return "validation" if h < validation_fraction * 2**64 else "train"


# --- the plan ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Piece:
    """A whole input file, or one byte range (text) or row-group range (Parquet) of it: the unit of caching."""

    source: str
    sha256: str
    fmt: str
    compression: str | None
    start: int = 0
    end: int | None = None
    size: int = 0  # input bytes it covers (progress, packing into shards)

    def name(self, settings_key: str) -> str:
        payload = [settings_key, self.sha256, self.fmt, self.compression, self.start, self.end]
        return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:32] + ".parquet"


@dataclass
class IngestPlan:
    """A run of the stage: the corpus id, the inputs (hashed), their pieces, and the shard tasks still
    to run (the pieces not in the shard cache yet, packed; none when the corpus is built)."""

    aid: str
    sources: list[dict[str, Any]]
    pieces: list[Piece]
    settings_key: str
    shards: list[list[Piece]]
    against: Targets | None = None  # the task texts kept out of the corpus (None: decontamination off)
    started: float = field(default_factory=time.time)  # when the run began: the manifest's duration counts from here

    def names(self) -> list[str]:
        return [p.name(self.settings_key) for p in self.pieces]


def decontaminating(cfg: IngestConfig, against: Targets | None) -> bool:
    """Whether this run removes documents overlapping `against`: `ingest.decontaminate.enabled` and
    whether there are task texts (`auto` needs them, `true` insists on them)."""
    enabled = cfg.decontaminate.enabled
    if enabled is True and against is None:
        raise InputError(
            "ingest.decontaminate.enabled is true but the stage was given no task texts to check the corpus against; "
            "run it through the pipeline (`dapt run`, `python -m pretrain.ingest --config C`), which reads them from "
            "evaluate.task, or set enabled: auto"
        )
    return enabled is not False and against is not None


def _decontamination_settings(cfg: IngestConfig, against: Targets | None) -> dict[str, Any] | None:
    """What decontamination changes in the output: its settings and the task texts (their hash, not their files)."""
    if not decontaminating(cfg, against):
        return None
    assert against is not None
    return {**cfg.decontaminate.model_dump(exclude=DECONTAMINATE_CHECKS), "texts_sha256": against.digest}


def id_config(cfg: IngestConfig, against: Targets | None = None) -> dict[str, Any]:
    """The settings the corpus id hashes: not `inputs` (where the files are), since the id hashes their
    content; the same files read from another folder or an s3:// URL give the same corpus. Likewise the
    task texts count by their content, and decontamination's settings only when it is on."""
    config = cfg.model_dump(exclude=EXECUTION_ONLY | {"inputs", "decontaminate"})
    if (settings := _decontamination_settings(cfg, against)) is not None:
        config["decontaminate"] = settings
    return config


def manifest_config(cfg: IngestConfig) -> dict[str, Any]:
    return cfg.model_dump(exclude=EXECUTION_ONLY)


def settings_key(cfg: IngestConfig, against: Targets | None = None) -> str:
    """Everything a piece's result depends on besides its bytes: per-document settings, the task texts
    it is screened against, and this code."""
    settings = cfg.model_dump(exclude=EXECUTION_ONLY | {"inputs", "validation_fraction", "decontaminate"})
    settings["decontaminate"] = _decontamination_settings(cfg, against)
    return hashlib.sha256(canonical_json([code_version(f"pretrain.{STAGE}"), settings]).encode()).hexdigest()


def _sources(cfg: IngestConfig) -> list[dict[str, Any]]:
    """Every input, in order: files with their size and sha256, datasets with the hash of their identity."""
    listed: dict[Any, None] = {}
    for item in cfg.inputs:
        for f in [item] if isinstance(item, DatasetSource) else expand_sources([item]):
            if not isinstance(f, DatasetSource):
                file_format(f)  # an unsupported type is named now, before any reading
            listed.setdefault(f, None)
    if not listed:
        raise InputError(f"ingest.inputs {cfg.inputs} match no file; check the paths and globs")
    sources = []
    # Hashing reads every new or changed file once (unchanged ones are remembered): minutes for a large
    # corpus of many files. A few files are quick, and every plan lists them: no progress lines for those.
    shown = progress(len(listed), "ingest: hashing the inputs", unit="file") if len(listed) >= _PROGRESS_FILES else contextlib.nullcontext()
    with shown as bar:
        for f in listed:
            sources.append(resolve_dataset(f) if isinstance(f, DatasetSource) else {"path": f, **source_digest(f)})
            if bar is not None:
                bar.update(1)
    return sources


def stage_id(cfg: IngestConfig, against: Targets | None = None) -> str:
    """The corpus artifact id for `cfg` (hashes the input files; reads no documents). `against`: the
    task texts to keep out of the corpus (see `make_plan`)."""
    return artifact_id(STAGE, id_config(cfg, against), sources=_sources(cfg))


def make_plan(cfg: IngestConfig, store: ArtifactStore, against: Targets | None = None) -> IngestPlan:
    """The corpus id, the pieces to read and the shard tasks still to run.

    The one place a run lists and hashes the inputs: `run` and the ingest flow (flows/pipeline.py)
    both start here. `against`: the texts of the task's test and validation files (the pipeline's
    `decontamination_targets`); documents overlapping them are removed unless
    `ingest.decontaminate.enabled` is false.
    """
    started = time.time()
    against = against if decontaminating(cfg, against) else None
    sources = _sources(cfg)
    shard_bytes = int(cfg.parallel.shard_mb * 2**20)
    pieces: list[Piece] = []
    for source in sources:
        path, size, sha = source["path"], source["size"], source["sha256"]
        fmt, compression = file_format(path), compression_of(path)
        splittable = compression is None and (fmt == "jsonl" or (fmt == "txt" and cfg.txt_mode == "line"))
        if splittable and size > shard_bytes:
            count = math.ceil(size / shard_bytes)
            bounds = [size * i // count for i in range(count + 1)]
            pieces += [Piece(path, sha, fmt, None, a, b, b - a) for a, b in zip(bounds, bounds[1:])]
        elif fmt == "parquet" and size > shard_bytes:
            pieces += _row_group_pieces(path, sha, shard_bytes)
        else:
            pieces.append(Piece(path, sha, fmt, compression, 0, None, size))
    aid, key = artifact_id(STAGE, id_config(cfg, against), sources=sources), settings_key(cfg, against)
    if store.exists(aid):
        return IngestPlan(aid, sources, pieces, key, shards=[], against=against, started=started)
    log.info("ingest %s: config %s", aid, cfg.model_dump_json())
    done = store.shards(STAGE).names()
    pending = [p for p in pieces if p.name(key) not in done]
    if len(pending) < len(pieces):
        log.info("ingest: %d of %d pieces already in the shard cache (unchanged files)", len(pieces) - len(pending), len(pieces))
    if against is not None:
        log.info("ingest: removing documents that overlap %s (%d texts from %s)", against.described(), len(against.texts),
                 ", ".join(f.path for f in against.files))  # fmt: skip
    return IngestPlan(aid, sources, pieces, key, pack_shards(pending, shard_bytes), against, started)


def _row_group_pieces(path: str, sha: str, shard_bytes: int) -> list[Piece]:
    pieces, start, size = [], 0, 0
    groups = parquet_row_groups(path)
    for i, (_, nbytes) in enumerate(groups):
        size += nbytes
        if size >= shard_bytes or i == len(groups) - 1:
            pieces.append(Piece(path, sha, "parquet", None, start, i + 1, size))
            start, size = i + 1, 0
    return pieces or [Piece(path, sha, "parquet", None, 0, None, 0)]


def pack_shards(pieces: list[Piece], shard_bytes: int) -> list[list[Piece]]:
    """Consecutive pieces grouped into shard tasks of about shard_bytes (one large piece is a shard alone)."""
    shards: list[list[Piece]] = []
    size = 0
    for piece in pieces:
        if not shards or size + piece.size > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(piece)
        size += piece.size
    return shards


# --- pieces (run anywhere: a pool process, a Prefect task, a Dask worker) ---------------------------

def process_shard(pieces: list[Piece], cfg: IngestConfig, store_url: str, against: Targets | None = None) -> list[dict[str, Any]]:
    """Read, clean, filter, decontaminate and sign each piece into the store's shard cache; a summary per
    piece. `against`: the plan's task texts (None: no decontamination)."""
    store = ArtifactStore(store_url)
    cache = store.shards(STAGE)
    key = settings_key(cfg, against)
    cleaner, signer = Cleaner(cfg), Signer(cfg.dedup)
    summaries = []
    for piece in pieces:
        started = time.perf_counter()
        name = piece.name(key)
        screen = decontaminator(cfg, against) if against is not None else None
        with tempfile.TemporaryDirectory(prefix="dapt-ingest-") as tmp:
            local = Path(tmp) / name
            stats = _process_piece(piece, cfg, cleaner, signer, local, screen)
            cache.put(local, name)
        summaries.append({"piece": name, "source": piece.source, "bytes": piece.size,
                          "documents": stats["kept"], "seconds": round(time.perf_counter() - started, 3)})  # fmt: skip
    return summaries


def _piece_schema(bands: int) -> pa.Schema:
    fields = [("text", pa.string()), ("words", pa.uint32()), ("key", pa.binary(16))]
    if bands:
        fields.append(("bands", pa.list_(pa.uint64(), bands)))
    return pa.schema(fields)


def _process_piece(piece: Piece, cfg: IngestConfig, cleaner: Cleaner, signer: Signer, out: Path,
                   screen: Decontaminator | None = None) -> dict[str, Any]:  # fmt: skip
    stats = FileStats(piece.source, on_error=cfg.on_error, hint=_HINT)
    spec = RecordSource(piece.source, piece.fmt, piece.compression, piece.start, piece.end, cfg.txt_mode,
                        cfg.text_field, int(cfg.max_document_mb * 2**20), cfg.csv_delimiter)  # fmt: skip
    cleaner.counts = dict.fromkeys(COUNTERS, 0)
    schema = _piece_schema(signer.bands)
    kept = 0
    advanced = 0
    streamed = piece.compression is None and piece.fmt not in ("parquet", "arrow")
    with pq.ParquetWriter(out, schema, compression="zstd") as writer:
        texts: list[str] = []
        words: list[int] = []
        read_chars = 0

        def flush() -> None:
            nonlocal kept, read_chars, advanced, texts, words
            if screen is not None:  # documents overlapping a task text are counted there and not written
                drop = screen.screen(texts, piece.source)
                if any(drop):
                    texts, words = [t for t, d in zip(texts, drop) if not d], [w for w, d in zip(words, drop) if not d]
            if texts:
                columns = {
                    "text": pa.array(texts, pa.string()),
                    "words": pa.array(words, pa.uint32()),
                    "key": pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), len(texts), [None, pa.py_buffer(signer.exact_keys(texts))]),
                }
                if signer.bands:
                    flat = pa.array(signer.band_keys(texts).reshape(-1), pa.uint64())
                    columns["bands"] = pa.FixedSizeListArray.from_arrays(flat, signer.bands)
                writer.write_table(pa.table(columns, schema=schema))
                kept += len(texts)
            if streamed:  # characters read are about bytes read; other formats report when done
                step = min(read_chars, piece.size - advanced)
                report_progress(step)
                advanced += step
            texts, words = [], []
            read_chars = 0

        for raw in iter_texts(spec, stats):
            read_chars += len(raw) if raw else 0
            result = cleaner(raw)
            if result is None:
                continue
            texts.append(result[0])
            words.append(result[1])
            if len(texts) >= _PIECE_BATCH:
                flush()
        if texts:
            flush()
        summary = {
            "counts": cleaner.counts,
            "kept": kept,
            "file": {"path": piece.source, "records": stats.records, "invalid_utf8_lines": stats.invalid_utf8_lines,
                     "errors": stats.errors, "error_examples": stats.error_examples, "skipped": stats.skipped},  # fmt: skip
        }
        if screen is not None:
            summary["decontamination"] = screen.summary()
        writer.add_key_value_metadata({"dapt": json.dumps(summary)})
    report_progress(max(piece.size - advanced, 0))
    return summary


def _piece_summary(path: Path) -> dict[str, Any]:
    return json.loads(pq.ParquetFile(path).metadata.metadata[b"dapt"])


# --- running -----------------------------------------------------------------------------------------


def run(cfg: IngestConfig, store: ArtifactStore, plan: IngestPlan | None = None, against: Targets | None = None) -> str:
    """Build (or find) the corpus artifact for `cfg`; returns its id.

    Without `plan`, plans and runs the shard tasks on this machine's cores. With one (from
    `make_plan`), its shard tasks have run already (the ingest flow runs them as Prefect tasks) and
    only the assembly is left. `against`: the task texts to keep out of the corpus (see `make_plan`;
    a plan carries its own).
    """
    ran_shards = plan is not None
    plan = plan or make_plan(cfg, store, against)
    if store.exists(plan.aid):
        log.info("ingest %s: already built (cache hit)", plan.aid)
        return plan.aid
    if plan.shards and not ran_shards:
        started = time.perf_counter()
        _run_local(plan.shards, cfg, store, plan.against)
        size = sum(p.size for shard in plan.shards for p in shard)
        seconds = time.perf_counter() - started
        log.info("ingest: read %.1f MB in %.1f s (%.1f MB/s)", size / 1e6, seconds, size / 1e6 / max(seconds, 1e-9))
    return assemble(plan, cfg, store)


def _run_local(shards: list[list[Piece]], cfg: IngestConfig, store: ArtifactStore, against: Targets | None) -> None:
    """The shard tasks on this machine: a process pool over the cores, or in this process."""
    if cfg.parallel.dask_address:
        log.info("ingest: parallel.dask_address is for `dapt run` (Prefect runs the shards there); run alone, they run here")
    # memory:// files live in this process only.
    here = any(p.source.startswith("memory://") for shard in shards for p in shard)
    run_local(process_shard, [(shard, cfg, store.url, against) for shard in shards], [sum(p.size for p in s) for s in shards],
              cfg.parallel.workers, "ingest", force_in_process=here)  # fmt: skip


def assemble(plan: IngestPlan, cfg: IngestConfig, store: ArtifactStore) -> str:
    """Deduplicate over all pieces in corpus order, split, and publish the corpus artifact."""
    cache = store.shards(STAGE)
    done = cache.names()
    missing = [name for name in plan.names() if name not in done]
    if missing:
        raise RuntimeError(f"ingest: {len(missing)} pieces were not processed (first: {missing[0]}); run the shard tasks first")
    files = [cache.get(name) for name in plan.names()]
    summaries = [_piece_summary(f) for f in files]
    counts = {k: sum(s["counts"][k] for s in summaries) for k in COUNTERS}
    file_stats = _file_stats(summaries)
    for stats in file_stats:
        _warn(stats)
    decontamination = None
    if plan.against is not None:
        decontamination = merge([s["decontamination"] for s in summaries], plan.against)
        removed_share = decontamination[0]["removed"] / max(sum(s["kept"] for s in summaries) + decontamination[0]["removed"], 1)
        if removed_share > cfg.decontaminate.max_removed_fraction:
            raise _too_little_left(decontamination, summaries, f"{removed_share:.0%} of them, more than "
                                   f"ingest.decontaminate.max_removed_fraction={cfg.decontaminate.max_removed_fraction}")  # fmt: skip

    with store.build(STAGE, plan.aid, config=manifest_config(cfg), sources=plan.sources, started=plan.started) as build:
        scratch = build.dir / ".dedup"
        scratch.mkdir()
        bands = lsh_shape(cfg.dedup)[0] if cfg.dedup.near else 0
        exact_removed, near_removed = find_duplicates(files, bands, cfg.dedup.exact, scratch)
        shutil.rmtree(scratch)
        removed = np.union1d(exact_removed, near_removed)
        kept = _write_splits(files, removed, cfg.validation_fraction, build.dir)

        total = {k: sum(kept[s][k] for s in SPLITS) for k in kept["train"]}
        duplicates = {"duplicates_removed": int(len(exact_removed)), "near_duplicates_removed": int(len(near_removed))}
        split_empty = kept["train"]["documents"] == 0 or kept["validation"]["documents"] == 0
        if split_empty and decontamination is not None and decontamination[0]["removed"]:
            raise _too_little_left(decontamination, summaries, f"{total['documents']:,} documents are left, too few to give both a "
                                   f"train and a validation split")  # fmt: skip
        if total["documents"] == 0:
            skipped = [f"{s['path']} ({s['skipped']})" for s in file_stats if s["skipped"]]
            if skipped and len(skipped) == len(file_stats):
                raise InputError(f"ingest: no text to read: every input was skipped as not text: {'; '.join(skipped[:5])}")
            empty = [s["path"] for s in file_stats if not s["records"] and not s["skipped"] and not s["errors"]]
            raise InputError(
                f"ingest: no documents left after cleaning ({len(plan.sources)} files, {counts['documents_read']} records read: "
                f"{counts['empty_removed']} empty, {counts['short_removed']} shorter than ingest.min_words={cfg.min_words}, "
                f"{counts['long_removed']} longer than ingest.max_words, {counts['low_alpha_removed']} under "
                f"ingest.min_alpha_fraction, {duplicates['duplicates_removed']} duplicates, "
                f"{sum(s['errors'] for s in file_stats)} bad records, {sum(bool(s['skipped']) for s in file_stats)} files skipped"
                + (f"; empty files: {', '.join(empty[:5])}" if empty else "")
                + "); check ingest.inputs, ingest.text_field and the filters"
            )
        if kept["train"]["documents"] == 0 or kept["validation"]["documents"] == 0:
            raise InputError(
                f"ingest: the corpus has {total['documents']} documents, too few to give both a train and a validation "
                f"split at ingest.validation_fraction={cfg.validation_fraction}; add text or change the fraction"
            )
        input_bytes = sum(s["size"] for s in plan.sources)
        build.metrics.update(
            files=len(plan.sources),
            files_skipped=sum(bool(s["skipped"]) for s in file_stats),
            input_bytes=input_bytes,
            **counts,
            **duplicates,
            records_skipped=sum(s["errors"] for s in file_stats),
            **total,
            train_documents=kept["train"]["documents"],
            validation_documents=kept["validation"]["documents"],
            train_bytes=kept["train"]["bytes"],
            validation_bytes=kept["validation"]["bytes"],
            invalid_utf8_lines=sum(s["invalid_utf8_lines"] for s in file_stats),
            lsh_bands=bands,
            lsh_rows=lsh_shape(cfg.dedup)[1] if bands else 0,
            pieces=len(plan.pieces),
        )
        build.extra["files_read"] = file_stats
        if decontamination is not None:
            build.metrics["decontamination"], build.extra["decontamination"] = decontamination
            m, details = decontamination
            log.info(
                "ingest: decontamination removed %d documents overlapping %s (%d exact copies, %d near duplicates, %d containing "
                "a task text); %d of its %d texts were found in the corpus", m["removed"], details["against"], m["exact"], m["near"],
                m["contained"], m["task_texts_found"], m["task_texts"],
            )  # fmt: skip
        log.info(
            "ingest %s: %d documents (%d train / %d validation), %.1f MB, from %.1f MB of input; removed "
            "%d exact and %d near duplicates, %d empty, %d short, %d long, %d low-alpha; %d bad records skipped",
            plan.aid, total["documents"], kept["train"]["documents"], kept["validation"]["documents"], total["bytes"] / 1e6,
            input_bytes / 1e6, duplicates["duplicates_removed"],
            duplicates["near_duplicates_removed"], counts["empty_removed"], counts["short_removed"], counts["long_removed"],
            counts["low_alpha_removed"], build.metrics["records_skipped"],
        )  # fmt: skip
    return plan.aid


def _too_little_left(decontamination: tuple[dict[str, Any], dict[str, Any]], summaries: list[dict[str, Any]], why: str) -> InputError:
    """The error when decontamination leaves too little corpus: it names the task files and what each removed."""
    m, details = decontamination
    passed = sum(s["kept"] for s in summaries) + m["removed"]
    files = "; ".join(
        f"{f['path']} (evaluate.task.{f['key']}): {f['documents_removed']:,} documents removed, {f['texts_found']:,} of its "
        f"{f['texts']:,} texts found in the corpus"
        for f in details["files"] if f["documents_removed"]
    )  # fmt: skip
    return InputError(
        f"ingest: decontamination removed {m['removed']:,} of the {passed:,} corpus documents that passed the filters because "
        f"they overlap {details['against']} ({m['exact']:,} exact copies, {m['near']:,} near duplicates, {m['contained']:,} "
        f"containing a task text): {why}. {files}. The corpus is mostly the task's own evaluation text: check ingest.inputs "
        f"(is a task file among them?) and evaluate.task. To go on regardless, raise ingest.decontaminate.max_removed_fraction "
        f"(or set ingest.decontaminate.enabled: false, and the comparison is no longer fair)"
    )


def _file_stats(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per input file (its pieces merged, in order)."""
    merged: dict[str, dict[str, Any]] = {}
    for summary in summaries:
        f = summary["file"]
        entry = merged.setdefault(f["path"], {"path": f["path"], "records": 0, "invalid_utf8_lines": 0, "errors": 0,
                                              "error_examples": [], "skipped": None})  # fmt: skip
        for key in ("records", "invalid_utf8_lines", "errors"):
            entry[key] += f[key]
        entry["error_examples"] = (entry["error_examples"] + f["error_examples"])[:20]
        entry["skipped"] = entry["skipped"] or f["skipped"]
    return list(merged.values())


def _warn(stats: dict[str, Any]) -> None:
    if stats["skipped"]:
        log.warning("ingest: %s: skipped, it looks like %s", stats["path"], stats["skipped"])
    elif stats["records"] == 0 and not stats["errors"]:
        log.warning("ingest: %s: no records (an empty file?)", stats["path"])
    if stats["invalid_utf8_lines"]:
        log.warning("ingest: %s: %d lines were not valid UTF-8 (replaced with U+FFFD)", stats["path"], stats["invalid_utf8_lines"])
    if stats["errors"]:
        log.warning("ingest: %s: %d bad records skipped, e.g. %s", stats["path"], stats["errors"], stats["error_examples"][0])


def _write_splits(files: list[Path], removed: np.ndarray, validation_fraction: float, folder: Path) -> dict[str, dict[str, int]]:
    kept = {s: {"documents": 0, "characters": 0, "words": 0, "bytes": 0} for s in SPLITS}
    buffers: dict[str, list[str]] = {s: [] for s in SPLITS}
    buffered = dict.fromkeys(SPLITS, 0)
    writers = {s: pq.ParquetWriter(folder / f"{s}.parquet", _SCHEMA, compression="zstd") for s in SPLITS}
    position = 0
    bar = progress(len(files), "ingest: writing train and validation", unit="piece")
    try:
        for path in files:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=_WRITE_BATCH, columns=["text", "words"]):
                texts, words = batch.column(0).to_pylist(), batch.column(1).to_numpy()
                lo, hi = np.searchsorted(removed, [position, position + len(texts)])
                drop = set((removed[lo:hi] - position).tolist())
                position += len(texts)
                for i, text in enumerate(texts):
                    if i in drop:
                        continue
                    size = len(text.encode("utf-8"))
                    split = split_of(text, validation_fraction)
                    tally = kept[split]
                    tally["documents"] += 1
                    tally["characters"] += len(text)
                    tally["words"] += int(words[i])
                    tally["bytes"] += size
                    buffers[split].append(text)
                    buffered[split] += size
                    if len(buffers[split]) >= _WRITE_BATCH or buffered[split] >= _WRITE_BYTES:
                        writers[split].write_table(pa.table({"text": buffers[split]}, schema=_SCHEMA))
                        buffers[split], buffered[split] = [], 0
            bar.update(1)
        for split in SPLITS:
            if buffers[split]:
                writers[split].write_table(pa.table({"text": buffers[split]}, schema=_SCHEMA))
    finally:
        bar.close()
        for writer in writers.values():
            writer.close()
    return kept


if __name__ == "__main__":
    from pretrain.stage_cli import main

    main(STAGE)
