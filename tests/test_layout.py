"""The package's import graph: dependencies flow one way (no cycle, not even one hidden by a function-local import),
and objectives never reach into the training loop."""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "bert_jax")


def _module_name(path: str) -> str:
    rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
    return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def import_graph() -> dict[str, set[str]]:
    """module -> the bert_jax modules it imports anywhere in its body (top level or inside functions)."""
    modules = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                modules[_module_name(os.path.join(folder, name))] = os.path.join(folder, name)
    graph = {}
    for module, path in modules.items():
        with open(path) as f:
            tree = ast.parse(f.read())
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bert_jax"):
                deps.add(node.module)
                deps.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("bert_jax"))
        # a package's __init__ re-exports its children: importing a child runs it, so the edge child -> package
        # is real, but package -> child edges are the re-exports themselves, not a dependency of the child
        graph[module] = {d for d in deps if d in modules and d != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if dep.startswith(node + "."):  # a package importing its own children (its __init__)
                continue
            if state.get(dep) == "open":
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    # children importing their package's __init__ that re-exports them are the one allowed back edge
    graph = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_check_can_fail():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


@pytest.mark.parametrize("lower, upper", [("bert_jax.objectives", "bert_jax.train"),
                                          ("bert_jax.model", "bert_jax.objectives"),
                                          ("bert_jax.model", "bert_jax.train"),
                                          ("bert_jax.weights", "bert_jax.train"),
                                          ("bert_jax.data", "bert_jax.train")])
def test_lower_layers_do_not_import_upper_ones(lower, upper):
    graph = import_graph()
    bad = sorted(f"{m} -> {d}" for m, deps in graph.items() if m == lower or m.startswith(lower + ".")
                 for d in deps if d == upper or d.startswith(upper + "."))
    assert not bad, bad
