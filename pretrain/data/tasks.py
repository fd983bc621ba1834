"""Downstream task data: read the labelled splits, check them, hold out validation, encode for a model.

Classification rows come from JSONL/CSV/TSV/Parquet or a Hugging Face dataset (a text column,
optionally a second text column for sentence pairs, and a label column). Token tasks come from CoNLL files (one word per line, the tag in a
column, a blank line between sentences, `-DOCSTART-` lines skipped) or JSONL/Parquet rows holding a
list of words and a list of tags.

Every problem in the data is an InputError naming the file and line, or a warned, counted fix that
ends up in `results.json` (`notes`): empty texts are dropped, a stratified validation split that is
impossible falls back to a random one. What could make a metric silently wrong is an error: a label
outside `task.labels`, a test label never seen in train, a word without a tag.

`read_task` is also what `dapt plan`, `dapt run` and a stage run alone call before any stage runs
(`pretrain.chain.preflight`): it reads the files (every row, texts included, since empty texts are
dropped and counted) and never tokenises, so a bad task file fails in seconds, not after pretraining.
With `test_fraction` and no test files, the test split is held out of train here (`hold_out_test`).
"""

from __future__ import annotations

import functools
import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pretrain.core.artifacts import describe_sources, source_digest
from pretrain.core.config import DatasetSource, TaskConfig, is_bio_tag
from pretrain.core.errors import InputError
from pretrain.core.logs import get_logger
from pretrain.data.hf_datasets import resolve as resolve_dataset
from pretrain.data.io import FileStats, check_not_binary, expand_inputs, field_text, file_format, read_records, text_lines

log = get_logger(__name__)

RECORD_FORMATS = ("jsonl", "parquet")  # token tasks: other files are read as CoNLL columns


@dataclass
class Split:
    """One split as read: texts (words for token tasks), optional second texts, labels, and where each came from."""

    texts: list = field(default_factory=list)
    pairs: list[str] | None = None
    labels: list = field(default_factory=list)  # str | list[str] (multi-label) | list[str] (tags per word)
    locations: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices) -> Split:
        pick = lambda values: [values[i] for i in indices]  # noqa: E731
        return Split(pick(self.texts), pick(self.pairs) if self.pairs is not None else None, pick(self.labels), pick(self.locations))


@dataclass
class TaskData:
    """The three splits of a task, its label set (in report order) and what was fixed along the way."""

    kind: str
    labels: list[str]
    train: Split
    validation: Split
    test: Split
    validation_from: str
    notes: list[str] = field(default_factory=list)
    overlaps: list[Overlap] = field(default_factory=list)  # train examples found in the given test or validation files

    def describe(self, name: str) -> str:
        """`task NAME: single_label, 3 labels; 135 train, 15 validation (...), 60 test examples`."""
        return (
            f"task {name}: {self.kind}, {len(self.labels)} labels; {len(self.train):,} train, {len(self.validation):,} "
            f"validation ({self.validation_from}), {len(self.test):,} test examples"
        )

    def gold(self, split: str):
        """The split's labels in the form `pretrain.finetuning.scoring` takes."""
        rows = getattr(self, split)
        ids = {label: i for i, label in enumerate(self.labels)}
        if self.kind == "single_label":
            return np.array([ids[label] for label in rows.labels], dtype=np.int64)
        if self.kind == "multi_label":
            matrix = np.zeros((len(rows), len(self.labels)), dtype=bool)
            for i, labels in enumerate(rows.labels):
                matrix[i, [ids[label] for label in labels]] = True
            return matrix
        return [list(tags) for tags in rows.labels]


def read_task(cfg: TaskConfig, validation_fraction: float, log_notes: bool = True) -> TaskData:
    """Read and check every split; hold out test (with `test_fraction`) and validation from train when not given.

    Problems in several files are raised together, one InputError listing each. The fixes made
    (`notes`) are logged as warnings unless `log_notes` is false (the caller shows them).
    """
    notes: list[str] = []
    problems: list[str] = []

    def read(patterns: list, key: str) -> Split | None:
        try:
            return read_split(cfg, patterns, key, notes) if patterns else None
        except InputError as e:
            problems.append(str(e))
            return None

    train = read(cfg.train_files, "train_files")
    test = read(cfg.test_files, "test_files")
    given = read(cfg.validation_files, "validation_files")
    problems = list(dict.fromkeys(problems))  # one file given as two splits: its problem once
    if problems:
        raise InputError(problems[0] if len(problems) == 1 else f"{len(problems)} problems:\n" + "\n".join(f"  - {p}" for p in problems))
    assert train is not None
    overlaps = [o for key, split in (("test_files", test), ("validation_files", given)) if (o := overlap_with_train(cfg, key, split, train))]
    notes += [o.describe() for o in overlaps]
    if test is None:
        train, test = hold_out_test(cfg, train, notes)
    labels = label_set(cfg, {"train_files": train, "validation_files": given, "test_files": test}, notes)
    if given is not None:
        validation, validation_from = given, "validation_files"
    else:
        train, validation, validation_from = hold_out(cfg, train, validation_fraction, notes)
    if log_notes:
        for note in notes:
            log.warning("evaluate: %s", note)
    return TaskData(cfg.type, labels, train, validation, test, validation_from, notes, overlaps)


# --- train examples in the held-out files ----------------------------------------------------------------

# Above this share of a given test (or validation) file's examples found in train, the file is not held out
# at all and `check_held_out` refuses it; below, a few shared examples (public datasets have some) are warned.
OVERLAP_ERROR_SHARE = 0.05


@dataclass
class Overlap:
    """Train examples in a given test or validation file: the same file, or the same texts (case and spacing aside)."""

    key: str  # test_files | validation_files
    shared: int  # examples of the split whose text is also a train example's
    total: int
    example: str  # where the first one is, in both files, and its start
    identical: list[tuple[str, str]] = field(default_factory=list)  # (the split's file, the train file) with the same bytes

    @property
    def share(self) -> float:
        return self.shared / self.total

    @property
    def fatal(self) -> bool:
        return bool(self.identical) or self.share > OVERLAP_ERROR_SHARE

    def describe(self) -> str:
        use = "scored on" if self.key == "test_files" else "have their epoch chosen on"
        if self.identical:
            mine, train = self.identical[0]
            return f"{self.key}: {mine} is the same file as the train file {train} (identical bytes): the models would be {use} their own training data"
        return (
            f"{self.key}: {self.shared:,} of {self.total:,} examples ({self.share:.1%}) have the same text as a train example "
            f"(case and spacing aside), e.g. {self.example}: the models are {use} examples they were trained on"
        )

    def problem(self) -> str:
        split = "test" if self.key == "test_files" else "validation"
        fix = f"or leave {self.key} out and set evaluate.task.{split}_fraction" if split == "test" else f"or leave {self.key} out (a share of train is held out)"
        return (
            f"evaluate.task.{self.describe()}" + ("" if self.identical else f" (more than {OVERLAP_ERROR_SHARE:.0%})")
            + f"; give a {split} file of held-out examples (remove the shared ones from one of the files), {fix}"
        )


def _normalised(text, pair) -> str:
    joined = " ".join(text) if isinstance(text, list) else text
    return " ".join(joined.lower().split()) + ("\0" + " ".join(pair.lower().split()) if pair is not None else "")


def overlap_with_train(cfg: TaskConfig, key: str, split: Split | None, train: Split) -> Overlap | None:
    """The train examples in a given test or validation `split` (`key`), or None when it shares none."""
    if split is None:
        return None

    def digests(patterns: list) -> dict[str, str]:
        return {source_digest(f)["sha256"]: str(f) for f in split_sources(patterns)}

    train_files = digests(cfg.train_files)
    identical = [(path, train_files[sha]) for sha, path in digests(getattr(cfg, key)).items() if sha in train_files]
    seen = {_normalised(t, p): loc for t, p, loc in zip(train.texts, train.pairs or [None] * len(train), train.locations)}
    shared = [(loc, seen[k], t) for t, p, loc in zip(split.texts, split.pairs or [None] * len(split), split.locations) if (k := _normalised(t, p)) in seen]
    if not shared and not identical:
        return None
    example = ""
    if shared:
        loc, train_loc, text = shared[0]
        start = " ".join(text)[:60] if isinstance(text, list) else " ".join(text.split())[:60]
        example = f"{loc} = {train_loc} ({start!r})"
    return Overlap(key, len(shared), len(split), example, identical)


def check_held_out(data: TaskData) -> None:
    """Refuse a given test or validation file that is not held out: the train file itself, or mostly train examples.

    At plan time (`pretrain.chain.preflight`): scoring a model on what it was trained on says nothing.
    A few shared examples are a warning (in `data.notes`), not an error.
    """
    problems = [o.problem() for o in data.overlaps if o.fatal]
    if problems:
        raise InputError(problems[0] if len(problems) == 1 else f"{len(problems)} problems:\n" + "\n".join(f"  - {p}" for p in problems))


def split_sources(patterns: list) -> list:
    """The files (Paths) and datasets (source strings) of a split's entries, in order."""
    found: list = []
    for item in patterns:
        if isinstance(item, DatasetSource):
            found.append(resolve_dataset(item)["path"])  # pinned: the commit the id hashes
        else:
            found += [f for f in expand_inputs([item]) if f not in found]
    return found


def task_sources(cfg: TaskConfig) -> list[dict[str, Any]]:
    """What the task's artifact ids hash: every file's size and sha256, every dataset's identity."""
    sources = []
    for item in [*cfg.train_files, *cfg.validation_files, *cfg.test_files]:
        if isinstance(item, DatasetSource):
            sources.append(resolve_dataset(item))
        else:
            sources += describe_sources(expand_inputs([item]))
    return sources


def read_split(cfg: TaskConfig, patterns: list, key: str, notes: list[str]) -> Split:
    files = split_sources(patterns)
    if not files:
        raise InputError(f"evaluate.task.{key}: {patterns} match no file")
    split = Split(pairs=[] if cfg.text_pair_field else None)
    dropped = 0
    for path in files:
        if cfg.type == "token" and file_format_or_none(path) not in RECORD_FORMATS + ("dataset",):
            rows = _read_conll(path, cfg)
        else:
            rows = _read_rows(path, cfg)
        for location, text, pair, label in rows:
            empty = not text if cfg.type == "token" else not text.strip() or (pair is not None and not pair.strip())
            if empty:
                dropped += 1
                continue
            split.texts.append(text)
            if split.pairs is not None:
                split.pairs.append(pair)
            split.labels.append(label)
            split.locations.append(location)
    if dropped:
        notes.append(f"{key}: dropped {dropped:,} rows with empty text (of {dropped + len(split):,})")
    if not split.texts:
        raise InputError(f"evaluate.task.{key}: no labelled examples in {patterns}")
    return split


def file_format_or_none(path) -> str | None:
    try:
        return file_format(path)
    except InputError:
        return None


def _read_rows(path, cfg: TaskConfig):
    columns = [c for c in (cfg.text_field, cfg.text_pair_field, cfg.label_field) if c]
    for location, record in read_records(path, delimiter=cfg.csv_delimiter, columns=columns, delimiter_key="evaluate.task.csv_delimiter"):
        text_key = "evaluate.task.text_field"
        if cfg.type == "token":
            words = _string_list(record, cfg.text_field, location, text_key)
            tags = _string_list(record, cfg.label_field, location, "evaluate.task.label_field")
            words, tags = _checked_sentence(words, tags, location, cfg)
            yield location, words, None, tags
            continue
        text = field_text(record, cfg.text_field, location, key=text_key) or ""
        pair = None
        if cfg.text_pair_field:
            pair = field_text(record, cfg.text_pair_field, location, key="evaluate.task.text_pair_field") or ""
        yield location, text, pair, _label(record, cfg, location)


def _label(record: dict, cfg: TaskConfig, location: str):
    key = "evaluate.task.label_field"
    if cfg.type == "multi_label":
        if cfg.label_field not in record:
            field_text(record, cfg.label_field, location, key=key)  # raises the usual "no field" message
        value = record[cfg.label_field]
        if value is None:
            return []
        if isinstance(value, str):
            return sorted({part.strip() for part in value.split(cfg.label_separator) if part.strip()})
        if isinstance(value, (list, tuple)) and all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
            return sorted({str(v) for v in value})
        raise InputError(f"{location}: {cfg.label_field!r} holds {type(value).__name__}; multi-label tasks need a list of labels or a string ({key})")
    label = field_text(record, cfg.label_field, location, key=key, numbers_ok=True)
    if label is None or not label.strip():
        raise InputError(f"{location}: empty label in {cfg.label_field!r}; every row of a single-label task needs one")
    return label.strip()


def _string_list(record: dict, name: str, location: str, key: str) -> list[str]:
    if name not in record:
        field_text(record, name, location, key=key)  # raises the usual "no field" message
    value = record[name]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise InputError(f"{location}: {name!r} must be a list of strings for a token task ({key})")
    return list(value)


def _checked_sentence(words: list[str], tags: list[str], location: str, cfg: TaskConfig) -> tuple[list[str], list[str]]:
    if len(words) != len(tags):
        raise InputError(f"{location}: {len(words)} words but {len(tags)} tags; every word needs exactly one tag")
    if cfg.tag_scheme == "BIO":
        for word, tag in zip(words, tags):
            if not is_bio_tag(tag):
                raise InputError(
                    f"{location}: tag {tag!r} (word {word!r}) is not a BIO tag (O, B-TYPE, I-TYPE); "
                    "fix the file, or set evaluate.task.tag_scheme: none for plain tags such as POS"
                )
    return words, tags


def _read_conll(path, cfg: TaskConfig):
    """Sentences of a CoNLL file: (location of the first word, words, None, tags)."""
    check_not_binary(path)
    stats = FileStats(str(path))
    words: list[str] = []
    tags: list[str] = []
    start, columns = 0, None
    for number, line in enumerate(text_lines(path, stats), start=1):
        parts = line.split()
        if not parts or parts[0] == "-DOCSTART-":
            if words:
                yield f"{path}:{start}", words, None, tags  # checked word by word below
            words, tags = [], []
            continue
        if len(parts) < 2:
            raise InputError(
                f"{path}:{number}: one column ({line.strip()!r}); a CoNLL line needs a word and its tag, "
                "separated by whitespace (a blank line ends a sentence)"
            )
        if columns is not None and len(parts) != columns:
            raise InputError(f"{path}:{number}: {len(parts)} columns, but earlier lines have {columns}; every word line needs the same columns")
        columns = len(parts)
        try:
            tag = parts[cfg.conll_tag_column]
        except IndexError:
            raise InputError(f"{path}:{number}: no column {cfg.conll_tag_column} (evaluate.task.conll_tag_column) in {line.strip()!r}") from None
        if not words:
            start = number
        _checked_sentence([parts[0]], [tag], f"{path}:{number}", cfg)
        words.append(parts[0])
        tags.append(tag)
    if words:
        yield f"{path}:{start}", words, None, tags


def label_set(cfg: TaskConfig, splits: dict[str, Split | None], notes: list[str]) -> list[str]:
    """The task's labels: `task.labels` if given (anything else in the data is an error), else those of train.

    A label of the validation or test split that never occurs in train is an error either way: no model
    can learn it, and scoring it would quietly lower every model's numbers.
    """
    def occurring(split: Split) -> Counter:
        if cfg.type == "single_label":
            return Counter(split.labels)
        return Counter(label for labels in split.labels for label in labels)

    seen = {key: occurring(split) for key, split in splits.items() if split is not None}
    if cfg.labels is not None:
        allowed = set(cfg.labels)
        for key, split in splits.items():
            if split is None:
                continue
            extra = sorted(set(seen[key]) - allowed)
            if extra:
                first = next(loc for loc, labels in zip(split.locations, split.labels) if set(_as_list(labels)) - allowed)
                raise InputError(
                    f"evaluate.task.{key}: {len(extra)} labels not in evaluate.task.labels: {extra[:10]} "
                    f"(first at {first}); add them to the list, or fix the data"
                )
        labels = list(cfg.labels)
        never = [label for label in labels if label not in seen["train_files"]]
        if never:
            notes.append(f"train_files: labels {never} of evaluate.task.labels never occur in train; no model can learn them")
    else:
        labels = sorted(seen["train_files"], key=_tag_order if cfg.type == "token" else str)
    for key in ("validation_files", "test_files"):
        if key in seen:
            unseen = sorted(set(seen[key]) - set(seen["train_files"]))
            if unseen:
                raise InputError(
                    f"evaluate.task.{key}: labels {unseen[:10]} never occur in the train files {cfg.train_files}; "
                    "a model cannot learn them. Add train examples, or remove those rows from the evaluation data"
                )
    in_train = [label for label in labels if label in seen["train_files"]]
    if len(in_train) < 2:
        raise InputError(f"evaluate.task.train_files: labels {in_train} only; a classifier needs at least two")
    return labels


def _as_list(labels) -> list:
    return labels if isinstance(labels, list) else [labels]


def _tag_order(tag: str) -> tuple:
    return (tag != "O", tag[2:], tag[:2]) if is_bio_tag(tag) else (True, tag, "")


def text_key(text, pair, person: bytes = b"dapt-test") -> bytes:
    """A hash of an example's text (and pair; a token task's words joined) that orders examples for a
    hash-determined choice: the test hold-out, label budgets. `person` keeps the choices independent."""
    joined = " ".join(text) if isinstance(text, list) else text
    payload = joined + ("\0" + pair if pair is not None else "")
    return hashlib.blake2b(payload.encode("utf-8"), digest_size=8, person=person).digest()


def hold_out_test(cfg: TaskConfig, train: Split, notes: list[str]) -> tuple[Split, Split]:
    """(train, test): `test_fraction` of train held out as the test split, stratified by label, by a hash of the text.

    Within each label (single-label tasks; one group otherwise), the distinct texts with the smallest
    hashes go to test, round(test_fraction x their number), at least one and never all: so the split
    depends on the texts alone, not on file order, and equal texts (duplicates) land on the same side.
    A label with one distinct text stays in train (and is noted).
    """
    fraction = cfg.test_fraction
    assert fraction is not None
    keys = [text_key(t, p) for t, p in zip(train.texts, train.pairs or [None] * len(train))]
    strata: dict[Any, list[bytes]] = defaultdict(list)
    stratum_of: dict[bytes, Any] = {}
    for key, label in zip(keys, train.labels):
        if key not in stratum_of:
            stratum_of[key] = label if cfg.type == "single_label" else None
            strata[stratum_of[key]].append(key)
    test_keys: set[bytes] = set()
    alone = []
    for stratum, members in strata.items():
        members.sort()
        if len(members) < 2:
            alone.append(stratum)
            continue
        test_keys.update(members[: min(max(round(fraction * len(members)), 1), len(members) - 1)])
    held = [i for i, key in enumerate(keys) if key in test_keys]
    kept = [i for i, key in enumerate(keys) if key not in test_keys]
    if not held:
        raise InputError(f"evaluate.task.train_files: {len(train)} examples, too few to hold out a test split; give test_files")
    how = "stratified by label, " if cfg.type == "single_label" else ""
    notes.append(f"test_files: none given; {len(held):,} of {len(train):,} train examples held out as the test split "
                 f"(test_fraction {fraction:g}, {how}by a hash of the text)")  # fmt: skip
    if alone:
        notes.append(f"train_files: labels {sorted(map(str, alone))[:10]} have a single distinct text, kept in train: they have no test examples")
    return train.subset(kept), train.subset(held)


def hold_out(cfg: TaskConfig, train: Split, fraction: float, notes: list[str]) -> tuple[Split, Split, str]:
    """A validation split from train: stratified for single-label tasks, falling back (with a note) when impossible.

    Fixed random_state: every model and seed sees the same split.
    """
    indices = np.arange(len(train))
    if len(train) < 2:
        raise InputError(f"evaluate.task.train_files: {len(train)} examples, too few to hold out a validation split; give validation_files")
    stratify = None
    how = "random"
    if cfg.type == "single_label":
        counts = Counter(train.labels)
        rare = sorted(label for label, n in counts.items() if n < 2)
        n_validation = int(np.ceil(fraction * len(train)))
        if rare:
            notes.append(
                f"train_files: labels {rare[:10]} have a single example, so the validation split cannot be stratified; "
                "it is a random split instead"
            )
        elif n_validation < len(counts) or len(train) - n_validation < len(counts):
            notes.append(
                f"train_files: {n_validation} validation examples cannot hold each of the {len(counts)} labels; "
                "the validation split is random instead of stratified (raise evaluate.validation_fraction)"
            )
        else:
            stratify, how = train.labels, "stratified"
    from sklearn.model_selection import train_test_split  # here: scikit-learn costs seconds to import (see scoring.scores)

    kept, held = train_test_split(indices, test_size=fraction, random_state=0, stratify=stratify)
    kept, held = np.sort(kept), np.sort(held)
    return train.subset(kept), train.subset(held), f"{how} {fraction:.0%} of train_files"


# --- the texts a task is scored and selected on ---------------------------------------------------------

EVALUATION_SPLITS = (("test_files", "test_fraction"), ("validation_files", "validation_fraction"))


@dataclass(frozen=True)
class HeldOutSet:
    """Texts the task scores (test) or chooses an epoch on (validation), read from one file or dataset.

    `key`: the split they are (`test_files`, `validation_files`); `path` and `sha256`: where they were read
    from; `held_out_by`: `test_fraction` or `validation_fraction` when the split was carved out of that train
    file (None: the file is the split); `rows`: (location, text), both texts of a sentence pair, a token
    task's words joined by spaces.
    """

    key: str
    path: str
    sha256: str
    held_out_by: str | None
    rows: tuple[tuple[str, str], ...]


def held_out_texts(cfg: TaskConfig, validation_fraction: float) -> tuple[HeldOutSet, ...]:
    """Every text that is scored or used to choose an epoch, wherever it comes from: the test and validation
    files, and the examples `test_fraction` and `validation_fraction` carve out of the train files, carved by
    `read_task` itself (the evaluate stage's own call, so exactly the examples it will hold out). Texts that
    stay in train are not here. A task with none is an InputError (nothing would be scored).

    Read once per process while the task's settings and files stay the same (the plan asks several times).
    """
    identity = tuple((key, tuple((path, sha) for _, path, sha in _identities(getattr(cfg, key))))
                     for key in ("train_files", "test_files", "validation_files"))  # fmt: skip
    return _held_out_texts(cfg.model_dump_json(), validation_fraction, identity)


@functools.lru_cache(maxsize=4)
def _held_out_texts(task_json: str, validation_fraction: float, identity: tuple) -> tuple[HeldOutSet, ...]:
    # `identity` (every file's path and sha256) is only the cache key: an edited file is read again.
    cfg = TaskConfig.model_validate_json(task_json)
    files = {key: _identities(getattr(cfg, key)) for key in ("train_files", "test_files", "validation_files")}
    sets = []
    for key, _ in EVALUATION_SPLITS:
        for item, path, sha in files[key]:
            sets.append(HeldOutSet(key, path, sha, None, _rows(cfg, read_split(cfg, [item], key, notes=[]))))
    carved = [(key, by) for key, by in EVALUATION_SPLITS if not getattr(cfg, key)]
    if carved:
        data = read_task(cfg, validation_fraction, log_notes=False)
        owners = _owners(cfg, files["train_files"])
        for key, by in carved:
            split = data.test if key == "test_files" else data.validation
            for path, sha in dict.fromkeys((path, sha) for _, path, sha in files["train_files"]):
                mine = [i for i, location in enumerate(split.locations) if owners(location) == path]
                if mine:
                    sets.append(HeldOutSet(key, path, sha, by, _rows(cfg, split.subset(mine))))
    if not any(s.rows for s in sets):
        raise InputError(
            f"evaluate.task ({cfg.name}): no test or validation texts, so nothing would be scored and nothing could be kept out "
            "of the corpus; give test_files (or test_fraction) and validation_files (or evaluate.validation_fraction)"
        )
    return tuple(sets)


def _identities(patterns: list) -> list[tuple[Any, str, str]]:
    """(what `read_split` reads, its path or pinned dataset source, its sha256) for each file or dataset of a split."""
    found: dict[str, tuple[Any, str, str]] = {}
    for item in patterns:
        if isinstance(item, DatasetSource):
            resolved = resolve_dataset(item)
            found.setdefault(resolved["path"], (item, resolved["path"], resolved["sha256"]))
        else:
            for path in expand_inputs([item]):
                found.setdefault(str(path), (str(path), str(path), source_digest(path)["sha256"]))
    return list(found.values())


def _owners(cfg: TaskConfig, train: list[tuple[Any, str, str]]):
    """location -> the train file it was read from (each file read alone; one file: no need)."""
    if len(train) == 1:
        return lambda location: train[0][1]
    owner = {}
    for item, path, _ in train:
        for location in read_split(cfg, [item], "train_files", notes=[]).locations:
            owner.setdefault(location, path)
    return owner.get


def _rows(cfg: TaskConfig, split: Split) -> tuple[tuple[str, str], ...]:
    """(location, text) of a split's texts, then of its second texts: what decontamination matches."""
    texts = [" ".join(words) for words in split.texts] if cfg.type == "token" else list(split.texts)
    return tuple(zip(split.locations, texts)) + tuple(zip(split.locations, split.pairs or []))


# --- the test examples a run was scored on ------------------------------------------------------------


def example_keys(split: Split) -> list[str]:
    """A hash of each example's text (and second text), in order: the key `hold_out_test` splits by."""
    return [text_key(t, p).hex() for t, p in zip(split.texts, split.pairs or [None] * len(split))]


def test_record(cfg: TaskConfig, data: TaskData) -> dict[str, Any]:
    """What a fine-tuning run keeps of the test split it was scored on, so that it can be found again whatever
    produced it: the config key it came from (`test_files`, or `train_files` when `test_fraction` held it out),
    how many examples, and a hash of each one's text, in order (the texts themselves stay in the task's files)."""
    keys = example_keys(data.test)
    return {
        "from": "test_files" if cfg.test_files else "train_files",
        "held_out_by": None if cfg.test_files else "test_fraction",
        "examples": len(keys),
        "sha256": hashlib.sha256(" ".join(keys).encode()).hexdigest(),
        "keys": keys,
    }


def recorded_test_split(cfg: TaskConfig, record: dict[str, Any] | None) -> Split:
    """The test examples a run was scored on (`test_record`), read again from the task's files: the test files,
    or the train files `test_fraction` held them out of, keeping exactly the recorded examples in their order.

    A run from before the record: the test files, or the split `hold_out_test` makes of the train files.
    An InputError names the files when they are gone or no longer hold those examples.
    """
    key = "test_files" if cfg.test_files else "train_files"
    patterns = getattr(cfg, key)
    gone = [p for p in patterns if not isinstance(p, DatasetSource) and not expand_inputs([p])]
    if gone:
        what = "its test examples were held out of" if key == "train_files" else "it was scored on"
        raise InputError(f"{what} task.{key} {[str(p) for p in gone]}, which {'is' if len(gone) == 1 else 'are'} gone")
    split = read_split(cfg, patterns, key, notes=[])
    if record is None:
        return split if key == "test_files" else hold_out_test(cfg, split, [])[1]
    keys = example_keys(split)
    wanted = set(record["keys"])
    picked = [i for i, k in enumerate(keys) if k in wanted]
    if [keys[i] for i in picked] != record["keys"]:
        found = len(wanted & {keys[i] for i in picked})
        raise InputError(
            f"task.{key} {[str(p) for p in patterns]} changed since the run was scored: {found:,} of its {len(wanted):,} distinct "
            f"test texts are there{' (in another order)' if found == len(wanted) else ''}; restore the file as it was"
        )
    return split.subset(picked)
