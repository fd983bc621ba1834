"""Prefect orchestration of the `pretrain` stages. Thin: every stage's logic lives in `pretrain/`."""

import os

# What a first run needs with no Prefect server configured (Prefect then starts a temporary local
# server): a start-up timeout that a 2-core machine with a fresh PREFECT_HOME can meet (the default
# 20 s is not enough there), no calls home, and the library's log lines in the run log.
# Values the user set in the environment win; so does a PREFECT_API_URL pointing at a real server.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
# An API call that takes longer than Prefect's 60 s on a loaded machine is retried (5 times, with back-off)
# before the run fails; a little more patience per call costs nothing when the machine is idle.
os.environ.setdefault("PREFECT_API_REQUEST_TIMEOUT", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "pretrain")
# The library also logs outside flow runs (a stage run alone); that is not a mistake worth a warning.
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
