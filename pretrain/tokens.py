"""Tokens: tokenise the corpus once with the model's tokenizer into compact binary token shards.

    python -m pretrain.tokens --config configs/demo.yaml

Output (tokens artifact `t-...`), per split, shards `{split}-00000.bin`, `{split}-00001.bin`, ...: the
documents' token ids back to back with a [SEP] after every document (uint16 when the vocabulary fits,
else uint32), and beside each a `{split}-00000.words.bin`, one bit per token (packed), set where a
token starts a word as the tokenizer's pre-tokenizer splits words. `meta.json` is the index: dtype,
special token ids, and per split its shards in order with their token and document counts. A split is
the concatenation of its shards: `TokenStream` reads it as one memory-mapped stream, and the pretrain
stage cuts fixed-length blocks from it; nothing is tokenised inside the training job.

Each shard is a range of row groups (up to about 32 MiB of text; the cut follows from the corpus
alone, so the artifact's bytes do too) of the corpus split, tokenised on its own: in a pool of processes on this machine, or as Prefect tasks on any task runner
(flows/pipeline.py). Word starts come from the fast tokenizer's word ids; for WordPiece tokenizers they
are read off the ids directly (a token starts a word unless it is a `##` continuation piece, which is
the same thing), which lets the tokenizer skip computing offsets.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow.parquet as pq

from pretrain.core.artifacts import ArtifactStore
from pretrain.core.config import ParallelConfig
from pretrain.core.ids import artifact_id
from pretrain.core.logs import get_logger
from pretrain.data.formats import SPLITS
from pretrain.data.shards import report_progress, run_local

log = get_logger(__name__)

STAGE = "tokens"
_BATCH_DOCUMENTS = 1024
# Text per token shard. A constant, not a setting: the shards are the artifact's files, so their
# boundaries must follow from the corpus alone (same corpus and tokenizer, same bytes).
SHARD_BYTES = 32 << 20


def stage_id(cfg: ParallelConfig | None, *, corpus: str, vocab: str) -> str:
    # The stage has no settings that change its output; `cfg` only says where shards run.
    return artifact_id(STAGE, {}, inputs={"corpus": corpus, "vocab": vocab})


@dataclass(frozen=True)
class TokenShard:
    """Row groups [first, stop) of a corpus split, tokenised into one shard of the tokens artifact."""

    split: str
    index: int
    first: int
    stop: int
    size: int  # bytes of text (uncompressed), for packing and progress

    @property
    def stem(self) -> str:
        return f"{self.split}-{self.index:05d}"


def plan_shards(corpus_file: Callable[[str], Any], shard_bytes: int) -> list[TokenShard]:
    """Cut each split into shards of whole row groups: as few as keep each under about shard_bytes of
    text, of about equal size (so that workers finish together)."""
    shards = []
    for split in SPLITS:
        with corpus_file(split) as f:
            meta = pq.ParquetFile(f).metadata
        sizes = [meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)]
        count = max(1, math.ceil(sum(sizes) / shard_bytes))
        target = sum(sizes) / count
        first, size, done = 0, 0, 0
        for i, nbytes in enumerate(sizes):
            size += nbytes
            if done + size >= target * (len([s for s in shards if s.split == split]) + 1) or i == len(sizes) - 1:
                index = len([s for s in shards if s.split == split])
                shards.append(TokenShard(split, index, first, i + 1, size))
                first, done, size = i + 1, done + size, 0
        if not sizes:
            shards.append(TokenShard(split, 0, 0, 0, 0))
    return shards


def _corpus_opener(store: ArtifactStore, corpus: str) -> Callable[[str], Any]:
    """Open a corpus split for reading where it is (a remote store is read by range, not downloaded)."""
    return lambda split: store.open(corpus, f"{split}.parquet")


def _cache_names(aid: str, shard: TokenShard) -> tuple[str, str, str]:
    stem = f"{aid}-{shard.stem}"
    return f"{stem}.bin", f"{stem}.words.bin", f"{stem}.json"


@dataclass(frozen=True)
class Encoding:
    """How token ids are stored, from the model's tokenizer: worked out once, passed to every shard."""

    dtype: str
    vocab_size: int
    special: dict[str, int]


def encoding_of(tokenizer_dir: Path) -> Encoding:
    # Imported here: transformers (and torch) are not needed, nor loaded, in the shard workers.
    from pretrain.models.fast_tokenizers import load_fast_tokenizer, plain_backend

    tokenizer = load_fast_tokenizer(tokenizer_dir)
    vocab_size = plain_backend(tokenizer).get_vocab_size()
    special = {name: getattr(tokenizer, f"{name}_token_id") for name in ("cls", "sep", "mask", "pad", "unk")}
    missing = [name for name, value in special.items() if value is None]
    if missing:
        raise ValueError(f"tokenizer in {tokenizer_dir} has no {', '.join(missing)} token; masked-LM pretraining needs them")
    dtype = "uint16" if vocab_size <= np.iinfo(np.uint16).max + 1 else "uint32"
    return Encoding(dtype, vocab_size, special)


@dataclass
class TokenPlan:
    aid: str
    shards: list[TokenShard]
    pending: list[TokenShard]  # not yet in the shard cache
    encoding: Encoding
    started: float = field(default_factory=time.time)  # when the run began: the manifest's duration counts from here


def make_plan(cfg: ParallelConfig | None, store: ArtifactStore, *, corpus: str, vocab: str) -> TokenPlan:
    """The artifact id, the shards, and which of them still need tokenising: what `run` and the tokens
    flow (flows/pipeline.py) both start from."""
    cfg = cfg or ParallelConfig()
    aid = stage_id(cfg, corpus=corpus, vocab=vocab)
    shards = plan_shards(_corpus_opener(store, corpus), SHARD_BYTES)
    done = store.shards(STAGE).names()
    pending = [s for s in shards if _cache_names(aid, s)[2] not in done]
    return TokenPlan(aid, shards, pending, encoding_of(store.local_dir(vocab) / "tokenizer"))


def run(cfg: ParallelConfig | None, store: ArtifactStore, *, corpus: str, vocab: str, plan: TokenPlan | None = None) -> str:
    """Build (or find) the tokens artifact; returns its id.

    Without `plan`, plans and runs the shard tasks on this machine's cores. With one (from
    `make_plan`), its shard tasks have run already (the tokens flow runs them as Prefect tasks) and
    only the assembly is left.
    """
    cfg = cfg or ParallelConfig()
    aid = stage_id(cfg, corpus=corpus, vocab=vocab)
    if store.exists(aid):
        log.info("tokens %s: already built (cache hit)", aid)
        return aid
    started = time.perf_counter()
    ran_shards = plan is not None
    plan = plan or make_plan(cfg, store, corpus=corpus, vocab=vocab)
    if plan.pending and not ran_shards:
        _run_local(plan, cfg, store, corpus, vocab)
        size, seconds = sum(s.size for s in plan.pending), time.perf_counter() - started
        log.info("tokens: %.1f MB of text in %.1f s (%.1f MB/s)", size / 1e6, seconds, size / 1e6 / max(seconds, 1e-9))
    return assemble(store, plan, corpus, vocab)


class _Encoder:
    """The model's tokenizer (the Rust backend alone: no transformers import in a worker), set up once
    per process: ids and word starts for batches of documents."""

    def __init__(self, tokenizer_dir: Path, encoding: Encoding):
        from tokenizers import Tokenizer

        self.backend = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
        self.backend.no_padding()
        self.backend.no_truncation()
        self.dtype = np.dtype(encoding.dtype)
        self.sep = encoding.special["sep"]
        model = json.loads(self.backend.to_str())["model"]
        self.continuation: np.ndarray | None = None
        if model.get("type") == "WordPiece":
            prefix = model.get("continuing_subword_prefix") or "##"
            self.continuation = np.zeros(max(encoding.vocab_size, self.backend.get_vocab_size()), dtype=bool)
            for token, i in self.backend.get_vocab(with_added_tokens=False).items():
                self.continuation[i] = token.startswith(prefix)

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids with a [SEP] after each document, and whether each token starts a word."""
        sep = self.sep
        if self.continuation is not None:
            # encode_batch_fast skips offsets; WordPiece word starts are the non-continuation pieces.
            sequences = [e.ids for e in self.backend.encode_batch_fast(texts, add_special_tokens=False)]
            ids = np.fromiter(chain.from_iterable(s + [sep] for s in sequences), dtype=self.dtype)
            return ids, ~self.continuation[ids]
        encodings = self.backend.encode_batch(texts, add_special_tokens=False)
        ids = np.fromiter(chain.from_iterable((*e.ids, sep) for e in encodings), dtype=self.dtype)
        starts = np.fromiter(chain.from_iterable((*_word_starts(e), True) for e in encodings), dtype=bool, count=len(ids))
        return ids, starts


def _word_starts(encoding) -> list[bool]:
    previous = object()
    starts = []
    for word in encoding.word_ids:
        starts.append(word is None or word != previous)
        previous = word
    return starts


_encoders: dict[str, _Encoder] = {}


def process_shard(shard: TokenShard, store_url: str, corpus: str, vocab: str, aid: str, encoding: Encoding) -> dict[str, Any]:
    """Tokenise one shard into the store's shard cache; its counts."""
    started = time.perf_counter()
    store = ArtifactStore(store_url)
    folder = store.local_dir(vocab) / "tokenizer"
    encoder = _encoders.get(str(folder)) or _encoders.setdefault(str(folder), _Encoder(folder, encoding))
    ids_name, words_name, done_name = _cache_names(aid, shard)
    cache = store.shards(STAGE)
    with tempfile.TemporaryDirectory(prefix="dapt-tokens-") as tmp:
        ids_path, words_path = Path(tmp) / ids_name, Path(tmp) / words_name
        with _corpus_opener(store, corpus)(shard.split) as f:
            batches = pq.ParquetFile(f).iter_batches(batch_size=_BATCH_DOCUMENTS, row_groups=list(range(shard.first, shard.stop)), columns=["text"])
            counts = _write_shard((b.column(0).to_pylist() for b in batches), encoder, ids_path, words_path)
        counts.update(split=shard.split, index=shard.index)
        counts["seconds"] = round(time.perf_counter() - started, 3)
        cache.put(ids_path, ids_name)
        cache.put(words_path, words_name)
        done = Path(tmp) / done_name
        done.write_text(json.dumps(counts))
        cache.put(done, done_name)  # last: its presence says the shard is complete
    return counts


def _write_shard(batches: Iterator[list[str]], encoder: _Encoder, ids_path: Path, words_path: Path) -> dict[str, int]:
    tokens = documents = characters = 0
    pending = np.zeros(0, dtype=bool)  # word-start bits not yet a whole byte
    with open(ids_path, "wb") as ids_file, open(words_path, "wb") as words_file:
        for texts in batches:
            if not texts:
                continue
            ids, starts = encoder(texts)
            ids_file.write(ids.tobytes())
            bits = np.concatenate([pending, starts])
            whole = len(bits) - len(bits) % 8
            words_file.write(np.packbits(bits[:whole]).tobytes())
            pending = bits[whole:]
            tokens += len(ids)
            documents += len(texts)
            size = sum(map(len, texts))
            characters += size
            report_progress(size)
        words_file.write(np.packbits(pending).tobytes())
    return {"tokens": tokens, "documents": documents, "characters": characters}


def _run_local(plan: TokenPlan, cfg: ParallelConfig, store: ArtifactStore, corpus: str, vocab: str) -> None:
    calls = [(shard, store.url, corpus, vocab, plan.aid, plan.encoding) for shard in plan.pending]
    # One process per core already: the tokenizer's own thread pool would only contend with them.
    # (In this process, for a small corpus, the tokenizer uses every core itself.)
    run_local(process_shard, calls, [s.size for s in plan.pending], cfg.workers, "tokens", env={"RAYON_NUM_THREADS": "1"})


def assemble(store: ArtifactStore, plan: TokenPlan, corpus: str, vocab: str) -> str:
    """Move the finished shards into the tokens artifact and write its index."""
    cache = store.shards(STAGE)
    aid, shards, encoding = plan.aid, plan.shards, plan.encoding
    with store.build(STAGE, aid, config={}, inputs={"corpus": corpus, "vocab": vocab}, started=plan.started) as build:
        meta: dict[str, Any] = {"dtype": encoding.dtype, "vocab_size": encoding.vocab_size, "special_ids": encoding.special, "splits": {}}
        for split in SPLITS:
            meta["splits"][split] = {"tokens": 0, "documents": 0, "shards": []}
        characters = 0
        for shard in shards:
            ids_name, words_name, done_name = _cache_names(aid, shard)
            counts = json.loads(cache.get(done_name).read_text())
            for name, target in ((ids_name, f"{shard.stem}.bin"), (words_name, f"{shard.stem}.words.bin")):
                shutil.move(cache.get(name), build.dir / target)  # a rename when the store is local
            entry = meta["splits"][shard.split]
            entry["shards"].append({"ids": f"{shard.stem}.bin", "words": f"{shard.stem}.words.bin",
                                    "tokens": counts["tokens"], "documents": counts["documents"]})  # fmt: skip
            entry["tokens"] += counts["tokens"]
            entry["documents"] += counts["documents"]
            characters += counts["characters"]
        (build.dir / "meta.json").write_text(json.dumps(meta, indent=2))
        total = sum(s["tokens"] for s in meta["splits"].values())
        on_disk = sum(f.stat().st_size for f in build.dir.glob("*.bin"))
        build.metrics.update(
            dtype=meta["dtype"],
            vocab_size=encoding.vocab_size,
            train_tokens=meta["splits"]["train"]["tokens"],
            validation_tokens=meta["splits"]["validation"]["tokens"],
            shards=len(shards),
            bytes_per_token=round(on_disk / max(total, 1), 3),
            characters=characters,
        )
        log.info("tokens %s: %d train / %d validation tokens in %d shards (%s, %.3f bytes/token on disk)", aid, build.metrics["train_tokens"],
                 build.metrics["validation_tokens"], len(shards), meta["dtype"], build.metrics["bytes_per_token"])  # fmt: skip
    for shard in shards:
        cache.remove(_cache_names(aid, shard)[2])
        if not store.is_local:
            for name in _cache_names(aid, shard)[:2]:
                cache.remove(name)
    return aid


if __name__ == "__main__":
    from pretrain.stage_cli import main

    main(STAGE)
