"""Decontamination: corpus documents that overlap the texts the task is evaluated on, removed as the corpus streams by.

A model pretrained on the test set's own text can win the comparison for the wrong reason. The ingest
stage is given every text the task is scored on or chooses an epoch on (`Targets`; the pipeline reads
them from `evaluate.task` with `tasks.held_out_texts`): the test and validation files, and the splits
`test_fraction` and `validation_fraction` carve out of the train files (the texts left in train stay in
the corpus: they are the task's unlabelled text, which adaptation may use). Every process that reads
corpus pieces screens the cleaned documents with a `Decontaminator`, a batch at a time. A document is
removed when it

- `exact`: is one of the task texts, once both are normalised (Unicode NFKC, case-folded, every
  character that is not a letter or digit a word boundary);
- `near`: is a near duplicate of one: the Jaccard similarity of their sets of word shingles (runs of
  `dedup.shingle_words` words) is at least `dedup.threshold`: deduplication's criterion and settings;
- `contained`: contains one: at least `min_containment` of the task text's distinct `ngram_words`-word
  n-grams occur in the document, so a text embedded in a longer document is found even when lightly
  edited. A task text shorter than `ngram_words` words must occur whole; one shorter than
  `SHORTEST_CONTAINED` words is matched only exactly (a few common words inside a document say nothing).

A document counts once, under the first kind that applies in that order, for the task text it overlaps
most. Task texts are cleaned as ingest cleans documents (the same boilerplate patterns, Unicode form and
PII placeholders) first.

Deduplication estimates Jaccard similarities with MinHash and finds candidate pairs by LSH because it
compares every document with every other. Here one side is a test set, small enough for an in-memory
index: every task text's n-grams, and a sample of its shingles (its `ANCHORS` smallest shingle hashes).
One lookup per batch gives, per document and task text, how many of the text's n-grams the document
holds (the containment share, exactly) and how many of its anchors; the exact Jaccard similarity is then
computed for the few texts with enough anchors. No estimation error, and a near duplicate is missed only
if it holds fewer than `ANCHOR_HITS` of 16 anchors, which at similarity 0.8 happens with probability 2.5e-7.

Memory is bounded by the task texts (about 12 bytes per hash and a bit table in front of the index),
and per batch by `_PASS_BYTES` of text, whatever the corpus size. All hashing is vectorised over a
batch: a word's hash comes from one prefix sum over the batch's bytes, an n-gram's from one over its
words (polynomial hashes), and the bit table discards most of a document's hashes with one gather.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pretrain.core.config import IngestConfig
from pretrain.core.logs import get_logger
from pretrain.core.progress import progress
from pretrain.data.clean import Cleaner

log = get_logger(__name__)

KINDS = ("exact", "near", "contained")
# A task text of fewer words is matched only as a whole document: found inside a longer one, four
# common words ("net profit rose sharply") are no evidence of contamination.
SHORTEST_CONTAINED = 5
# Near-duplicate candidates: task texts with at least ANCHOR_HITS of their ANCHORS smallest shingle
# hashes in the document. Those are a uniform sample of the text's shingles, so a near duplicate, which
# holds a share s >= dedup.threshold of them, falls short with probability P(Binomial(16, s) < 4):
# 2.5e-7 at s = 0.8; a document sharing a few common phrases with a text rarely holds 4 of its anchors.
ANCHORS = 16
ANCHOR_HITS = 4
EXAMPLES_PER_PIECE = 20
EXAMPLES_KEPT = 20
# Normalised text hashed in one pass: bounds the pass's arrays (about 40 bytes per byte of text).
_PASS_BYTES = 1 << 20

# Polynomial hashes: bytes of a word with base R, words of a window with base Q; their inverses shift
# a window's sum back to position 0, so the same word or window hashes the same anywhere.
_R = 0xC2B2AE3D27D4EB4F
_P = 0x9E3779B97F4A7C15
_R_INVERSE = pow(_R, -1, 1 << 64)
_Q = pow(_P, -1, 1 << 64)
_MIX = np.uint64(0xBF58476D1CE4E5B9)
_NON_WORD = re.compile(r"[\W_]+")
_ASCII_NON_WORD_CHARS = bytes(c for c in range(128) if not chr(c).isalnum())
_ASCII_NON_WORD = bytes.maketrans(_ASCII_NON_WORD_CHARS, b" " * len(_ASCII_NON_WORD_CHARS))


def normal_text(text: str) -> bytes:
    """`text` as matching sees it, in UTF-8: NFKC, case-folded, each character that is not a letter or digit a space."""
    if text.isascii():  # the same result as below, at bytes speed
        return text.lower().encode().translate(_ASCII_NON_WORD)
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).encode()


_POWERS: dict[int, np.ndarray] = {}


def _powers(base: int, count: int) -> np.ndarray:
    """base**i mod 2**64 for i < count (kept per process, grown by doubling)."""
    have = _POWERS.get(base)
    if have is None:
        have = np.ones(1, np.uint64)
    if len(have) < count:
        size = 1 << (count - 1).bit_length()
        grown = np.empty(size, np.uint64)
        grown[: len(have)] = have
        while len(have) < size:  # each pass doubles what is known
            take = min(len(have), size - len(have))
            grown[len(have) : len(have) + take] = grown[:take] * np.uint64(pow(base, len(have), 1 << 64))
            have = grown[: len(have) + take]
    _POWERS[base] = have
    return have[:count]


def _mix(hashes: np.ndarray) -> np.ndarray:
    """Scramble the bits (a word's polynomial sum is too regular to go into another polynomial)."""
    hashes ^= hashes >> np.uint64(31)
    hashes *= _MIX
    hashes ^= hashes >> np.uint64(29)
    return hashes


def _word_hashes(text: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(hash, byte offset) of each word (run of bytes other than space) of a normalised text, in order."""
    hashes, offsets = [], []
    start = 0
    while start < len(text):
        end = len(text)
        if end - start > _PASS_BYTES:  # cut at a space: no word is split (one of a megabyte would be, and match nothing)
            cut = text.rfind(b" ", start, start + _PASS_BYTES)
            end = cut + 1 if cut > start else start + _PASS_BYTES
        part = np.frombuffer(text, np.uint8, count=end - start, offset=start)
        edges = np.diff((part != 32).view(np.int8), prepend=np.int8(0), append=np.int8(0))
        first, after = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        prefix = np.zeros(len(part) + 1, np.uint64)
        np.cumsum(part * _powers(_R, len(part)), out=prefix[1:])  # wraps mod 2**64, as meant
        hashes.append(_mix((prefix[after] - prefix[first]) * _powers(_R_INVERSE, len(part))[first]))
        offsets.append(first + start)
        start = end
    if not hashes:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    return np.concatenate(hashes), np.concatenate(offsets)


class _Windows:
    """Hashes of every run of k consecutive words, for any k, from one prefix sum over the word hashes."""

    def __init__(self, hashes: np.ndarray):
        self.size = len(hashes)
        self.prefix = np.zeros(self.size + 1, np.uint64)
        np.cumsum(hashes * _powers(_Q, self.size), out=self.prefix[1:])

    def __call__(self, k: int) -> np.ndarray:
        """The hash of words i .. i + k - 1 at i: sum of hash[i + t] * Q**t, whatever i is."""
        if k > self.size:
            return np.zeros(0, np.uint64)
        return (self.prefix[k:] - self.prefix[:-k]) * _powers(_P, self.size - k + 1)


def _exact_key(word_hashes: np.ndarray) -> bytes:
    return hashlib.blake2b(word_hashes.tobytes(), digest_size=16).digest()


@dataclass(frozen=True)
class TaskFile:
    """One set of task texts: the split they are (`test_files`, `validation_files`), the file they were read
    from and its sha256, and `held_out_by` (`test_fraction`, `validation_fraction`) when the split was
    carved out of that train file rather than given as a file of its own."""

    key: str
    path: str
    sha256: str
    held_out_by: str | None = None

    def described(self, name: str | None = None) -> str:
        """`test (r8_test.jsonl.gz)`, `test (held out of labelled.csv by test_fraction)`; `name`: how to call the file."""
        name = name or self.path
        split = self.key.removesuffix("_files")
        return f"{split} (held out of {name} by {self.held_out_by})" if self.held_out_by else f"{split} ({name})"


@dataclass(frozen=True)
class Targets:
    """The texts no corpus document may overlap: a task's evaluation texts, each with its file and location."""

    task: str
    files: tuple[TaskFile, ...]
    texts: tuple[str, ...]
    file_of: tuple[int, ...]
    locations: tuple[str, ...]

    @classmethod
    def from_files(cls, task: str, files: list[tuple[TaskFile, list[tuple[str, str]]]]) -> Targets:
        """From (file, [(location, text), ...]) pairs in order."""
        texts, file_of, locations = [], [], []
        for i, (_, rows) in enumerate(files):
            for location, text in rows:
                texts.append(text)
                file_of.append(i)
                locations.append(location)
        return cls(task, tuple(f for f, _ in files), tuple(texts), tuple(file_of), tuple(locations))

    @functools.cached_property
    def digest(self) -> str:
        """sha256 of the texts with the key of their file: what the corpus id hashes (not paths, not labels)."""
        h = hashlib.sha256()
        for text, f in zip(self.texts, self.file_of):
            split = self.files[f].key + (f"/{self.files[f].held_out_by}" if self.files[f].held_out_by else "")
            h.update(split.encode() + b"\0" + text.encode("utf-8") + b"\0")
        return h.hexdigest()

    def described(self) -> str:
        """`the R8 test set`, `the R8 test and validation sets`, `the news test set (held out of labelled.csv by
        test_fraction) and validation set (held out of labelled.csv by validation_fraction)`."""
        splits = [s for s in ("test", "validation") if any(f.key == f"{s}_files" for f in self.files)]
        carved = {s: sorted({Path(f.path).name for f in self.files if f.key == f"{s}_files" and f.held_out_by}) for s in splits}
        if not any(carved.values()):
            return f"the {self.task} {' and '.join(splits)} set{'s' if len(splits) > 1 else ''}"
        parts = [f"{s} set" + (f" (held out of {', '.join(carved[s])} by {s}_fraction)" if carved[s] else "") for s in splits]
        return f"the {self.task} {' and '.join(parts)}"


class Decontaminator:
    """Screens cleaned documents against the task texts; counts what it removes (per kind, per task file)."""

    def __init__(self, cfg: IngestConfig, targets: Targets):
        settings = cfg.decontaminate
        self.targets = targets
        self.n = settings.ngram_words
        self.threshold = cfg.dedup.threshold
        self.near = settings.near
        self.k = cfg.dedup.shingle_words
        cleaner = Cleaner(cfg)
        count = self.count = len(targets.texts)
        self._keys: list[bytes | None] = [None] * count  # exact keys
        self._lengths = [0] * count  # words
        self._grams = [1] * count  # distinct n-grams (a short text: 1, itself)
        self._needed = [0] * count  # of those, how many a document must hold to contain the text (0: never)
        self._shingles = [0] * count  # distinct shingles
        self._anchor_hits = [0] * count  # anchors a near duplicate must hold
        sizes = {self.n}
        # One index: text t's n-grams (a short text: the whole text) under id t, its shingle anchors under count + t.
        rows: list[tuple[int, np.ndarray]] = []
        shingles: list[np.ndarray] = [np.zeros(0, np.uint64)] * count
        with progress(count, "decontamination: indexing the task texts", "text") as bar:
            for t, raw in enumerate(targets.texts):
                bar.update(1)
                hashes = _word_hashes(normal_text(cleaner.text(raw)))[0]
                m = len(hashes)
                if not m:
                    continue
                self._keys[t], self._lengths[t] = _exact_key(hashes), m
                windows = _Windows(hashes)
                grams = np.unique(windows(min(m, self.n)))
                sizes.add(min(m, self.n))
                self._grams[t] = len(grams)
                if m >= self.n:
                    self._needed[t] = max(1, math.ceil(settings.min_containment * len(grams) - 1e-9))
                elif m >= SHORTEST_CONTAINED:
                    self._needed[t] = 1
                rows.append((t, grams))
                if self.near and m >= self.k:
                    shingles[t] = np.unique(windows(self.k))
                    self._shingles[t] = len(shingles[t])
                    self._anchor_hits[t] = min(ANCHOR_HITS, math.ceil(self.threshold * min(ANCHORS, len(shingles[t])) - 1e-9))
                    rows.append((count + t, shingles[t][:ANCHORS]))
        self._sizes = sorted(sizes | ({self.k} if self.near else set()))
        self._index = _Index(rows)
        self._shingle_sets = np.concatenate(shingles) if count else np.zeros(0, np.uint64)
        self._shingle_starts = np.concatenate([[0], np.cumsum(self._shingles)]).astype(np.int64)
        self.reset()

    def reset(self) -> None:
        """Start counting afresh (one piece's counts go into that piece's summary)."""
        self.removed = dict.fromkeys(KINDS, 0)
        self.by_file = [0] * len(self.targets.files)
        self.found: set[int] = set()
        self.examples: list[dict[str, Any]] = []

    def screen(self, texts: list[str], source: str) -> list[bool]:
        """For each cleaned document, whether it overlaps a task text: those are counted, and must be dropped.
        `source`: the corpus file they come from (named in the examples)."""
        normal = [normal_text(t) for t in texts]
        drop: list[bool] = []
        while len(drop) < len(texts):  # passes of about _PASS_BYTES of text
            start = end = len(drop)
            size = len(normal[end])
            while end + 1 < len(texts) and size + len(normal[end + 1]) < _PASS_BYTES:
                end += 1
                size += len(normal[end]) + 1
            drop += self._screen(texts[start : end + 1], normal[start : end + 1], source)
        return drop

    def _screen(self, texts: list[str], normal: list[bytes], source: str) -> list[bool]:
        hashes, offsets = _word_hashes(b" ".join(normal))
        starts = np.cumsum([0] + [len(x) + 1 for x in normal[:-1]])
        doc_of = np.searchsorted(starts, offsets, side="right") - 1
        lengths = np.bincount(doc_of, minlength=len(texts))
        first = np.cumsum(lengths) - lengths
        windows = _Windows(hashes)
        keys, docs = [], []
        shingles = np.zeros(0, np.uint64)
        for size in self._sizes:
            if size > len(hashes):
                continue
            at = windows(size)  # the window at i covers words i .. i + size - 1: of one document, or of two
            inside = doc_of[: len(at)] == doc_of[size - 1 :]
            keys.append(at[inside])
            docs.append(doc_of[: len(at)][inside])
            if self.near and size == self.k:
                shingles = at
        shared = self._index.shared(np.concatenate(keys), np.concatenate(docs)) if keys else {}
        drop = [False] * len(texts)
        for d in sorted(shared):
            a, m = first[d], lengths[d]
            hit = self._match(shared[d], hashes[a : a + m], shingles[a : a + max(m - self.k + 1, 0)])
            if hit is None:
                continue
            kind, target, score = hit
            drop[d] = True
            self.removed[kind] += 1
            self.by_file[self.targets.file_of[target]] += 1
            if len(self.examples) < EXAMPLES_PER_PIECE:
                matched = self.targets.files[self.targets.file_of[target]]
                self.examples.append({"kind": kind, "task_text": self.targets.locations[target], "set": matched.key,
                                      "held_out_by": matched.held_out_by, "score": round(score, 3), "corpus_file": source,
                                      "document": texts[d][:200]})  # fmt: skip
        return drop

    def _match(self, counts: dict[int, int], words: np.ndarray, shingles: np.ndarray) -> tuple[str, int, float] | None:
        """(kind, the task text it overlaps most, its similarity or the share of its n-grams found), or None.

        `counts`: task text id -> distinct n-grams of it in the document (its shingle anchors under
        count + id); `words`, `shingles`: the document's word and shingle hashes.
        """
        count, exact, contained, anchored = self.count, [], [], []
        for t, c in counts.items():
            if t >= count:
                if c >= self._anchor_hits[t - count]:
                    anchored.append(t - count)
                continue
            if c == self._grams[t] and len(words) == self._lengths[t] and _exact_key(words) == self._keys[t]:
                exact.append(t)
            if self._needed[t] and c >= self._needed[t]:
                contained.append((c / self._grams[t], t))
        self.found.update(t for _, t in contained)
        if exact:
            self.found.update(exact)
            return "exact", min(exact), 1.0
        near = self._near(shingles, anchored) if anchored else []
        if near:
            self.found.update(t for _, t in near)
            similarity, target = max(near, key=lambda pair: (pair[0], -pair[1]))
            return "near", target, similarity
        if contained:
            share, target = max(contained, key=lambda pair: (pair[0], -pair[1]))
            return "contained", target, share
        return None

    def _near(self, shingles: np.ndarray, candidates: list[int]) -> list[tuple[float, int]]:
        """(Jaccard similarity, text) of the candidates whose shingle sets are at least the threshold similar to the document's."""
        # Jaccard is at most the smaller set over the larger (the document's has at most len(shingles)).
        candidates = [t for t in candidates if len(shingles) >= self.threshold * self._shingles[t]]
        if not candidates:
            return []
        mine = np.unique(shingles)
        near = []
        for t in candidates:
            own = self._shingle_sets[self._shingle_starts[t] : self._shingle_starts[t + 1]]
            where = np.minimum(np.searchsorted(mine, own), len(mine) - 1)
            shared = int(np.count_nonzero(mine[where] == own))
            similarity = shared / (len(mine) + len(own) - shared)
            if similarity >= self.threshold:
                near.append((similarity, t))
        return near

    def summary(self) -> dict[str, Any]:
        """What this piece removed, for its summary (merged over pieces by `merge`)."""
        return {"removed": dict(self.removed), "by_file": list(self.by_file), "found": sorted(self.found), "examples": self.examples}


class _Index:
    """Hashes (n-grams, shingle anchors) of the task texts, sorted, each with the texts that hold it; a bit
    table in front discards most hashes that are not there with one gather."""

    def __init__(self, rows: list[tuple[int, np.ndarray]]):
        keys = np.concatenate([h for _, h in rows]) if rows else np.zeros(0, np.uint64)
        ids = np.concatenate([np.full(len(h), t, np.int64) for t, h in rows]) if rows else np.zeros(0, np.int64)
        order = np.lexsort((ids, keys))
        keys, self.ids = keys[order], ids[order]
        unique, starts = np.unique(keys, return_index=True)
        # A last key with no texts, so a lookup needs no bounds check.
        self.keys = np.append(unique, np.uint64(2**64 - 1))
        self.starts = np.append(starts, [len(keys), len(keys)])
        # About 32 slots per key: a hash that is not a key passes with probability ~3%.
        self.mask = np.uint64(min(max(1 << (len(unique) * 32).bit_length(), 1 << 16), 1 << 26) - 1)
        self.table = np.zeros(int(self.mask) + 1, bool)
        self.table[unique & self.mask] = True

    def shared(self, hashes: np.ndarray, docs: np.ndarray) -> dict[int, dict[int, int]]:
        """Document -> task text id -> how many distinct hashes of the document it holds (pairs sharing one only).
        `hashes[i]` is a hash of document `docs[i]`."""
        passed = self.table[hashes & self.mask]
        hashes, docs = hashes[passed], docs[passed]
        where = np.searchsorted(self.keys, hashes)
        hit = self.keys[where] == hashes
        shared: dict[int, dict[int, int]] = {}
        # Few hashes get this far: a loop in Python costs less than more array calls.
        for d, key in set(zip(docs[hit].tolist(), where[hit].tolist())):
            counts = shared.setdefault(d, {})
            for t in self.ids[self.starts[key] : self.starts[key + 1]].tolist():
                counts[t] = counts.get(t, 0) + 1
        return shared


_cached: dict[str, Decontaminator] = {}


def decontaminator(cfg: IngestConfig, targets: Targets) -> Decontaminator:
    """The Decontaminator for these settings and texts, built once per process (a worker reads many pieces)."""
    key = hashlib.sha256((cfg.model_dump_json(exclude={"inputs", "parallel"}) + targets.digest).encode()).hexdigest()
    if key not in _cached:
        _cached.clear()
        _cached[key] = Decontaminator(cfg, targets)
    screen = _cached[key]
    screen.reset()
    return screen


def merge(summaries: list[dict[str, Any]], targets: Targets) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pieces' counts together: (metrics for the manifest, the details per task file with examples)."""
    removed = {k: sum(s["removed"][k] for s in summaries) for k in KINDS}
    by_file = [sum(s["by_file"][i] for s in summaries) for i in range(len(targets.files))]
    found = sorted(set().union(*(s["found"] for s in summaries))) if summaries else []
    texts_per_file = np.bincount(np.array(targets.file_of, np.int64), minlength=len(targets.files))
    found_per_file = np.bincount(np.array([targets.file_of[t] for t in found], np.int64), minlength=len(targets.files))
    metrics = {"removed": sum(removed.values()), **removed, "task_texts": len(targets.texts), "task_texts_found": len(found)}
    details = {
        "task": targets.task,
        "against": targets.described(),
        "files": [
            {"key": f.key, "path": f.path, "sha256": f.sha256, "held_out_by": f.held_out_by, "texts": int(texts_per_file[i]),
             "texts_found": int(found_per_file[i]), "documents_removed": by_file[i]}
            for i, f in enumerate(targets.files)
        ],  # fmt: skip
        "examples": [e for s in summaries for e in s["examples"]][:EXAMPLES_KEPT],
    }
    return metrics, details
