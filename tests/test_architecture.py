"""The package's shape: imports run one way (no cycle between modules of ``shine_jax``, function-local imports
included) and no module touches another's private attributes. Static checks on the source, no import needed."""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "shine_jax"
# the attributes namedtuples expose with an underscore as public API
PUBLIC_UNDERSCORE = {"_replace", "_asdict", "_fields", "_make"}


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text(), filename=str(p)) for p in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """Every ``shine_jax`` module ``name`` imports, anywhere in the file (top level or inside a function)."""
    package = name if f"{name}.__init__" in known or name == "shine_jax" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            for a in node.names:
                sub = f"{target}.{a.name}"
                if sub in known:
                    out.add(sub)
                elif target in known:
                    out.add(target)
    out.discard(name)
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1 on the DFS stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def private_reach_ins(trees: dict[str, ast.Module]) -> list[str]:
    """``x._name`` where ``x`` is not ``self``/``cls``, and ``from shine_jax.m import _name``."""
    hits = []
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                owner = node.value
                if node.attr in PUBLIC_UNDERSCORE or (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                    continue
                hits.append(f"{name}:{node.lineno}: {ast.unparse(node)}")
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("shine_jax"):
                hits += [f"{name}:{node.lineno}: from {node.module} import {a.name}"
                         for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    return hits


def test_no_import_cycle_inside_the_package():
    trees = package_modules()
    known = set(trees) | {f"{n}.__init__" for n, t in trees.items() if (PACKAGE.parent / n.replace(".", "/")).is_dir()}
    graph = {name: imported_modules(name, tree, known) for name, tree in trees.items()}
    assert graph["shine_jax.cli"], "the import scan found nothing: is the parser still reading the package?"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_touches_another_modules_private_attributes():
    hits = private_reach_ins(package_modules())
    assert not hits, "private reach-ins:\n" + "\n".join(hits)


@pytest.mark.parametrize("source, expected", [
    ("import shine_jax.b\n", {"shine_jax.b"}),
    ("def f():\n    from shine_jax import b\n", {"shine_jax.b"}),  # function-local imports count
    ("from . import b\n", {"shine_jax.b"}),
])
def test_the_scan_sees_every_import_form(source, expected):
    known = {"shine_jax", "shine_jax.a", "shine_jax.b", "shine_jax.__init__"}
    assert imported_modules("shine_jax.a", ast.parse(source), known) == expected
    graph = {"shine_jax.a": expected, "shine_jax.b": {"shine_jax.a"}}
    assert find_cycle(graph) == ["shine_jax.a", "shine_jax.b", "shine_jax.a"]


def test_the_scan_flags_a_private_reach_in():
    tree = ast.parse("def f(model, self):\n    model._state\n    self._ok\n    p._replace(a=1)\n")
    assert private_reach_ins({"shine_jax.x": tree}) == ["shine_jax.x:2: model._state"]


OPTIONAL = {"torch", "peft", "wandb"}  # the [torch] and [wandb] extras; code importing them says how to get them


def _distribution_key(name: str) -> str:
    """A distribution name as packaging normalises it (``Jinja2`` -> ``jinja2``, ``ml_collections`` -> ``ml-collections``)."""
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def _installed_closure(names: set[str]) -> set[str]:
    """``names`` and every distribution they require (extras not taken), normalised, as installed here."""
    import importlib.metadata as md
    import re

    seen, todo = set(), [_distribution_key(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        todo += [_distribution_key(re.split(r"[ ;<>=!~\[(]", r, maxsplit=1)[0]) for r in requires if "extra ==" not in r]
    return seen


def test_every_third_party_import_is_installed_by_the_plain_setup():
    """A module shine_jax imports must come with requirements.txt (directly or as a dependency), unless it belongs
    to an optional extra: the test venv has more (torch brings Jinja2), so a missing pin would pass the suite and
    break a user's plain install."""
    import importlib.metadata as md
    import re
    import sys

    modules = set()
    for tree in package_modules().values():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    modules -= set(sys.stdlib_module_names) | {"shine_jax", "__future__"}
    pinned = {re.split(r"[ =<>~!\[]", line, maxsplit=1)[0] for line in (PACKAGE.parent / "requirements.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    closure = _installed_closure(pinned)
    distributions = md.packages_distributions()
    missing = {m: distributions.get(m) for m in modules
               if not any(_distribution_key(d) in closure | OPTIONAL for d in distributions.get(m, [m]))}
    assert not missing, f"imported by shine_jax but not installed by requirements.txt: {missing}"


# The model layer computes on arrays: it reads no file and knows no host. Folders, tokenizers and multi-host
# saving live above it (base_model.py, shine.py, checkpoints.py, convert/).
MODEL_LAYER_MAY_IMPORT = ("shine_jax.model", "shine_jax.sharding", "shine_jax.errors")


def test_the_model_layer_imports_no_io():
    trees = package_modules()
    known = set(trees)
    layer = {n: t for n, t in trees.items() if n == "shine_jax.model" or n.startswith("shine_jax.model.")}
    assert "shine_jax.model.decoder" in layer and "shine_jax.model.objective" in layer
    bad = {n: sorted(m for m in imported_modules(n, t, known) if not m.startswith(MODEL_LAYER_MAY_IMPORT))
           for n, t in layer.items()}
    assert not {n: m for n, m in bad.items() if m}, f"the model layer imports I/O modules: {bad}"
