"""What every `data/*/prepare.py` does with the files it built: write them with their SHA256SUMS, or
(`--check`) verify the committed ones are byte-identical."""

from __future__ import annotations

import gzip
import sys
from pathlib import Path


def write_or_check(files: dict[str, bytes], out: Path, check: bool, built_from: str, sums: str) -> int:
    """Write `files` and `sums` (SHA256SUMS) into `out` and say what each holds; with `check`, write nothing
    and return 1 naming the files that differ from what `built_from` builds. The exit code."""
    if check:
        stale = [n for n, data in files.items() if not (out / n).is_file() or (out / n).read_bytes() != data]
        if stale:
            print(f"differ from what {built_from} builds: {', '.join(stale)}", file=sys.stderr)
            return 1
        print("all files match")
        return 0
    for name, data in files.items():
        (out / name).write_bytes(data)
    (out / "SHA256SUMS").write_text(sums)
    for name, data in files.items():
        records = gzip.decompress(data).count(b"\n")
        print(f"{name}: {len(data):,} bytes, {records:,} records")
    return 0
