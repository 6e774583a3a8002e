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
