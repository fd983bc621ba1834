"""Build the general-English reference text `dapt assess` scores the base model on, from Debian's
r-cran-janeaustenr package (Jane Austen's six novels, public domain; the package is MIT).

    python data/reference/prepare.py                  # downloads r-cran-janeaustenr=1.0.0-1 with apt-get
    python data/reference/prepare.py --source r-cran-janeaustenr_1.0.0-1_all.deb
    python data/reference/prepare.py --check          # verify the committed file

Writes `pretrain/reference/general_english.txt` (shipped inside the `pretrain` package): one paragraph
per line, every 20th paragraph of at least 30 words of the six novels in the package's order, the
novel's hard line breaks joined. The package keeps the novels in R's lazy-load database
(`data/Rdata.rdb`, indexed by `data/Rdata.rdx`): each is a zlib-compressed, XDR-serialised character
vector of lines, which `unserialize` below reads (the subset of R's format these files use).
Standard library only.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import struct
import sys
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import debsource  # noqa: E402

PACKAGE, VERSION = "r-cran-janeaustenr", "1.0.0-1"
SOURCE_SHA256 = "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95"
DATA = "usr/lib/R/site-library/janeaustenr/data/Rdata"
EVERY, MIN_WORDS = 20, 30
OUT = Path(__file__).resolve().parents[2] / "pretrain" / "reference" / "general_english.txt"


class Unserializer:
    """R's XDR serialisation format (version 2 or 3), for the objects these files hold: character and
    numeric vectors, lists and pairlists with attributes."""

    NIL, STRING, INTEGER, LOGICAL, REAL, LIST, PAIRLIST, CHARS, SYMBOL, REF = 254, 16, 13, 10, 14, 19, 2, 9, 1, 255

    def __init__(self, data: bytes):
        if data[:2] != b"X\n":
            raise SystemExit("not an XDR-serialised R object")
        self.data, self.at, self.symbols = data, 2, []
        version = self.int()
        self.at += 8  # the R versions that wrote and can read it
        if version == 3:
            self.at += 4 + self.int()  # the native encoding's name

    def int(self) -> int:
        (value,) = struct.unpack_from(">i", self.data, self.at)
        self.at += 4
        return value

    def read(self):
        flags = self.int()
        kind, has_attributes, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
        if kind == self.NIL:
            return None
        if kind == self.REF:
            return self.symbols[(flags >> 8) - 1]
        if kind == self.SYMBOL:
            self.symbols.append(self.read())
            return self.symbols[-1]
        if kind == self.CHARS:
            n = self.int()
            value = None if n == -1 else self.data[self.at : self.at + n].decode("utf-8")
            self.at += max(n, 0)
            return value
        if kind == self.PAIRLIST:
            items = {}
            while kind == self.PAIRLIST:
                if has_attributes:
                    self.read()
                tag = self.read() if has_tag else len(items)
                items[tag] = self.read()
                flags = self.int()
                kind, has_attributes, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
            return items
        n = self.int()
        if kind in (self.STRING, self.LIST):
            value = [self.read() for _ in range(n)]
        elif kind in (self.INTEGER, self.LOGICAL):
            value = list(struct.unpack_from(f">{n}i", self.data, self.at))
            self.at += 4 * n
        elif kind == self.REAL:
            value = list(struct.unpack_from(f">{n}d", self.data, self.at))
            self.at += 8 * n
        else:
            raise SystemExit(f"R object of type {kind}: not one this reader knows")
        if has_attributes:
            return {"value": value, "attributes": self.read()}
        return value


def novels(files: dict[str, bytes]) -> dict[str, list[str]]:
    """Novel name -> its lines, from the lazy-load database."""
    index = Unserializer(gzip.decompress(files[DATA + ".rdx"])).read()
    variables = index["value"][0]  # list(variables=, references=, compressed=)
    names = variables["attributes"]["names"]
    database = files[DATA + ".rdb"]
    found = {}
    for name, (offset, length) in zip(names, variables["value"]):
        chunk = database[int(offset) : int(offset) + int(length)]
        raw = zlib.decompress(chunk[4:])  # 4 bytes: the uncompressed length
        if len(raw) != struct.unpack(">I", chunk[:4])[0]:
            raise SystemExit(f"{name}: the lazy-load chunk is damaged")
        found[name] = Unserializer(raw).read()
    return found


def paragraphs(lines: list[str]) -> list[str]:
    out, current = [], []
    for line in lines + [""]:
        if line.strip():
            current.append(line.strip())
        elif current:
            out.append(" ".join(current))
            current = []
    return out


def build(raw: bytes) -> bytes:
    kept = [p for lines in novels(debsource.data_files(raw)).values() for p in paragraphs(lines) if len(p.split()) >= MIN_WORDS]
    return ("\n".join(kept[::EVERY]) + "\n").encode("utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, help=f"{PACKAGE}_{VERSION}_all.deb (default: apt-get download it)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--check", action="store_true", help="only verify the committed file is what the package builds")
    args = parser.parse_args(argv)
    text = build(debsource.source_from(args.source, PACKAGE, VERSION, SOURCE_SHA256))
    if args.check:
        if not args.out.is_file() or args.out.read_bytes() != text:
            print(f"{args.out} differs from what {PACKAGE} {VERSION} builds", file=sys.stderr)
            return 1
        print("the reference text matches")
        return 0
    args.out.write_bytes(text)
    lines, words, digest = len(text.splitlines()), len(text.split()), hashlib.sha256(text).hexdigest()
    print(f"{args.out}: {len(text):,} bytes, {lines:,} paragraphs, {words:,} words, sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
