"""The package layout a newcomer reads: lifecycle subpackages, imports pointing one way, no
circles, a documented command line, and no work-session dating anywhere in the tree."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import typer.main

from hyperrec.cli import app

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "hyperrec"
ADAPTERS = ("hyperrec.bench", "hyperrec.demo", "hyperrec.cli")  # may import anything; nothing imports them


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Every hyperrec module `path` imports, at module level or inside a function."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        found.update(t for t in targets if t in known and t != name)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: _imports(path, name, set(paths)) for name, path in paths.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                out.append(sorted([v, *component]))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_core_package_has_few_top_level_modules():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 12, top
    rooms = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert {"data", "features", "models", "training", "evaluation", "registry", "online", "experiments",
            "monitor", "privacy", "bench", "demo"} <= rooms


def test_no_import_circles():
    assert _cycles(import_graph()) == []


def test_the_core_never_imports_benches_or_the_demo():
    graph = import_graph()
    offenders = {m: sorted(d for d in deps if d.startswith(("hyperrec.bench", "hyperrec.demo")))
                 for m, deps in graph.items() if not m.startswith(ADAPTERS)}
    assert {m: d for m, d in offenders.items() if d} == {}


def test_adapters_never_import_benches_or_the_demo():
    """components/, pipelines/, serving/, monitoring/ and feature_repo/ wrap the core only."""
    pattern = re.compile(r"^\s*(from|import)\s+hyperrec\.(bench|demo)\b", re.MULTILINE)
    hits = [str(p.relative_to(ROOT)) for folder in ("components", "pipelines", "serving", "monitoring", "feature_repo")
            for p in (ROOT / folder).rglob("*.py") if pattern.search(p.read_text())]
    assert hits == []


def _commands(command, path: str = "hyperrec"):
    """Every command of the tree (typer ships its own click: groups are told by their `commands`)."""
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, f"{path} {name}")


def test_every_cli_option_and_argument_has_help():
    undocumented, seen = [], 0
    for path, command in _commands(typer.main.get_command(app)):
        seen += len(command.params)
        if not (command.help or command.short_help):
            undocumented.append(path)
        for param in command.params:
            if param.name == "help":
                continue
            if not getattr(param, "help", None):
                undocumented.append(f"{path} {param.opts[0]}")
    assert seen > 50 and undocumented == []


def _project_files() -> list[Path]:
    """The files a clone holds (tracked or not yet added), never build output like *.egg-info."""
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout.splitlines()
        return [ROOT / line for line in listed if (ROOT / line).is_file()]
    except (OSError, subprocess.CalledProcessError):  # an export without .git: walk it, skipping build output
        skip = {".venv", "var", ".git", ".pytest_cache", "__pycache__", "crds"}
        return [p for p in ROOT.rglob("*") if p.is_file() and not skip.intersection(p.relative_to(ROOT).parts)
                and not any(part.endswith(".egg-info") for part in p.parts)]


def test_no_work_session_dating_in_the_tree():
    """The project speaks only of itself: figures are dated by calendar date or commit."""
    pattern = re.compile(r"session [0-9]+", re.IGNORECASE)
    hits = []
    for p in _project_files():
        if p.suffix in {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".json", ""}:
            text = p.read_text(errors="replace")
            hits += [f"{p.relative_to(ROOT)}: {m.group(0)}" for m in pattern.finditer(text)]
    assert hits == []


def test_the_readme_is_a_front_door():
    """At most 250 lines, and it names the newcomer's two commands."""
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    assert "make demo" in text and "make test" in text
