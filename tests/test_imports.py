"""The package's import structure: no module imports another that imports it back (also through a
package's ``__init__``, and counting imports made inside functions), and no module imports a private
name of another."""
import ast
import pathlib

import onnxplain

PACKAGE = pathlib.Path(onnxplain.__file__).parent
ROOT = PACKAGE.parent


def _module_files() -> dict[str, pathlib.Path]:
    """Every module of onnxplain by dotted name (``converters/`` and ``kernels/`` install under it)."""
    files = {}
    for folder, prefix in ((PACKAGE, "onnxplain"), (ROOT / "converters", "onnxplain.converters"),
                           (ROOT / "kernels", "onnxplain.kernels")):
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join([prefix] + parts)] = path
    return files


def _imports(name: str, path: pathlib.Path, modules: dict) -> list[tuple[str, str | None]]:
    """(module imported, name imported from it or None) for every import of onnxplain in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                if f"{source}.{alias.name}" in modules:
                    found.append((f"{source}.{alias.name}", None))
                elif source in modules:
                    found.append((source, alias.name))
        elif isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names if alias.name in modules]
    return found


def _graph() -> tuple[dict, list]:
    modules = _module_files()
    edges, private = {}, []
    for name, path in modules.items():
        deps = set()
        for target, imported in _imports(name, path, modules):
            deps.add(target)
            parent = target.rpartition(".")[0]      # importing pkg.sub runs pkg/__init__ first
            while parent and parent in modules and not name.startswith(parent + ".") and name != parent:
                deps.add(parent)
                parent = parent.rpartition(".")[0]
            if imported and imported.startswith("_") and not imported.startswith("__") and target != name:
                private.append(f"{name} imports {imported} from {target}")
        deps.discard(name)
        edges[name] = deps
    return edges, private


def _cycles(edges: dict) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def test_the_walk_sees_the_package():
    edges, _ = _graph()
    assert "onnxplain.api" in edges and "onnxplain.kernels.shapley" in edges
    assert "onnxplain.prepare" in edges["onnxplain.api"]
    assert {"onnxplain.methods.base", "onnxplain.methods"} <= edges["onnxplain.runner"], \
        "a module importing methods.base also runs the methods package's __init__"


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    edges, _ = _graph()
    assert _cycles(edges) == []


def test_no_module_imports_a_private_name_of_another():
    _, private = _graph()
    assert private == []
