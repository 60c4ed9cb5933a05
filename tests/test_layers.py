"""The import graph of divalign runs one way (docs/architecture.md#layers): every import of a divalign module sits at
the top of its file, goes to the same or a lower layer, and no two modules import each other, even through others.
"""

import ast
from pathlib import Path

import divalign

PACKAGE = Path(divalign.__file__).parent

#: Top-level modules and packages of divalign, lowest layer first. A module may import its own layer and those
#: below it.
LAYERS = [
    ("groups", "divergences", "advantages", "objectives"),  # the maths: torch and each other only
    ("errors", "paths", "allocator", "tracking", "plots", "sandbox", "parallel"),
    ("verifiers",),
    ("data",),
    ("models",),
    ("generation", "checkpoint"),
    ("rewards",),
    ("tasks", "charlm", "convert"),
    ("config",),
    ("eval", "report", "feedback"),
    ("trainers",),
    ("commands",),
    ("cli", "__main__", "__init__"),
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
MATH = set(LAYERS[0])
#: What the maths may import besides itself.
MATH_MAY_IMPORT = {"torch", "math", "dataclasses", "typing", "collections", "__future__", "importlib", "pkgutil"}


def modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = ast.parse(path.read_text(), str(path))
    return out


def top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def resolve(target: str, known) -> str:
    """The module an import reads: ``divalign.x.f`` (a name in a module) → ``divalign.x``."""
    while target not in known and "." in target:
        target = target.rpartition(".")[0]
    return target


def imports(module: str, tree: ast.Module) -> list[tuple[str, ast.stmt]]:
    """(imported module or name, statement) for every import in ``tree`` (``from divalign import x`` counts as
    importing ``divalign.x``; relative imports are resolved)."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".")[: -node.level] if not module.endswith("__init__") else module.split(".")
                base = ".".join(package + ([base] if base else []))
            if base == "divalign":
                out += [(f"divalign.{alias.name}", node) for alias in node.names]
            else:
                out.append((base, node))
    return out


def test_divalign_imports_sit_at_the_top_of_each_file():
    local = []
    for name, tree in modules().items():
        top_level = set(map(id, tree.body))
        for target, node in imports(name, tree):
            if target.startswith("divalign") and id(node) not in top_level:
                local.append(f"{name}:{node.lineno} imports {target} inside a function")
    assert not local, "\n".join(local)


def test_no_import_runs_to_a_higher_layer():
    upward = []
    trees = modules()
    for name, tree in trees.items():
        assert top(name) in RANK, f"{name}: add its package to LAYERS"
        for target, node in imports(name, tree):
            target = resolve(target, trees)
            if target.startswith("divalign") and RANK[top(target)] > RANK[top(name)]:
                upward.append(f"{name}:{node.lineno} ({top(name)}) imports {target} ({top(target)})")
    assert not upward, "\n".join(upward)


def test_the_maths_imports_only_torch_and_itself():
    foreign = []
    for name, tree in modules().items():
        if top(name) not in MATH:
            continue
        for target, node in imports(name, tree):
            root = target.split(".")[0]
            if target.startswith("divalign."):
                if top(target) not in MATH:
                    foreign.append(f"{name}:{node.lineno} imports {target}")
            elif root not in MATH_MAY_IMPORT:
                foreign.append(f"{name}:{node.lineno} imports {target}")
    assert not foreign, "\n".join(foreign)


def test_the_llama_fast_path_is_reached_only_through_the_model_layer_and_the_sampler_factory():
    reaching = []
    for name, tree in modules().items():
        if name.startswith("divalign.models") or name == "divalign.generation":
            continue
        reaching += [f"{name} imports {target}" for target, _ in imports(name, tree)
                     if target.startswith("divalign.models.llama")]
    assert not reaching, "\n".join(reaching)


def test_the_module_graph_has_no_cycle():
    trees = modules()
    edges = {name: set() for name in trees}
    for name, tree in trees.items():
        for target, _ in imports(name, tree):
            target = resolve(target, trees)
            if target in trees and target != name and not name.startswith(target + "."):  # not a package's own face
                edges[name].add(target)
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for nxt in edges[node]:
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join(path + [nxt])
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for name in edges:
        if name not in state:
            visit(name, [name])
