"""The files of a set of modules, as packaging them needs: each module's file and the __init__.py
of every package above it (the Bento and the MLflow model both ship code this way)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_files(modules: set[str]) -> set[str]:
    """Each module's file and the __init__.py of every package above it, relative to ROOT."""
    files = set()
    for module in modules:
        parts = module.split(".")
        files.update("/".join(parts[:depth]) + "/__init__.py" for depth in range(1, len(parts)))
        files.add("/".join(parts) + ("/__init__.py" if ROOT.joinpath(*parts).is_dir() else ".py"))
    return files
