"""Ingest: read the domain corpus, clean it, drop empty/short documents and exact duplicates, split.

    python -m pretrain.ingest --config configs/demo.yaml
    python -m pretrain.ingest --config configs/demo.yaml --set ingest.validation_fraction=0.05

Output (corpus artifact `c-...`): `train.parquet` and `validation.parquet` (column `text`), stats in the
manifest: documents, characters, words, duplicates removed, filtered. The split is decided by a hash of
each cleaned document, not by random state: the same text always lands on the same side, whatever the
file order or the rest of the corpus.
"""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pretrain.artifacts import ArtifactStore, artifact_id, describe_sources
from pretrain.config import IngestConfig, expand_inputs
from pretrain.errors import InputError
from pretrain.io import FileStats, field_text, read_records

log = logging.getLogger(__name__)

STAGE = "ingest"
SPLITS = ("train", "validation")
_SCHEMA = pa.schema([("text", pa.string())])
_WRITE_BATCH = 2048
# C0/C1 control characters except tab and newline, plus zero-width/BOM characters that only hide text.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u200c\u200d\u2060\ufeff]")
_SPACES = re.compile(r"[^\S\n]+")  # runs of whitespace other than newline
_BLANK_LINES = re.compile(r"\n{3,}")


def clean_text(text: str, cfg: IngestConfig, patterns: list[re.Pattern]) -> str:
    """Normalise Unicode, strip boilerplate, drop control characters, tidy whitespace (paragraphs kept)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if cfg.unicode_normalization != "none":
        text = unicodedata.normalize(cfg.unicode_normalization, text)
    for pattern in patterns:
        text = pattern.sub("", text)
    text = _CONTROL.sub("", text)
    text = "\n".join(line.strip() for line in _SPACES.sub(" ", text).split("\n"))
    return _BLANK_LINES.sub("\n\n", text).strip()


def split_of(text: str, validation_fraction: float) -> str:
    """train or validation, from a hash of the text: deterministic and independent of corpus order."""
    h = int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8, person=b"dapt-split").digest(), "big")
    return "validation" if h < validation_fraction * 2**64 else "train"


def _identity(cfg: IngestConfig) -> tuple[str, list[Path], list[dict]]:
    files = expand_inputs(cfg.inputs)
    if not files:
        raise InputError(f"ingest.inputs {cfg.inputs} match no file")
    sources = describe_sources(files)
    return artifact_id(STAGE, cfg.model_dump(), sources=sources), files, sources


def stage_id(cfg: IngestConfig) -> str:
    """The corpus artifact id for `cfg` (hashes the input files; reads no documents)."""
    return _identity(cfg)[0]


def run(cfg: IngestConfig, store: ArtifactStore) -> str:
    """Build (or find) the corpus artifact for `cfg`; returns its id."""
    aid, files, sources = _identity(cfg)
    if store.exists(aid):
        log.info("ingest %s: already built (cache hit)", aid)
        return aid
    log.info("ingest %s: config %s", aid, cfg.model_dump_json())
    patterns = [re.compile(p) for p in cfg.strip_patterns]

    with store.build(STAGE, aid, config=cfg.model_dump(), sources=sources) as build:
        writers = {s: pq.ParquetWriter(build.dir / f"{s}.parquet", _SCHEMA, compression="zstd") for s in SPLITS}
        buffers: dict[str, list[str]] = {s: [] for s in SPLITS}
        seen: set[bytes] = set()
        counts = {"documents_read": 0, "empty_removed": 0, "short_removed": 0, "duplicates_removed": 0}
        kept = {s: {"documents": 0, "characters": 0, "words": 0, "bytes": 0} for s in SPLITS}
        file_stats = []
        try:
            for path in files:
                stats = FileStats(str(path))
                for location, record in read_records(path, stats, txt_mode=cfg.txt_mode, text_field=cfg.text_field):
                    counts["documents_read"] += 1
                    raw = field_text(record, cfg.text_field, location, key="ingest.text_field")
                    text = clean_text(raw or "", cfg, patterns)
                    if not text:
                        counts["empty_removed"] += 1
                        continue
                    words = len(text.split())
                    if words < cfg.min_words:
                        counts["short_removed"] += 1
                        continue
                    key = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
                    if key in seen:
                        counts["duplicates_removed"] += 1
                        continue
                    seen.add(key)
                    split = split_of(text, cfg.validation_fraction)
                    buffers[split].append(text)
                    tally = kept[split]
                    tally["documents"] += 1
                    tally["characters"] += len(text)
                    tally["words"] += words
                    tally["bytes"] += len(text.encode("utf-8"))
                    if len(buffers[split]) >= _WRITE_BATCH:
                        writers[split].write_table(pa.table({"text": buffers[split]}, schema=_SCHEMA))
                        buffers[split].clear()
                file_stats.append(stats)
                log.info("ingest: %s: %d records", path, stats.records)
                if stats.invalid_utf8_lines:
                    log.warning("ingest: %s: %d lines were not valid UTF-8 (replaced with U+FFFD)", path, stats.invalid_utf8_lines)
            for split in SPLITS:
                if buffers[split]:
                    writers[split].write_table(pa.table({"text": buffers[split]}, schema=_SCHEMA))
        finally:
            for writer in writers.values():
                writer.close()

        total = {k: sum(kept[s][k] for s in SPLITS) for k in kept["train"]}
        if total["documents"] == 0:
            raise InputError(
                f"ingest: no documents left after cleaning ({len(files)} files, {counts['documents_read']} records read: "
                f"{counts['empty_removed']} empty, {counts['short_removed']} shorter than ingest.min_words={cfg.min_words}, "
                f"{counts['duplicates_removed']} duplicates); check ingest.inputs, ingest.text_field and ingest.min_words"
            )
        if kept["train"]["documents"] == 0 or kept["validation"]["documents"] == 0:
            raise InputError(
                f"ingest: the corpus has {total['documents']} documents, too few to give both a train and a validation "
                f"split at ingest.validation_fraction={cfg.validation_fraction}; add text or change the fraction"
            )
        build.metrics.update(
            files=len(files),
            **counts,
            **total,
            train_documents=kept["train"]["documents"],
            validation_documents=kept["validation"]["documents"],
            train_bytes=kept["train"]["bytes"],
            validation_bytes=kept["validation"]["bytes"],
            invalid_utf8_lines=sum(s.invalid_utf8_lines for s in file_stats),
        )
        build.extra["files_read"] = [vars(s) for s in file_stats]
        log.info(
            "ingest %s: %d documents (%d train / %d validation), %.1f MB; removed %d duplicates, %d empty, %d short",
            aid, total["documents"], kept["train"]["documents"], kept["validation"]["documents"], total["bytes"] / 1e6,
            counts["duplicates_removed"], counts["empty_removed"], counts["short_removed"],
        )  # fmt: skip
    return aid


def read_split(corpus_dir: Path, split: str, batch_size: int = 1024):
    """Yield lists of document texts from a corpus artifact's split, one Parquet batch at a time."""
    parquet = pq.ParquetFile(corpus_dir / f"{split}.parquet")
    for batch in parquet.iter_batches(batch_size=batch_size, columns=["text"]):
        yield batch.column(0).to_pylist()


if __name__ == "__main__":
    from pretrain.pipeline import stage_main

    stage_main(STAGE)
