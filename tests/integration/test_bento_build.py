"""`bentoml build` packs the ranker with exactly what the services import and the locked requirements.

The Bento's files are checked against the import graph at test time: the modules reachable from
the services (function-level imports included), their packages' __init__.py and the Feast file a
served store reads. A service import added without its file in services/bentofile.yaml, or a file
listed there that no service reaches, fails the test with the file's name."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

from tests.import_graph import module_files
from tests.integration.conftest import VENV_BIN

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("services.ranker", "services.ingest")
LIBRARY = ("services", "models", "feature_repo")
# Feast at serving time reads the store's configuration; the feature definitions (on-demand
# functions included, by value) come from the registry, not from the repo's Python files.
FEAST_FILES = {"feature_repo/feature_store.yaml"}
# bentoml build always copies the build file into the Bento.
BUILD_FILE = "bentofile.yaml"
NOT_SERVED = ("models/pipeline.py", "models/cli.py", "models/ops/deployment.py")


def served_modules() -> set[str]:
    graph = grimp.build_graph(*LIBRARY, cache_dir=None)
    return set(SERVICES).union(*(graph.find_upstream_modules(service) for service in SERVICES))


def served_files() -> set[str]:
    return module_files(served_modules()) | FEAST_FILES


def test_the_served_set_is_what_the_services_reach_and_leaves_out_the_offline_code():
    files = served_files()
    assert {"services/ranker.py", "services/ingest.py", "models/__init__.py", "models/settings.py"} <= files
    assert "feature_repo/contract.py" in files and "feature_repo/feature_store.yaml" in files
    assert not [path for path in files if not (ROOT / path).is_file()]
    assert files.isdisjoint(NOT_SERVED), sorted(files & set(NOT_SERVED))


def test_bentoml_build_packs_exactly_the_modules_the_services_import(tmp_path):
    env = {**os.environ, "BENTOML_HOME": str(tmp_path)}
    build = subprocess.run(
        [str(VENV_BIN / "bentoml"), "build", "-f", "services/bentofile.yaml", "."],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    (bento,) = (p for p in (tmp_path / "bentos/ranker").iterdir() if p.is_dir())
    src = bento / "src"
    packed = {path.relative_to(src).as_posix() for path in src.rglob("*") if path.is_file()} - {BUILD_FILE}
    expected = served_files()

    missing, extra = sorted(expected - packed), sorted(packed - expected)
    assert not missing and not extra, (
        "services/bentofile.yaml `include` must list exactly the files the services import.\n"
        f"  imported by the services but not in the Bento (add them): {missing}\n"
        f"  in the Bento but imported by no service (remove them): {extra}"
    )
    for path in NOT_SERVED:
        assert not (src / path).exists(), path
    assert "feast==" in (bento / "env/python/requirements.txt").read_text()

    # Every module of the Bento imports from the Bento's own files, not from the checkout.
    modules = sorted(
        ".".join(Path(path).with_suffix("").parts).removesuffix(".__init__")
        for path in packed
        if path.endswith(".py")
    )
    probe = (
        "import importlib, sys\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in getattr(f, '__module__', '')]\n"
        f"for name in {modules!r}:\n"
        "    module = importlib.import_module(name)\n"
        "    assert module.__file__.startswith(sys.argv[1]), (name, module.__file__)\n"
    )
    imported = subprocess.run(
        [sys.executable, "-c", probe, str(src)],
        env={**env, "PYTHONPATH": str(src)},
        cwd=src,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert imported.returncode == 0, imported.stdout[-3000:] + imported.stderr[-3000:]
