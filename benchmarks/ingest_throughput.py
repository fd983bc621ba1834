"""Ingest + tokenise throughput, peak memory and bytes per token on disk, for a corpus of a given size.

    .venv/bin/python benchmarks/ingest_throughput.py --size-mb 100
    .venv/bin/python benchmarks/ingest_throughput.py --size-mb 1000
    .venv/bin/python benchmarks/ingest_throughput.py --input my_corpus/ --text-field body

Without --input it writes a JSONL corpus of the given size from the bundled Reuters stories (16,910
documents, 14 MB): each document is a story whose sentences are interleaved with those of two other
stories, so documents are distinct; then 3% of them are repeated verbatim and 3% repeated with a few
words changed, so that deduplication has real work (and the corpus is not deleted by it). One file:
the ingest stage cuts it into byte ranges. `--plant-test` of the documents (0.1%) are R8 test stories,
in thirds verbatim, between two generated documents, and with 2% of their words changed, so that
decontamination has real work too.

Decontamination is on, against the R8 test file (2,133 texts), as the pipeline runs it; the line
carries what it removed (per kind) and how many test texts it found, beside what was planted (it also
finds the few test stories the Reuters corpus itself repeats, and their sentences inside generated
documents). `--without-decontamination-too` also runs ingest with it off, in a fresh store after the
first, for its cost (`decontamination_cost`: ingest seconds on over off; one run after the other, so
load from other jobs can tilt it).

It runs the ingest stage (on all cores), then the tokens stage with the demo base model's tokenizer
(bert-base-uncased's vocabulary, published as the vocab artifact without training a domain vocabulary:
that stage is not part of the measurement), in a fresh store, and prints one JSON line.

For scale, in the same run, the usual recipe (`datasets.load_dataset` + `Dataset.map` with the same
tokenizer and workers, as transformers' run_mlm.py) tokenises the first `--baseline-mb` MB of the
same corpus; `ratio` is our ingest + tokenise MB/s over its load + tokenise MB/s (ours does more:
cleaning, filtering, exact and near deduplication).

MB/s is input bytes over the wall time of ingest + tokens; MB per CPU-second is input bytes over the
CPU time all processes spent (on a shared machine the wall-clock figure depends on what else runs).
Peak RSS is the largest resident set of this process and of any worker process (ru_maxrss), taken
before the baseline runs (and before ingest without decontamination); run each size in its own process
to compare them.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import re
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pretrain import ingest, tokens  # noqa: E402
from pretrain.chain import task_targets  # noqa: E402
from pretrain.core.artifacts import ArtifactStore  # noqa: E402
from pretrain.core.config import IngestConfig, TaskConfig, package_dir  # noqa: E402

R8_TEST = ROOT / "data" / "reuters" / "r8_test.jsonl.gz"

_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def _edited(text: str, share: float, rng: random.Random) -> str:
    words = text.split(" ")
    for _ in range(max(1, int(len(words) * share))):
        words[rng.randrange(len(words))] = rng.choice(("oil", "bank", "said", "pct", "mln"))
    return " ".join(words)


def generate(path: Path, size_mb: float, plant_test: float = 0.0, seed: int = 0) -> dict:
    """A JSONL corpus of about size_mb MB from the Reuters stories, with known duplicates and, a share
    `plant_test` of its documents, R8 test stories (verbatim, embedded, edited)."""
    with gzip.open(ROOT / "data" / "reuters" / "corpus.jsonl.gz", "rt", encoding="utf-8") as f:
        stories = [_SENTENCE.split(json.loads(line)["text"].strip()) for line in f]
    stories = [s for s in stories if len(s) >= 2]
    with gzip.open(R8_TEST, "rt", encoding="utf-8") as f:
        test = [json.loads(line)["text"] for line in f]
    rng = random.Random(seed)
    target = int(size_mb * 1e6)
    written = documents = exact = near = 0
    planted = {"verbatim": 0, "embedded": 0, "edited": 0}
    recent: list[str] = []
    with open(path, "w", encoding="utf-8") as out:
        while written < target:
            roll = rng.random()
            if roll < plant_test and recent:
                kind = ("verbatim", "embedded", "edited")[sum(planted.values()) % 3]
                text = test[rng.randrange(len(test))]
                text = {"verbatim": text, "embedded": f"{rng.choice(recent)}\n\n{text}\n\n{rng.choice(recent)}",
                        "edited": _edited(text, 0.02, rng)}[kind]  # fmt: skip
                planted[kind] += 1
            elif roll < 0.03 + plant_test and recent:
                text = rng.choice(recent)
                exact += 1
            elif roll < 0.06 + plant_test and recent:
                text = _edited(rng.choice(recent), 0.02, rng)  # about 2% of the words replaced
                near += 1
            else:
                a, b, c = (stories[rng.randrange(len(stories))] for _ in range(3))
                sentences = [s for triple in zip(a, b + [""] * len(a), c + [""] * len(a)) for s in triple if s]
                text = " ".join(sentences)
                recent.append(text)
                if len(recent) > 2000:
                    recent.pop(rng.randrange(len(recent)))
            line = json.dumps({"text": text}) + "\n"
            out.write(line)
            written += len(line.encode("utf-8"))
            documents += 1
    return {"documents": documents, "exact_copies": exact, "near_copies": near, "planted_test_texts": planted}


def cpu_seconds() -> float:
    """CPU time used so far by this process and its finished children (the worker processes)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def peak_rss_mb() -> tuple[float, float]:
    """(this process, largest finished child) peak resident set, MB."""
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)


def publish_base_tokenizer(store: ArtifactStore) -> str:
    """The demo base model's tokenizer as a vocab artifact (no domain vocabulary is trained)."""
    source = package_dir("pkg:cognition/model")
    aid = "v-benchmark0base0tokenizer"
    if not store.exists(aid):
        with store.build("vocab", aid, config={"benchmark": "base tokenizer, untrained"}) as build:
            folder = build.dir / "tokenizer"
            folder.mkdir()
            for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
                shutil.copy(source / name, folder / name)
    return aid


def baseline(corpus: Path, workdir: Path, size_mb: float, workers: int) -> dict:
    """The usual recipe on the first `size_mb` MB of the corpus: `datasets.load_dataset("json")`, then
    `Dataset.map` with the same fast tokenizer, batched, `num_proc` = the same workers (as
    transformers' run_mlm.py does). It only loads and tokenises: no cleaning, no deduplication."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from datasets import disable_progress_bars, load_dataset
    from transformers import AutoTokenizer
    from transformers.utils import logging as transformers_logging

    disable_progress_bars()
    transformers_logging.set_verbosity_error()  # "sequence longer than 512" for every long story
    sample = workdir / "baseline-sample.jsonl"
    limit, written = int(size_mb * 1e6), 0
    with open(corpus, "rb") as f, open(sample, "wb") as out:
        for line in f:
            if written >= limit:
                break
            out.write(line)
            written += len(line)
    tokenizer = AutoTokenizer.from_pretrained(package_dir("pkg:cognition/model"))
    started = time.perf_counter()
    data = load_dataset("json", data_files=str(sample), split="train", cache_dir=str(workdir / "hf-cache"))
    data = data.map(lambda batch: tokenizer(batch["text"], return_special_tokens_mask=True), batched=True,
                    num_proc=workers if workers > 1 else None, remove_columns=["text"])  # fmt: skip
    seconds = time.perf_counter() - started
    return {"baseline_input_mb": round(written / 1e6, 1), "baseline_mb_per_s": round(written / 1e6 / seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=float, default=100, help="corpus to generate, MB (ignored with --input)")
    parser.add_argument("--input", help="an existing corpus (file, folder or glob) instead of a generated one")
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--workdir", help="where the corpus and the store go (default: a temporary folder, removed)")
    parser.add_argument("--workers", type=int, default=None, help="ingest.parallel.workers (default: every core)")
    parser.add_argument("--baseline-mb", type=float, default=20, help="MB of the corpus the datasets.map baseline tokenises (0: skip it)")
    parser.add_argument("--plant-test", type=float, default=0.001, help="share of generated documents that are R8 test stories")
    parser.add_argument("--without-decontamination-too", action="store_true", help="also time ingest with decontamination off")
    args = parser.parse_args()

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="dapt-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        generated = {}
        if args.input:
            inputs = [args.input]
        else:
            corpus = workdir / f"reuters-{args.size_mb:g}mb-test{args.plant_test:g}.jsonl"
            described = corpus.with_suffix(".json")  # what was generated, for a re-run on the same corpus
            if not corpus.is_file() or not described.is_file():
                described.write_text(json.dumps(generate(corpus, args.size_mb, args.plant_test)))
            generated = json.loads(described.read_text())
            inputs = [str(corpus)]
        os.environ.setdefault("DAPT_CACHE", str(workdir / "cache"))
        store = ArtifactStore(workdir / f"store-{os.getpid()}")
        cfg = IngestConfig(inputs=inputs, text_field=args.text_field, strip_patterns=[r"(?i)\s*reuter\s*\x03\s*$"],
                           parallel={"workers": args.workers})  # fmt: skip
        # As the pipeline decontaminates against a task: here the R8 test file.
        against = task_targets(TaskConfig(name="R8", train_files=[str(R8_TEST)], test_files=[str(R8_TEST)]))

        cpu_started = cpu_seconds()
        started = time.perf_counter()
        corpus_id = ingest.run(cfg, store, against=against)
        ingest_s = time.perf_counter() - started
        vocab_id = publish_base_tokenizer(store)
        started = time.perf_counter()
        tokens_id = tokens.run(cfg.parallel, store, corpus=corpus_id, vocab=vocab_id)
        tokens_s = time.perf_counter() - started
        cpu_s = cpu_seconds() - cpu_started

        corpus_m = store.manifest(corpus_id)["metrics"]
        tokens_m = store.manifest(tokens_id)["metrics"]
        input_mb = corpus_m["input_bytes"] / 1e6
        n_tokens = tokens_m["train_tokens"] + tokens_m["validation_tokens"]
        main_rss, child_rss = peak_rss_mb()  # before the baseline runs: these are high-water marks
        without = {}
        if args.without_decontamination_too:
            started = time.perf_counter()
            off = cfg.model_copy(update={"decontaminate": cfg.decontaminate.model_copy(update={"enabled": False})})
            ingest.run(off, ArtifactStore(workdir / f"store-off-{os.getpid()}"))
            without["ingest_without_decontamination_s"] = round(time.perf_counter() - started, 1)
            without["decontamination_cost"] = round(ingest_s / without["ingest_without_decontamination_s"], 2)
        compared = baseline(Path(inputs[0]), workdir, args.baseline_mb, args.workers or os.cpu_count() or 1) if args.baseline_mb and Path(inputs[0]).is_file() else {}
        mb_per_s = input_mb / (ingest_s + tokens_s)
        if compared:
            compared["ratio"] = round(mb_per_s / compared["baseline_mb_per_s"], 2)
        print(json.dumps({
            "input_mb": round(input_mb, 1),
            "mb_per_s": round(mb_per_s, 2),
            **compared,
            "tokens_per_s": round(n_tokens / (ingest_s + tokens_s)),
            "peak_rss_mb": round(max(main_rss, child_rss)),
            "bytes_per_token": tokens_m["bytes_per_token"],
            "ingest_s": round(ingest_s, 1),
            "tokens_s": round(tokens_s, 1),
            "ingest_mb_per_s": round(input_mb / ingest_s, 2),
            "tokenise_mb_per_s": round(input_mb / tokens_s, 2),
            "tokens": n_tokens,
            "cpu_s": round(cpu_s, 1),
            "mb_per_cpu_s": round(input_mb / cpu_s, 2),
            "documents_read": corpus_m["documents_read"],
            "documents_kept": corpus_m["documents"],
            "exact_duplicates_removed": corpus_m["duplicates_removed"],
            "near_duplicates_removed": corpus_m["near_duplicates_removed"],
            **({"generated_exact_copies": generated["exact_copies"], "generated_near_copies": generated["near_copies"]} if generated else {}),
            "decontamination": corpus_m["decontamination"],
            **({"planted_test_texts": generated["planted_test_texts"]} if generated else {}),
            **without,
            "peak_rss_mb_main": round(main_rss),
            "peak_rss_mb_worker": round(child_rss),
            "cpus": os.cpu_count(),
            "load_average_1min": round(os.getloadavg()[0], 2),
        }))  # fmt: skip
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
