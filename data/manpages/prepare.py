"""Build the bundled Linux man-pages data (systems programming documentation) from Debian's packages.

    python data/manpages/prepare.py                 # downloads manpages and manpages-dev 6.03-2 with apt-get
    python data/manpages/prepare.py --source manpages_6.03-2_all.deb --source manpages-dev_6.03-2_all.deb
    python data/manpages/prepare.py --check         # verify the committed files

Writes, next to this script, byte-identically on every run (gzip mtime 0, sorted keys, id order):

- corpus.jsonl.gz       domain corpus: the plain text of every man page of both packages (sections 1
                        to 8; `.so` redirections left out), except the task's test pages
- section_train.jsonl.gz, section_validation.jsonl.gz, section_test.jsonl.gz
                        the task: what a page documents, from the first 150 words of its DESCRIPTION:
                        `syscall` (section 2), `library` (3), `file` (4 devices and 5 file formats)
                        or `overview` (7)
- SHA256SUMS            hashes of the files (and of the source packages) for `--check`

The roff source is turned into plain text here (no groff, so the output does not depend on its
version): comments and layout requests dropped, font macros and escapes resolved, paragraphs kept.
Per label, pages are ranked by the sha256 of their name ("read.2"): the first 25% are test, the next
10 validation, the rest train. DESCRIPTION texts that occur more than once are left out. Standard
library only.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import hashlib
import io
import json
import re
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import builtfiles  # noqa: E402
import debsource  # noqa: E402

VERSION = "6.03-2"
PACKAGES = {  # package -> sha256 of its .deb
    "manpages": "efa1ba4cd19ad7baeae959c9209a7eb74be2ebb858bcabb412597bfc9f588c91",
    "manpages-dev": "96f55cb5e26231d5567c89b692bced63825a14a2d5bd18fdf16ea2ed44eb9838",
}
LABELS = {"2": "syscall", "3": "library", "4": "file", "5": "file", "7": "overview"}
TEST_SHARE, VALIDATION_PER_LABEL, TASK_WORDS = 0.25, 10, 150
PAGE = re.compile(r"usr/share/man/man([1-8])/(.+)\.\1\.gz$")

GLYPHS = {"em": "\u2014", "en": "\u2013", "aq": "'", "dq": '"', "lq": "\u201c", "rq": "\u201d", "oq": "\u2018", "cq": "\u2019",
          "bu": "\u2022", "co": "\u00a9", "rg": "\u00ae", "tm": "\u2122", "rs": "\\", "ti": "~", "ha": "^", "mu": "\u00d7",
          "di": "\u00f7", "+-": "\u00b1", "<=": "\u2264", ">=": "\u2265", "!=": "\u2260", "->": "\u2192", "<-": "\u2190",
          "de": "\u00b0", "hy": "-", "pl": "+", "mi": "-", "eq": "=", "sl": "/", "ga": "`", "a-": "\u00af", "sq": "\u25a1",
          "fm": "\u2032", "ss": "\u00df", "lh": "\u261c", "rh": "\u261e"}  # fmt: skip
STRINGS = {"lq": "\u201c", "rq": "\u201d", "R": "\u00ae", "Tm": "\u2122"}
ESCAPE = re.compile(r"\\(?:f(?:\[[^\]]*\]|\(..|.)|s[-+]?\d|\((..)|\[([^\]]*)\]|\*(?:\((..)|\[([^\]]*)\]|(.))|(.))")
FONT_MACROS = {"B", "I", "SM", "SB"}  # arguments joined by spaces
ALTERNATING = {"BR", "RB", "BI", "IB", "IR", "RI"}  # arguments joined without spaces
BREAKS = {"PP", "P", "LP", "TP", "IP", "HP", "sp", "SH", "SS", "TQ", "RS", "RE", "EX", "EE", "nf", "fi", "TS", "TE", "br", "in", "ti"}


def unescape(text: str) -> str:
    def one(m: re.Match) -> str:
        glyph, named, string2, string_named, string1, other = m.groups()
        if glyph or named:
            return GLYPHS.get(glyph or named, "")
        if string2 or string_named or string1:
            return STRINGS.get(string2 or string_named or string1, "")
        if other is None:
            return ""  # a font or size change
        return {"-": "-", "e": "\\", "\\": "\\", " ": " ", "~": " ", "0": " ", "t": " ", "'": "'", "`": "`", ".": "."}.get(other, "")

    return ESCAPE.sub(one, text)


def arguments(rest: str) -> list[str]:
    try:
        return shlex.split(rest.replace("\\\"", "\x00"), posix=True)
    except ValueError:
        return rest.split()


def to_text(roff: str) -> list[tuple[str, str]]:
    """(section heading, paragraph) pairs of a man page, in order: its plain text."""
    paragraphs: list[tuple[str, str]] = []
    heading, lines, literal, table = "", [], False, False

    def close() -> None:
        if lines:
            joined = ("\n" if literal else " ").join(lines)
            text = re.sub(r"[ \t]+", " ", joined).strip() if not literal else joined.strip("\n")
            if text:
                paragraphs.append((heading, text))
            lines.clear()

    for line in roff.splitlines():
        if line.startswith(('.\\"', "'\\\"", '\\"')) or line.strip() in (".", "'"):
            continue
        if table:
            if line.startswith(".TE"):
                table = False
                close()
            elif not line.rstrip().endswith((";", ".")) or "\t" in line:  # skip the format lines
                lines.append(unescape(line.replace("\t", " ")).strip())
            continue
        if line.startswith((".", "'")):
            name, _, rest = line[1:].strip().partition(" ")
            args = [unescape(a).replace("\x00", '"') for a in arguments(rest)]
            if name in FONT_MACROS:
                lines.append(" ".join(args))
            elif name in ALTERNATING:
                lines.append("".join(args))
            elif name in ("SH", "SS"):
                close()
                heading = " ".join(args).upper() if name == "SH" else heading
                if name == "SS":
                    paragraphs.append((heading, " ".join(args)))
            elif name in BREAKS:
                close()
                literal = {"nf": True, "EX": True, "fi": False, "EE": False}.get(name, literal)
                if name == "TS":
                    table = True
                elif name == "IP" and args and args[0] not in ("", "\u2022"):
                    lines.append(args[0])
                elif name == "TQ":
                    pass
            elif name in ("UR", "MT"):
                pass
            # Other requests (TH, ad, na, nh, hy, ft, ne, ds, de, so, ...) carry no text.
            continue
        lines.append(unescape(line).replace("\x00", '"') if literal else unescape(line).strip())
    close()
    return paragraphs


def pages(files: dict[str, bytes]) -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """'read.2' -> (section, paragraphs), every page that is not a `.so` redirection."""
    found = {}
    for path, data in files.items():
        m = PAGE.search(path)
        if not m:
            continue
        roff = gzip.decompress(data).decode("utf-8", errors="replace")
        body = [line for line in roff.splitlines() if line.strip() and not line.startswith('.\\"')]
        if body and body[0].startswith(".so "):
            continue
        found[f"{m.group(2)}.{m.group(1)}"] = (m.group(1), to_text(roff))
    return found


def page_text(paragraphs: list[tuple[str, str]]) -> str:
    out, previous = [], None
    for heading, text in paragraphs:
        if heading != previous:
            out.append(heading)
            previous = heading
        out.append(text)
    return "\n\n".join(out)


def description(paragraphs: list[tuple[str, str]]) -> str:
    words = " ".join(text for heading, text in paragraphs if heading == "DESCRIPTION").split()
    return " ".join(words[:TASK_WORDS])


def gzip_jsonl(records: list[dict]) -> bytes:
    buffer = io.BytesIO()
    # filename="" and mtime=0 keep the gzip header free of anything that changes between runs.
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=9) as f:
        for record in records:
            f.write((json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8"))
    return buffer.getvalue()


def rank(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def build(raws: list[bytes]) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for raw in raws:
        files.update(debsource.data_files(raw))
    found = pages(files)
    texts = {name: description(paragraphs) for name, (section, paragraphs) in found.items() if section in LABELS}
    counts = collections.Counter(texts.values())
    task = collections.defaultdict(list)
    for name, text in texts.items():
        if text and counts[text] == 1:
            task[LABELS[found[name][0]]].append({"id": name, "label": LABELS[found[name][0]], "text": text})
    train, validation, test = [], [], []
    for label in sorted(set(LABELS.values())):
        ranked = sorted(task[label], key=lambda r: rank(r["id"]))
        n_test = round(TEST_SHARE * len(ranked))
        test += ranked[:n_test]
        validation += ranked[n_test : n_test + VALIDATION_PER_LABEL]
        train += ranked[n_test + VALIDATION_PER_LABEL :]
    test_ids = {r["id"] for r in test}
    corpus = [{"id": name, "text": page_text(found[name][1])} for name in sorted(found) if name not in test_ids]
    by_id = lambda records: sorted(records, key=lambda r: r["id"])  # noqa: E731
    return {
        "corpus.jsonl.gz": gzip_jsonl(corpus),
        "section_train.jsonl.gz": gzip_jsonl(by_id(train)),
        "section_validation.jsonl.gz": gzip_jsonl(by_id(validation)),
        "section_test.jsonl.gz": gzip_jsonl(by_id(test)),
    }


def sums(files: dict[str, bytes]) -> str:
    lines = [f"{sha}  {package}_{VERSION}_all.deb (source)" for package, sha in PACKAGES.items()]
    lines += [f"{hashlib.sha256(data).hexdigest()}  {name}" for name, data in sorted(files.items())]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, action="append", help="a .deb of PACKAGES, once each (default: apt-get download them)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--check", action="store_true", help="only verify the committed files are what the packages build")
    args = parser.parse_args(argv)
    sources = {package: None for package in PACKAGES}
    for path in args.source or []:
        package = path.name.split("_")[0]
        if package not in sources:
            raise SystemExit(f"--source {path}: not one of the packages {', '.join(PACKAGES)}")
        sources[package] = path
    raws = [debsource.source_from(sources[p], p, VERSION, sha) for p, sha in PACKAGES.items()]
    files = build(raws)
    return builtfiles.write_or_check(files, args.out, args.check, f"man-pages {VERSION}", sums(files))


if __name__ == "__main__":
    sys.exit(main())
