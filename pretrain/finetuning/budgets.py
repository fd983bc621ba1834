"""Label budgets: nested, stratified, hash-determined subsets of a task's train split (`evaluate.label_budgets`).

A budget of b labels per class keeps, for every class, the b examples of that class whose text hashes
lowest (`tasks.text_key`, with a key of its own so the choice is independent of the test hold-out);
the subset is the union over classes, in file order. So:

- it depends on the texts alone, not on file order or any random state: the same train split gives
  the same subset on any machine;
- it is nested: the examples of 10 per class are among those of 50 per class (the first 10 by hash
  are among the first 50);
- it is stratified: every class gets b examples, or all it has when it has fewer (then the budget is
  *capped* for that class, and the report says so).

The validation and test splits are never touched: they are the same for every budget (a validation
split held out of train by `evaluate.validation_fraction` is held out before the budget is taken).

"Per class" by task type:
- `single_label`: the examples of each label;
- `multi_label`: the examples carrying each label (an example with several labels counts for each,
  so a class may end with more than b); examples with no label form one more class, "(no label)",
  so the subset keeps some negatives;
- `token`: the sentences mentioning each entity type (BIO tags: `B-PER`, `I-PER` -> `PER`), or each
  tag (`tag_scheme: none`, e.g. POS); sentences without any entity form one more class, "(no entity)".

A budget `None` is the whole train split. A budget that caps every class also keeps the whole split:
its fine-tunes are those of the whole split (`Budget.run_key` is None), found in the store.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from dataclasses import dataclass

from pretrain.data.tasks import TaskData, text_key
from pretrain.finetuning.scoring import entity_types

# The hash key of budget subsets: another key than the test hold-out's, so the two choices are independent.
PERSON = b"dapt-budget"
NO_LABEL = "(no label)"
NO_ENTITY = "(no entity)"


@dataclass(frozen=True)
class Budget:
    """One label budget applied to a task's train split."""

    labels_per_class: int | None  # None: all the train split
    indices: tuple[int, ...]  # rows of the train split kept, in file order
    class_counts: dict[str, int]  # examples per class in the subset
    capped: dict[str, int]  # classes with fewer examples than the budget (kept whole) -> how many they have
    run_key: dict | None  # what a fine-tune's id hashes for this subset; None: the whole train split

    @property
    def name(self) -> str:
        """`10`, or `all` for the whole train split."""
        return "all" if self.labels_per_class is None else str(self.labels_per_class)


def example_classes(data: TaskData, tag_scheme: str = "BIO") -> list[tuple[str, ...]]:
    """The classes each train example counts for (see the module docstring); `tag_scheme`: `evaluate.task.tag_scheme`."""
    rows = data.train.labels
    if data.kind == "single_label":
        return [(label,) for label in rows]
    if data.kind == "multi_label":
        return [tuple(sorted(set(labels))) or (NO_LABEL,) for labels in rows]
    if tag_scheme == "BIO":
        return [tuple(entity_types(sorted(set(tags)))) or (NO_ENTITY,) for tags in rows]
    return [tuple(sorted(set(tags))) for tags in rows]


def order(budgets: list[int | None]) -> list[int | None]:
    """Budgets from the fewest labels to all (None last)."""
    return sorted(budgets, key=lambda b: (b is None, b or 0))


def select(data: TaskData, labels_per_class: int | None, tag_scheme: str = "BIO") -> Budget:
    """The subset of `data.train` with `labels_per_class` examples of each class (None: every example)."""
    classes = example_classes(data, tag_scheme)
    totals = Counter(c for cs in classes for c in cs)
    if labels_per_class is None:
        return Budget(None, tuple(range(len(classes))), dict(totals), {}, None)
    train = data.train
    pairs = train.pairs or [None] * len(train)
    keys = [text_key(text, pair, PERSON) for text, pair in zip(train.texts, pairs)]
    ranked = sorted(range(len(classes)), key=lambda i: (keys[i], i))  # equal texts: file order
    taken: Counter = Counter()
    kept = set()
    for i in ranked:
        if any(taken[c] < labels_per_class for c in classes[i]):
            kept.add(i)
        for c in classes[i]:
            taken[c] += 1
    # An example is kept when it is among the first `labels_per_class` (by hash) of one of its classes:
    # `taken` counts every example seen, kept or not, so the choice of one class never depends on another's.
    indices = tuple(sorted(kept))
    counts = Counter(c for i in indices for c in classes[i])
    capped = {c: n for c, n in sorted(totals.items()) if n < labels_per_class}
    whole = len(indices) == len(classes)
    return Budget(labels_per_class, indices, dict(counts), capped, None if whole else _run_key(train, labels_per_class, indices, keys))


def _run_key(train, labels_per_class: int, indices: tuple[int, ...], keys: list[bytes]) -> dict:
    """The budget and the subset by content: how many examples and a digest of their texts and labels, in order."""
    digest = hashlib.sha256()
    for i in indices:
        digest.update(keys[i] + repr(train.labels[i]).encode("utf-8") + b"\0")
    return {"labels_per_class": labels_per_class, "examples": len(indices), "sha256": digest.hexdigest()}


def plan(data: TaskData, budgets: list[int | None] | None, tag_scheme: str = "BIO") -> list[Budget]:
    """Every configured budget, fewest labels first; no budgets configured: the whole train split alone."""
    return [select(data, b, tag_scheme) for b in order(budgets if budgets else [None])]


def subset(data: TaskData, budget: Budget) -> TaskData:
    """The task with its train split cut to the budget (validation, test, labels unchanged)."""
    if budget.run_key is None:
        return data
    return dataclasses.replace(data, train=data.train.subset(budget.indices))


def capped_note(budget: Budget) -> str | None:
    """`10 labels per class: capped for grain (7 train examples): it keeps all its examples`, or None."""
    if not budget.capped:
        return None
    which = ", ".join(f"{c} ({n:,} train example{'s' if n != 1 else ''})" for c, n in list(budget.capped.items())[:10])
    more = f" and {len(budget.capped) - 10} more" if len(budget.capped) > 10 else ""
    one = len(budget.capped) == 1
    return (f"label budget {budget.labels_per_class} per class: capped for {which}{more}: "
            f"{'it keeps all its examples' if one else 'they keep all their examples'}")  # fmt: skip
