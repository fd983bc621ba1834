"""Assess: before the expensive pretraining, estimate whether it is likely to pay off on the task.

    dapt assess configs/demo.yaml                      # builds base, corpus, vocab and tokens if needed, then this
    python -m pretrain.assess --config configs/demo.yaml   # the stage alone (its inputs in the store)

With `pretrain.assess: true` it also runs in the chain, between tokens and pretrain (it never stops the
chain: the estimate is advice, printed in the stage table and kept as an artifact).

Signals, each measured on the user's data with the code the other stages use:
- the base model's per-word perplexity on the corpus' validation split (the pretrain stage's own
  "before" figure: `training.word_eval_batches`) and on a general-English reference text shipped with
  the package (`pretrain/reference/`), and their ratio, the domain shift;
- the share of words the base tokenizer splits into 3+ pieces (`measure_fit`, as the vocab stage measures it), on
  the corpus and on the reference;
- vocabulary overlap: the share of the domain WordPiece's pieces (the vocab stage's) that the base
  vocabulary has, and of the corpus' 10,000 most frequent words that the base tokenizer keeps whole
  (Gururangan et al. 2020 compare the top 10k words of two corpora);
- a pilot: the pretrain stage's own training run for 5% of the configured steps (at most
  `PILOT_MAX_STEPS`), and how far it moves the per-word perplexity;
- the task's train examples per class, and the label budgets to estimate for (`evaluate.label_budgets`,
  else the train split as it is), counted per class as the evaluate stage's budgets count them.
A base model without a masked-LM head (a sentence-transformers encoder) has no perplexity to measure:
the perplexity signals and the pilot are reported unavailable, never a random head's perplexity.

The estimate is `rule` below: written from the measurements in `reference/calibration.json` (domain x
label budget, the evaluate stage's verdict beside the signals), with one domain held out; README
"Will adaptation pay off for us?" has the table, misses included.

Output (assessment artifact `a-...`): `assessment.json` (signals, the estimate per budget) and the key
figures in the manifest; `describe` prints it with the calibration as it stands.
"""

from __future__ import annotations

import json
import math
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from pretrain.core.artifacts import ArtifactStore
from pretrain.core.config import PipelineConfig
from pretrain.core.errors import InputError
from pretrain.core.ids import artifact_id
from pretrain.core.logs import get_logger
from pretrain.data.formats import read_split
from pretrain.data.tasks import read_task, task_sources
from pretrain.finetuning import budgets
from pretrain.models.modelfiles import load_model
from pretrain.training import kit
from pretrain.models.fast_tokenizers import load_fast_tokenizer, measure_fit, plain_backend

log = get_logger(__name__)

STAGE = "assess"
REFERENCE = Path(__file__).resolve().parent / "reference" / "general_english.txt"
PILOT_FRACTION = 0.05
PILOT_MAX_STEPS = 100  # the pilot must take minutes on the user's machine, whatever the budget
TOP_WORDS = 10_000
MAX_COUNTED_WORDS = 2_000_000  # words of the train split counted for the top-10k (enough to rank them)


# --- the signals --------------------------------------------------------------------------------------


def mlm_head_missing(base_dir: Path) -> tuple[Any, list[str]]:
    """The base as a masked LM, and the weights of its masked-LM head the folder lacks (none: it has a head)."""
    from transformers import AutoModelForMaskedLM
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized" warning is what we report, in our words
    try:
        model, info = load_model(AutoModelForMaskedLM, base_dir, "base model", output_loading_info=True, attn_implementation="sdpa")
    finally:
        hf_logging.set_verbosity(verbosity)
    return model, sorted(info.get("missing_keys") or [])


def reference_texts() -> list[str]:
    return [line for line in REFERENCE.read_text(encoding="utf-8").splitlines() if line.strip()]


def base_meta(tokenizer) -> dict:
    """What a tokens folder's `meta.json` says of a tokenizer (`pretrain/tokens.py` writes the same)."""
    special = {name: getattr(tokenizer, f"{name}_token_id") for name in ("cls", "sep", "mask", "pad", "unk")}
    missing = [name for name, value in special.items() if value is None]
    if missing:
        raise InputError(f"the base tokenizer has no {', '.join(missing)} token; masked-LM perplexity needs them")
    vocab_size = plain_backend(tokenizer).get_vocab_size()
    return {"dtype": "uint16" if vocab_size <= np.iinfo(np.uint16).max + 1 else "uint32", "vocab_size": vocab_size, "special_ids": special}


def write_token_split(folder: Path, backend, texts: list[str], meta: dict) -> Path:
    """`texts` tokenised by `backend` (the base tokenizer) as the validation split of a tokens folder
    (`pretrain/data/formats.py`), [SEP] after each text, so they are scored by the pretrain stage's per-word
    windows and masks.

    Word starts come from the tokenizer's word ids, as the tokens stage takes them for any tokenizer (for
    WordPiece they are its non-`##` pieces). The tokens stage's own encoder is not reused so that its
    code, and so every tokens and pretrain artifact id, stays as it is."""
    sep = meta["special_ids"]["sep"]
    ids, starts = [], []
    for encoding in backend.encode_batch(texts, add_special_tokens=False):
        previous = object()
        for token, word in zip(encoding.ids, encoding.word_ids):
            ids.append(token)
            starts.append(word is None or word != previous)
            previous = word
        ids.append(sep)
        starts.append(True)
    folder.mkdir(parents=True, exist_ok=True)
    np.asarray(ids, dtype=meta["dtype"]).tofile(folder / "validation-00000.bin")
    np.packbits(np.asarray(starts, dtype=bool)).tofile(folder / "validation-00000.words.bin")
    shard = {"ids": "validation-00000.bin", "words": "validation-00000.words.bin", "tokens": len(ids)}
    (folder / "meta.json").write_text(json.dumps({**meta, "splits": {"validation": {"shards": [shard]}}}))
    return folder


def word_perplexity(model, tokens_dir: Path, cfg, max_words: int, what: str) -> tuple[float, int]:
    """The per-word perplexity of `model` on a tokens folder's validation split (the windows and masks the
    pretrain stage scores), and the words scored."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from pretrain.training.mlm import MaskedLM

    batches = kit.word_eval_batches(tokens_dir, cfg.max_seq_length, max_words, cfg.micro_batch_size, cfg.seed, cfg.mlm_probability)
    words = sum(units for _, units in batches)
    if not words:
        raise InputError(f"assess: no whole word of the {what} fits a window of pretrain.max_seq_length ({cfg.max_seq_length}) tokens to score")
    AcceleratorState._reset_state()  # as kit.setup: a stage before may have set another precision
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision)
    return kit.perplexity(MaskedLM(model).to(accelerator.device), batches, accelerator), words


def vocabulary_overlap(base_backend, domain_backend, corpus_dir: Path) -> dict:
    """Share of the domain WordPiece's pieces the base vocabulary has (both WordPiece), and of the corpus'
    10,000 most frequent words (with a letter) that the base tokenizer keeps as one piece."""
    out: dict[str, Any] = {}
    base_vocab = base_backend.get_vocab()
    if json.loads(base_backend.to_str())["model"]["type"] == "WordPiece":
        pieces = [p for p in domain_backend.get_vocab() if not (p.startswith("[") and p.endswith("]"))]
        out["domain_wordpiece_overlap"] = round(sum(p in base_vocab for p in pieces) / max(len(pieces), 1), 4)
    counts: Counter = Counter()
    normalizer, pre_tokenizer = base_backend.normalizer, base_backend.pre_tokenizer
    seen = 0
    for batch in read_split(corpus_dir, "train"):
        for text in batch:
            text = normalizer.normalize_str(text) if normalizer is not None else text
            words = [w for w, _ in pre_tokenizer.pre_tokenize_str(text)] if pre_tokenizer is not None else text.split()
            counts.update(w for w in words if any(c.isalpha() for c in w))
            seen += len(words)
        if seen >= MAX_COUNTED_WORDS:
            break
    top = [w for w, _ in counts.most_common(TOP_WORDS)]
    whole = sum(len(base_backend.model.tokenize(w)) == 1 for w in top)
    out["top_words"] = len(top)
    out["top_words_whole"] = round(whole / max(len(top), 1), 4)
    return out


def pilot(cfg, base_dir: Path, vocab_dir: Path, tokens_dir: Path) -> dict:
    """The pretrain stage's training for PILOT_FRACTION of the configured steps (at most PILOT_MAX_STEPS), in a
    temporary folder: per-word perplexity before and after, and how fast it fell."""
    from pretrain import pretrain

    steps = kit.total_steps(cfg)
    pilot_steps = max(1, min(math.ceil(PILOT_FRACTION * steps), PILOT_MAX_STEPS))
    settings = cfg.model_copy(update={
        "max_steps": pilot_steps, "max_tokens": None, "warmup_steps": round(cfg.warmup_steps * pilot_steps / steps),
        "checkpoint_every_steps": None, "eval_every_steps": None, "log_with": [], "compile": False,
    })  # fmt: skip
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dapt-pilot-") as work:
        m = pretrain.train(settings, base_dir, vocab_dir, tokens_dir, Path(work))
    before, after = m["validation_word_perplexity_before"], m["validation_word_perplexity_after"]
    return {
        "steps": pilot_steps,
        "budget_steps": steps,
        "budget_share": round(pilot_steps / steps, 4),
        "tokens": m["tokens"],
        "word_perplexity_before": before,
        "word_perplexity_after": after,
        # How much of the log-perplexity the pilot removed: 0 nothing, 1 all of it (to perplexity 1).
        "log_perplexity_drop": round(1 - math.log(after) / math.log(before), 4) if before > 1 else 0.0,
        "seconds": round(time.perf_counter() - started, 1),
    }


def budget_classes(cfg: PipelineConfig) -> tuple[dict[str, int], list[tuple[int | None, dict[str, int]]]]:
    """The task's train examples per class, and for each label budget to estimate for (`evaluate.label_budgets`,
    else the train split as it is: None), the examples per class it keeps; "per class" as `pretrain/finetuning/budgets.py`
    counts it (multi-label: examples carrying the label; token tasks: sentences mentioning the entity type)."""
    task = cfg.evaluate.task
    data = read_task(task, cfg.evaluate.validation_fraction, log_notes=False)
    per_class = budgets.select(data, None, task.tag_scheme).class_counts
    planned = budgets.plan(data, cfg.evaluate.label_budgets, task.tag_scheme)
    return dict(sorted(per_class.items())), [(b.labels_per_class, b.class_counts) for b in planned]


# --- the estimate ---------------------------------------------------------------------------------------

# Domain x label budget: the measured verdict of the evaluate stage beside the signals the rule reads
# (`reference/calibration.json`; `benchmarks/assess_calibration.py` measures a row). Read when the
# assessment is printed, never stored in it: a new measurement changes what is said about the rule,
# not what an assessment computed, so it rebuilds nothing.
CALIBRATION = Path(__file__).resolve().parent / "reference" / "calibration.json"


# The rule. Fitted on Reuters: the gain was clear at 10 labels per class and gone from 20 on (the median
# class of all of R8 has 203). Priors, not fitted (one calibrated domain cannot fit them): a pilot that does
# not move the per-word perplexity means the corpus has little to teach the base model; a corpus the base
# model predicts as well as the general-English reference has little new for it.
HELPS_UP_TO = 10  # labels per class (median over classes)
UNCLEAR_BELOW = 20  # between the two: the measurements could not tell
MIN_PILOT_DROP = 0.01  # share of the log per-word perplexity the pilot must remove
FAMILIAR_SHIFT = 1.0  # domain shift at or below which the corpus is no newer to the base than the reference


def rule(signals: dict, per_class: float) -> tuple[str, str]:
    """(estimate, why) for a budget of `per_class` labels per class: "likely to help", "unlikely to help" or
    "uncertain"."""
    pilot = signals.get("pilot")
    if pilot is not None and pilot["log_perplexity_drop"] < MIN_PILOT_DROP:
        return "unlikely to help", f"the pilot removed {pilot['log_perplexity_drop']:.1%} of the log perplexity: little to learn"
    shift = signals.get("domain_shift")
    if shift is not None and shift <= FAMILIAR_SHIFT:
        return "unlikely to help", f"domain shift x{shift:.2f}: the base model reads this corpus as well as general English"
    if per_class <= HELPS_UP_TO:
        return "likely to help", f"at most {HELPS_UP_TO} labels per class: Reuters gained +0.050 macro-F1 at 10"
    if per_class < UNCLEAR_BELOW:
        return "uncertain", f"between {HELPS_UP_TO} and {UNCLEAR_BELOW} labels per class, where the calibration could not tell"
    return "unlikely to help", f"{UNCLEAR_BELOW}+ labels per class: fine-tuning learns what pretraining would teach (Reuters: no clear gain from 20 on)"


def estimate(signals: dict, planned: list[tuple[int | None, dict[str, int]]]) -> list[dict]:
    """The estimate at each budget, judged at its median examples per class (a class with fewer keeps all it has)."""
    rows = []
    for budget, counts in planned:
        typical = statistics.median(counts.values()) if counts else 0
        verdict, why = rule(signals, typical)
        rows.append({"budget": budget, "labels_per_class": typical, "estimate": verdict, "why": why})
    return rows


def summary_sentence(rows: list[dict]) -> str:
    """'likely to help at <= 50 labels per class; unlikely with all 2,000' (or whatever the rows say)."""
    def at(r: dict) -> str:
        n = f"{r['labels_per_class']:,.0f}"
        return f"with all {n} labels per class" if r["budget"] is None else f"at {n} labels per class"

    ordered = sorted(rows, key=lambda r: r["labels_per_class"])
    helped = [r for r in ordered if r["estimate"] == "likely to help"]
    unlikely = [r for r in ordered if r["estimate"] == "unlikely to help"]
    parts = []
    if helped:
        top = helped[-1]
        parts.append("likely to help " + (at(top) if top is ordered[0] or top["budget"] is None else at(top).replace("at ", "at <= ", 1)))
    if unlikely:
        low = unlikely[0]
        parts.append("unlikely " + (at(low) if low["budget"] is None or low is ordered[-1] else at(low) + " or more"))
    if not parts:
        return f"{ordered[0]['estimate']}: {ordered[0]['why']}" if ordered else "no budgets to estimate"
    return "; ".join(parts)


def calibration_rows() -> list[dict]:
    return json.loads(CALIBRATION.read_text(encoding="utf-8"))["rows"]


def agrees(row: dict) -> bool:
    """Whether the rule's estimate for a calibration row matches its measured verdict ("uncertain" never does)."""
    said = rule(row.get("signals", {}), row["labels_per_class"])[0]
    return said != "uncertain" and (said == "likely to help") == (row["measured"] == "helped")


def calibration_text() -> str:
    """How the rule was calibrated, in a few lines: what it was written from, and how it did on what it was not."""
    rows = calibration_rows()
    fit = [r for r in rows if r["role"] == "fit"]
    held = [r for r in rows if r["role"] == "held out"]
    domains = lambda rows: ", ".join(dict.fromkeys(r["domain"] for r in rows))  # noqa: E731
    text = f"written from {len(fit)} measured verdicts ({domains(fit)}: labels per class {', '.join(str(r['labels_per_class']) for r in fit)})"
    if held:
        text += f"; held out: {domains(held)}, where {sum(map(agrees, held))} of {len(held)} estimates matched the measured verdict"
    else:
        text += "; no held-out domain measured yet"
    return text + ". README, \"Will adaptation pay off for us?\", has the table, misses included."


# --- the stage ----------------------------------------------------------------------------------------


def _settings(cfg: PipelineConfig) -> dict:
    """What the assessment depends on besides its input artifacts: the pretraining it judges and the task."""
    return {
        "pretrain": cfg.pretrain.model_dump(exclude=kit.EXECUTION_ONLY),
        "task": cfg.evaluate.task.model_dump(mode="json"),
        "validation_fraction": cfg.evaluate.validation_fraction,
        "label_budgets": cfg.evaluate.label_budgets,
    }


def stage_id(cfg: PipelineConfig, *, base: str, corpus: str, vocab: str, tokens: str) -> str:
    inputs = {"base": base, "corpus": corpus, "vocab": vocab, "tokens": tokens}
    return artifact_id(STAGE, _settings(cfg), inputs=inputs, sources=task_sources(cfg.evaluate.task))


def assess(cfg: PipelineConfig, base_dir: Path, corpus_dir: Path, vocab_dir: Path, tokens_dir: Path) -> dict:
    """Every signal, the estimate per label budget, and the calibration."""
    pretrain_cfg = cfg.pretrain
    started = time.perf_counter()
    signals: dict[str, Any] = {}
    base_tokenizer = load_fast_tokenizer(base_dir)
    base_backend = plain_backend(base_tokenizer)
    reference = reference_texts()
    validation = [t for batch in read_split(corpus_dir, "validation") for t in batch]
    fit_domain, fit_reference = measure_fit("corpus", base_backend, validation), measure_fit("reference", base_backend, reference)
    signals["split3_share_corpus"] = fit_domain["split3_share_corpus"]
    signals["split3_share_reference"] = fit_reference["split3_share_reference"]
    signals["fertility_corpus"] = fit_domain["fertility_corpus"]
    signals["fertility_reference"] = fit_reference["fertility_reference"]
    domain_backend = plain_backend(load_fast_tokenizer(vocab_dir / "domain_tokenizer"))
    signals.update(vocabulary_overlap(base_backend, domain_backend, corpus_dir))

    model, missing = mlm_head_missing(base_dir)
    signals["mlm_head"] = not missing
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        signals["unavailable"] = (
            f"the base model has no masked-LM head (its weights lack {shown}): per-word perplexity, the domain shift "
            "and the pilot would measure a randomly initialised head, so they are not computed"
        )
    else:
        # Both texts under the base tokenizer: the model's tokenizer (tokens artifact) may be an extended or a
        # domain vocabulary the base model has no rows for. With `vocab.mode: keep` the corpus figure is the
        # pretrain stage's "before" per-word perplexity (the same stream, windows and masks).
        meta = base_meta(base_tokenizer)
        max_words = pretrain_cfg.max_eval_blocks * (pretrain_cfg.max_seq_length - 2)
        with tempfile.TemporaryDirectory(prefix="dapt-assess-") as tmp:
            corpus_tokens = write_token_split(Path(tmp) / "corpus", base_backend, validation, meta)
            reference_tokens = write_token_split(Path(tmp) / "reference", base_backend, reference, meta)
            domain, domain_words = word_perplexity(model, corpus_tokens, pretrain_cfg, max_words, "corpus' validation split")
            general, general_words = word_perplexity(model, reference_tokens, pretrain_cfg, max_words, "reference text")
        signals.update(
            word_perplexity_corpus=round(domain, 3), words_scored_corpus=domain_words,
            word_perplexity_reference=round(general, 3), words_scored_reference=general_words,
            domain_shift=float(f"{domain / general:.5g}"),
        )  # fmt: skip
        del model
        signals["pilot"] = pilot(pretrain_cfg, base_dir, vocab_dir, tokens_dir)
    per_class, planned = budget_classes(cfg)
    rows = estimate(signals, planned)
    return {
        "signals": signals,
        "task": {"name": cfg.evaluate.task.name, "train_per_class": per_class, "label_budgets": [b for b, _ in planned]},
        "estimates": rows,
        "summary": summary_sentence(rows),
        "reference": {"file": f"pretrain/reference/{REFERENCE.name}", "words": sum(len(t.split()) for t in reference)},
        "seconds": round(time.perf_counter() - started, 1),
    }


def run(cfg: PipelineConfig, store: ArtifactStore, *, base: str, corpus: str, vocab: str, tokens: str) -> str:
    """Build (or find) the assessment artifact; returns its id."""
    started = time.time()
    inputs = {"base": base, "corpus": corpus, "vocab": vocab, "tokens": tokens}
    aid = stage_id(cfg, **inputs)
    if store.exists(aid):
        log.info("assess %s: already built (cache hit)", aid)
        return aid
    log.info("assess %s: config %s", aid, json.dumps(_settings(cfg)))
    dirs = {role: store.local_dir(i) for role, i in inputs.items()}
    with store.build(STAGE, aid, config=_settings(cfg), inputs=inputs, sources=task_sources(cfg.evaluate.task), started=started) as build:
        result = assess(cfg, dirs["base"], dirs["corpus"], dirs["vocab"], dirs["tokens"])
        (build.dir / "assessment.json").write_text(json.dumps(result, indent=1))
        signals = result["signals"]
        build.metrics.update({k: v for k, v in signals.items() if isinstance(v, (int, float, bool, str))})
        if "pilot" in signals:
            build.metrics.update({f"pilot_{k}": v for k, v in signals["pilot"].items()})
        build.metrics["estimate"] = result["summary"]
    log.info("assess %s: %s", aid, result["summary"])
    return aid


# --- what it prints -----------------------------------------------------------------------------------


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def describe(result: dict, name: str = "") -> str:
    """The assessment as `dapt assess` prints it: each signal, the estimate per budget, the calibration."""
    s, task = result["signals"], result["task"]
    per_class = task["train_per_class"]
    lines = [f"signals{f' ({name})' if name else ''}:"]
    if s.get("mlm_head"):
        lines.append(
            f"  per-word perplexity of the base model: corpus {s['word_perplexity_corpus']:,.1f} ({s['words_scored_corpus']:,} words), "
            f"general-English reference {s['word_perplexity_reference']:,.1f} ({s['words_scored_reference']:,} words); "
            f"domain shift x{s['domain_shift']:,.2f}"
        )
    else:
        lines.append(f"  perplexity signals: unavailable: {s['unavailable']}")
    lines.append(
        f"  words the base tokenizer splits into 3+ pieces: corpus {_percent(s['split3_share_corpus'])}, "
        f"reference {_percent(s['split3_share_reference'])}; tokens per word {s['fertility_corpus']:.2f} (reference {s['fertility_reference']:.2f})"
    )
    overlap = f"domain WordPiece pieces in the base vocabulary {_percent(s['domain_wordpiece_overlap'])}; " if "domain_wordpiece_overlap" in s else ""
    lines.append(f"  vocabulary overlap: {overlap}of the corpus' {s['top_words']:,} most frequent words, {_percent(s['top_words_whole'])} kept whole by the base tokenizer")
    if "pilot" in s:
        p = s["pilot"]
        lines.append(
            f"  pilot: {p['steps']:,} of {p['budget_steps']:,} steps ({_percent(p['budget_share'])} of the budget, {p['tokens']:,} tokens, {p['seconds']:.0f} s): "
            f"per-word perplexity {p['word_perplexity_before']:,.1f} -> {p['word_perplexity_after']:,.1f} "
            f"({_percent(p['log_perplexity_drop'])} of its log removed)"
        )
    else:
        lines.append("  pilot: not run (no masked-LM head)")
    sizes = sorted(per_class.values())
    lines.append(
        f"  task {task['name']}: {sum(sizes):,} train examples, {len(sizes)} classes, {min(sizes):,} to {max(sizes):,} per class "
        f"(median {statistics.median(sizes):,.0f})"
    )
    budgets = task["label_budgets"]
    lines.append("  label budgets: " + (", ".join("all" if b is None else f"{b:,}" for b in budgets) if budgets != [None] else "none set: the train split as it is"))
    lines.append("estimate:")
    for row in result["estimates"]:
        at = "all labels" if row["budget"] is None else f"{row['budget']:,} labels per class"
        lines.append(f"  {at} (median {row['labels_per_class']:,.0f} per class): {row['estimate']}: {row['why']}")
    lines.append(f"  => {result['summary']}")
    lines.append(f"how the estimate was calibrated: {calibration_text()}")
    return "\n".join(lines)


if __name__ == "__main__":
    from pretrain.stage_cli import main

    main(STAGE)
