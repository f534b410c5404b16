"""The import rules of docs/architecture.md hold (import-linter, contract in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_imports_point_down_the_layers():
    done = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "1 kept, 0 broken" in done.stdout


def test_the_cli_imports_no_heavy_module_for_help():
    """`scale --help` answers at once: LangGraph, the chat layer and the harness stay unimported."""
    code = ("import sys, runpy; sys.argv = ['scale', '--help']\n"
            "try:\n    runpy.run_module('scale_graph.cli', run_name='__main__')\nexcept SystemExit: pass\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('langgraph', 'langchain_core', "
            "'langchain_openai', 'openai', 'sqlalchemy', 'matplotlib', 'math_verify', 'aiosqlite'))\n"
            "print(heavy, file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "Usage" in done.stdout
    assert done.stderr.strip().splitlines()[-1] == "[]"
