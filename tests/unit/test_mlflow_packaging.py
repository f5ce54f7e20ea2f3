"""What travels with a registered model is exactly what its pyfunc imports: a module the pyfunc
reaches but the packaging leaves out would break `mlflow.pyfunc.load_model` outside the project."""

from __future__ import annotations

import grimp

from models.kinds.packaging import PYFUNC_FILE, SHIPPED
from tests.import_graph import ROOT, module_files


def test_the_shipped_code_is_the_pyfunc_import_closure():
    graph = grimp.build_graph("models", "feature_repo", cache_dir=None)
    pyfunc = "models.kinds.pyfunc_model"
    # The pyfunc imports the project inside load_context, so the closure starts at those imports.
    reached = {"models.scoring", "models.kinds"}
    reached |= set().union(*(graph.find_upstream_modules(m) for m in reached))
    assert set(graph.find_upstream_modules(pyfunc)) <= reached
    assert module_files(reached) == set(SHIPPED), (
        sorted(module_files(reached) - set(SHIPPED)),
        sorted(set(SHIPPED) - module_files(reached)),
    )
    assert PYFUNC_FILE.exists() and all((ROOT / f).exists() for f in SHIPPED)
