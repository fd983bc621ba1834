"""Streaming readers for the formats users bring: .txt, .jsonl(.gz), .csv/.tsv(.gz), .parquet.

Every reader yields `(location, record)` one at a time (memory does not grow with file size), where
location is `file:line` (or `file:row`) so that an error can name exactly where the problem is.
Invalid UTF-8 is replaced and counted per file, never a crash.
"""

from __future__ import annotations

import csv
import gzip
import json
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from pretrain.errors import InputError

FORMATS = {
    ".txt": "txt",
    ".text": "txt",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
}
_SNIFF_BYTES = 8192


@dataclass
class FileStats:
    """What reading one file found; goes into the corpus manifest."""

    path: str
    records: int = 0
    invalid_utf8_lines: int = 0


def file_format(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    fmt = FORMATS.get(suffixes[-1]) if suffixes else None
    if fmt is None or (fmt == "parquet" and path.suffix.lower() == ".gz"):
        known = ", ".join(sorted(FORMATS) + ["(any of these).gz except .parquet"])
        raise InputError(f"{path}: unsupported file type {''.join(path.suffixes) or '(none)'}; supported: {known}")
    return fmt


def _open_binary(path: Path):
    try:
        f = open(path, "rb")
    except OSError as e:
        raise InputError(f"{path}: cannot be read ({e.strerror})") from None
    if path.suffix.lower() == ".gz":
        return gzip.GzipFile(fileobj=f, mode="rb")
    return f


def check_not_binary(path: Path) -> None:
    """Refuse files that are not text (NUL bytes near the start), naming the file."""
    try:
        with _open_binary(path) as f:
            head = f.read(_SNIFF_BYTES)
    except (OSError, EOFError, zlib.error) as e:
        raise InputError(f"{path}: not a readable gzip file ({e})") from None
    if b"\0" in head:
        raise InputError(
            f"{path}: looks like a binary file (NUL bytes in the first {_SNIFF_BYTES // 1024} KiB), not text; "
            "remove it from the inputs or point the inputs at text files only"
        )


def _lines(path: Path, stats: FileStats) -> Iterator[str]:
    """Decoded lines (newline kept); an undecodable line is decoded with U+FFFD and counted."""
    try:
        with _open_binary(path) as f:
            for raw in f:
                try:
                    yield raw.decode("utf-8")
                except UnicodeDecodeError:
                    stats.invalid_utf8_lines += 1
                    yield raw.decode("utf-8", errors="replace")
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise InputError(f"{path}: compressed stream is truncated or corrupt ({e}); re-create or remove the file") from None


def read_records(
    path: Path, stats: FileStats | None = None, txt_mode: str = "file", text_field: str = "text"
) -> Iterator[tuple[str, dict]]:
    """Yield (location, record) from one file. Text files give records {text_field: ...}."""
    stats = stats or FileStats(str(path))
    fmt = file_format(path)
    if fmt != "parquet":
        check_not_binary(path)
    readers = {"txt": _read_txt, "jsonl": _read_jsonl, "csv": _read_csv, "tsv": _read_csv, "parquet": _read_parquet}
    delimiter = "\t" if fmt == "tsv" else ","
    for location, record in readers[fmt](path, stats, txt_mode=txt_mode, delimiter=delimiter, text_field=text_field):
        stats.records += 1
        yield location, record


def _read_txt(path: Path, stats: FileStats, txt_mode: str, text_field: str, **_: Any) -> Iterator[tuple[str, dict]]:
    if txt_mode == "file":
        yield f"{path}", {text_field: "".join(_lines(path, stats))}
        return
    buffer: list[str] = []
    start = 1
    for number, line in enumerate(_lines(path, stats), start=1):
        if txt_mode == "line":
            yield f"{path}:{number}", {text_field: line}
        elif line.strip():
            if not buffer:
                start = number
            buffer.append(line)
        elif buffer:
            yield f"{path}:{start}", {text_field: "".join(buffer)}
            buffer = []
    if buffer:
        yield f"{path}:{start}", {"text": "".join(buffer)}


def _read_jsonl(path: Path, stats: FileStats, **_: Any) -> Iterator[tuple[str, dict]]:
    for number, line in enumerate(_lines(path, stats), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{number}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(record, dict):
            raise InputError(f"{path}:{number}: expected a JSON object per line, got {type(record).__name__}")
        yield f"{path}:{number}", record


def _read_csv(path: Path, stats: FileStats, delimiter: str = ",", **_: Any) -> Iterator[tuple[str, dict]]:
    csv.field_size_limit(sys.maxsize)
    reader = csv.DictReader(_lines(path, stats), delimiter=delimiter)
    try:
        for record in reader:
            yield f"{path}:{reader.line_num}", record
    except csv.Error as e:
        raise InputError(f"{path}:{reader.line_num}: not valid CSV ({e})") from None


def _read_parquet(path: Path, stats: FileStats, **_: Any) -> Iterator[tuple[str, dict]]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a file that is not Parquet
        raise InputError(f"{path}: not a readable Parquet file ({e})") from None
    row = 0
    for batch in parquet.iter_batches(batch_size=4096):
        for record in batch.to_pylist():
            row += 1
            yield f"{path}:row {row}", record


def field_text(record: dict, field: str, location: str, key: str, numbers_ok: bool = False) -> str | None:
    """The string in `record[field]`, None for null; a clear error naming the config `key` otherwise."""
    if field not in record:
        fields = ", ".join(map(repr, list(record)[:12])) or "none"
        raise InputError(f"{location}: no field {field!r} (fields here: {fields}); set {key} to the field that holds it")
    value = record[field]
    if value is None or isinstance(value, str):
        return value
    if numbers_ok and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise InputError(f"{location}: field {field!r} holds {type(value).__name__}, expected a string ({key})")
