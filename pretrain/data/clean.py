"""Cleaning documents: Unicode normalisation, boilerplate and control characters out, PII replaced,
and the filters (empty, too short, too long, too few letters), counting what each removes.

The ingest stage runs a `Cleaner` over every record it reads, in whatever process reads the piece.
"""

from __future__ import annotations

import re
import unicodedata

from pretrain.core.config import IngestConfig

# C0/C1 control characters except tab and newline, plus zero-width/BOM characters that only hide text.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u200c\u200d\u2060\ufeff]")
_ASCII_CONTROL = bytes([*range(0, 9), 11, 12, *range(14, 32), 127])
_BLANK_LINES = re.compile(r"\n{3,}")
_ASCII_LETTERS = bytes(range(65, 91)) + bytes(range(97, 123))
_LETTER = re.compile(r"[^\W\d_]")

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

    def text(self, raw: str | None) -> str:
        """The text as a kept document would be (cleaned, PII replaced), without filters or counts."""
        text = clean_text(raw or "", self.cfg, self.patterns)
        for _, pattern, placeholder in self.pii:
            text = pattern.sub(placeholder, text)
        return text

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
