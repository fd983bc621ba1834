"""Ingest: read the domain corpus, clean and filter it, remove exact and near duplicates, split it.

    python -m pretrain.ingest --config configs/demo.yaml
    python -m pretrain.ingest --config configs/demo.yaml --set ingest.parallel.workers=1   # one process

Output (corpus artifact `c-...`): `train.parquet` and `validation.parquet` (column `text`), and in the
manifest: documents and bytes read, what each filter removed, exact and near duplicates removed, PII
replaced, bad records skipped, and per input file its records, invalid UTF-8 lines and problems.

How it scales to corpora larger than memory, on one machine or many:
1. Plan. The inputs are listed and hashed (sha256; a file whose size and change stamps did not move
   is not read again). The corpus id hashes the settings, the code and those hashes. Each file becomes
   one or more *pieces*: byte ranges of about `parallel.shard_mb` for uncompressed JSONL and line-mode
   text, row-group ranges for Parquet, the whole file otherwise.
2. Pieces. Each piece is read as a stream, cleaned, filtered and signed (a 128-bit hash of the text
   and MinHash LSH band keys of its word shingles) on its own, into one Parquet file in the store's
   shard cache named by a hash of the file's content, the range, the settings and this code. Pieces
   already there are not redone: a weekly re-run where a few files are new or changed reads only
   those. Pieces are grouped into shard tasks of about `shard_mb`, run on every core (a process pool),
   or as Prefect tasks on any task runner, a Dask cluster included (flows/pipeline.py).
3. Assemble. Deduplication is global and keeps the first occurrence in input order: exact duplicates
   by sorting the 128-bit hashes; near duplicates by LSH banding, datasketch's MinHash signatures cut
   into the (bands x rows) datasketch chooses for the threshold, documents sharing a band key joined
   into groups (connected components) that keep their first document. Both are sorts of fixed-size
   keys in passes of at most `_PASS_ENTRIES` entries read from disk, so memory stays flat as the corpus
   grows (datasketch's own in-memory MinHashLSH index measured 3.6 KB per document here, 4 GB per
   GB of newswire). Kept documents go to train or validation by a hash of their text.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import shutil
import tempfile
import time
import unicodedata
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pretrain.artifacts import ArtifactStore, artifact_id, canonical_json, code_version, source_digest
from pretrain.config import DedupConfig, IngestConfig
from pretrain.errors import InputError
from pretrain.io import FileStats, RecordSource, compression_of, expand_sources, file_format, iter_texts, parquet_row_groups
from pretrain.logs import get_logger
from pretrain.shards import report_progress, run_local

log = get_logger(__name__)

STAGE = "ingest"
SPLITS = ("train", "validation")
# Where and how it runs, not what it computes: left out of the corpus id and the piece keys.
EXECUTION_ONLY = {"parallel"}
_SCHEMA = pa.schema([("text", pa.string())])
_WRITE_BATCH = 2048
_WRITE_BYTES = 8 << 20  # also close a corpus row group at this much text (long documents)
_PIECE_BATCH = 1024
_MINHASH_SEED = 1
# Deduplication reads keys in passes of at most this many entries (8 bytes each, plus sort scratch).
_PASS_ENTRIES = 1 << 22
_HINT = " (ingest.on_error: skip skips such records, counts them and goes on)"

# C0/C1 control characters except tab and newline, plus zero-width/BOM characters that only hide text.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u200c\u200d\u2060\ufeff]")
_ASCII_CONTROL = bytes([*range(0, 9), 11, 12, *range(14, 32), 127])
_BLANK_LINES = re.compile(r"\n{3,}")
_ASCII_LETTERS = bytes(range(65, 91)) + bytes(range(97, 123))
_LETTER = re.compile(r"[^\W\d_]")
# ASCII punctuation becomes a space before shingling: "oil," and "oil" are the same word.
_PUNCTUATION = bytes.maketrans(b"!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~", b" " * 32)

PII_PATTERNS = {
    "email": (re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"), "<EMAIL>"),
    # Separated digit groups: +44 20 7946 0958, (212) 555-0199, 212-555-0199, 212.555.0199 (not 1987 1986 1985).
    "phone": (
        re.compile(
            r"(?<![\w+])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)|\d{1,4})(?:[ .-]\d{2,4}){2,3}"
            r"|(?:\(\d{2,4}\) ?|\d{2,4}[.-])\d{3,4}[.-]\d{3,4})(?![\w])"
        ),
        "<PHONE>",
    ),
    "ip": (
        re.compile(
            r"\b(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\b"
            r"|(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}(?![\w:])"
            r"|(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){1,6}:(?:[0-9A-Fa-f]{1,4}:){0,5}[0-9A-Fa-f]{1,4}(?![\w:])"
        ),
        "<IP>",
    ),
}
COUNTERS = ("documents_read", "empty_removed", "short_removed", "long_removed", "low_alpha_removed",
            "pii_email", "pii_phone", "pii_ip")  # fmt: skip


# --- cleaning and filtering ----------------------------------------------------------------------


def clean_text(text: str, cfg: IngestConfig, patterns: list[re.Pattern]) -> str:
    """Normalise Unicode, strip boilerplate, drop control characters, tidy whitespace (paragraphs kept)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    ascii_only = text.isascii()  # ASCII is already normalised, and its control characters go faster
    if cfg.unicode_normalization != "none" and not ascii_only:
        text = unicodedata.normalize(cfg.unicode_normalization, text)
    for pattern in patterns:
        text = pattern.sub("", text)
    text = text.encode().translate(None, _ASCII_CONTROL).decode() if ascii_only else _CONTROL.sub("", text)
    # Per line: runs of whitespace become one space, none at either end (str.split is \s as re knows it).
    text = "\n".join(" ".join(line.split()) for line in text.split("\n"))
    if "\n\n\n" in text:
        text = _BLANK_LINES.sub("\n\n", text)
    return text.strip()


def alpha_fraction(text: str) -> float:
    """Share of letters among the characters that are not spaces or newlines."""
    if text.isascii():
        data = text.encode()
        letters = len(data) - len(data.translate(None, _ASCII_LETTERS))
    else:
        letters = len(_LETTER.findall(text))
    visible = len(text) - text.count(" ") - text.count("\n")
    return letters / visible if visible else 0.0


class Cleaner:
    """Clean, scrub and filter documents; counts what it removes and replaces."""

    def __init__(self, cfg: IngestConfig):
        self.cfg = cfg
        self.patterns = [re.compile(p) for p in cfg.strip_patterns]
        self.pii = [(kind, *PII_PATTERNS[kind]) for kind in cfg.scrub_pii]
        self.counts = dict.fromkeys(COUNTERS, 0)

    def __call__(self, raw: str | None) -> tuple[str, int] | None:
        """(clean text, words), or None when the document is dropped."""
        counts = self.counts
        counts["documents_read"] += 1
        text = clean_text(raw or "", self.cfg, self.patterns)
        for kind, pattern, placeholder in self.pii:
            text, n = pattern.subn(placeholder, text)
            counts[f"pii_{kind}"] += n
        if not text:
            counts["empty_removed"] += 1
            return None
        words = len(text.split())
        if words < self.cfg.min_words:
            counts["short_removed"] += 1
            return None
        if self.cfg.max_words is not None and words > self.cfg.max_words:
            counts["long_removed"] += 1
            return None
        if self.cfg.min_alpha_fraction and alpha_fraction(text) < self.cfg.min_alpha_fraction:
            counts["low_alpha_removed"] += 1
            return None
        return text, words


def split_of(text: str, validation_fraction: float) -> str:
    """train or validation, from a hash of the text: deterministic and independent of corpus order."""
    h = int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8, person=b"dapt-split").digest(), "big")
    return "validation" if h < validation_fraction * 2**64 else "train"


# --- signatures -------------------------------------------------------------------------------------


def lsh_shape(dedup: DedupConfig) -> tuple[int, int]:
    """(bands, rows per band) that datasketch's MinHashLSH picks for the threshold (equal weight on
    false positives and false negatives)."""
    return _lsh_shape(dedup.threshold, dedup.num_perm)


@functools.lru_cache(maxsize=8)
def _lsh_shape(threshold: float, num_perm: int) -> tuple[int, int]:
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    return lsh.b, lsh.r


def _identity(value):
    return value


class Signer:
    """A document's exact key (blake2b-128 of its text) and its LSH band keys.

    Band keys: datasketch MinHash (affine32 scheme) over hashed word shingles (lowercase, ASCII
    punctuation as space, `shingle_words` words each); the signature cut into `bands` runs of `rows`
    values, each run hashed to 64 bits. Two documents share a band key with probability about
    1 - (1 - J^rows)^bands for Jaccard similarity J of their shingle sets.
    """

    def __init__(self, dedup: DedupConfig):
        from datasketch import MinHash

        self.dedup = dedup
        self.bands, self.rows = lsh_shape(dedup) if dedup.near else (0, 0)
        self._minhash = MinHash
        self._permutations = MinHash(num_perm=dedup.num_perm, seed=_MINHASH_SEED).permutations

    def exact_keys(self, texts: list[str]) -> bytes:
        return b"".join(hashlib.blake2b(t.encode("utf-8"), digest_size=16).digest() for t in texts)

    def shingles(self, text: str) -> np.ndarray:
        """32-bit hashes of the document's word shingles."""
        words = text.lower().encode("utf-8").translate(_PUNCTUATION).split()
        hashes = np.fromiter(map(zlib.crc32, words), dtype=np.uint64, count=len(words))
        k = self.dedup.shingle_words
        n = max(1, len(hashes) - k + 1)
        if len(hashes) < k + n - 1:
            hashes = np.pad(hashes, (0, k + n - 1 - len(hashes)))
        acc = np.zeros(n, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for i in range(k):  # an order-dependent combination of the k word hashes
                acc = (acc ^ hashes[i : i + n]) * np.uint64(0x9E3779B97F4A7C15)
        return (acc >> np.uint64(32)).astype(np.uint32)

    def signature(self, text: str) -> np.ndarray:
        minhash = self._minhash(num_perm=self.dedup.num_perm, seed=_MINHASH_SEED, hashfunc=_identity,
                                permutations=self._permutations, scheme="affine32")  # fmt: skip
        # The shingles are hashed already (hashfunc is the identity). Passed as one array, update_batch
        # permutes them in one vectorised step instead of one Python call each (a third of the stage's
        # time); tests check the result equals updating with the hashes one by one.
        minhash.update_batch([self.shingles(text)])
        return minhash.hashvalues

    def band_keys(self, texts: list[str]) -> np.ndarray:
        """(len(texts), bands) uint64."""
        out = np.empty((len(texts), self.bands), dtype=np.uint64)
        r = self.rows
        for i, text in enumerate(texts):
            values = self.signature(text)
            out[i] = [
                int.from_bytes(hashlib.blake2b(values[j * r : (j + 1) * r].tobytes(), digest_size=8).digest(), "little")
                for j in range(self.bands)
            ]
        return out


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
    aid: str
    sources: list[dict[str, Any]]
    pieces: list[Piece]
    settings_key: str

    def names(self) -> list[str]:
        return [p.name(self.settings_key) for p in self.pieces]

    def pending(self, store: ArtifactStore) -> list[Piece]:
        done = store.shards(STAGE).names()
        return [p for p in self.pieces if p.name(self.settings_key) not in done]


def id_config(cfg: IngestConfig) -> dict[str, Any]:
    """The settings the corpus id hashes: not `inputs` (where the files are), since the id hashes their
    content; the same files read from another folder or an s3:// URL give the same corpus."""
    return cfg.model_dump(exclude=EXECUTION_ONLY | {"inputs"})


def manifest_config(cfg: IngestConfig) -> dict[str, Any]:
    return cfg.model_dump(exclude=EXECUTION_ONLY)


def settings_key(cfg: IngestConfig) -> str:
    """Everything a piece's result depends on besides its bytes: per-document settings and this code."""
    settings = cfg.model_dump(exclude=EXECUTION_ONLY | {"inputs", "validation_fraction"})
    return hashlib.sha256(canonical_json([code_version(f"pretrain.{STAGE}"), settings]).encode()).hexdigest()


def _sources(cfg: IngestConfig) -> tuple[list[str], list[dict[str, Any]]]:
    files = expand_sources(cfg.inputs)
    if not files:
        raise InputError(f"ingest.inputs {cfg.inputs} match no file; check the paths and globs")
    for f in files:
        file_format(f)  # an unsupported type is named now, before any reading
    return files, [{"path": f, **source_digest(f)} for f in files]


def stage_id(cfg: IngestConfig) -> str:
    """The corpus artifact id for `cfg` (hashes the input files; reads no documents)."""
    _, sources = _sources(cfg)
    return artifact_id(STAGE, id_config(cfg), sources=sources)


def make_plan(cfg: IngestConfig) -> IngestPlan:
    """The corpus id and the pieces to read."""
    files, sources = _sources(cfg)
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
    return IngestPlan(artifact_id(STAGE, id_config(cfg), sources=sources), sources, pieces, settings_key(cfg))


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

def process_shard(pieces: list[Piece], cfg: IngestConfig, store_url: str) -> list[dict[str, Any]]:
    """Read, clean, filter and sign each piece into the store's shard cache; a summary per piece."""
    store = ArtifactStore(store_url)
    cache = store.shards(STAGE)
    key = settings_key(cfg)
    cleaner, signer = Cleaner(cfg), Signer(cfg.dedup)
    summaries = []
    for piece in pieces:
        started = time.perf_counter()
        name = piece.name(key)
        with tempfile.TemporaryDirectory(prefix="dapt-ingest-") as tmp:
            local = Path(tmp) / name
            stats = _process_piece(piece, cfg, cleaner, signer, local)
            cache.put(local, name)
        summaries.append({"piece": name, "source": piece.source, "bytes": piece.size,
                          "documents": stats["kept"], "seconds": round(time.perf_counter() - started, 3)})  # fmt: skip
    return summaries


def _piece_schema(bands: int) -> pa.Schema:
    fields = [("text", pa.string()), ("words", pa.uint32()), ("key", pa.binary(16))]
    if bands:
        fields.append(("bands", pa.list_(pa.uint64(), bands)))
    return pa.schema(fields)


def _process_piece(piece: Piece, cfg: IngestConfig, cleaner: Cleaner, signer: Signer, out: Path) -> dict[str, Any]:
    stats = FileStats(piece.source, on_error=cfg.on_error, hint=_HINT)
    spec = RecordSource(piece.source, piece.fmt, piece.compression, piece.start, piece.end, cfg.txt_mode,
                        cfg.text_field, int(cfg.max_document_mb * 2**20))  # fmt: skip
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
            nonlocal kept, read_chars, advanced
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
            texts.clear()
            words.clear()
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
        writer.add_key_value_metadata({"dapt": json.dumps(summary)})
    report_progress(max(piece.size - advanced, 0))
    return summary


def _piece_summary(path: Path) -> dict[str, Any]:
    return json.loads(pq.ParquetFile(path).metadata.metadata[b"dapt"])


# --- deduplication ------------------------------------------------------------------------------------


def _column_passes(path: Path, total: int, extra: Path | None = None) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """(keys, positions, extra keys) of a uint64 column file, in passes by key range of at most _PASS_ENTRIES."""
    passes = max(1, math.ceil(total / _PASS_ENTRIES))
    step = 2**64 // passes
    chunk = 1 << 20
    for p in range(passes):
        lo, hi = p * step, (2**64 if p == passes - 1 else (p + 1) * step)
        keys, positions, extras = [], [], []
        for offset in range(0, total, chunk):
            count = min(chunk, total - offset)
            block = np.fromfile(path, dtype=np.uint64, count=count, offset=offset * 8)
            mask = None if passes == 1 else (block >= np.uint64(lo)) & (block <= np.uint64(hi - 1))
            select = (lambda a: a) if mask is None else (lambda a: a[mask])  # noqa: E731
            keys.append(select(block))
            positions.append(select(np.arange(offset, offset + count, dtype=np.int64)))
            if extra is not None:
                extras.append(select(np.fromfile(extra, dtype=np.uint64, count=count, offset=offset * 8)))
        yield (np.concatenate(keys) if keys else np.zeros(0, np.uint64),
               np.concatenate(positions) if positions else np.zeros(0, np.int64),
               np.concatenate(extras) if extras else None)  # fmt: skip


def _exact_duplicates(k0: Path, k1: Path, total: int) -> np.ndarray:
    removed = []
    for a, positions, b in _column_passes(k0, total, k1):
        order = np.lexsort((positions, b, a))
        a, b, positions = a[order], b[order], positions[order]
        same = (a[1:] == a[:-1]) & (b[1:] == b[:-1])
        removed.append(positions[1:][same])
    return np.sort(np.concatenate(removed)) if removed else np.zeros(0, np.int64)


def _band_edges(column: Path, total: int, skip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(document, first document of its bucket) for every document sharing this band key with an earlier one."""
    sources, targets = [], []
    for keys, positions, _ in _column_passes(column, total):
        if len(skip):
            keep = ~_contains(skip, positions)
            keys, positions = keys[keep], positions[keep]
        order = np.lexsort((positions, keys))
        keys, positions = keys[order], positions[order]
        starts = np.ones(len(keys), dtype=bool)
        starts[1:] = keys[1:] != keys[:-1]
        first = positions[np.maximum.accumulate(np.where(starts, np.arange(len(keys)), 0))]
        sources.append(positions[~starts])
        targets.append(first[~starts])
    return np.concatenate(sources), np.concatenate(targets)


def _contains(sorted_values: np.ndarray, items: np.ndarray) -> np.ndarray:
    where = np.searchsorted(sorted_values, items)
    where[where == len(sorted_values)] = 0
    return sorted_values[where] == items


def _near_duplicates(band_columns: list[Path], total: int, exact: np.ndarray) -> np.ndarray:
    """Documents in a group of LSH candidates that are not its first member (exact duplicates excluded)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    pairs = []
    for column in band_columns:
        sources, targets = _band_edges(column, total, exact)
        if len(sources):
            pairs.append(np.unique(np.stack([sources, targets], axis=1), axis=0))
    if not pairs:
        return np.zeros(0, np.int64)
    edges = np.unique(np.concatenate(pairs), axis=0)
    nodes = np.unique(edges)
    graph = coo_matrix((np.ones(len(edges), np.int8), (np.searchsorted(nodes, edges[:, 0]), np.searchsorted(nodes, edges[:, 1]))),
                       shape=(len(nodes), len(nodes)))  # fmt: skip
    _, labels = connected_components(graph, directed=False)
    order = np.lexsort((nodes, labels))  # by group, first document first
    first_of_group = np.full(labels.max() + 1, -1, dtype=np.int64)
    group_starts = np.ones(len(order), dtype=bool)
    group_starts[1:] = labels[order][1:] != labels[order][:-1]
    first_of_group[labels[order][group_starts]] = nodes[order][group_starts]
    return np.sort(nodes[nodes != first_of_group[labels]])


def find_duplicates(files: list[Path], bands: int, exact: bool, scratch: Path) -> tuple[np.ndarray, np.ndarray]:
    """Positions (in corpus order) of exact and of near duplicates, each keeping its group's first document."""
    columns = ["k0", "k1"] + [f"b{j}" for j in range(bands)]
    handles = {c: open(scratch / f"{c}.u64", "wb") for c in columns}
    total = 0
    try:
        for path in files:
            table = pq.read_table(path, columns=["key"] + (["bands"] if bands else []))
            n = table.num_rows
            if not n:
                continue
            key = table.column("key").combine_chunks()
            raw = np.frombuffer(key.buffers()[1], dtype=np.uint64)[key.offset * 2 : (key.offset + n) * 2].reshape(n, 2)
            raw[:, 0].tofile(handles["k0"])
            raw[:, 1].tofile(handles["k1"])
            if bands:
                values = table.column("bands").combine_chunks().flatten().to_numpy().reshape(n, bands)
                for j in range(bands):
                    np.ascontiguousarray(values[:, j]).tofile(handles[f"b{j}"])
            total += n
    finally:
        for handle in handles.values():
            handle.close()
    exact_removed = _exact_duplicates(scratch / "k0.u64", scratch / "k1.u64", total) if exact and total else np.zeros(0, np.int64)
    near_removed = _near_duplicates([scratch / f"b{j}.u64" for j in range(bands)], total, exact_removed) if bands and total else np.zeros(0, np.int64)
    return exact_removed, near_removed


# --- running -----------------------------------------------------------------------------------------


def run(cfg: IngestConfig, store: ArtifactStore, run_shards: Callable[[list[list[Piece]]], None] | None = None) -> str:
    """Build (or find) the corpus artifact for `cfg`; returns its id.

    `run_shards` runs the shard tasks (flows/ passes Prefect's task runner); by default they run on
    this machine's cores.
    """
    plan = make_plan(cfg)
    if store.exists(plan.aid):
        log.info("ingest %s: already built (cache hit)", plan.aid)
        return plan.aid
    log.info("ingest %s: config %s", plan.aid, cfg.model_dump_json())
    pending = plan.pending(store)
    if len(pending) < len(plan.pieces):
        log.info("ingest: %d of %d pieces already in the shard cache (unchanged files)", len(plan.pieces) - len(pending), len(plan.pieces))
    started = time.perf_counter()
    if pending:
        shards = pack_shards(pending, int(cfg.parallel.shard_mb * 2**20))
        (run_shards or (lambda s: _run_local(s, cfg, store)))(shards)
        size = sum(p.size for p in pending)
        seconds = time.perf_counter() - started
        log.info("ingest: read %.1f MB in %.1f s (%.1f MB/s)", size / 1e6, seconds, size / 1e6 / max(seconds, 1e-9))
    return assemble(plan, cfg, store)


def _run_local(shards: list[list[Piece]], cfg: IngestConfig, store: ArtifactStore) -> None:
    """The shard tasks on this machine: a process pool over the cores, or in this process."""
    if cfg.parallel.dask_address:
        log.info("ingest: parallel.dask_address is for `dapt run` (Prefect runs the shards there); run alone, they run here")
    # memory:// files live in this process only.
    here = any(p.source.startswith("memory://") for shard in shards for p in shard)
    run_local(process_shard, [(shard, cfg, store.url) for shard in shards], [sum(p.size for p in s) for s in shards],
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

    with store.build(STAGE, plan.aid, config=manifest_config(cfg), sources=plan.sources) as build:
        scratch = build.dir / ".dedup"
        scratch.mkdir()
        bands = lsh_shape(cfg.dedup)[0] if cfg.dedup.near else 0
        exact_removed, near_removed = find_duplicates(files, bands, cfg.dedup.exact, scratch)
        shutil.rmtree(scratch)
        removed = np.union1d(exact_removed, near_removed)
        kept = _write_splits(files, removed, cfg.validation_fraction, build.dir)

        total = {k: sum(kept[s][k] for s in SPLITS) for k in kept["train"]}
        duplicates = {"duplicates_removed": int(len(exact_removed)), "near_duplicates_removed": int(len(near_removed))}
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
        log.info(
            "ingest %s: %d documents (%d train / %d validation), %.1f MB, from %.1f MB of input; removed "
            "%d exact and %d near duplicates, %d empty, %d short, %d long, %d low-alpha; %d bad records skipped",
            plan.aid, total["documents"], kept["train"]["documents"], kept["validation"]["documents"], total["bytes"] / 1e6,
            input_bytes / 1e6, duplicates["duplicates_removed"],
            duplicates["near_duplicates_removed"], counts["empty_removed"], counts["short_removed"], counts["long_removed"],
            counts["low_alpha_removed"], build.metrics["records_skipped"],
        )  # fmt: skip
    return plan.aid


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
        for split in SPLITS:
            if buffers[split]:
                writers[split].write_table(pa.table({"text": buffers[split]}, schema=_SCHEMA))
    finally:
        for writer in writers.values():
            writer.close()
    return kept


def read_split(corpus_dir: Path, split: str, batch_size: int = 1024):
    """Yield lists of document texts from a corpus artifact's split, one Parquet batch at a time."""
    parquet = pq.ParquetFile(corpus_dir / f"{split}.parquet")
    for batch in parquet.iter_batches(batch_size=batch_size, columns=["text"]):
        yield batch.column(0).to_pylist()


if __name__ == "__main__":
    from pretrain.pipeline import stage_main

    stage_main(STAGE)
