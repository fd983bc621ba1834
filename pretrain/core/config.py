"""The pipeline config's schema: one typed section per stage, each key with its type, range and meaning.

Reading a YAML file into it, `--set` overrides and the checks that need the file system or the machine
(input paths exist, the precision runs here) are `pretrain/configfile.py`: `load_config(path)` raises
one `ConfigError` listing every problem with its key path (`pretrain.max_steps: ...`). Derived values
(accumulation steps, the step count of a token budget) are computed by the stages and never written
back here: the config in a manifest is what the user asked for, with defaults filled in.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator


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
    """Lowercase before training the domain vocabulary; must match an uncased WordPiece base model in `extend` mode."""
    max_new_tokens: int = Field(default=5000, ge=1)
    """`extend`: the most domain pieces (WordPiece base) or whole words (BPE, Unigram base) to add, chosen
    by frequency x (base pieces - 1)."""
    min_token_count: int = Field(default=10, ge=1)
    """`extend`: a domain piece or word is a candidate only if it occurs this often in the train split (rarer
    ones would start from their pieces' mean and barely be trained)."""
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
    mixed_precision: Literal["no", "fp16", "bf16", "auto"] = "no"
    """Autocast precision of the forward pass (weights and optimizer stay float32): `bf16` on GPUs from
    Ampere on and on CPUs with bf16 units, `fp16` with a gradient scaler (needs CUDA), `no` for float32,
    `auto` for the fastest of these the machine computes natively (`pretrain/training/precision.py`)."""
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
    """Save the full training state every N steps; a re-run of the same config resumes from the last one. Not part
    of the artifact id (nor is keep_checkpoints): a re-run that changes only these resumes too."""
    keep_checkpoints: int = Field(default=2, gt=0)
    """How many checkpoints to keep (the newest)."""
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


class DomainPretrainConfig(PretrainConfig):
    """The `pretrain` section: continued masked-LM pretraining of the base model on the domain corpus."""

    assess: bool = False
    """Run `dapt assess` before pretraining, as a stage of its own (`a-...`): the go/no-go estimate from the base
    model's fit to the corpus, a short pilot run and the task's labels per class. It never stops the chain; its
    output is in the stage table and the report. Not part of the pretrain artifact's id."""


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

    @model_validator(mode="after")
    def _in_process(self) -> TaptConfig:
        if self.pretrain.launcher != LauncherConfig():
            raise ValueError("pretrain.launcher: the pipeline runs TAPT in its own process (it pretrains on the task's text, which is small); remove it")
        return self


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
    mixed_precision: Literal["no", "fp16", "bf16", "auto"] = "no"
    """Autocast precision of the fine-tunes' forward pass and loss, as in `pretrain` (`fp16` with a gradient scaler, needs CUDA; `auto`)."""
    bootstrap_samples: int = Field(default=1000, ge=100)
    """Resamples of the test set that estimate the test-sampling part of the verdict's interval (and the test-only interval)."""
    label_budgets: list[int | None] | None = None
    """Compare the models at several label budgets, a learning curve: labels per class, e.g. `[10, 50, 200, null]`
    (`null`: the whole train split). Each budget is a subset of the train split, stratified and chosen by a hash
    of the text, nested (the 10 are among the 50); validation and test are the same for every budget. Every
    budget costs a full comparison (models x learning rates x seeds). Null: the whole train split only."""
    parallel_runs: int | None = Field(default=None, gt=0)
    """Fine-tuning runs built at once, each in a worker process of its own (`pretrain/finetuning/runpool.py`); null: one per
    visible CUDA device, 1 without CUDA (in this process). Above 1 on a CPU: that many processes sharing the cores.
    Where a run is built cannot change it: not part of any artifact id."""

    @field_validator("seeds")
    @classmethod
    def _unique(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be distinct (got {seeds})")
        return seeds

    @field_validator("label_budgets")
    @classmethod
    def _label_budgets(cls, budgets: list[int | None] | None) -> list[int | None] | None:
        if budgets is None:
            return None
        if not budgets:
            raise ValueError("give at least one budget (labels per class, or null for all), or remove the key")
        bad = [b for b in budgets if b is not None and b < 1]
        if bad:
            raise ValueError(f"budgets are labels per class: positive whole numbers, or null for the whole train split (got {bad})")
        if len(set(budgets)) != len(budgets):
            raise ValueError(f"budgets must be distinct (got {budgets})")
        return budgets

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
    pretrain: DomainPretrainConfig
    distill: DistillConfig | None = None
    """Distil the adapted model into a smaller student, compared downstream as `student`; null: off."""
    evaluate: EvaluateConfig


# --- used by the stages and by config checks -----------------------------------------------------


def teacher_layer_count(model_config: dict[str, Any]) -> int | None:
    """Transformer layers of a model from its config.json (`n_layers` in DistilBERT's)."""
    count = model_config.get("num_hidden_layers", model_config.get("n_layers"))
    return count if isinstance(count, int) else None


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
