"""The layout's rules, read off the source with `ast` (nothing is imported):

- no module uses another module's `_private` names: not `from pretrain.x import _name`, not
  `x._name` for a project module `x`, and not `obj._name` where `_name` is private to another module
  of the project and not defined in this one (how `store._path` from outside artifacts.py is caught);
- no import circle among the modules of `pretrain/` and `flows/`, none at all. Imports inside functions
  count (a circle through a lazy import is still a circle); `if TYPE_CHECKING:` blocks do not (they
  never run). An `if __name__ == "__main__":` block counts as what Python runs it as: the module
  `__main__`, which imports the module's imports and then its block's (`X:__main__` in the graph), and
  which nothing imports;
- the stage table (`pretrain.chain`) is imported by no module of `pretrain/` but the stage command line,
  and a stage's `__main__` block imports only that command line (`pretrain.stage_cli`), naming stages
  the table has;
- the library's groups import in one direction (GROUPS: `pretrain.core` nothing else of the project,
  `pretrain.data` and `pretrain.models` the core, ... `pretrain.handoff` every other group), and no
  module of a group imports the top of `pretrain/` (the stages and their command lines) or `flows/`;
  here every import counts, in a function, a `__main__` or an `if TYPE_CHECKING:` block alike. The top
  of `pretrain/` holds only the entry points (TOP), and each group's `__init__.py` only a docstring;
- libraries that take seconds to import and that few code paths use (scikit-learn pulls in SciPy and
  pandas) are imported inside the functions that use them, never at a module's top: every `dapt` command,
  stage process and fine-tuning worker would pay for them at its start;
- one logging path: loggers come from `pretrain.core.logs` (rank-aware, works without an Accelerate state),
  never from `accelerate.logging` or `logging.getLogger(__name__)`, and only `pretrain.core.logs` configures
  logging.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pretrain", "flows")
LOGS = "pretrain.core.logs"
# Private names a module still imports from another, each waiting for a change on its way (and removed
# with it: an entry that no longer occurs fails the test). The training kit leaves pretrain.py for a
# module of its own with public names (issue 12, the other half).
PENDING: set[tuple[str, str]] = set()
# Imported where used, not at a module's top (`import flows.pipeline` took 13 s with scikit-learn at the top of
# two modules, 8.6 s without, on an idle 2-core machine without precompiled bytecode).
LAZY = ("sklearn", "scipy", "seqeval", "matplotlib", "onnx", "onnxruntime", "optimum", "datasets", "pandas")


def _modules() -> dict[str, ast.Module]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return found


MODULES = _modules()


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__") and name != "_"


def _is_main_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)


def _skipped_block(node: ast.AST, main: bool, checking: bool = False) -> bool:
    if not isinstance(node, ast.If):
        return False
    return (not main and _is_main_block(node)) or (not checking and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"))


def _main_blocks(tree: ast.Module) -> list[ast.If]:
    return [node for node in tree.body if _is_main_block(node)]


def _walk(tree: ast.AST, main: bool = False, checking: bool = False):
    """ast.walk without TYPE_CHECKING blocks unless `checking`, and without `__main__` blocks unless `main`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if _skipped_block(node, main, checking):
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def _imports(module: str, tree: ast.Module, main: bool = False, checking: bool = False) -> list[tuple[ast.AST, str, str | None]]:
    """(node, project module imported, name imported from it or None) for every import of the project."""
    found = []
    for node in _walk(tree, main, checking):
        if isinstance(node, ast.Import):
            found += [(node, alias.name, None) for alias in node.names if alias.name in MODULES]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y
                parent = module.split(".")[: len(module.split(".")) - node.level + (module in PACKAGES)]
                base = ".".join([*parent, *([node.module] if node.module else [])])
            if base not in MODULES:
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.append((node, full, None) if full in MODULES else (node, base, alias.name))
    return found


def _module_aliases(module: str, tree: ast.Module) -> dict[str, str]:
    """Local names bound to project modules: `from pretrain import ingest`, `import pretrain.data.io as io`."""
    aliases = {}
    for node in _walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES:
                    aliases[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module in MODULES:
            for alias in node.names:
                if f"{node.module}.{alias.name}" in MODULES:
                    aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return aliases


def _defined_private(tree: ast.Module) -> set[str]:
    """Private names a module defines: functions, classes, methods, attributes, module variables."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {n for n in names if _is_private(n)}


def private_uses() -> set[tuple[str, str, int]]:
    """(module, what it uses, line) for every private name of another project module it uses."""
    defined = {name: _defined_private(tree) for name, tree in MODULES.items()}
    uses = set()
    for module, tree in MODULES.items():
        for node, imported, name in _imports(module, tree):
            if name is not None and _is_private(name) and imported != module:
                uses.add((module, f"{imported}.{name}", node.lineno))
        aliases = _module_aliases(module, tree)
        for node in _walk(tree):
            if not (isinstance(node, ast.Attribute) and _is_private(node.attr)):
                continue
            owner = ast.unparse(node.value)
            if owner in aliases and aliases[owner] != module:
                uses.add((module, f"{aliases[owner]}.{node.attr}", node.lineno))
            elif owner not in ("self", "cls") and node.attr not in defined[module]:
                owners = sorted(other for other, names in defined.items() if node.attr in names and other != module)
                if owners:
                    uses.add((module, f"{owners[0]}.{node.attr} (as {owner}.{node.attr})", node.lineno))
    return uses


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports; `X:__main__` -> what `python -m X` imports (X's imports and its main block's)."""
    graph = {}
    for module, tree in MODULES.items():
        graph[module] = {imported for _, imported, _ in _imports(module, tree) if imported != module}
        blocks = _main_blocks(tree)
        if blocks:
            run = {imported for block in blocks for _, imported, _ in _imports(module, ast.Module(body=[*block.body, *block.orelse], type_ignores=[]))}
            graph[f"{module}:__main__"] = graph[module] | run
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_checks_see_every_module_and_catch_what_they_should():
    assert {"pretrain.ingest", "pretrain.core.logs", "flows.pipeline", "flows.cli"} <= set(MODULES)
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    graph = import_graph()
    assert "pretrain.data.io" in graph["pretrain.data.tasks"]
    # A main block's import is an edge of the module `python -m` runs, and a lazy one (inside a function) counts.
    assert "pretrain.stage_cli" in graph["pretrain.pretrain:__main__"] and "pretrain.stage_cli" not in graph["pretrain.pretrain"]
    assert "pretrain.chain" in graph["pretrain.stage_cli"]
    # Were a stage to import the command line outside its main block, the circle would be found.
    assert cycles({**graph, "pretrain.pretrain": graph["pretrain.pretrain"] | {"pretrain.stage_cli"}})


def test_no_module_uses_another_modules_private_names():
    uses = private_uses()
    pending = {(module, used) for module, used, _ in uses if (module, used) in PENDING}
    problems = sorted(f"{module}:{line}: {used}" for module, used, line in uses if (module, used) not in PENDING)
    assert not problems, "private names used across modules (make them public, or move the shared part):\n" + "\n".join(problems)
    assert pending == PENDING, f"no longer used, remove from PENDING: {sorted(PENDING - pending)}"


def test_no_import_circles():
    assert cycles(import_graph()) == []


TABLE = "pretrain.chain"
# The one module of `pretrain/` that imports the stage table (inside `main`); `flows/` reads it too.
TABLE_READERS = {"pretrain.stage_cli"}


def test_no_library_module_imports_the_stage_table_and_a_stage_main_only_runs_its_stages():
    import importlib

    from pretrain import chain

    graph = import_graph()
    readers = {m for m, imported in graph.items() if TABLE in imported and m.startswith("pretrain.") and ":" not in m}
    assert readers == TABLE_READERS
    commands = {stage.command for stage in chain.TABLE}
    for module in sorted(commands):
        blocks = _main_blocks(MODULES[module])
        assert blocks, f"{module} runs stages but has no __main__ block (`python -m {module}`)"
        imported = {m for block in blocks for _, m, _ in _imports(module, ast.Module(body=block.body, type_ignores=[]))}
        assert imported == {"pretrain.stage_cli"}, f"{module}: its __main__ block imports {sorted(imported)}, not only pretrain.stage_cli"
        # `main(STAGE)` or `main(*STAGES)`: exactly the stages of the table this module runs.
        call = next(node for block in blocks for node in ast.walk(block) if isinstance(node, ast.Call) and ast.unparse(node.func) == "main")
        named: list[str] = []
        for arg in call.args:
            value = getattr(importlib.import_module(module), ast.unparse(arg.value if isinstance(arg, ast.Starred) else arg))
            named += list(value) if isinstance(arg, ast.Starred) else [value]
        assert named == [stage.name for stage in chain.TABLE if stage.command == module], module


# The groups of the library and the groups each may import besides itself (README, "Development"). The
# top of `pretrain/` (the stages and the rest of TOP) and `flows/` may import anything; a group never
# imports the top: the stages import the library, the library never imports a stage.
GROUPS = {
    "core": set(),
    "data": {"core"},
    "models": {"core"},
    "training": {"core", "data", "models"},
    "finetuning": {"core", "data", "models", "training"},
    "handoff": {"core", "data", "models", "training", "finetuning"},
}
# The top of `pretrain/`: the pipeline's entry points, each run as `python -m pretrain.<name>` or read by
# the ones that are. A module that is not one of these belongs in a group.
TOP = {"pretrain", "pretrain.base", "pretrain.ingest", "pretrain.vocab", "pretrain.tokens", "pretrain.assess", "pretrain.pretrain",
       "pretrain.distill", "pretrain.tapt", "pretrain.evaluate", "pretrain.report", "pretrain.chain", "pretrain.stage_cli",
       "pretrain.launch", "pretrain.configfile", "pretrain.scaffold"}  # fmt: skip


def group(module: str) -> str | None:
    """The group of a module of `pretrain/` (`pretrain.core.logs` -> `core`); None for the top of `pretrain/` and for `flows/`."""
    parts = module.split(".")
    return parts[1] if parts[0] == "pretrain" and len(parts) > 1 and parts[1] in GROUPS else None


def every_import() -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere: at the top, in functions, its `__main__` and `TYPE_CHECKING` blocks."""
    return {module: {imported for _, imported, _ in _imports(module, tree, main=True, checking=True)} - {module} for module, tree in MODULES.items()}


def wrong_direction(imports: dict[str, set[str]]) -> list[str]:
    """`importer -> imported (why)` for every import of a group's module that GROUPS does not allow."""
    wrong = []
    for module, imported in sorted(imports.items()):
        own = group(module)
        if own is None:
            continue
        for other in sorted(imported):
            theirs = group(other)
            if theirs is None:
                wrong.append(f"{module} -> {other} (the library imports the top of pretrain/ or flows/)")
            elif theirs != own and theirs not in GROUPS[own]:
                wrong.append(f"{module} -> {other} ({own} may import {sorted(GROUPS[own]) or 'no other group'})")
    return wrong


def test_the_direction_rule_catches_a_wrong_edge():
    assert group("pretrain.core.logs") == "core" and group("pretrain.handoff") == "handoff"
    assert group("pretrain.ingest") is None and group("pretrain") is None and group("flows.cli") is None
    imports = every_import()
    # A lazy import counts (export imports quantize inside a function), as does one at the top (runpool's tokenizer loader).
    assert "pretrain.handoff.quantize" in imports["pretrain.handoff.export"]
    assert "pretrain.models.fast_tokenizers" in imports["pretrain.finetuning.runpool"]
    planted = {
        "pretrain.core.logs": {"pretrain.data.io"},  # core imports nothing else of the project
        "pretrain.models.extend": {"pretrain.training.mlm", "pretrain.core.errors"},  # up a level; the core is fine
        "pretrain.data.io": {"pretrain.vocab"},  # a stage
        "pretrain.handoff.export": {"pretrain.finetuning.finetune", "pretrain.handoff.cards"},  # both allowed
        "pretrain.ingest": {"pretrain.handoff.export", "flows.cli"},  # the top imports anything
    }
    assert [line.split(" (")[0] for line in wrong_direction(planted)] == [
        "pretrain.core.logs -> pretrain.data.io", "pretrain.data.io -> pretrain.vocab", "pretrain.models.extend -> pretrain.training.mlm"]


def test_the_library_imports_in_one_direction_and_never_a_stage():
    problems = wrong_direction(every_import())
    assert not problems, "imports against the layout (move the shared part down, or import it where it is used):\n" + "\n".join(problems)


def test_the_top_of_pretrain_holds_the_entry_points_and_every_other_module_a_group():
    top = {module for module in MODULES if module.startswith("pretrain") and group(module) is None}
    assert top == TOP, f"not an entry point, so it belongs in a group of pretrain/: {sorted(top - TOP)}; gone: {sorted(TOP - top)}"
    packages = {path.parent.name for path in (ROOT / "pretrain").rglob("*.py") if path.parent != ROOT / "pretrain"}
    assert packages == set(GROUPS), "a package of pretrain/ without its line in GROUPS (what it may import), or one in GROUPS without a package"


def test_each_group_has_a_docstring_and_nothing_else_in_its_init():
    # Python runs a package's __init__ before any of its modules, and the code version counts it (pretrain/core/codeversion.py).
    for name in GROUPS:
        body = MODULES[f"pretrain.{name}"].body
        assert len(body) == 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant), (
            f"pretrain/{name}/__init__.py: a one-paragraph docstring of what belongs there and what it may import, and nothing else (no re-exports)"
        )
        assert "may import" in body[0].value.value, f"pretrain/{name}/__init__.py: its docstring says what it may import"


def test_slow_to_import_libraries_are_imported_inside_the_functions_that_use_them():
    def top_level(tree: ast.Module):  # statements that run at import: the module's body and its if/try blocks, not functions or classes
        stack = list(tree.body)
        while stack:
            node = stack.pop()
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) or _skipped_block(node, main=False):
                continue
            yield node
            stack.extend(child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt))

    found = []
    for module, tree in MODULES.items():
        for node in top_level(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            found += [f"{module}: {name}" for name in names if name.split(".")[0] in LAZY]
    assert not found, f"import these inside the functions that use them (they cost seconds at every process start): {found}"
