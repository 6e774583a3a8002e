"""Rules the test suite keeps, checked on its own source: every subprocess has a timeout (a
hung child fails the test instead of the CI job), and nothing waits a fixed time (every wait
is on an event, through ``helpers.wait_for``), so that no test depends on the machine's speed."""
import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
MODULES = sorted(p for p in TESTS.rglob("*.py") if p.name != "make_corpus.py")
SUBPROCESS = ("run", "call", "check_call", "check_output")


def calls(path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            yield node, node.func.attr, getattr(node.func.value, "id", None)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(TESTS)))
def test_every_subprocess_has_a_timeout_and_no_wait_is_a_fixed_time(path):
    broken = []
    for node, name, owner in calls(path):
        keywords = {k.arg for k in node.keywords}  # None: **kwargs passed on
        if owner == "subprocess" and name in SUBPROCESS and not keywords & {"timeout", None}:
            broken.append(f"line {node.lineno}: subprocess.{name} without a timeout")
        if name in ("wait", "communicate") and owner not in ("self", "event") \
                and not node.args and "timeout" not in keywords:
            broken.append(f"line {node.lineno}: .{name}() without a timeout")
        if owner == "time" and name == "sleep" and path.name != "helpers.py":
            broken.append(f"line {node.lineno}: a fixed sleep (wait for an event instead)")
    assert not broken, broken


def test_the_rules_see_the_calls():
    found = [name for p in MODULES for _, name, owner in calls(p) if owner == "subprocess"]
    assert found.count("run") >= 10  # the check above reads real calls


# The house: no import circles


def _import_graph(packages):
    """{module: modules of ``packages`` it imports}, imports inside functions included (a
    circle closed through one is a circle all the same)."""
    root = TESTS.parent
    modules = {}
    for package in packages:
        for path in (root / package).rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    graph = {}
    for name, path in modules.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = here[:len(here) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                for a in node.names:  # ``from . import x``: the module x, where it is one
                    full = f"{target}.{a.name}"
                    found.add(full if full in modules else target)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def _circles(graph):
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                on.discard(w)
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                out.append(sorted(part))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles_in_the_library_or_the_trainer():
    graph = _import_graph(["xray_infer", "trainer"])
    assert len(graph) > 40 and graph["xray_infer.decode"]  # the graph is the real one
    assert _circles(graph) == []


def test_the_circle_check_finds_a_circle():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# The house: lint and types


@pytest.mark.parametrize("tool, args", [("ruff", ["check", "xray_infer", "trainer", "benchmarks",
                                                  "tests"]),
                                        ("mypy", [])])  # their configuration: pyproject.toml
def test_the_linter_and_the_type_check_pass(tool, args):
    import shutil
    import subprocess
    import sys
    if shutil.which(tool) is None and not Path(sys.executable).with_name(tool).exists():
        pytest.skip(f"{tool} is not installed (pip install -e '.[dev]')")
    exe = str(Path(sys.executable).with_name(tool)) if Path(sys.executable).with_name(
        tool).exists() else tool
    p = subprocess.run([exe, *args], cwd=TESTS.parent, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]


def test_every_exception_of_the_library_is_an_xray_infer_error():
    """One base to catch (``XrayInferError``; warnings under ``XrayInferWarning``)."""
    import importlib
    import inspect
    import pkgutil

    import xray_infer
    from xray_infer.errors import XrayInferError, XrayInferWarning
    stray = []
    for info in pkgutil.walk_packages(xray_infer.__path__, "xray_infer."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != module.__name__ or not issubclass(cls, BaseException):
                continue
            base = XrayInferWarning if issubclass(cls, Warning) else XrayInferError
            if not issubclass(cls, base):
                stray.append(f"{module.__name__}.{name}")
    assert not stray, stray
