"""The layout: imports flow one way (no cycle, nothing imports ttm_model), one job and one logger per module."""

import ast
import re
import sys

import pytest
from conftest import ROOT

PACKAGE = ROOT / "sales_forecast"
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


def _imports(path) -> set[str]:
    """Every module name a file imports (absolute names, as this project writes them)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module)
    return names


def _graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports."""
    graph = {}
    for module in MODULES:
        imported = _imports(PACKAGE / f"{module}.py")
        graph[module] = {name.split(".")[1] for name in imported if name.startswith("sales_forecast.")}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of the graph, or [] (depth-first search)."""
    state, path = {}, []

    def visit(module: str) -> list[str]:
        state[module] = "open"
        path.append(module)
        for other in sorted(graph.get(module, ())):
            if state.get(other) == "open":
                return path[path.index(other) :] + [other]
            if other not in state and (found := visit(other)):
                return found
        state[module] = "done"
        path.pop()
        return []

    for module in graph:
        if module not in state and (found := visit(module)):
            return found
    return []


def test_no_import_cycle_in_the_package():
    assert _cycle(_graph()) == []


def test_the_cycle_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]


@pytest.mark.parametrize("module", MODULES)
def test_the_package_never_imports_the_script_or_config(module):
    imported = _imports(PACKAGE / f"{module}.py")
    assert not {"ttm_model", "config"} & imported, f"{module} imports { ({'ttm_model', 'config'} & imported) }"


def test_config_imports_the_standard_library_only():
    outside = {name.split(".")[0] for name in _imports(ROOT / "config.py")} - set(sys.stdlib_module_names)
    assert outside == set()


@pytest.mark.parametrize("module", MODULES)
def test_each_module_says_its_job_in_one_line_and_has_its_own_logger(module):
    text = (PACKAGE / f"{module}.py").read_text(encoding="utf-8")
    docstring = ast.get_docstring(ast.parse(text))
    assert docstring and docstring.splitlines()[0].endswith("."), module
    loggers = re.findall(r"^logger = logging.getLogger\((.*)\)$", text, flags=re.MULTILINE)
    assert loggers == ([] if module == "settings" else ["__name__"]), module  # settings: plain data, logs nothing


@pytest.mark.parametrize("path", [ROOT / "ttm_model.py", *sorted(PACKAGE.glob("*.py"))], ids=lambda p: p.name)
def test_no_file_above_600_lines(path):
    assert len(path.read_text(encoding="utf-8").splitlines()) <= 600
