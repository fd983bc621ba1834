"""`dapt init`: a first pipeline config from the user's own files, sized for their base model and corpus.

    dapt init --corpus docs/ --task-train labelled.csv                      # a test split is held out of it
    dapt init --corpus docs/ notes.jsonl --task-train train.csv --task-test test.csv --base bert-base-uncased --out my.yaml

It asks nothing; what it found and chose is printed, and written as comments into the YAML:

- corpus: the inputs listed as ingest lists them, files and bytes per format; the text field of
  JSONL/CSV/Parquet (a field named `text`, `content`, `body`, ... else the string field with the longest
  values), the CSV delimiter (the one that splits the head into the same number of fields on every
  row), `txt_mode` (`file` when the .txt files are many documents, `paragraph` for a few large ones).
  A folder holding files of other types becomes one glob per supported type.
- task: the text and label fields (`label`, `category`, `class`, ... else the field with the fewest
  distinct values), single- or multi-label (a list of labels), the delimiter; with no test file, a
  stratified, hash-based test split (`test_fraction`).
- base model: its `config.json` (a local folder, `pkg:`, or one small download from the Hub) puts it in
  a size class (hidden size up to 256: bert-tiny-like; 512: small; 768: base; larger: large) with
  learning rates, sequence lengths and batch sizes for that class, within its position limit, and
  names its family (`model_type`), whose usual fine-tuning rate and sequence lengths replace the
  class's (`FAMILY_SIZING`: ELECTRA's and ModernBERT's rates are higher, ModernBERT takes long inputs).
- budget: `max_tokens` = `PASSES` passes over the corpus' estimated tokens (bytes / 4.5), capped per
  size class; warmup, logging, evaluation and checkpoint intervals follow from the steps it gives.

The result is checked as `dapt plan` checks a config (schema, paths, the task files read), before
the command returns. Nothing here runs a stage or reads more than the task files and a few hundred
records of the corpus.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import statistics
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pretrain.configfile import relative_to
from pretrain.core.config import package_dir
from pretrain.core.errors import InputError, UserError
from pretrain.data.io import COMPRESSIONS, FORMATS, compression_of, expand_sources, file_format, file_size, open_text_stream, read_records, sniff_binary
from pretrain.models.families import family_name, max_sequence_length

# Passes over the corpus in the token budget: enough for the domain's words to be seen several times,
# few enough not to memorise a small corpus (Gururangan et al. 2020 trained DAPT for about 1-10 passes).
PASSES = 3
BYTES_PER_TOKEN = 4.5  # English text under a BERT WordPiece vocabulary, measured on the demo corpus: 4.9
# How much larger than on disk a compressed or columnar file's text is, roughly.
EXPANSION = {"gzip": 3.5, "zstd": 3.5, "bz2": 4.0, "xz": 4.0, "parquet": 2.5, "arrow": 1.0}
TEXT_NAMES = ("text", "content", "body", "document", "article", "abstract", "passage", "sentence", "review", "description")
LABEL_NAMES = ("label", "labels", "category", "categories", "class", "target", "tag", "topic", "intent", "sentiment", "y")
SAMPLE_RECORDS = 200
# Corpus files opened to see that they are text: enough to catch a folder of binaries, few enough to be instant.
SNIFF_FILES = 50
SNIFF_BYTES = 8192
TEXT_FORMATS = ("txt", "jsonl", "csv", "tsv")  # Parquet and Arrow are binary by design
UNDECODABLE_SHARE = 0.1  # more than this share of U+FFFD in a file's head: not UTF-8 (accented Latin-1 text stays under it)
TASK_TEST_FRACTION = 0.2
DELIMITERS = (",", ";", "\t", "|")


@dataclass(frozen=True)
class Preset:
    """Settings for a size class of base model."""

    name: str
    max_hidden: int
    pretrain_learning_rate: float
    pretrain_seq_length: int
    global_batch_size: int
    micro_batch_size: int
    finetune_learning_rate: float
    finetune_batch_size: int
    finetune_max_seq_length: int
    num_epochs: int
    patience_epochs: int
    max_tokens_cap: int
    note: str


# Learning rates: bert-tiny-like models need about 10x bert-base's (the demo's measured 5e-4); bert-base
# continued pretraining at batch 64 about 1e-4 (DAPT's 6e-4 at batch 2048, scaled down), fine-tuning
# 2e-5 (BERT's 2e-5..5e-5). Caps keep a first run to about an hour on the hardware each class needs.
PRESETS = (
    Preset("bert-tiny-like", 256, 5e-4, 128, 32, 32, 5e-4, 32, 128, 10, 3, 20_000_000, "a CPU runs it"),
    Preset("small", 512, 2e-4, 128, 64, 32, 1e-4, 32, 256, 6, 2, 50_000_000, "a CPU runs it slowly; a GPU is better"),
    Preset("bert-base-like", 768, 1e-4, 256, 64, 16, 2e-5, 16, 256, 5, 2, 200_000_000, "a GPU: hours on a CPU"),
    Preset("large", 10**9, 5e-5, 256, 64, 8, 1e-5, 16, 256, 5, 2, 200_000_000, "a GPU with 24+ GB"),
)


@dataclass(frozen=True)
class FamilySizing:
    """What a model family changes in its size class's settings: its usual fine-tuning rates, its sequence lengths."""

    finetune_learning_rate: dict[str, float] = field(default_factory=dict)  # by size class; a class not named keeps the preset's
    pretrain_seq_length: int | None = None
    finetune_max_seq_length: int | None = None
    note: str = ""


# Fine-tuning rates as each family's authors and model cards give them: ELECTRA 3e-4 small, 1e-4 base, 5e-5 large
# (Clark et al. 2020); ModernBERT higher than BERT, 8e-5 base and 5e-5 large on GLUE (Warner et al. 2024), and
# trained on 8,192-token sequences; DeBERTa-v3 and XLM-R 2e-5 at base and below 1e-5 at large (He et al. 2021,
# Conneau et al. 2020); RoBERTa 1e-5..3e-5; DistilBERT 5e-5. BERT is the presets' own.
FAMILY_SIZING = {
    "bert": FamilySizing(note="BERT's usual rates"),
    "roberta": FamilySizing({"bert-base-like": 2e-5, "large": 1e-5}, note="RoBERTa fine-tunes at 1e-5 to 3e-5"),
    "xlm-roberta": FamilySizing({"bert-base-like": 2e-5, "large": 8e-6}, note="XLM-R: 2e-5 at base, under 1e-5 at large"),
    "deberta-v2": FamilySizing({"small": 5e-5, "bert-base-like": 2e-5, "large": 8e-6}, note="DeBERTa-v3: 2e-5 at base, under 1e-5 at large"),
    "modernbert": FamilySizing({"bert-base-like": 8e-5, "large": 5e-5}, pretrain_seq_length=1024, finetune_max_seq_length=1024,
                               note="ModernBERT fine-tunes at 8e-5 (base) / 5e-5 (large) and takes long inputs (8,192 tokens)"),
    "electra": FamilySizing({"bert-tiny-like": 3e-4, "small": 3e-4, "bert-base-like": 1e-4, "large": 5e-5},
                            note="ELECTRA fine-tunes at 3e-4 (small), 1e-4 (base), 5e-5 (large)"),
    "distilbert": FamilySizing({"bert-base-like": 5e-5}, note="DistilBERT fine-tunes at 5e-5"),
}


def sized_for_family(preset: Preset, model_type: str | None) -> Preset:
    """The size class's settings with the family's own fine-tuning rate and sequence lengths (the same tokens per micro-batch)."""
    family = FAMILY_SIZING.get(model_type or "")
    if family is None:
        return preset
    seq = family.pretrain_seq_length or preset.pretrain_seq_length
    return replace(
        preset,
        finetune_learning_rate=family.finetune_learning_rate.get(preset.name, preset.finetune_learning_rate),
        pretrain_seq_length=seq,
        micro_batch_size=max(1, preset.micro_batch_size * preset.pretrain_seq_length // seq),
        finetune_max_seq_length=family.finetune_max_seq_length or preset.finetune_max_seq_length,
        note=f"{preset.note}; {family.note}",
    )


@dataclass
class CorpusFacts:
    inputs: list[str]
    files: int
    bytes: int
    formats: Counter
    text_field: str = "text"
    txt_mode: str = "file"
    delimiter: str | None = None
    skipped: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    not_text: list[tuple[str, str]] = field(default_factory=list)  # sampled files that are not text: (file, why)
    sampled: int = 0

    @property
    def tokens(self) -> int:
        return int(self.bytes / BYTES_PER_TOKEN)


@dataclass
class TaskFacts:
    path: str
    rows: int
    fields: list[str]
    text_field: str
    label_field: str
    kind: str
    labels: Counter
    delimiter: str | None = None
    text_words_p90: int = 0


@dataclass
class BaseFacts:
    source: str
    hidden_size: int | None
    layers: int | None
    max_positions: int
    lowercase: bool | None
    preset: Preset
    how: str
    model_type: str | None = None


# --- sniffing -----------------------------------------------------------------------------------------


def sniff_delimiter(path: str, fmt: str) -> str | None:
    """The CSV delimiter that splits the file's head into the same number (>1) of fields on most rows;
    None when it is the format's own (`,` for .csv, a tab for .tsv)."""
    with open_text_stream(path, compression_of(path)) as f:
        head = f.read(1 << 16).decode("utf-8", errors="replace")
    if len(head) == 1 << 16 and "\n" in head:
        head = head[: head.rindex("\n") + 1]  # whole lines only
    own = "\t" if fmt == "tsv" else ","
    best, best_score = own, (0, 0)
    for delimiter in DELIMITERS:
        try:
            rows = [row for row in csv.reader(head.splitlines(), delimiter=delimiter) if row]
        except csv.Error:
            continue
        if not rows or len(rows[0]) < 2:
            continue
        consistent = sum(len(row) == len(rows[0]) for row in rows)
        score = (consistent, delimiter == own)
        if score > best_score:
            best, best_score = delimiter, score
    return None if best == own else best


def _sample(path: str, delimiter: str | None, limit: int) -> list[dict]:
    records = []
    for _, record in read_records(path, delimiter=delimiter):
        records.append(record)
        if len(records) >= limit:
            break
    return records


def _string_lengths(records: list[dict]) -> dict[str, float]:
    """Mean length of each field whose values are (mostly) strings."""
    lengths: dict[str, list[int]] = {}
    for record in records:
        for name, value in record.items():
            if isinstance(name, str) and isinstance(value, str):
                lengths.setdefault(name, []).append(len(value))
    return {name: statistics.fmean(values) for name, values in lengths.items() if len(values) >= len(records) / 2}


def _pick_text_field(records: list[dict], exclude: set[str] = frozenset()) -> str | None:
    lengths = {name: mean for name, mean in _string_lengths(records).items() if name not in exclude}
    if not lengths:
        return None
    named = [name for name in lengths if name.lower() in TEXT_NAMES and lengths[name] >= 10]
    return named[0] if named else max(lengths, key=lengths.get)


def sniff_corpus(patterns: list[str]) -> CorpusFacts:
    """What `--corpus` names: the files, their formats and size, the text field, txt_mode and delimiter."""
    inputs: list[str] = []
    files: list[tuple[str, str]] = []
    skipped: Counter = Counter()
    for pattern in patterns:
        matches = expand_sources([pattern])
        if not matches:
            raise InputError(f"--corpus {pattern}: matches no file{relative_to(pattern)}")
        supported, other = [], []
        for f in matches:
            try:
                supported.append((f, file_format(f)))
            except InputError:
                other.append(f)
        if other and os.path.isdir(pattern):
            # One glob per supported type keeps the rest (README.md, images, ...) out of ingest.
            suffixes = sorted({_suffix(f) for f, _ in supported})
            inputs += [f"{pattern.rstrip('/')}/**/*{suffix}" for suffix in suffixes]
            skipped.update(_suffix(f) or "(none)" for f in other)
        elif other:
            raise InputError(f"--corpus {pattern}: {other[0]} is not a supported type ({', '.join(sorted(FORMATS))}, optionally compressed)")
        else:
            inputs.append(pattern)
        files += supported
    if not files:
        raise InputError(f"--corpus {' '.join(patterns)}: no file of a supported type ({', '.join(sorted(FORMATS))})")
    size = 0
    for f, fmt in files:
        expansion = EXPANSION.get(fmt if fmt in EXPANSION else compression_of(f) or "", 1.0)
        size += int(file_size(f) * expansion)
    facts = CorpusFacts(inputs, len(files), size, Counter(fmt for _, fmt in files), skipped=skipped)
    sample = _spread([f for f, fmt in files if fmt in TEXT_FORMATS], SNIFF_FILES)
    facts.sampled, facts.not_text = len(sample), [(f, why) for f in sample if (why := not_text(f))]
    if sample and len(facts.not_text) == len(sample):
        f, why = facts.not_text[0]
        raise InputError(
            f"--corpus {' '.join(patterns)}: none of the {len(sample)} text files sampled is text (e.g. {f}: {why}); "
            "point --corpus at the domain's text"
        )
    structured = [(f, fmt) for f, fmt in files if fmt in ("jsonl", "csv", "tsv", "parquet")]
    if structured:
        f, fmt = structured[0]
        if fmt in ("csv", "tsv"):
            facts.delimiter = sniff_delimiter(f, fmt)
        records = _sample(f, facts.delimiter, SAMPLE_RECORDS)
        field_name = _pick_text_field(records)
        if field_name is None:
            raise InputError(f"{f}: no field with text in its first {len(records)} records (fields: {_fields(records)})")
        facts.text_field = field_name
        facts.notes.append(f"text field {field_name!r} (of {_fields(records)}) in {f}")
    txt = [f for f, fmt in files if fmt == "txt"]
    if txt:
        mean_size = statistics.fmean(file_size(f) for f in txt)
        # Many files: each is a document. A few large ones are books or dumps: one document per paragraph.
        facts.txt_mode = "paragraph" if len(txt) < 10 and mean_size > 1 << 20 else "file"
    return facts


def _spread(items: list, n: int) -> list:
    """At most `n` of `items`, evenly spread (the first and the last included)."""
    if len(items) <= n:
        return items
    return [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)]


def not_text(path: str) -> str | None:
    """Why a corpus file is not text, from its first few KiB (as ingest sniffs it, and undecodable as UTF-8), or None."""
    why = sniff_binary(path, compression_of(path))
    if why:
        return why
    with open_text_stream(path, compression_of(path)) as f:
        head = f.read(SNIFF_BYTES)
    decoded = head.decode("utf-8", errors="replace").rstrip("\ufffd")  # the last character may be cut in two
    bad = decoded.count("\ufffd")
    if decoded and bad / len(decoded) > UNDECODABLE_SHARE:
        return f"not UTF-8 text ({bad / len(decoded):.0%} of its first {len(head) // 1024 or 1} KiB does not decode)"
    return None


def _suffix(path: str) -> str:
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS and len(suffixes) > 1:
        return "".join(suffixes[-2:])
    return suffixes[-1] if suffixes else ""


def _fields(records: list[dict]) -> str:
    names = list(dict.fromkeys(k for r in records for k in r if isinstance(k, str)))
    return ", ".join(map(repr, names[:12])) or "none"


def sniff_task(pattern: str, role: str) -> TaskFacts:
    """The text and label fields, task type and delimiter of a labelled file (every row read; never tokenised)."""
    files = expand_sources([pattern])
    if not files:
        raise InputError(f"{role} {pattern}: matches no file{relative_to(pattern)}")
    path = files[0]
    fmt = file_format(path)
    if fmt not in ("jsonl", "csv", "tsv", "parquet"):
        raise InputError(
            f"{role} {path}: `dapt init` reads classification files (JSONL, CSV, TSV, Parquet); for CoNLL "
            "or other token-task files write evaluate.task by hand (README: config reference)"
        )
    delimiter = sniff_delimiter(path, fmt) if fmt in ("csv", "tsv") else None
    records = [record for f in files for _, record in read_records(f, delimiter=delimiter)]
    if not records:
        raise InputError(f"{role} {path}: no records")
    label_field = _pick_label_field(records)
    if label_field is None:
        raise InputError(f"{role} {path}: no field looks like a label (fields: {_fields(records)}); name it `label`, or write evaluate.task by hand")
    text_field = _pick_text_field(records[:SAMPLE_RECORDS], exclude={label_field})
    if text_field is None:
        raise InputError(f"{role} {path}: no field with text besides {label_field!r} (fields: {_fields(records)})")
    values = [r.get(label_field) for r in records]
    kind = "multi_label" if any(isinstance(v, (list, tuple)) for v in values) else "single_label"
    labels: Counter = Counter()
    for v in values:
        labels.update(map(str, v) if isinstance(v, (list, tuple)) else [str(v)] if v not in (None, "") else [])
    words = sorted(len(str(r.get(text_field) or "").split()) for r in records)
    p90 = words[min(len(words) - 1, int(0.9 * len(words)))]
    fields = list(dict.fromkeys(k for r in records[:SAMPLE_RECORDS] for k in r if isinstance(k, str)))
    return TaskFacts(pattern, len(records), fields, text_field, label_field, kind, labels, delimiter, p90)


def _pick_label_field(records: list[dict]) -> str | None:
    names = list(dict.fromkeys(k for r in records[:SAMPLE_RECORDS] for k in r if isinstance(k, str)))
    for name in names:
        if name.lower() in LABEL_NAMES:
            return name
    best, best_distinct = None, None
    for name in names:
        values = [r.get(name) for r in records]
        if any(isinstance(v, (dict, float)) for v in values):
            continue
        distinct = len({json.dumps(v, sort_keys=True) for v in values if v not in (None, "")})
        if 2 <= distinct <= max(2, len(records) // 2) and (best_distinct is None or distinct < best_distinct):
            best, best_distinct = name, distinct
    return best


def base_facts(source: str, revision: str | None = None) -> BaseFacts:
    """Size class of the base model, from its config.json (local folder, `pkg:`, or the Hub), else its name."""
    folder = package_dir(source) if source.startswith("pkg:") else Path(source).expanduser()
    config: dict[str, Any] | None = None
    tokenizer: dict[str, Any] = {}
    how = "config.json"
    if folder is not None and (folder / "config.json").is_file():
        config = json.loads((folder / "config.json").read_text())
        if (folder / "tokenizer_config.json").is_file():
            tokenizer = json.loads((folder / "tokenizer_config.json").read_text())
    elif folder is not None and folder.exists():
        raise InputError(f"--base {source}: the folder has no config.json")
    else:
        try:
            from huggingface_hub import hf_hub_download

            config = json.loads(Path(hf_hub_download(source, "config.json", revision=revision)).read_text())
            how = "config.json from the Hub"
        except Exception as e:  # offline, unknown repo: fall back to the name
            how = f"its name (config.json not reachable: {type(e).__name__})"
    hidden = (config or {}).get("hidden_size") or (config or {}).get("dim")
    layers = (config or {}).get("num_hidden_layers") or (config or {}).get("n_layers")
    if hidden is None:
        name = source.lower()
        hidden = 128 if "tiny" in name else 512 if re.search(r"mini|small", name) else 1024 if "large" in name else 768
    model_type = (config or {}).get("model_type")
    preset = sized_for_family(next(p for p in PRESETS if hidden <= p.max_hidden), model_type)
    positions = int(max_sequence_length(config or {}) or 512)
    lowercase = tokenizer.get("do_lower_case") if isinstance(tokenizer.get("do_lower_case"), bool) else None
    if lowercase is None and config is None:
        lowercase = False if "cased" in source.lower() and "uncased" not in source.lower() else None
    return BaseFacts(source, hidden if config else None, layers, positions, lowercase, preset, how, model_type)


# --- the config -----------------------------------------------------------------------------------


def _yaml(value: Any) -> str:
    """A YAML scalar or flow list (JSON is valid YAML; floats written so YAML 1.1 reads them as floats)."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:.1e}" if value < 0.01 else repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    if isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9_./*:-]+", value) and not re.fullmatch(r"[-+.0-9eE]+|true|false|null|yes|no|on|off|~", value, re.I):
        return value
    return json.dumps(value)


def _seq_length(words_p90: int, preset: Preset, positions: int) -> int:
    """Fine-tuning length: the 90th percentile of the task's texts in tokens (~1.3 per word), in steps of 32."""
    wanted = max(32, math.ceil(words_p90 * 1.3 / 32) * 32)
    return min(wanted, preset.finetune_max_seq_length, positions)


# Words of a file name that say it is labelled data, not what the task is ("labelled.csv", "train_labeled.csv").
NOT_A_TASK_NAME = {"labelled", "labeled", "label", "labels", "train", "training", "trn", "data", "dataset", "set", "split", "all", "final"}
# Label fields that do not name the task either.
GENERIC_LABELS = {"label", "labels", "class", "target", "y", "tag"}


def task_name_from(path: str, label_field: str) -> str:
    """The task's name when none is given: the file's stem without words such as `labelled` or `train`
    (`news_topics_labelled.csv` -> `news-topics`), else the label field when it names something (`category`),
    else `task`."""
    words = [w for w in re.split(r"[\s_.\-]+", Path(path).name.split(".")[0]) if w and w.lower() not in NOT_A_TASK_NAME]
    if words:
        return "-".join(words)
    return label_field if label_field.lower() not in GENERIC_LABELS and check_task_name(label_field, quiet=True) else "task"


def check_task_name(name: str, quiet: bool = False) -> bool:
    """A task name is shown in headlines, tables and logs: 1 to 64 printable characters, not only spaces."""
    ok = 0 < len(name) <= 64 and name.strip() == name and name.isprintable() and not name.startswith(("#", "-"))
    if not ok and not quiet:
        raise UserError(
            f"--task-name {name!r}: give 1 to 64 printable characters, no leading or trailing spaces, not starting with # or -, "
            "e.g. --task-name news-topics"
        )
    return ok


def render(corpus: CorpusFacts, task: TaskFacts, test: TaskFacts | None, base: BaseFacts, name: str, task_name: str | None = None) -> str:
    """The commented YAML."""
    p = base.preset
    seq = min(p.pretrain_seq_length, base.max_positions)
    tokens = min(PASSES * corpus.tokens, p.max_tokens_cap)
    steps = max(1, math.ceil(tokens / (p.global_batch_size * seq)))
    warmup = round(0.06 * steps) if steps >= 20 else 0
    log_every = max(1, steps // 20)
    eval_every = steps // 4 if steps >= 40 else None
    checkpoint_every = steps // 4 if steps >= 400 else None
    finetune_seq = _seq_length(task.text_words_p90, p, base.max_positions)
    capped = PASSES * corpus.tokens > p.max_tokens_cap
    shape = f"{base.layers} layers x {base.hidden_size} hidden" if base.hidden_size else "size guessed"
    mode = {"file": "each .txt file is one document", "paragraph": "each blank-line-separated paragraph of a .txt file is one document"}
    lines = [
        f"# Written by `dapt init` for {', '.join(corpus.inputs)} and {task.path}. Check it, then:",
        f"#   dapt plan {name}.yaml     # the stages' artifact ids; the task files are read and checked",
        f"#   dapt run {name}.yaml",
        "# Every key is described in the README's config reference; relative paths are relative to where you run dapt.",
        f"name: {_yaml(name)}",
        "store: artifacts                    # where artifacts go: a folder, or an fsspec URL such as s3://bucket/prefix",
        "",
        "base_model:",
        f"  source: {_yaml(base.source)}",
        f"  # {_family(base)}{p.name} ({shape}, from {base.how}): the settings below are sized for it; {p.note}.",
        "",
        "ingest:",
        f"  inputs: {_yaml(corpus.inputs)}",
        f"  # {corpus.files:,} files ({', '.join(f'{n:,} {fmt}' for fmt, n in corpus.formats.most_common())}), about "
        f"{corpus.bytes / 1e6:,.1f} MB of text, about {corpus.tokens:,} tokens.",
    ]
    if corpus.skipped:
        lines.append(f"  # Left out (not a supported type): {', '.join(f'{n} {s}' for s, n in corpus.skipped.most_common())}.")
    if any(fmt in corpus.formats for fmt in ("jsonl", "csv", "tsv", "parquet")):
        lines.append(f"  text_field: {_yaml(corpus.text_field)}             # {corpus.notes[0] if corpus.notes else ''}")
    if corpus.delimiter:
        lines.append(f"  csv_delimiter: {_yaml(corpus.delimiter)}")
    if "txt" in corpus.formats:
        lines.append(f"  txt_mode: {corpus.txt_mode}                 # {mode[corpus.txt_mode]} (or: file, line, paragraph)")
    lines += [
        "  min_words: 5                      # shorter documents are dropped and counted",
        "  strip_patterns: []                # regexes removed from every document first: page headers, signatures, ...",
        "  validation_fraction: 0.02         # documents held out (by a hash of the text) to measure perplexity",
        "  on_error: fail                    # a bad record stops the run naming file and line; `skip` counts it and goes on",
        "",
        "vocab:",
        "  mode: keep                        # the base tokenizer; `extend` adds domain WordPieces (worth it with jargon and a long budget)",
    ]
    if base.lowercase is not None:
        lines.append(f"  lowercase: {_yaml(base.lowercase)}                   # as the base tokenizer")
    lines += [
        "",
        "pretrain:",
        f"  max_seq_length: {seq}",
        f"  max_tokens: {tokens}              # {PASSES} passes over about {corpus.tokens:,} tokens"
        + (f", capped at {p.max_tokens_cap:,} for a {p.name} model" if capped else "")
        + f": {steps:,} steps of {p.global_batch_size} x {seq} tokens",
        f"  global_batch_size: {p.global_batch_size}",
        f"  micro_batch_size: {p.micro_batch_size}              # per device and forward pass; lower it if memory runs out",
        f"  learning_rate: {_yaml(p.pretrain_learning_rate)}",
        f"  warmup_steps: {warmup}",
        f"  log_every_steps: {log_every}",
    ]
    if eval_every:
        lines.append(f"  eval_every_steps: {eval_every}              # validation perplexity (always before and after)")
    if checkpoint_every:
        lines.append(f"  checkpoint_every_steps: {checkpoint_every}        # a crashed or stopped run resumes from here")
    lines += [
        "  mixed_precision: \"no\"             # bf16 on a recent GPU",
        "",
        f"# distill: {{student_layers: {max(1, (base.layers or 12) // 2)}, max_tokens: {tokens}}}   # optional: a smaller student, compared as `student`",
        "",
        "evaluate:",
        "  task:",
        f"    name: {_yaml(task_name or task_name_from(task.path, task.label_field))}",
        f"    type: {task.kind}",
        f"    train_files: {_yaml([task.path])}   # {task.rows:,} rows; fields {', '.join(map(repr, task.fields[:8]))}",
    ]
    if test is not None:
        lines.append(f"    test_files: {_yaml([test.path])}   # {test.rows:,} rows")
    else:
        lines.append(f"    test_fraction: {TASK_TEST_FRACTION}            # no test file: this share of each label's examples is the test split (by a hash of the text)")
    lines += [
        f"    text_field: {_yaml(task.text_field)}",
        f"    label_field: {_yaml(task.label_field)}         # {len(task.labels)} labels: "
        + ", ".join(f"{label} ({n:,})" for label, n in task.labels.most_common(8))
        + (", ..." if len(task.labels) > 8 else ""),
    ]
    if task.delimiter:
        lines.append(f"    csv_delimiter: {_yaml(task.delimiter)}")
    lines += [
        "  seeds: [0, 1, 2]                  # every model is fine-tuned once per seed; fewer seeds, less certainty",
        "  validation_fraction: 0.1          # held out of train (stratified) to choose the epoch",
        f"  max_seq_length: {finetune_seq}               # 90% of the task's texts are at most {task.text_words_p90:,} words",
        f"  num_epochs: {p.num_epochs}",
        f"  patience_epochs: {p.patience_epochs}",
        f"  batch_size: {p.finetune_batch_size}",
        f"  learning_rate: {_yaml(p.finetune_learning_rate)}",
        "  # label_budgets: [10, 50, 200, null]  # a learning curve: also compare at 10, 50 and 200 labels per class (null: all);",
        "  #                                     # each budget costs one more full comparison (README: \"Will adaptation pay off for us?\")",
        "",
    ]
    return "\n".join(_aligned(line) for line in lines)


def _family(base: BaseFacts) -> str:
    """`RoBERTa family (model_type roberta), ` when the config said which family the model is."""
    return f"{family_name(base.model_type)} family (model_type {base.model_type}), " if base.model_type else ""


def _aligned(line: str, column: int = 38) -> str:
    """`key: value   # comment` with the comment at `column`, so the file reads as a table."""
    match = re.match(r"^(\s*[^#\s][^#]*?)\s+# (.*)$", line)
    return f"{match[1]:<{column}} # {match[2]}" if match else line


def init(corpus: list[str], task_train: str | None, task_test: str | None, base: str, out: str, force: bool = False,
         task_name: str | None = None) -> list[str]:  # fmt: skip
    """Sniff the files, write the config to `out`; returns the lines that say what was found and chosen.
    `task_name`: the task's name in reports (default: from the train file's name, `task_name_from`)."""
    if task_name is not None:
        check_task_name(task_name)
    if os.path.exists(out) and not force:
        raise UserError(f"{out} exists; choose another --out, or pass --force to overwrite it")
    if not out.endswith((".yaml", ".yml")):
        raise UserError(f"--out {out}: give a .yaml file name")
    if task_train is None:
        raise UserError("--task-train: a labelled file is needed to compare base and adapted model (give --task-test too, or a test split is held out of it)")
    corpus_facts = sniff_corpus(corpus)
    task = sniff_task(task_train, "--task-train")
    test = sniff_task(task_test, "--task-test") if task_test else None
    if test is not None and (test.text_field, test.label_field) != (task.text_field, task.label_field):
        raise InputError(
            f"--task-test {task_test}: text field {test.text_field!r} and label field {test.label_field!r}, but the train file's are "
            f"{task.text_field!r} and {task.label_field!r}; give files with the same columns"
        )
    facts = base_facts(base)
    name = Path(out).stem
    chosen = task_name or task_name_from(task.path, task.label_field)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(render(corpus_facts, task, test, facts, name, chosen))
    p = facts.preset
    said = [
        f"corpus: {corpus_facts.files:,} files ({', '.join(f'{n:,} {fmt}' for fmt, n in corpus_facts.formats.most_common())}), "
        f"about {corpus_facts.bytes / 1e6:,.1f} MB, about {corpus_facts.tokens:,} tokens"
        + (f"; text field {corpus_facts.text_field!r}" if corpus_facts.notes else "")
        + (f"; {corpus_facts.delimiter!r}-separated" if corpus_facts.delimiter else "")
        + (f"; txt_mode {corpus_facts.txt_mode}" if "txt" in corpus_facts.formats else ""),
        f"task {chosen!r}" + ("" if task_name else " (from the file and field names; --task-name to choose)")
        + f": {task.path}: {task.rows:,} rows, text field {task.text_field!r}, label field {task.label_field!r} "
        f"({len(task.labels)} labels, {task.kind})" + (f", {task.delimiter!r}-separated" if task.delimiter else "")
        + (f"; test: {test.path}, {test.rows:,} rows" if test else f"; no test file: {TASK_TEST_FRACTION:.0%} of each label held out (test_fraction)"),
        f"base model: {facts.source}: {_family(facts)}{p.name} (from {facts.how}): pretraining learning rate {p.pretrain_learning_rate:g}, "
        f"{min(p.pretrain_seq_length, facts.max_positions)}-token blocks, batch {p.global_batch_size}; fine-tuning learning rate "
        f"{p.finetune_learning_rate:g}, batch {p.finetune_batch_size}",
    ]
    if corpus_facts.skipped:
        said.append(f"left out of the corpus (not a supported type): {', '.join(f'{n} {s}' for s, n in corpus_facts.skipped.most_common())}")
    if bad := corpus_facts.not_text:
        said.append(
            f"warning: {len(bad)} of the {corpus_facts.sampled} corpus files sampled are not text ({'; '.join(f'{f}: {why}' for f, why in bad[:3])}"
            f"{'; …' if len(bad) > 3 else ''}): ingest stops at the first one; remove them from the corpus, or set ingest.on_error: skip in {out}"
        )
    return said + [f"wrote {out}"]
