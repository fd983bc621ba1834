"""The code version in every artifact id: the code a stage's output can depend on, in a normal form.

A stage's code version hashes the stage module and every `pretrain` module it imports, transitively,
with the packages they are in (`pretrain/__init__.py`, `pretrain/core/__init__.py`, ...: Python runs a
package before any module in it), except those in NOT_CODE_DEPENDENCIES, each in a normal form of its
syntax tree that leaves out what cannot change an output: comments and formatting (they never reach the
tree), docstrings, the `if __name__ == "__main__":` block, and the text of log calls and exception
messages.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path
from typing import Any, Iterator

_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # pretrain/


# Modules that cannot change what a stage writes, whoever imports them: they never count in a code
# version, and their own imports are not followed. Keep this list short, explicit, and true; a test
# fails if it names a module that does not exist.
NOT_CODE_DEPENDENCIES = {
    "pretrain.core.config": "the config schema: the resolved config section is in the id itself",
    "pretrain.configfile": "reading and checking a config file: which configs are accepted, not what is computed with one",
    "pretrain.core.errors": "exception classes",
    "pretrain.core.artifacts": "the store: where and how artifacts are kept, not what they contain",
    "pretrain.core.ids": "how an artifact is named: a change there renames every artifact by itself",
    "pretrain.core.codeversion": "this normal form: a change there renames every artifact by itself",
    "pretrain.core.logs": "log lines: what a stage says, not what it writes",
    "pretrain.core.progress": "progress bars and lines: what a stage shows while it runs",
    "pretrain.training.machine": "whether this machine can run a precision or compile setting: whether a run starts, not what it writes",
    "pretrain.training.flops": "device peaks and MFU arithmetic: a measurement of speed, like tokens/s",
    "pretrain.finetuning.runpool": "which process builds a fine-tuning run: each run is the same `finetune.build` call wherever it runs",
}


@functools.lru_cache(maxsize=None)
def code_version(module: str) -> str:
    """The version of the code a stage's output can depend on: part of every artifact id.

    The rule: hash the stage module and every `pretrain` module it imports, transitively (imports
    inside functions included), with the packages they are in, except the modules in
    NOT_CODE_DEPENDENCIES; hash each in a normal form of its syntax tree, without docstrings (comments
    and formatting never reach the tree), without its `if __name__ == "__main__":` block (the
    command-line glue) and without the text of its log calls and exception messages
    (`without_message_text`). So editing a comment, a docstring, a log
    line or the layout of a line changes no id; a change to what the code does changes the id of each
    stage that imports it, and through their input ids, of everything built from them.
    """
    if not _module_path(module).is_file():  # it would hash nothing, and a change to the stage would keep its ids
        raise ValueError(f"{module}: no such module in {_PACKAGE_DIR}")
    digest = hashlib.sha256()
    for name in sorted(code_dependencies(module)):
        digest.update(name.encode() + b"\0" + _analysed(_source(name))[0].encode() + b"\0")
    return digest.hexdigest()[:16]


def code_dependencies(module: str) -> set[str]:
    """The `pretrain` modules and packages whose code counts in `module`'s code version (itself included)."""
    return _local_imports(module) - set(NOT_CODE_DEPENDENCIES)


def _module_path(module: str) -> Path:
    parts = module.split(".")[1:]
    path = _PACKAGE_DIR.joinpath(*parts)
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _source(module: str) -> str:
    return _module_path(module).read_text(encoding="utf-8")


@functools.lru_cache(maxsize=None)
def _analysed(source: str) -> tuple[str, tuple[str, ...]]:
    """(sha256 of the normal form, `pretrain` modules imported outside the main guard) of a module's source.

    Cached by content: each module is parsed once per process however many stages import it.
    """
    tree = ast.parse(source)
    imported: list[str] = []
    for node in _walk_without_main_guard(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        imported += [name for name in names if name == "pretrain" or name.startswith("pretrain.")]
    return hashlib.sha256(_normal_form(without_message_text(tree)).encode()).hexdigest(), tuple(imported)


def _local_imports(module: str, seen: set[str] | None = None) -> set[str]:
    seen = set() if seen is None else seen
    if module in seen or not _module_path(module).is_file():
        return seen
    seen.add(module)
    if "." in module:  # importing pretrain.core.logs runs pretrain/__init__.py and pretrain/core/__init__.py first
        _local_imports(module.rpartition(".")[0], seen)
    if module in NOT_CODE_DEPENDENCIES:
        return seen  # not followed: what it imports counts only where a stage imports that itself
    for name in _analysed(_source(module))[1]:
        _local_imports(name, seen)
    return seen


def _is_main_guard(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)


def _walk_without_main_guard(tree: ast.AST) -> Iterator[ast.AST]:
    """ast.walk, skipping `if __name__ == "__main__":` blocks (the CLI glue is not the stage's code)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if _is_main_guard(node):
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def _normal_form(node: Any) -> str:
    """The code as a syntax tree, written out: no comments, formatting, docstrings or main guard.

    Written by hand rather than with `ast.dump`, whose output differs between Python versions; fields
    that are None or empty are left out, so a field a newer Python adds (e.g. `type_params`) does not
    change the hash of code that does not use it.
    """
    if isinstance(node, ast.AST):
        if _is_main_guard(node):
            return ""
        fields = []
        for name, value in ast.iter_fields(node):
            if name == "body" and isinstance(value, list):
                value = [stmt for stmt in value if not _is_string_statement(stmt) and not _is_main_guard(stmt)]
            if value is None or value == []:
                continue
            fields.append(f"{name}={_normal_form(value)}")
        return f"{type(node).__name__}({','.join(fields)})"
    if isinstance(node, list):
        return "[" + ",".join(_normal_form(item) for item in node) + "]"
    return repr(node)


def _is_string_statement(node: ast.AST) -> bool:
    """A bare string literal as a statement: a docstring, or one documenting an attribute; it does nothing."""
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


# The methods of a logger (`pretrain.core.logs.get_logger`, as stdlib's) whose arguments are a message.
LOG_METHODS = {"debug", "info", "warning", "warn", "error", "exception", "critical", "fatal", "log"}


def without_message_text(tree: ast.Module) -> ast.Module:
    """`tree` with the text of its messages blanked: the string constants, and the literal parts of the
    f-strings, given as arguments to a log call (`log.info(...)` on a module's `get_logger` logger) or
    to the exception of a `raise X(...)`. A message is read by a person, never by the code.

    What a message formats stays (`{perplexity(model):.1f}` runs code); so does every other string
    constant: a key name, a regex, a file name or a label written into an output is behaviour.
    """
    loggers = {
        target.id
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and _called_name(node.value).endswith(("get_logger", "getLogger"))
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            _blank_arguments(node.exc)
        elif (
            isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in LOG_METHODS
            and isinstance(node.func.value, ast.Name) and node.func.value.id in loggers
        ):  # fmt: skip
            _blank_arguments(node)
    return tree


def _called_name(call: ast.Call) -> str:
    return ast.unparse(call.func)


def _blank_arguments(call: ast.Call) -> None:
    call.args = [_blank_text(arg) for arg in call.args]
    for keyword in call.keywords:
        keyword.value = _blank_text(keyword.value)


def _blank_text(node: ast.expr) -> ast.expr:
    """A message argument without its text: a string constant becomes an empty one, an f-string keeps
    only the values it formats (without their format specs, which are text too)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return ast.Constant(value="")
    if isinstance(node, ast.JoinedStr):
        return ast.JoinedStr(values=[ast.FormattedValue(value=v.value, conversion=-1) for v in node.values if isinstance(v, ast.FormattedValue)])
    return node
