"""Streaming readers for the formats users bring, from local paths or any fsspec URL.

Formats: `.txt`, `.jsonl`/`.ndjson`/`.json` (one JSON object per line), `.csv`, `.tsv`, `.parquet`,
`.arrow` (Arrow IPC, what Hugging Face `save_to_disk` writes), each text format optionally compressed
(`.gz`, `.zst`, `.bz2`, `.xz`). Inputs are paths, folders (recursive), globs, or URLs (`file://`,
`memory://`, and `s3://`, `gs://`, ... when the fsspec backend is installed); a folder saved with
`datasets.Dataset.save_to_disk` (or a `DatasetDict`) is read as its Arrow files.

Every reader yields one record at a time, so memory does not grow with file size, and knows where it
is (`file:line`, `file:row N`) so that a problem names its place. Uncompressed line formats can be read
by byte range (a line belongs to the range its first byte is in), Parquet by row-group range: that is
how one large file becomes several independent shards. Invalid UTF-8 is replaced and counted, never a
crash; a line longer than the limit is refused without being held in memory.
"""

from __future__ import annotations

import bz2
import contextlib
import csv
import glob
import gzip
import io
import json
import lzma
import os
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from pretrain.core.errors import InputError, UserError, unreachable
from pretrain.data.hf_datasets import is_source
from pretrain.data.hf_datasets import records as dataset_records

FORMATS = {
    ".txt": "txt",
    ".text": "txt",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".arrow": "arrow",
}
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2", ".xz": "xz"}
COLUMNAR = ("parquet", "arrow")  # binary containers: never compressed on top, never sniffed for NUL bytes
_SNIFF_BYTES = 8192
_READ_CHUNK = 1 << 20
HF_DATASET_FILES = ("dataset_info.json", "state.json")
HF_DATASET_DICT = "dataset_dict.json"


@dataclass
class FileStats:
    """What reading one file (or one range of it) found; goes into the corpus manifest."""

    path: str
    records: int = 0
    invalid_utf8_lines: int = 0
    errors: int = 0
    error_examples: list[str] = field(default_factory=list)
    skipped: str | None = None  # why the whole file was skipped (not text)
    on_error: str = "fail"
    hint: str = ""  # appended to the error under on_error: fail, e.g. how to skip instead

    def problem(self, message: str) -> None:
        """A bad record or file: raise (on_error: fail) or count it and go on (on_error: skip)."""
        if self.on_error == "fail":
            raise InputError(message + self.hint)
        self.errors += 1
        if len(self.error_examples) < 20:
            self.error_examples.append(message)


# --- where the files are -----------------------------------------------------------------------------


def is_url(source: str | os.PathLike) -> bool:
    return "://" in str(source)


def url_fs(url: str):
    """(filesystem, path) for an fsspec URL; a clear error when its backend is not installed."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as e:
        protocol = url.split("://", 1)[0]
        raise InputError(f"{url}: reading {protocol}:// needs its fsspec backend ({e}); install it, e.g. `pip install s3fs`") from None
    except ValueError as e:
        raise InputError(f"{url}: not a usable URL ({e})") from None


def expand_sources(patterns: list[str]) -> list[str]:
    """Input files named by paths, folders (recursive), globs or URLs, in a stable order, deduplicated.

    Local inputs come back as paths, URL inputs as URLs. Within a folder files are sorted by path; hidden
    files and folders are skipped; a Hugging Face `save_to_disk` folder gives its Arrow files in order.
    """
    seen: dict[str, None] = {}
    for pattern in patterns:
        for match in _expand_url(pattern) if is_url(pattern) else _expand_local(pattern):
            seen.setdefault(match, None)
    return list(seen)


def expand_inputs(patterns: list[str]) -> list[Path]:
    """Local files named by paths, directories (recursively) and globs, sorted within each pattern,
    deduplicated (a task's files: no URLs, no `save_to_disk` folders)."""
    seen: dict[Path, None] = {}
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            matches = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        elif path.is_file():
            matches = [path]
        else:
            matches = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
        for match in matches:
            seen.setdefault(match, None)
    return list(seen)


def _expand_local(pattern: str) -> list[str]:
    path = Path(pattern)
    if path.is_dir():
        return [str(p) for p in _walk_local(path)]
    if path.is_file():
        return [pattern]
    found: list[str] = []
    for match in sorted(glob.glob(pattern, recursive=True)):
        p = Path(match)
        if p.is_file():
            found.append(match)
        elif p.is_dir() and _hf_data_files(p) is not None:
            found += [str(f) for f in _hf_data_files(p)]
    return found


def _walk_local(folder: Path) -> list[Path]:
    data_files = _hf_data_files(folder)
    if data_files is not None:
        return data_files
    out: list[Path] = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            out += _walk_local(entry)
        elif entry.is_file():
            out.append(entry)
    return out


def _hf_data_files(folder: Path) -> list[Path] | None:
    """The Arrow files of a `save_to_disk` folder in order (all splits of a DatasetDict), else None."""
    if (folder / HF_DATASET_DICT).is_file():
        splits = json.loads((folder / HF_DATASET_DICT).read_text()).get("splits", [])
        return [f for split in splits for f in (_hf_data_files(folder / split) or [])]
    if all((folder / name).is_file() for name in HF_DATASET_FILES):
        state = json.loads((folder / "state.json").read_text())
        return [folder / entry["filename"] for entry in state.get("_data_files", [])]
    return None


def _expand_url(url: str) -> list[str]:
    fs, path = url_fs(url)
    with reaching(url):
        if fs.isdir(path):
            files = sorted(fs.find(path))
            hidden = lambda p: any(part.startswith(".") for part in p[len(path.rstrip("/")) :].split("/"))  # noqa: E731
            return [fs.unstrip_protocol(p) for p in files if not hidden(p)]
        if fs.isfile(path):
            return [url]
        return [fs.unstrip_protocol(p) for p in sorted(fs.glob(path)) if fs.isfile(p)]


@contextlib.contextmanager
def reaching(url: str):
    """Turn a failure to reach `url` (no network, refused, no credentials) into an InputError naming it."""
    try:
        yield
    except UserError:
        raise
    except Exception as e:
        if (why := unreachable(e)) is None:
            raise
        raise InputError(f"{url}: cannot read it: {why}") from None


def file_size(source: str) -> int:
    if is_url(source):
        fs, path = url_fs(source)
        with reaching(source):
            return int(fs.size(path))
    return os.path.getsize(source)


def open_raw(source: str | os.PathLike) -> BinaryIO:
    """The file's bytes as stored (seekable), local or fsspec."""
    try:
        if is_url(str(source)):
            fs, path = url_fs(str(source))
            with reaching(str(source)):
                return fs.open(path, "rb")
        return open(source, "rb")
    except FileNotFoundError:
        raise InputError(f"{source}: no such file (was it moved or deleted after the run started?)") from None
    except PermissionError as e:
        raise InputError(f"{source}: cannot be read ({e.strerror})") from None
    except IsADirectoryError:
        raise InputError(f"{source}: is a folder, not a file") from None


# --- formats and compression -------------------------------------------------------------------------


def compression_of(path: str | os.PathLike) -> str | None:
    if is_source(path):
        return None
    suffix = Path(str(path)).suffix.lower()
    return COMPRESSIONS.get(suffix)


def file_format(path: str | os.PathLike) -> str:
    """txt, jsonl, csv, tsv, parquet or arrow, from the file name (`dataset` for a dataset input); InputError for anything else."""
    if is_source(path):
        return "dataset"
    name = Path(str(path))
    suffixes = [s.lower() for s in name.suffixes]
    compressed = bool(suffixes) and suffixes[-1] in COMPRESSIONS
    if compressed:
        suffixes = suffixes[:-1]
    fmt = FORMATS.get(suffixes[-1]) if suffixes else None
    if fmt is None or (compressed and fmt in COLUMNAR):
        known = ", ".join(sorted(FORMATS))
        raise InputError(
            f"{path}: unsupported file type {''.join(name.suffixes) or '(none)'}; supported: {known}, "
            f"the text ones also compressed ({', '.join(COMPRESSIONS)}); remove it from ingest.inputs or narrow the glob"
        )
    return fmt


def _corrupt_errors(compression: str | None) -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError)
    if compression == "bz2":
        errors += (OSError,)  # bz2 reports a damaged stream as OSError("Invalid data stream")
    if compression == "zstd":
        import zstandard

        errors += (zstandard.ZstdError,)
    return errors


def open_text_stream(source: str | os.PathLike, compression: str | None) -> BinaryIO:
    """Decompressed bytes of a file (buffered: `readline` works), local or fsspec."""
    raw = open_raw(source)
    if compression is None:
        return raw
    if compression == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if compression == "bz2":
        return bz2.BZ2File(raw, mode="rb")
    if compression == "xz":
        return lzma.LZMAFile(raw, mode="rb")
    return io.BufferedReader(_ZstdReader(raw, source), buffer_size=_READ_CHUNK)


class _ZstdReader(io.RawIOBase):
    """Zstandard frames, one after another, that notices a stream cut inside a frame.

    zstandard's own stream_reader returns a truncated stream as a short (even empty) read without an
    error, which would silently drop the rest of a file.
    """

    def __init__(self, raw: BinaryIO, source: str | os.PathLike):
        try:
            import zstandard
        except ImportError:
            raw.close()
            raise InputError(f"{source}: reading .zst needs the zstandard package (`pip install zstandard`)") from None
        self._zstd, self._raw = zstandard, raw
        self._decompressor = zstandard.ZstdDecompressor()
        self._frame = self._decompressor.decompressobj()
        self._inside_frame = False
        self._out, self._at = b"", 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self._at >= len(self._out):
            chunk = self._raw.read(_READ_CHUNK)
            if not chunk:
                if self._inside_frame:
                    raise self._zstd.ZstdError("the stream ends inside a frame (truncated)")
                return 0
            self._out, self._at = self._decompress(chunk), 0
        n = min(len(buffer), len(self._out) - self._at)
        buffer[:n] = self._out[self._at : self._at + n]
        self._at += n
        return n

    def _decompress(self, chunk: bytes) -> bytes:
        parts = [self._frame.decompress(chunk)]
        self._inside_frame = not self._frame.eof
        while self._frame.eof and self._frame.unused_data:  # the next frame starts in this chunk
            rest = self._frame.unused_data
            self._frame = self._decompressor.decompressobj()
            parts.append(self._frame.decompress(rest))
            self._inside_frame = not self._frame.eof
        if self._frame.eof:
            self._frame = self._decompressor.decompressobj()
        return b"".join(parts)

    def close(self) -> None:
        self._raw.close()
        super().close()


def sniff_binary(source: str | os.PathLike, compression: str | None) -> str | None:
    """Why the file is not text (None when it looks like text), from its first few KiB."""
    try:
        with open_text_stream(source, compression) as f:
            head = f.read(_SNIFF_BYTES)
    except _corrupt_errors(compression) as e:
        raise InputError(f"{source}: compressed stream is truncated or corrupt ({e}); re-create or remove the file") from None
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return "UTF-16 text (byte-order mark); convert it to UTF-8, e.g. `iconv -f UTF-16 -t UTF-8`"
    if b"\0" in head:
        return f"a binary file (NUL bytes in the first {_SNIFF_BYTES // 1024} KiB), not text"
    return None


def check_not_binary(path: str | os.PathLike) -> None:
    """Refuse files that are not text (NUL bytes near the start), naming the file."""
    why = sniff_binary(path, compression_of(path))
    if why:
        raise InputError(f"{path}: looks like {why}; remove it from the inputs or point the inputs at text files only")


# --- lines --------------------------------------------------------------------------------------------


class Lines:
    """Decoded lines of a text file, or of the byte range [start, end) of an uncompressed one.

    A line belongs to the range holding its first byte, so ranges that tile a file read every line
    exactly once. Lines longer than `max_line_bytes` are reported through `on_long(k)` and skipped
    without being held in memory. `number(k)` turns the k-th line of the range (1-based) into the line
    number in the file; for a range that does not start at 0 it counts the newlines before it, once, and
    only when asked (an error message needs it, reading does not).
    """

    def __init__(self, source: str | os.PathLike, stats: FileStats, compression: str | None = None,
                 start: int = 0, end: int | None = None, max_line_bytes: int | None = None):  # fmt: skip
        if compression is not None and (start or end is not None):
            raise ValueError("byte ranges need an uncompressed file")
        self.source, self.stats, self.compression = source, stats, compression
        self.start, self.end, self.limit = start, end, max_line_bytes
        self._first_line_at = start
        self._base: int | None = 0 if start == 0 else None

    def number(self, k: int) -> int:
        if self._base is None:
            count, remaining = 0, self._first_line_at
            with open_raw(self.source) as f:
                while remaining > 0 and (chunk := f.read(min(_READ_CHUNK, remaining))):
                    count += chunk.count(b"\n")
                    remaining -= len(chunk)
            self._base = count
        return self._base + k

    def __call__(self, on_long: Callable[[int], None] | None = None) -> Iterator[tuple[int, str]]:
        try:
            yield from self._read(on_long)
        except _corrupt_errors(self.compression) as e:
            raise InputError(
                f"{self.source}: compressed stream is truncated or corrupt ({e}); re-create or remove the file"
            ) from None

    def _read(self, on_long: Callable[[int], None] | None) -> Iterator[tuple[int, str]]:
        limit = self.limit
        with open_text_stream(self.source, self.compression) as f:
            position = 0
            if self.start > 0:
                f.seek(self.start - 1)
                position = self.start - 1 + _skip_line(f)  # the line that began before the range is not ours
                self._first_line_at = position
            k = 0
            while self.end is None or position < self.end:
                raw = f.readline(limit + 1) if limit else f.readline()
                if not raw:
                    break
                k += 1
                position += len(raw)
                if limit and len(raw) > limit and not (len(raw) == limit + 1 and raw.endswith(b"\n")):
                    if not raw.endswith(b"\n"):
                        position += _skip_line(f)
                    if on_long is None:
                        raise InputError(f"{self.source}:{self.number(k)}: line longer than {limit:,} bytes")
                    on_long(k)
                    continue
                try:
                    yield k, raw.decode("utf-8")
                except UnicodeDecodeError:
                    self.stats.invalid_utf8_lines += 1
                    yield k, raw.decode("utf-8", errors="replace")


def _skip_line(f: BinaryIO) -> int:
    """Read through the next newline without holding the line; the number of bytes skipped."""
    skipped = 0
    while True:
        chunk = f.readline(_READ_CHUNK)
        skipped += len(chunk)
        if not chunk or chunk.endswith(b"\n"):
            return skipped


def text_lines(path: str | os.PathLike, stats: FileStats) -> Iterator[str]:
    """Decoded lines (newline kept) of a whole file; an undecodable line is decoded with U+FFFD and counted."""
    for _, line in Lines(path, stats, compression_of(path))():
        yield line


# --- records ------------------------------------------------------------------------------------------


@dataclass
class RecordSource:
    """One file, or one range of it, and how to read it."""

    source: str
    fmt: str
    compression: str | None = None
    start: int = 0  # bytes for line formats, row groups for Parquet
    end: int | None = None
    txt_mode: str = "file"
    text_field: str = "text"
    max_record_bytes: int | None = None
    delimiter: str | None = None  # CSV/TSV; None: the format's own


def csv_delimiter(fmt: str, delimiter: str | None) -> str:
    """The field separator of a .csv (`,`) or .tsv (tab) file, unless one is configured."""
    return delimiter or ("\t" if fmt == "tsv" else ",")


def delimiter_hint(columns: list, setting: str) -> str:
    """A hint when a CSV header read as one column holds another likely separator (`document;category`)."""
    if len(columns) == 1 and isinstance(columns[0], str):
        found = [d for d in (";", "\t", "|", ",") if d in columns[0]]
        if found:
            shown = "\\t" if found[0] == "\t" else found[0]
            return f'; the header reads as one column holding {found[0]!r}: if that separates the fields, set {setting}: "{shown}"'
    return ""


def iter_texts(spec: RecordSource, stats: FileStats) -> Iterator[str | None]:
    """The text of every record of `spec`, in order (None for a null/missing-as-null value).

    Problems (bad JSON, a missing field, a line over the limit, a truncated stream, an unreadable file)
    go through `stats.problem`: an InputError naming file and line under on_error: fail, counted and
    skipped under on_error: skip. A file that is not text is skipped (stats.skipped says why).
    """
    readers = {"txt": _txt_texts, "jsonl": _jsonl_texts, "csv": _csv_texts, "tsv": _csv_texts,
               "parquet": _parquet_texts, "arrow": _arrow_texts, "dataset": _dataset_texts}  # fmt: skip
    try:
        if spec.fmt not in COLUMNAR and spec.fmt != "dataset":
            why = sniff_binary(spec.source, spec.compression)
            if why:
                stats.skipped = why
                return
        for text in readers[spec.fmt](spec, stats):
            stats.records += 1
            yield text
    except InputError as e:
        if stats.on_error == "fail":
            raise
        stats.problem(str(e))  # the rest of this file cannot be read: keep what was, count the file


def _line_limit(spec: RecordSource, stats: FileStats, lines: Lines) -> Callable[[int], None]:
    def on_long(k: int) -> None:
        stats.problem(
            f"{spec.source}:{lines.number(k)}: line longer than ingest.max_document_mb ({spec.max_record_bytes / 2**20:g} MiB) "
            "in a file with one document per line; is it really that format?"
        )

    return on_long


def _txt_texts(spec: RecordSource, stats: FileStats) -> Iterator[str]:
    lines = Lines(spec.source, stats, spec.compression, spec.start, spec.end, spec.max_record_bytes)
    if spec.txt_mode == "line":
        for _, line in lines(_line_limit(spec, stats, lines)):
            yield line
        return
    # file or paragraph mode: a document is many lines; one over the limit, or all together, drop it.
    buffer: list[str] = []
    size = 0
    too_long = False

    def drop(k: int) -> None:
        nonlocal buffer, too_long
        if not too_long:
            where = f"{spec.source}:{lines.number(k)}" if spec.txt_mode == "paragraph" else str(spec.source)
            stats.problem(
                f"{where}: document longer than ingest.max_document_mb ({spec.max_record_bytes / 2**20:g} MiB); "
                "split the file into documents (ingest.txt_mode: paragraph or line) or raise the limit"
            )
        buffer, too_long = [], True

    for k, line in lines(drop):
        if spec.txt_mode == "paragraph" and not line.strip():
            if buffer:
                yield "".join(buffer)
            buffer, size, too_long = [], 0, False
            continue
        if too_long:
            continue
        size += len(line)
        if spec.max_record_bytes and size > spec.max_record_bytes:
            drop(k)
            continue
        buffer.append(line)
    if buffer and not too_long:
        yield "".join(buffer)


def _json_record(spec: RecordSource, stats: FileStats, lines: Lines, k: int, line: str) -> dict | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        if k == 1 and line.lstrip().startswith("["):
            stats.problem(
                f"{spec.source}:{lines.number(k)}: a JSON array, not JSON Lines (one object per line); convert it, "
                f"e.g. `jq -c '.[]' file.json > file.jsonl`"
            )
        else:
            stats.problem(f"{spec.source}:{lines.number(k)}: not valid JSON ({e.msg} at column {e.colno})")
        return None
    if not isinstance(record, dict):
        stats.problem(f"{spec.source}:{lines.number(k)}: expected a JSON object per line, got {type(record).__name__}")
        return None
    return record


def _jsonl_texts(spec: RecordSource, stats: FileStats) -> Iterator[str | None]:
    lines = Lines(spec.source, stats, spec.compression, spec.start, spec.end, spec.max_record_bytes)
    field_name = spec.text_field
    for k, line in lines(_line_limit(spec, stats, lines)):
        if not line.strip():
            continue
        record = _json_record(spec, stats, lines, k, line)
        if record is None:
            continue
        text = _text_of(record, field_name, lambda: f"{spec.source}:{lines.number(k)}", stats)
        if text is not _MISSING:
            yield text


_MISSING = object()


def _text_of(record: dict, field_name: str, where: Callable[[], str], stats: FileStats) -> Any:
    """record[field_name] if it is a string or null; a problem (and _MISSING) otherwise."""
    value = record.get(field_name, _MISSING)
    if value is None or isinstance(value, str):
        return value
    if value is _MISSING:
        fields = ", ".join(map(repr, list(record)[:12])) or "none"
        stats.problem(f"{where()}: no field {field_name!r} (fields here: {fields}); set ingest.text_field to the field that holds the text")
    else:
        stats.problem(f"{where()}: field {field_name!r} holds {type(value).__name__}, expected a string (ingest.text_field)")
    return _MISSING


def csv_error(path: str, e: csv.Error, record_start: int, line: int) -> str:
    """A csv.Error as a message naming the file and line; an unterminated quote names the line it opens on."""
    if "unexpected end of data" in str(e):
        return (
            f"{path}:{record_start}: a quoted field opened in the record starting on this line is never closed (it runs to "
            "the end of the file); close the quote, or double a quote that is part of the text (\"\")"
        )
    if line > record_start:  # the record spans lines: a quote opened in it closed on `line`, with text after it
        return (
            f"{path}:{record_start}: not valid CSV in the record starting on this line ({e}, on line {line}): a quoted field "
            "opened in it closes later with more text after the quote; close the quote where the field ends, or double a quote "
            "that is part of the text (\"\")"
        )
    return f"{path}:{record_start}: not valid CSV ({e})"


def _csv_texts(spec: RecordSource, stats: FileStats) -> Iterator[str | None]:
    csv.field_size_limit(sys.maxsize)
    lines = Lines(spec.source, stats, spec.compression, max_line_bytes=spec.max_record_bytes)
    # strict: an unterminated quote is an error at the end of the file, not one record swallowing the rest.
    reader = csv.reader((line for _, line in lines(_line_limit(spec, stats, lines))), delimiter=csv_delimiter(spec.fmt, spec.delimiter),
                        strict=True)  # fmt: skip
    start = 1
    try:
        header = next(reader, None)
        if header is None:
            return
        if spec.text_field not in header:
            columns = ", ".join(map(repr, header[:12]))
            hint = delimiter_hint(header, "ingest.csv_delimiter")
            stats.problem(f"{spec.source}:1: no column {spec.text_field!r} (columns: {columns}); set ingest.text_field{hint}")
            return
        column = len(header) - 1 - header[::-1].index(spec.text_field)  # a repeated name: its last column, as csv.DictReader
        start = reader.line_num + 1  # where the next record starts (the line an error in it names)
        for row in reader:
            if row:  # not a blank line
                yield row[column] if column < len(row) else None
            start = reader.line_num + 1
    except csv.Error as e:
        stats.problem(csv_error(spec.source, e, start, reader.line_num))


def _dataset_texts(spec: RecordSource, stats: FileStats) -> Iterator[str | None]:
    for location, record in dataset_records(spec.source, columns=[spec.text_field]):
        text = _text_of(record, spec.text_field, lambda: location, stats)
        if text is _MISSING:
            return  # every record of a dataset has the same columns: the rest would fail the same way
        if text is not None and spec.max_record_bytes and len(text) > spec.max_record_bytes:
            stats.problem(f"{location}: document longer than ingest.max_document_mb ({spec.max_record_bytes / 2**20:g} MiB)")
            continue
        yield text


def _columnar_texts(batches: Iterator, spec: RecordSource, stats: FileStats, row: int) -> Iterator[str | None]:
    import pyarrow as pa

    for batch in batches:
        column = batch.column(0)
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type) or pa.types.is_null(column.type)):
            stats.problem(f"{spec.source}:row {row + 1}: column {spec.text_field!r} holds {column.type}, expected strings (ingest.text_field)")
            return
        for text in column.to_pylist():
            row += 1
            if text is not None and spec.max_record_bytes and len(text) > spec.max_record_bytes:
                stats.problem(f"{spec.source}:row {row}: document longer than ingest.max_document_mb ({spec.max_record_bytes / 2**20:g} MiB)")
                continue
            yield text


def _check_column(spec: RecordSource, stats: FileStats, names: list[str]) -> bool:
    if spec.text_field in names:
        return True
    columns = ", ".join(map(repr, names[:12]))
    stats.problem(f"{spec.source}: no column {spec.text_field!r} (columns: {columns}); set ingest.text_field")
    return False


def parquet_row_groups(source: str) -> list[tuple[int, int]]:
    """(rows, uncompressed bytes) of each row group of a Parquet file."""
    import pyarrow.parquet as pq

    with open_raw(source) as f:
        try:
            meta = pq.ParquetFile(f).metadata
        except Exception as e:  # pyarrow raises several types for a file that is not Parquet
            raise InputError(f"{source}: not a readable Parquet file ({e})") from None
        return [(meta.row_group(i).num_rows, meta.row_group(i).total_byte_size) for i in range(meta.num_row_groups)]


def _parquet_texts(spec: RecordSource, stats: FileStats) -> Iterator[str | None]:
    import pyarrow.parquet as pq

    with open_raw(spec.source) as f:
        try:
            parquet = pq.ParquetFile(f)
        except Exception as e:
            stats.problem(f"{spec.source}: not a readable Parquet file ({e})")
            return
        if not _check_column(spec, stats, parquet.schema_arrow.names):
            return
        groups = range(spec.start, parquet.num_row_groups if spec.end is None else spec.end)
        row = sum(parquet.metadata.row_group(i).num_rows for i in range(spec.start))
        batches = parquet.iter_batches(batch_size=4096, row_groups=list(groups), columns=[spec.text_field])
        yield from _columnar_texts(batches, spec, stats, row)


def _arrow_texts(spec: RecordSource, stats: FileStats) -> Iterator[str | None]:
    import pyarrow as pa
    import pyarrow.ipc as ipc

    with open_raw(spec.source) as f:
        try:
            reader = ipc.open_stream(f)  # what datasets' save_to_disk writes
        except pa.ArrowInvalid:
            try:
                f.seek(0)
                reader = ipc.open_file(f)
            except pa.ArrowInvalid as e:
                stats.problem(f"{spec.source}: not a readable Arrow file ({e})")
                return
        if not _check_column(spec, stats, reader.schema.names):
            return
        index = reader.schema.get_field_index(spec.text_field)
        batches = reader if isinstance(reader, ipc.RecordBatchStreamReader) else (reader.get_batch(i) for i in range(reader.num_record_batches))
        try:
            yield from _columnar_texts((b.select([index]) for b in batches), spec, stats, 0)
        except (pa.ArrowInvalid, OSError) as e:
            stats.problem(f"{spec.source}: Arrow stream is truncated or corrupt ({e})")


# --- whole records (labelled task files) -------------------------------------------------------------


def read_records(
    path: str | os.PathLike, stats: FileStats | None = None, txt_mode: str = "file", text_field: str = "text",
    delimiter: str | None = None, columns: list[str] | None = None, delimiter_key: str = "csv_delimiter",
) -> Iterator[tuple[str, dict]]:
    """Yield (location, record) from one file, every field kept. Text files give records {text_field: ...}.

    Locations are physical lines (`file:7`, where a CSV record starts, however many lines it spans),
    `file:row N` in Parquet, `dataset NAME (split S) record N` for a dataset input. `columns`: a Parquet
    file or dataset reads only those, when it has them all (else every column, for the error to list).
    """
    if is_source(path):
        yield from dataset_records(path, columns)
        return
    stats = stats or FileStats(str(path))
    fmt = file_format(path)
    compression = compression_of(path)
    if fmt not in COLUMNAR:
        check_not_binary(path)
    if fmt == "txt":
        spec = RecordSource(str(path), fmt, compression, txt_mode=txt_mode, text_field=text_field)
        for text in _txt_texts(spec, stats):
            stats.records += 1
            yield str(path), {text_field: text}
        return
    if fmt == "jsonl":
        lines = Lines(path, stats, compression)
        spec = RecordSource(str(path), fmt, compression)
        for k, line in lines():
            record = _json_record(spec, stats, lines, k, line) if line.strip() else None
            if record is not None:  # None: a blank line, or a bad one skipped under on_error: skip
                stats.records += 1
                yield f"{path}:{k}", record
        return
    if fmt in ("csv", "tsv"):
        yield from _csv_records(path, stats, csv_delimiter(fmt, delimiter), delimiter_key)
        return
    import pyarrow.parquet as pq

    if fmt == "arrow":
        raise InputError(f"{path}: Arrow files are read as corpus text only")
    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a file that is not Parquet
        raise InputError(f"{path}: not a readable Parquet file ({e})") from None
    names = parquet.schema_arrow.names
    wanted = columns if columns and all(c in names for c in columns) else None
    row = 0
    for batch in parquet.iter_batches(batch_size=4096, columns=wanted):
        for record in batch.to_pylist():
            row += 1
            stats.records += 1
            yield f"{path}:row {row}", record


def _csv_records(path: str | os.PathLike, stats: FileStats, delimiter: str, delimiter_key: str = "csv_delimiter") -> Iterator[tuple[str, dict]]:
    """Records of a CSV/TSV file under its header, each located at the physical line it starts on.
    `delimiter_key`: the setting an error suggests when the header looks split by another separator."""
    csv.field_size_limit(sys.maxsize)
    # strict: an unterminated quote is an error at the end of the file, not one record swallowing the rest.
    reader = csv.reader(text_lines(path, stats), delimiter=delimiter, strict=True)
    start, header = 1, None
    try:
        header = next(reader, None)
        if header is None:
            return
        start = reader.line_num + 1  # where the next record starts (the line an error in it names)
        for row in reader:
            first, start = start, reader.line_num + 1
            if not row:  # a blank line
                continue
            stats.records += 1
            # As csv.DictReader: a missing value is None; values beyond the header are ignored.
            yield f"{path}:{first}", {name: row[i] if i < len(row) else None for i, name in enumerate(header)}
    except csv.Error as e:
        # A `;`-separated file read with `,` often fails on a quote before its field check could say why.
        hint = delimiter_hint(header, delimiter_key) if header else ""
        raise InputError(csv_error(str(path), e, start, reader.line_num) + hint) from None


def field_text(record: dict, field: str, location: str, key: str, numbers_ok: bool = False) -> str | None:
    """The string in `record[field]`, None for null; a clear error naming the config `key` otherwise."""
    if field not in record:
        fields = ", ".join(map(repr, list(record)[:12])) or "none"
        hint = delimiter_hint(list(record), key.rsplit(".", 1)[0] + ".csv_delimiter") if "." in key else ""
        raise InputError(f"{location}: no field {field!r} (fields here: {fields}); set {key} to the field that holds it{hint}")
    value = record[field]
    if value is None or isinstance(value, str):
        return value
    if numbers_ok and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise InputError(f"{location}: field {field!r} holds {type(value).__name__}, expected a string ({key})")
