"""The pipeline config: one YAML file, one typed section per stage, validated before anything runs.

`load_config(path)` reads the YAML, validates every section and checks that every input path exists,
and raises one `ConfigError` listing every problem with its key path (`pretrain.max_steps: ...`).
Relative paths are relative to the current working directory, as in the Hugging Face example scripts.
Derived values (accumulation steps, step budget from a token budget) are computed by the stages and
never written back here: the config in a manifest is what the user asked for, with defaults filled in.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import math
import os
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from pretrain.errors import ConfigError, UserError
from pretrain.io import expand_inputs, expand_sources
from pretrain.logs import get_logger

log = get_logger(__name__)

# A model artifact id in the store (`b-...` imported base model, `m-...` pretrained, `d-...` distilled model).
ARTIFACT_ID = re.compile(r"[bmd]-[0-9a-f]{20}")


class Section(BaseModel):
    # strict: a value must already have its field's type (true is not 1, "5" is not 5); YAML and --set
    # values are parsed as YAML, which gives real numbers and booleans, so nothing needs coercing.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, use_attribute_docstrings=True)


class DatasetSource(Section):
    """A Hugging Face dataset as an input, read with `datasets.load_dataset(..., streaming=True)`
    (`pip install 'dapt[datasets]'`). Its artifact id hashes the dataset's content (the Hub commit it
    resolves to, or the bytes of a local folder's files), never where it was read from."""

    dataset: str
    """A Hub dataset id (`ORG/NAME`), or a local folder: one written by `save_to_disk`, or a folder of data
    files in the Hub's layout (e.g. `data/train-00000-of-00001.parquet`)."""
    split: str = "train"
    """The split to read (`train`, `test`, ...; slices such as `train[:10%]` are not streamed: give a split name)."""
    config: str | None = None
    """The dataset's configuration (subset) name, when it has several."""
    revision: str | None = None
    """Hub branch, tag or commit; the id hashes the commit it resolves to. Ignored for local folders."""

    @field_validator("dataset", "split")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        if "[" in value:
            raise ValueError(f"{value!r}: give a plain split name; slices cannot be streamed")
        return value


def _input_kind(value: Any) -> str:
    return "dataset" if isinstance(value, (dict, DatasetSource)) else "path"


# An input: a path, folder, glob or URL, or a `{dataset: ORG/NAME, split: ..., config: ..., revision: ...}` mapping.
Input = Annotated[
    Union[Annotated[str, Tag("path")], Annotated[DatasetSource, Tag("dataset")]],
    Discriminator(_input_kind),
]


class BaseModelConfig(Section):
    """The model to adapt. Its weights are copied into the artifact store, so lineage starts from pinned files."""

    source: str = "bert-base-uncased"
    """A local folder with config.json + safetensors weights + tokenizer files, `pkg:<module>/<subdir>` for a
    model shipped inside an installed Python package (the demo's `pkg:cognition/model`), or a Hugging Face Hub id."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) when `source` is a Hub id; ignored for local folders."""


class DedupConfig(Section):
    """Duplicate removal over the whole corpus; the first occurrence (in input order) is kept."""

    exact: bool = True
    """Drop documents whose cleaned text is identical to an earlier one."""
    near: bool = True
    """Drop near-duplicates: MinHash signatures of word shingles, candidates found by LSH banding."""
    threshold: float = Field(default=0.8, gt=0, lt=1)
    """Jaccard similarity of word shingles above which two documents count as near-duplicates."""
    shingle_words: int = Field(default=5, ge=1, le=32)
    """Words per shingle (lowercased word n-grams)."""
    num_perm: int = Field(default=128, ge=16, le=1024)
    """MinHash permutations: more separate the threshold more sharply, at more cost."""


class DecontaminateConfig(Section):
    """Remove corpus documents that overlap the texts the task is evaluated on (its test and validation files)."""

    enabled: bool | Literal["auto"] = "auto"
    """`auto`: on whenever the stage is given the task's texts, which the pipeline always does (`dapt run`,
    `python -m pretrain.ingest`, the flows); `true`: the same, and an error when there are none; `false`: off."""
    ngram_words: int = Field(default=8, ge=3, le=64)
    """Words per n-gram for containment: a document contains a task text when it holds at least `min_containment`
    of the text's distinct n-grams (a text shorter than this must occur whole)."""
    min_containment: float = Field(default=0.5, gt=0, le=1)
    """Share of a task text's n-grams a document must contain to count as containing it (below 1: light edits do not hide it)."""
    near: bool = True
    """Also remove near duplicates of a task text: Jaccard similarity of the word shingles deduplication uses
    (dedup.shingle_words), estimated by MinHash (dedup.num_perm), at least dedup.threshold."""
    max_removed_fraction: float = Field(default=0.5, gt=0, le=1)
    """Stop with an error naming the task files when decontamination removes more than this share of the
    documents that passed the filters: the inputs are then mostly the task's own text."""


class ParallelConfig(Section):
    """Where and how ingest and tokens run their shards; not part of any artifact id."""

    workers: int | None = Field(default=None, gt=0)
    """Processes working on shards at once on this machine (default: every core)."""
    shard_mb: float = Field(default=32.0, gt=0)
    """Ingest input per shard task: large files are split into byte or row-group ranges, small ones grouped."""
    dask_address: str | None = None
    """Run the shard tasks on a Dask cluster (`tcp://scheduler:8786`), or `local` for a temporary
    local cluster of `workers` processes; needs `pip install prefect-dask`. Default: local processes."""


def check_delimiter(value: str | None) -> str | None:
    """A CSV delimiter is one character other than a quote, newline or space."""
    if value is not None and (len(value) != 1 or value in "\"\r\n "):
        raise ValueError(f"give one character such as ',', ';', '|' or a tab (\"\\t\"), not {value!r}")
    return value


class IngestConfig(Section):
    """Read, clean, filter, deduplicate and split the domain corpus."""

    inputs: list[Input] = Field(min_length=1)
    """Files, folders (recursive), globs or fsspec URLs (`hf://datasets/ORG/NAME/...` too): .txt, .jsonl/.json,
    .csv, .tsv (each optionally .gz, .zst, .bz2, .xz), .parquet, .arrow, and folders written by Hugging Face
    `save_to_disk`; or a Hugging Face dataset, `{dataset: ORG/NAME, split: train, config: ..., revision: ...}`."""
    text_field: str = "text"
    """The field (JSONL) or column (CSV, Parquet, Arrow, dataset) holding the document text."""
    csv_delimiter: str | None = None
    """The field separator of .csv/.tsv inputs (one character, e.g. `;`); null: `,` for .csv, a tab for .tsv."""
    txt_mode: Literal["file", "line", "paragraph"] = "file"
    """How a .txt file splits into documents: the whole file, one per line, or one per blank-line-separated paragraph."""
    unicode_normalization: Literal["NFC", "NFKC", "none"] = "NFC"
    strip_patterns: list[str] = []
    """Regular expressions removed from every document before cleaning, e.g. a newswire trailer `(?i)\\s*reuter\\s*\\x03\\s*$`."""
    min_words: int = Field(default=5, ge=0)
    """Documents with fewer whitespace-separated words after cleaning are dropped (and counted)."""
    max_words: int | None = Field(default=None, gt=0)
    """Documents with more words are dropped (and counted); none: no upper bound."""
    min_alpha_fraction: float = Field(default=0.0, ge=0, le=1)
    """Drop documents whose share of letters among non-space characters is lower (tables, code, number dumps)."""
    scrub_pii: list[Literal["email", "phone", "ip"]] = []
    """Replace e-mail addresses, phone numbers and/or IP addresses by <EMAIL>, <PHONE>, <IP>; counts are reported."""
    dedup: DedupConfig = DedupConfig()
    decontaminate: DecontaminateConfig = DecontaminateConfig()
    validation_fraction: float = Field(default=0.02, gt=0, lt=0.5)
    """Share of documents for validation, chosen by a hash of the text (deterministic, order-independent)."""
    on_error: Literal["fail", "skip"] = "fail"
    """A bad record (invalid JSON, missing field, over-long line, truncated file): stop naming file and line, or skip
    it, count it and go on (the first examples go into the manifest)."""
    max_document_mb: float = Field(default=16.0, gt=0)
    """A document or line larger than this is a bad record: bounds memory whatever the input."""
    parallel: ParallelConfig = ParallelConfig()

    @field_validator("csv_delimiter")
    @classmethod
    def _one_character(cls, value: str | None) -> str | None:
        return check_delimiter(value)

    @field_validator("strip_patterns")
    @classmethod
    def _patterns_compile(cls, patterns: list[str]) -> list[str]:
        problems = []
        for i, pattern in enumerate(patterns):
            try:
                re.compile(pattern)
            except re.error as e:
                problems.append(f"[{i}] {pattern!r} is not a valid regular expression: {e}")
        if problems:
            raise ValueError("; ".join(problems))
        return patterns

    @model_validator(mode="after")
    def _word_bounds(self) -> IngestConfig:
        if self.max_words is not None and self.max_words < self.min_words:
            raise ValueError(f"max_words ({self.max_words}) is smaller than min_words ({self.min_words})")
        return self


class VocabConfig(Section):
    """Train a domain WordPiece vocabulary, decide what the model tokenizes with, measure the fit."""

    mode: Literal["keep", "extend", "replace"] = "keep"
    """`keep`: the base tokenizer as is. `extend`: add up to `max_new_tokens` domain pieces to it, new
    embeddings initialised from their base sub-tokens. `replace`: the domain vocabulary with freshly
    initialised embeddings (pretraining from scratch from the base model's architecture, no base weights)."""
    vocab_size: int = Field(default=16000, ge=100, le=1_000_000)
    """Size of the domain WordPiece vocabulary trained on the corpus."""
    min_frequency: int = Field(default=2, ge=1)
    lowercase: bool = True
    """Lowercase before training the domain vocabulary; must match an uncased base model in `extend` mode."""
    max_new_tokens: int = Field(default=5000, ge=1)
    """`extend`: the most domain pieces to add, chosen by frequency x (base pieces - 1)."""
    min_token_count: int = Field(default=10, ge=1)
    """`extend`: a domain piece is a candidate only if it occurs this often in the train split (rarer
    pieces would start from their pieces' mean and barely be trained)."""
    allow_digits_punctuation: bool = False
    """`extend`: also consider pieces made only of digits and punctuation (skipped by default)."""
    init: Literal["subword_mean", "resize_default"] = "subword_mean"
    """`extend`: a new token's embedding (and MLM output bias) is the mean of its base pieces', or
    transformers' `resize_token_embeddings` default (a sample around the mean of all embeddings)."""

    @model_validator(mode="after")
    def _new_tokens_fit(self) -> VocabConfig:
        if self.mode == "extend" and self.max_new_tokens > self.vocab_size:
            raise ValueError(
                f"max_new_tokens ({self.max_new_tokens}) is larger than the domain vocabulary it is chosen from "
                f"(vocab_size {self.vocab_size}); lower max_new_tokens or raise vocab_size"
            )
        return self


class LauncherConfig(Section):
    """How the pipeline starts the pretrain stage: in-process, or as an `accelerate launch` job."""

    num_processes: int = Field(default=1, gt=0)
    """Processes (one per GPU; on a machine without GPUs, CPU processes with the gloo backend)."""
    config_file: str | None = None
    """An accelerate config file (see infra/accelerate/): multi-GPU, multi-node, FSDP, DeepSpeed."""
    extra_args: list[str] = []
    """More `accelerate launch` arguments, e.g. ["--main_process_port", "29501"]."""


class PretrainConfig(Section):
    """Continued masked-language-model pretraining (Accelerate; CPU, 1 GPU or many)."""

    max_seq_length: int = Field(default=128, ge=8, le=8192)
    """Tokens per training block ([CLS] + text + [SEP]); documents are concatenated and cut into blocks."""
    max_steps: int | None = Field(default=None, gt=0)
    """Optimizer steps to run. Give exactly one of max_steps and max_tokens."""
    max_tokens: int | None = Field(default=None, gt=0)
    """Token budget; steps = ceil(max_tokens / (global_batch_size * max_seq_length))."""
    global_batch_size: int = Field(default=32, gt=0)
    """Sequences per optimizer step, summed over devices and accumulation steps."""
    micro_batch_size: int = Field(default=32, gt=0)
    """Sequences per forward pass on one device; accumulation steps are derived from the two and the world size."""
    learning_rate: float = Field(default=1e-4, gt=0, le=1)
    weight_decay: float = Field(default=0.01, ge=0)
    adam_beta1: float = Field(default=0.9, ge=0, lt=1)
    adam_beta2: float = Field(default=0.98, ge=0, lt=1)
    adam_epsilon: float = Field(default=1e-6, gt=0)
    warmup_steps: int = Field(default=0, ge=0)
    """Linear warmup from 0, then linear decay to 0 at the last step."""
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    mlm_probability: float = Field(default=0.15, gt=0, lt=1)
    mask_replace_prob: float = Field(default=0.8, ge=0, le=1)
    """Of the selected tokens, the share replaced by [MASK]."""
    random_replace_prob: float = Field(default=0.1, ge=0, le=1)
    """Of the selected tokens, the share replaced by a random token (the rest stay unchanged)."""
    whole_word_mask: bool = False
    """Select whole words (all their tokens together) instead of single tokens."""
    seed: int = 0
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    """Autocast precision of the forward pass (weights and optimizer stay float32): `bf16` on GPUs from
    Ampere on (and, slowly, on a CPU), `fp16` with a gradient scaler (needs CUDA), `no` for float32."""
    compile: bool = False
    """Train with `torch.compile` (the training step only; validation runs eagerly). Part of the artifact
    id: compiled kernels round differently, so the weights differ slightly from an eager run. Pays off on
    a GPU over a long run; on a CPU the compilation alone takes minutes."""
    log_every_steps: int = Field(default=50, gt=0)
    eval_every_steps: int | None = Field(default=None, gt=0)
    """Validation perplexity every N steps (always measured before and after training)."""
    max_eval_blocks: int = Field(default=512, gt=0)
    """Validation blocks used for perplexity (the same blocks and masks before, during and after)."""
    checkpoint_every_steps: int | None = Field(default=None, gt=0)
    """Save the full training state every N steps; a re-run of the same config resumes from the last one."""
    keep_checkpoints: int = Field(default=2, gt=0)
    num_workers: int | None = Field(default=None, ge=0)
    """DataLoader worker processes preparing (masking) batches. Default: 2 per GPU process, 0 on a CPU,
    where the training step needs every core and batches take about a millisecond to prepare."""
    log_with: list[str] = []
    """Accelerate trackers, e.g. ["tensorboard"] (offline; its files go into the model artifact's `logs/`)."""
    launcher: LauncherConfig = LauncherConfig()

    @field_validator("log_with", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self) -> PretrainConfig:
        problems = []
        if (self.max_steps is None) == (self.max_tokens is None):
            problems.append("give exactly one of max_steps and max_tokens")
        if self.global_batch_size % self.micro_batch_size:
            problems.append(
                f"global_batch_size ({self.global_batch_size}) must be a multiple of micro_batch_size ({self.micro_batch_size})"
            )
        if self.mask_replace_prob + self.random_replace_prob > 1:
            problems.append(
                f"mask_replace_prob + random_replace_prob must be at most 1 (got {self.mask_replace_prob} + {self.random_replace_prob})"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self


class DistillConfig(PretrainConfig):
    """Distil the adapted model (the teacher) into a smaller student, DistilBERT-style (Sanh et al. 2019).

    The masked-LM training keys are those of `pretrain` (same meaning and defaults; give max_steps or
    max_tokens); the student trains on the same tokens artifact with the teacher's soft targets.
    """

    student_layers: int = Field(gt=0)
    """Transformer layers of the student; fewer than the teacher's. The rest of the architecture (hidden size,
    heads, vocabulary and tokenizer) is the teacher's."""
    teacher_layers: list[int] | None = None
    """The teacher layers (0-based, increasing) whose weights initialise the student's layers, one per student layer.
    Null: spread evenly with the first and last included, which for 6 of 12 is DistilBERT's 0, 2, 4, 7, 9, 11."""
    temperature: float = Field(default=2.0, gt=0)
    """Softmax temperature of the soft targets; the distillation term is scaled by temperature² so its gradients
    keep their size as the temperature changes (Hinton et al. 2015)."""
    alpha_distill: float = Field(default=5.0, ge=0)
    """Weight of KL(teacher ‖ student) over the masked positions at `temperature` (DistilBERT: 5.0)."""
    alpha_mlm: float = Field(default=2.0, ge=0)
    """Weight of the ordinary masked-LM cross-entropy on the true tokens (DistilBERT: 2.0)."""
    speed_rounds: int = Field(default=20, gt=0)
    """CPU inference speed: batches of 32 validation blocks timed per model, teacher and student alternating."""

    @model_validator(mode="after")
    def _distill_consistent(self) -> DistillConfig:
        problems = []
        if self.alpha_distill == 0 and self.alpha_mlm == 0:
            problems.append("alpha_distill and alpha_mlm are both 0: the student would learn nothing")
        if self.teacher_layers is not None:
            if len(self.teacher_layers) != self.student_layers:
                problems.append(
                    f"teacher_layers {self.teacher_layers} names {len(self.teacher_layers)} layers but student_layers is {self.student_layers}"
                )
            if any(i < 0 for i in self.teacher_layers) or any(a >= b for a, b in zip(self.teacher_layers, self.teacher_layers[1:])):
                problems.append(f"teacher_layers {self.teacher_layers} must be increasing layer numbers from 0")
        if self.launcher != LauncherConfig():
            problems.append(
                "launcher: the pipeline runs distill in-process; for several processes or GPUs run "
                "`accelerate launch -m pretrain.distill --config C` yourself"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self


class TaskConfig(Section):
    """A labelled downstream task: classification rows (JSONL/CSV/TSV/Parquet) or tagged words (CoNLL, JSONL)."""

    name: str = "task"
    type: Literal["single_label", "multi_label", "token"] = "single_label"
    """`single_label`: one class per text (softmax); `multi_label`: any number of classes per text (sigmoid,
    thresholds tuned on validation); `token`: one tag per word (NER, POS; the first sub-token of a word is labelled)."""
    train_files: list[Input] = Field(min_length=1)
    """Files, folders or globs of the train split, or a Hugging Face dataset (`{dataset: ORG/NAME, split: train}`)."""
    validation_files: list[Input] = []
    """Files of a validation split for model selection; empty: `evaluate.validation_fraction` of train is held out."""
    test_files: list[Input] = []
    """Files of the test split. Empty: give `test_fraction` instead, and a test split is held out of train."""
    test_fraction: float | None = Field(default=None, gt=0, lt=0.5)
    """With no test files: the share of each label's train examples held out as the test split, chosen by a hash
    of the text (the same example always lands on the same side, whatever the file order; equal texts together)."""
    csv_delimiter: str | None = None
    """The field separator of .csv/.tsv task files (one character, e.g. `;`); null: `,` for .csv, a tab for .tsv."""
    text_field: str = "text"
    """Column with the text; for token tasks in JSONL/Parquet, the column with the list of words."""
    text_pair_field: str | None = None
    """Column with the second text of sentence-pair tasks (entailment, paraphrase); null: single-text input."""
    label_field: str = "label"
    """Column with the label; multi-label: a list, or a string split on `label_separator`; token tasks in
    JSONL/Parquet: the list of tags, one per word."""
    label_separator: str = Field(default=",", min_length=1)
    """Multi-label tasks: separator of the labels when the label column holds a string ("acq,earn")."""
    labels: list[str] | None = None
    """The label (or tag) set, in the order reports show it. A label in the data that is not listed is an
    error. Null: every label that occurs in train."""
    tag_scheme: Literal["BIO", "none"] = "BIO"
    """Token tasks: `BIO` tags (B-X, I-X, O) are scored per entity with seqeval; `none` (e.g. POS) per word."""
    conll_tag_column: int = -1
    """CoNLL files: the column holding the tag (the word is column 0; -1: the last column)."""

    @field_validator("csv_delimiter")
    @classmethod
    def _one_character(cls, value: str | None) -> str | None:
        return check_delimiter(value)

    @field_validator("labels")
    @classmethod
    def _distinct_labels(cls, labels: list[str] | None) -> list[str] | None:
        if labels is not None:
            repeated = sorted({label for label in labels if labels.count(label) > 1})
            if repeated:
                raise ValueError(f"labels must be distinct; repeated: {repeated}")
            if len(labels) < 2:
                raise ValueError("give at least two labels")
        return labels

    @model_validator(mode="after")
    def _consistent(self) -> TaskConfig:
        if not self.test_files and self.test_fraction is None:
            raise ValueError("give test_files, or test_fraction to hold a test split out of train_files")
        if self.test_files and self.test_fraction is not None:
            raise ValueError("give test_files or test_fraction, not both")
        if self.type == "token" and self.text_pair_field is not None:
            raise ValueError("token tasks take one sequence of words; remove text_pair_field")
        if self.type == "token" and self.tag_scheme == "BIO" and self.labels is not None:
            bad = [t for t in self.labels if not is_bio_tag(t)]
            if bad:
                raise ValueError(f"labels {bad} are not BIO tags (O, B-TYPE, I-TYPE); set tag_scheme: none for plain tags")
        return self


def is_bio_tag(tag: str) -> bool:
    return tag == "O" or (len(tag) > 2 and tag[:2] in ("B-", "I-"))


class ModelSource(Section):
    """Another model to fine-tune and compare, besides the base and the adapted model."""

    name: str
    """Its name in tables and plots."""
    source: str
    """An artifact id from the store (`m-...` pretrain or `b-...` base), a local folder, `pkg:<module>/<subdir>`,
    or a Hugging Face Hub id. Folders and Hub models are imported into the store like the base model."""
    revision: str | None = None
    """Hub revision when `source` is a Hub id."""


class TaptConfig(Section):
    """Task-adaptive pretraining (Gururangan et al. 2020): continued masked-LM on the task's own train text."""

    start_from: Literal["adapted", "base"] = "adapted"
    """`adapted`: DAPT + TAPT (compared as `adapted+tapt`); `base`: TAPT alone (compared as `base+tapt`)."""
    validation_fraction: float = Field(default=0.05, gt=0, lt=0.5)
    """Share of the task's train text held out for measuring perplexity (chosen by a hash of the text)."""
    pretrain: PretrainConfig
    """The masked-LM settings, as in the `pretrain` section (give max_steps or max_tokens)."""


class EvaluateConfig(Section):
    """Fine-tune every compared model the same way on the task, over several seeds; compare on its test split."""

    task: TaskConfig
    models: list[ModelSource] = []
    """Models compared besides `base` and `adapted` (which are always compared)."""
    tapt: TaptConfig | None = None
    """Task-adaptive pretraining before fine-tuning, compared as one more model; null: off."""
    seeds: list[int] = Field(default=[0, 1, 2], min_length=1)
    """One fine-tuning run per model and seed (head initialisation, data order, dropout)."""
    int8: bool = False
    """Also measure int8 (the classifier exported to ONNX, ONNX Runtime dynamic int8) on the first seed's fine-tuned
    classifier of `adapted` (and `student`): test-score change and CPU speed against PyTorch fp32, in the report."""
    validation_fraction: float = Field(default=0.1, gt=0, lt=0.5)
    """Share of the task's train split held out (stratified) for model selection, when no validation_files are given."""
    max_seq_length: int = Field(default=128, ge=8, le=8192)
    num_epochs: int = Field(default=10, gt=0)
    """The most epochs a run trains; the learning rate decays to 0 over them."""
    patience_epochs: int | None = Field(default=3, gt=0)
    """Early stopping: stop after this many epochs without a better validation score (null: train every epoch)."""
    selection_metric: Literal["macro_f1", "micro_f1", "accuracy"] | None = None
    """Validation metric that picks the epoch and is compared in the headline; null: macro-F1 for classification,
    micro-F1 (the usual entity F1) for token tasks."""
    batch_size: int = Field(default=16, gt=0)
    learning_rate: float = Field(default=2e-5, gt=0, le=1)
    """AdamW peak; 1e-5..5e-5 suits bert-base-sized models. Used when `learning_rates` is null."""
    learning_rates: list[float] | None = Field(default=None, min_length=1)
    """A grid of AdamW peaks, the same for every model: each model is fine-tuned with every rate and seed,
    and compared at the rate with its best mean validation score over seeds (test is never used to choose).
    Null: the single `learning_rate`."""
    weight_decay: float = Field(default=0.01, ge=0)
    warmup_ratio: float = Field(default=0.06, ge=0, lt=1)
    """Share of the steps of num_epochs spent warming up linearly; then linear decay to 0."""
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    """Autocast precision of the fine-tunes' forward pass and loss, as in `pretrain` (`fp16` with a gradient scaler, needs CUDA)."""
    bootstrap_samples: int = Field(default=1000, ge=100)
    """Resamples of the test set for the confidence interval of the difference to the base model."""
    parallel_runs: int | None = Field(default=None, gt=0)
    """Fine-tuning runs built at once, each in a worker process of its own (`pretrain/runpool.py`); null: one per
    visible CUDA device, 1 without CUDA (in this process). Above 1 on a CPU: that many processes sharing the cores.
    Where a run is built cannot change it: not part of any artifact id."""

    @field_validator("seeds")
    @classmethod
    def _unique(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be distinct (got {seeds})")
        return seeds

    @field_validator("learning_rates")
    @classmethod
    def _learning_rate_grid(cls, rates: list[float] | None) -> list[float] | None:
        if rates is None:
            return None
        bad = [r for r in rates if not 0 < r <= 1]
        if bad:
            raise ValueError(f"every learning rate must be > 0 and <= 1 (got {bad})")
        if len(set(rates)) != len(rates):
            raise ValueError(f"learning rates must be distinct (got {rates})")
        return rates

    @model_validator(mode="after")
    def _model_names(self) -> EvaluateConfig:
        names = [m.name for m in self.models]
        taken = {"base", "adapted", "adapted+tapt", "base+tapt", "student"}
        problems = [f"models: {name!r} is a reserved name" for name in names if name in taken]
        problems += [f"models: {name!r} appears twice" for name in sorted(set(names)) if names.count(name) > 1]
        if problems:
            raise ValueError("; ".join(problems))
        return self


class PipelineConfig(Section):
    """One pipeline run: where artifacts live and one section per stage."""

    name: str = "pipeline"
    store: str = "artifacts"
    """Artifact store: a local folder or an fsspec URL."""
    base_model: BaseModelConfig = BaseModelConfig()
    ingest: IngestConfig
    vocab: VocabConfig = VocabConfig()
    pretrain: PretrainConfig
    distill: DistillConfig | None = None
    """Distil the adapted model into a smaller student, compared downstream as `student`; null: off."""
    evaluate: EvaluateConfig


# --- loading and reporting -------------------------------------------------------------------------


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> PipelineConfig:
    """Read a YAML config, apply `key.path=value` overrides, validate everything; raise one ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        raise ConfigError(f"{path}: not valid YAML at {where}: {e.problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    for override in overrides or []:
        _apply_override(raw, override, path)
    return validate_config(raw, source=str(path))


def validate_config(raw: dict[str, Any], source: str = "config") -> PipelineConfig:
    """Validate a config mapping: types and ranges, then that every input path exists."""
    problems: list[str] = []
    config = None
    try:
        config = PipelineConfig.model_validate(raw)
    except ValidationError as e:
        problems += [_describe(error) for error in e.errors()]
    problems += check_paths(raw)
    if config is not None and config.distill is not None:
        problems += distill_problems(config)
    if config is not None:
        problems += machine_problems(config)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        noun = "problem" if len(problems) == 1 else "problems"
        raise ConfigError(f"{source}: {len(problems)} {noun}:\n{lines}")
    assert config is not None
    return config


def config_warnings(config: PipelineConfig) -> list[str]:
    """Settings that are valid but almost certainly not meant; shown before a run, never fatal."""
    sections: list[tuple[str, PretrainConfig]] = [("pretrain", config.pretrain)]
    if config.distill is not None:
        sections.append(("distill", config.distill))
    if config.evaluate.tapt is not None:
        sections.append(("evaluate.tapt.pretrain", config.evaluate.tapt.pretrain))
    warnings = []
    for name, cfg in sections:
        # The step count the training kit derives (pretrain.training.total_steps).
        steps = cfg.max_steps or math.ceil((cfg.max_tokens or 0) / (cfg.global_batch_size * cfg.max_seq_length))
        if cfg.warmup_steps >= steps:
            warnings.append(
                f"{name}.warmup_steps ({cfg.warmup_steps:,}) is not below the run's {steps:,} steps: the learning rate only "
                "warms up and never decays; lower warmup_steps (a few percent of the steps is usual)"
            )
        if cfg.eval_every_steps is not None and cfg.eval_every_steps >= steps:
            warnings.append(
                f"{name}.eval_every_steps ({cfg.eval_every_steps:,}) is not below the run's {steps:,} steps: validation perplexity "
                "is measured before and after training only, a curve of two points; lower eval_every_steps (about a quarter of the steps)"
            )
        if cfg.log_every_steps > steps:
            warnings.append(
                f"{name}.log_every_steps ({cfg.log_every_steps:,}) is more than the run's {steps:,} steps: the loss is logged "
                "once, at the end, and the loss curve has one point; lower log_every_steps"
            )
    return warnings


def check_paths(raw: dict[str, Any]) -> list[str]:
    """Every input path exists, on the raw mapping so they are reported alongside type errors."""
    problems = []
    ingest = raw.get("ingest") if isinstance(raw.get("ingest"), dict) else {}
    for i, item in _items(ingest.get("inputs")):
        if isinstance(item, dict):
            problems += [f"ingest.inputs[{i}]: {p}" for p in _dataset_problems(item)]
            continue
        try:
            if not expand_sources([item]):
                problems.append(f"ingest.inputs[{i}]: {item!r} matches no file{relative_to(item)}")
        except UserError as e:
            problems.append(f"ingest.inputs[{i}]: {e}")
    task = (raw.get("evaluate") or {}).get("task") if isinstance(raw.get("evaluate"), dict) else None
    if isinstance(task, dict):
        for key in ("train_files", "validation_files", "test_files"):
            for i, item in _items(task.get(key)):
                if isinstance(item, dict):
                    problems += [f"evaluate.task.{key}[{i}]: {p}" for p in _dataset_problems(item)]
                elif not expand_inputs([item]):
                    problems.append(f"evaluate.task.{key}[{i}]: {item!r} matches no file{relative_to(item)}")
    base = raw.get("base_model") if isinstance(raw.get("base_model"), dict) else {}
    if isinstance(base.get("source"), str):
        problem = _base_source_problem(base["source"])
        if problem:
            problems.append(f"base_model.source: {problem}")
    models = raw["evaluate"].get("models") if isinstance(raw.get("evaluate"), dict) else None
    for i, model in enumerate(models if isinstance(models, list) else []):
        source = model.get("source") if isinstance(model, dict) else None
        if isinstance(source, str) and not ARTIFACT_ID.fullmatch(source):
            problem = _base_source_problem(source)
            if problem:
                problems.append(f"evaluate.models[{i}].source: {problem}")
    return problems


def machine_problems(config: PipelineConfig) -> list[str]:
    """Settings this machine cannot run (fp16 without CUDA, bf16 on a GPU without it, compile without its
    compiler), each naming its key; the config is checked on the machine that runs it, like its paths."""
    sections = {"pretrain": config.pretrain, "distill": config.distill, "evaluate": config.evaluate}
    if config.evaluate.tapt is not None:
        sections["evaluate.tapt.pretrain"] = config.evaluate.tapt.pretrain
    problems = []
    for key, section in sections.items():
        if section is None:
            continue
        problems.append(precision_problem(f"{key}.mixed_precision", section.mixed_precision))
        if getattr(section, "compile", False):
            problems.append(compile_problem(f"{key}.compile"))
    return [p for p in problems if p]


def precision_problem(key: str, precision: str) -> str | None:
    """Why this machine cannot train in `precision` (the value of `key`), or None."""
    if precision == "no":
        return None
    import torch  # only when a precision needs checking: reading a config stays light

    if precision == "fp16" and not torch.cuda.is_available():
        return f"{key}: fp16 needs a CUDA GPU (it trains with a gradient scaler) and none is visible here; use bf16 (also runs on a CPU, slowly) or no"
    if precision == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        return f"{key}: this GPU ({torch.cuda.get_device_name()}) has no bf16 support (it needs Ampere or newer); use fp16 or no"
    return None


def compile_problem(key: str) -> str | None:
    """Why `torch.compile` cannot run here (the value of `key` is true), or None."""
    import shutil

    import torch

    if torch.cuda.is_available():
        if importlib.util.find_spec("triton") is None:
            return f"{key}: torch.compile on a GPU needs the triton package (`pip install triton`, it comes with CUDA builds of torch); or set it to false"
    elif not any(shutil.which(c) for c in ("g++", "c++", "clang++", "cl")):
        return f"{key}: torch.compile on a CPU needs a C++ compiler (g++ or clang++) on the PATH; install one or set it to false"
    return None


def relative_to(path: str) -> str:
    """` (relative to <cwd>)` for a relative local path, so a message says where it was looked for."""
    if "://" in path or os.path.isabs(os.path.expanduser(path)):
        return ""
    return f" (relative to {os.getcwd()})"


def _items(value: Any) -> list[tuple[int, Any]]:
    """(index, item) of the path (str) and dataset (mapping) entries of an input list."""
    return [(i, v) for i, v in enumerate(value) if isinstance(v, (str, dict))] if isinstance(value, list) else []


def _looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or os.sep != "/" and os.sep in source


def _dataset_problems(entry: dict) -> list[str]:
    """A `dataset:` input: the `datasets` package is installed, and a local folder exists (Hub ids are not looked up here)."""
    name = entry.get("dataset")
    if not isinstance(name, str):
        return []  # the schema reports it
    problems = []
    if importlib.util.find_spec("datasets") is None:
        problems.append(f"dataset {name!r}: reading a Hugging Face dataset needs the datasets package: pip install 'dapt[datasets]'")
    if not Path(name).expanduser().exists() and _looks_like_path(name):
        problems.append(f"dataset {name!r}: no such folder{relative_to(name)}")
    return problems


def teacher_layer_count(model_config: dict[str, Any]) -> int | None:
    """Transformer layers of a model from its config.json (`n_layers` in DistilBERT's)."""
    count = model_config.get("num_hidden_layers", model_config.get("n_layers"))
    return count if isinstance(count, int) else None


def distill_problems(config: PipelineConfig) -> list[str]:
    """The student must be smaller than the teacher; checked here when the base model's config is on disk.

    The teacher (the adapted model) has the base model's layers. A Hub base model is checked by the
    distill stage itself, before any data is read.
    """
    source = config.base_model.source
    folder = package_dir(source) if source.startswith("pkg:") else Path(source)
    if folder is None or not (folder / "config.json").is_file():
        return []
    try:
        layers = teacher_layer_count(json.loads((folder / "config.json").read_text()))
    except (OSError, ValueError):
        return []
    return student_problems(config.distill, layers) if layers is not None else []


def student_problems(cfg: DistillConfig, teacher_layers: int) -> list[str]:
    problems = []
    if cfg.student_layers >= teacher_layers:
        problems.append(
            f"distill.student_layers: {cfg.student_layers} is not fewer than the teacher's {teacher_layers} layers "
            f"(the adapted model has the base model's layers); choose 1..{teacher_layers - 1}"
        )
    if cfg.teacher_layers is not None and max(cfg.teacher_layers) >= teacher_layers:
        problems.append(f"distill.teacher_layers: {cfg.teacher_layers} names a layer the {teacher_layers}-layer teacher does not have (0..{teacher_layers - 1})")
    return problems


def package_dir(source: str) -> Path | None:
    """`pkg:module/sub/dir` -> the folder inside the installed package, without importing it."""
    module, _, sub = source[len("pkg:") :].partition("/")
    spec = importlib.util.find_spec(module) if module else None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / sub


def _base_source_problem(source: str) -> str | None:
    if source.startswith("pkg:"):
        folder = package_dir(source)
        if folder is None:
            module = source[4:].partition("/")[0]
            return f"{source!r}: Python package {module!r} is not installed (the Makefile installs the demo's)"
        if not (folder / "config.json").is_file():
            return f"{source!r}: {folder} has no config.json"
        return None
    path = Path(source)
    if path.exists():
        return None if (path / "config.json").is_file() else f"{source!r}: local folder has no config.json"
    if _looks_like_path(source):
        return f"{source!r}: no such folder{relative_to(source)}"
    return None  # a Hub id; resolved (with network) when the base model is imported


def _describe(error: dict[str, Any]) -> str:
    parts = _without_tags(error["loc"])
    loc = _key_path(parts)
    if error["type"] == "extra_forbidden":
        known = _known_keys(parts[:-1])
        hint = difflib.get_close_matches(str(parts[-1]), known, n=1)
        suggestion = f"; did you mean {hint[0]!r}?" if hint else (f"; known keys: {', '.join(known)}" if known else "")
        return f"{loc}: unknown key{suggestion}"
    if error["type"] == "missing":
        return f"{loc}: required key is missing"
    message = error["msg"].removeprefix("Value error, ")
    value = error.get("input")
    shown = "" if isinstance(value, (dict, list)) or value is None else f" (got {value!r})"
    return f"{loc or 'top level'}: {message}{shown}"


def _without_tags(loc: tuple) -> tuple:
    """The error location without the tag pydantic adds after a list index for an `Input` (`path` or `dataset`)."""
    return tuple(part for i, part in enumerate(loc) if not (i and isinstance(loc[i - 1], int) and part in ("path", "dataset")))


def _key_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _known_keys(loc: tuple) -> list[str]:
    model: type[BaseModel] = PipelineConfig
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        found = _section_types(getattr(field, "annotation", None))
        if len(found) != 1:
            return []
        model = found[0]
    return list(model.model_fields)


def _section_types(annotation: Any) -> list[type[BaseModel]]:
    """The config sections inside a field's type (`X`, `X | None`, `list[X]`, an `Input`)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found = []
    for arg in typing.get_args(annotation):
        found += [t for t in _section_types(arg) if t not in found]
    return found


# Keys of which a section takes exactly one: `--set` of one drops the other the file gives (with a warning), so an
# override works on any config, whichever of the two it was written with (`dapt init` writes max_tokens).
EXCLUSIVE = {"max_steps": "max_tokens", "max_tokens": "max_steps", "test_files": "test_fraction", "test_fraction": "test_files"}


def _apply_override(raw: dict, override: str, path: Path) -> None:
    key, sep, value = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {override!r}: expected KEY.PATH=VALUE, e.g. pretrain.max_steps=20")
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {part!r} in {path} is not a section")
    try:
        node[parts[-1]] = yaml.load(value, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(
            f"override {override!r}: the value {value!r} is not valid YAML ({problem}); "
            f"quote a string that starts with [, {{, \" or ', e.g. --set '{key.strip()}=\"{value}\"'"
        ) from None
    other = EXCLUSIVE.get(parts[-1])
    if other and node.get(other) not in (None, []) and node[parts[-1]] not in (None, []):
        dropped = node.pop(other)
        name = ".".join([*parts[:-1], other])
        log.warning("--set %s replaces %s (%s in %s): the two are exclusive, the config takes one of them", key.strip(), name, dropped, path)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice in one mapping (plain YAML silently keeps the last).

    It also reads `1e-4` as a number, as YAML 1.2 and JSON do (YAML 1.1 wants `1.0e-4`, and reads
    `1e-4` as a string), so a learning rate written the usual way is a float, not a type error.
    """


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice in this section", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)[eE][-+]?[0-9]+$"), list("-+.0123456789")
)
