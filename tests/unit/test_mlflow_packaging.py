"""What travels with a registered model is exactly what its pyfunc imports: a module the pyfunc
reaches but the packaging leaves out would break `mlflow.pyfunc.load_model` outside the project."""

from __future__ import annotations

from pathlib import Path

import grimp

from models.kinds.packaging import PYFUNC_FILE, SHIPPED

ROOT = Path(__file__).resolve().parents[2]


def _files(modules: set[str]) -> set[str]:
    files = set()
    for module in modules:
        parts = module.split(".")
        files.update("/".join(parts[:depth]) + "/__init__.py" for depth in range(1, len(parts)))
        files.add("/".join(parts) + ("/__init__.py" if ROOT.joinpath(*parts).is_dir() else ".py"))
    return files


def test_the_shipped_code_is_the_pyfunc_import_closure():
    graph = grimp.build_graph("models", "feature_repo", cache_dir=None)
    pyfunc = "models.kinds.pyfunc_model"
    # The pyfunc imports the project inside load_context, so the closure starts at those imports.
    reached = {"models.scoring", "models.kinds"}
    reached |= set().union(*(graph.find_upstream_modules(m) for m in reached))
    assert set(graph.find_upstream_modules(pyfunc)) <= reached
    assert _files(reached) == set(SHIPPED), (
        sorted(_files(reached) - set(SHIPPED)),
        sorted(set(SHIPPED) - _files(reached)),
    )
    assert PYFUNC_FILE.exists() and all((ROOT / f).exists() for f in SHIPPED)
