"""The on-disk formats one stage hands to the next, and how they are read.

A corpus artifact holds `train.parquet` and `validation.parquet` (one `text` column); a tokens artifact
holds per split the token-id shards, their packed word-start bits and `meta.json`, the index (see
`pretrain/tokens.py` for how they are written). Stages that only read these import this module, not the
stages that write them: so their artifact ids do not depend on how a corpus is cleaned or tokenised
(that reaches them through their input ids).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow.parquet as pq

SPLITS = ("train", "validation")


# --- corpus artifacts -----------------------------------------------------------------------------------


def read_split(corpus_dir: Path, split: str, batch_size: int = 1024):
    """Yield lists of document texts from a corpus artifact's split, one Parquet batch at a time."""
    parquet = pq.ParquetFile(corpus_dir / f"{split}.parquet")
    for batch in parquet.iter_batches(batch_size=batch_size, columns=["text"]):
        yield batch.column(0).to_pylist()



# --- tokens artifacts -----------------------------------------------------------------------------------


def load_meta(tokens_dir: Path) -> dict:
    return json.loads((tokens_dir / "meta.json").read_text())


class TokenStream:
    """A split of a tokens artifact as one flat stream: its shards memory-mapped (lazily, per process)."""

    def __init__(self, tokens_dir: Path, split: str):
        meta = load_meta(tokens_dir)
        self.dtype = np.dtype(meta["dtype"])
        shards = meta["splits"][split]["shards"]
        self.paths = [(tokens_dir / s["ids"], tokens_dir / s["words"]) for s in shards]
        self.offsets = np.cumsum([0] + [s["tokens"] for s in shards])
        self._ids: list[np.ndarray | None] = [None] * len(shards)
        self._words: list[np.ndarray | None] = [None] * len(shards)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getstate__(self) -> dict:
        # A DataLoader worker maps the files itself; pickling an open map would copy its contents.
        return {**self.__dict__, "_ids": [None] * len(self.paths), "_words": [None] * len(self.paths)}

    def _pieces(self, start: int, stop: int) -> Iterator[tuple[int, int, int]]:
        """(shard, local start, local stop) covering [start, stop)."""
        i = int(np.searchsorted(self.offsets, start, side="right")) - 1
        while start < stop and i < len(self.paths):
            local_stop = min(stop, int(self.offsets[i + 1])) - int(self.offsets[i])
            yield i, start - int(self.offsets[i]), local_stop
            start = int(self.offsets[i + 1])
            i += 1

    def ids(self, start: int, stop: int) -> np.ndarray:
        """Token ids [start, stop) (a view into the map when they lie in one shard)."""
        parts = []
        for i, a, b in self._pieces(start, stop):
            if self._ids[i] is None:
                self._ids[i] = np.memmap(self.paths[i][0], dtype=self.dtype, mode="r") if self.offsets[i + 1] > self.offsets[i] else np.zeros(0, self.dtype)
            parts.append(self._ids[i][a:b])
        return parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else np.zeros(0, self.dtype)

    def word_starts(self, start: int, stop: int) -> np.ndarray:
        """Whether each token in [start, stop) starts a word."""
        parts = []
        for i, a, b in self._pieces(start, stop):
            if self._words[i] is None:
                self._words[i] = np.memmap(self.paths[i][1], dtype=np.uint8, mode="r") if self.offsets[i + 1] > self.offsets[i] else np.zeros(0, np.uint8)
            parts.append(word_starts(self._words[i], a, b))
        return np.concatenate(parts) if parts else np.zeros(0, bool)


def open_split(tokens_dir: Path, split: str) -> np.ndarray:
    """The token ids of a split, all of them (memory-mapped when the split is one shard)."""
    stream = TokenStream(tokens_dir, split)
    return stream.ids(0, len(stream))


def word_starts(packed: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Word-start flags of tokens [start, stop) from a packed `*.words.bin` array."""
    first, last = start // 8, (stop + 7) // 8
    bits = np.unpackbits(np.asarray(packed[first:last]))
    return bits[start - first * 8 : stop - first * 8].astype(bool)

