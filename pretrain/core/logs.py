"""Logging for every `pretrain` module: one rank-aware logger, one setup.

`get_logger(__name__)` is a stdlib logger that, in a job of several processes (`accelerate launch`),
logs on the main process only unless a call passes `main_process_only=False`; the same call signature
as `accelerate.logging.get_logger`, but it also works where no Accelerate state exists (ingest, vocab,
a shard worker), where accelerate's raises. `setup_logging()` is called once by whatever runs a stage
(`python -m pretrain.<stage>`, the `dapt` CLI, a shard worker process); library code never calls it.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%H:%M:%S"
# Libraries whose INFO lines say nothing a stage's log needs (accelerate logs every file of every
# checkpoint at INFO; the stage logs one line per checkpoint).
QUIET = ("httpx", "httpcore", "urllib3", "filelock", "fsspec", "matplotlib", "accelerate")


def setup_logging(level: int = logging.INFO, *, quiet_transformers: bool = True) -> None:
    """Log lines to stderr with time, level and module; quiet the chatty libraries.

    `quiet_transformers` also turns off transformers' per-file "Loading weights" bars, which imports
    transformers: a shard worker, which loads no model, passes False and starts faster.
    """
    logging.basicConfig(level=level, format=FORMAT, datefmt=DATE_FORMAT)
    for noisy in QUIET:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not quiet_transformers:
        return
    try:
        import transformers

        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        pass


def is_main_process() -> bool:
    """Whether this process is rank 0: from the Accelerate state when there is one, else from the
    launcher's RANK variable (set before any state exists), else True (a single process)."""
    state = sys.modules.get("accelerate.state")  # only asked when the job imported accelerate
    if state is not None and state.PartialState._shared_state:
        return state.PartialState().is_main_process
    return os.environ.get("RANK", "0") == "0"


class RankAwareLogger(logging.LoggerAdapter):
    """A logger whose calls accept `main_process_only` (default True), as accelerate's do.

    (LoggerAdapter's info, warning, ... all go through `log`.)
    """

    def log(self, level: int, msg: Any, *args: Any, main_process_only: bool = True, **kwargs: Any) -> None:
        if self.isEnabledFor(level) and (not main_process_only or is_main_process()):
            self.logger.log(level, msg, *args, **kwargs)


def get_logger(name: str) -> RankAwareLogger:
    """The logger every `pretrain` module uses: `log = get_logger(__name__)`."""
    return RankAwareLogger(logging.getLogger(name), {})
