"""Layering and start-up cost: what imports what."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# package -> packages it must never import (DESIGN.md: bot → agent → knowledge; bot → finetune → agent).
FORBIDDEN = {
    "kbot": {"bot", "agent", "knowledge", "finetune"},
    "knowledge": {"bot", "agent", "finetune", "slack_bolt", "botbuilder"},
    "agent": {"bot", "finetune", "slack_bolt", "botbuilder"},
    "finetune": {"bot", "slack_bolt", "botbuilder"},
}


def imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_packages_respect_the_dependency_direction() -> None:
    problems = []
    for package, forbidden in FORBIDDEN.items():
        for path in (ROOT / package).rglob("*.py"):
            bad = imported_top_levels(path) & forbidden
            if bad:
                problems.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert problems == []


def test_light_imports_do_not_pull_in_torch() -> None:
    code = (
        "import sys, bot.cli, knowledge.base, knowledge.loaders, kbot.db;"
        "heavy = {'torch', 'transformers', 'sentence_transformers'} & set(sys.modules);"
        "print(sorted(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_no_module_is_too_long() -> None:
    long = [
        f"{p.relative_to(ROOT)}: {n}"
        for pkg in (*FORBIDDEN, "bot")
        for p in (ROOT / pkg).rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 400
    ]
    assert long == []
