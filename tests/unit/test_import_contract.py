"""The import rules between the project's parts ([tool.importlinter] in pyproject.toml), checked by
import-linter on the real tree, and shown to catch a forbidden import on a copy of it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("models", "services", "feature_repo", "dags")
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
CONTRACTS = {contract["id"]: contract for contract in CONFIG["contracts"]}


def _lint_imports() -> str:
    beside = Path(sys.executable).with_name("lint-imports")
    found = str(beside) if beside.is_file() else shutil.which("lint-imports")
    assert found, "lint-imports is not installed: install requirements.lock"
    return found


def lint(tree: Path, *contract_ids: str) -> subprocess.CompletedProcess[str]:
    """`lint-imports` on the packages under `tree`, with `tree`'s pyproject.toml: they are imported
    from there (cwd and PYTHONPATH), not from the installed project. Wide columns keep each
    contract's name and each import on one line of the report."""
    command = [_lint_imports(), "--no-cache", str(tree / "pyproject.toml")]
    for contract_id in contract_ids:
        command += ["--contract", contract_id]
    env = {**os.environ, "PYTHONPATH": str(tree), "COLUMNS": "400", "NO_COLOR": "1"}
    return subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, timeout=120)


def report(done: subprocess.CompletedProcess[str]) -> str:
    return f"lint-imports exited {done.returncode}:\n{done.stdout}\n{done.stderr}"


@pytest.mark.parametrize("contract_id", sorted(CONTRACTS))
def test_the_tree_keeps_the_contract(contract_id):
    done = lint(ROOT, contract_id)
    assert done.returncode == 0, report(done)
    assert f"{CONTRACTS[contract_id]['name']} KEPT" in done.stdout, report(done)


def test_every_part_of_the_library_has_a_place_in_the_layers():
    """A new module or package directly under models/ must be placed in a layer, or the layers
    contract would say nothing about it."""
    layered = {
        name.strip().strip("()")
        for layer in CONTRACTS["layers"]["layers"]
        for name in layer.replace("|", ":").split(":")
    }
    parts = {
        f"models.{path.stem if path.is_file() else path.name}"
        for path in (ROOT / "models").iterdir()
        if (path.suffix == ".py" and path.name != "__init__.py") or (path / "__init__.py").is_file()
    }
    assert parts - layered == set(), "add these to a layer of the 'layers' contract in pyproject.toml"


def test_the_dag_files_are_in_the_graph_the_contracts_check():
    """dags/ has no __init__.py: the graph reads it as a namespace package, with each DAG file's
    imports of the library, so the contracts cover the DAGs too."""
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    dag_modules = {m for m in graph.modules if m.startswith("dags.")}
    assert dag_modules == {f"dags.{path.stem}" for path in (ROOT / "dags").glob("*.py")}
    for module in dag_modules:
        assert any(i.startswith("models.") for i in graph.find_modules_directly_imported_by(module)), module


def _copy_tree(destination: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, destination / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", destination / "pyproject.toml")
    return destination


def _append(path: Path, line: str) -> int:
    """Add `line` at the end of `path` (inside a function, so nothing runs it); its line number."""
    text = path.read_text().rstrip("\n") + "\n\n\ndef _added():\n    " + line + "\n"
    path.write_text(text)
    return len(text.splitlines())


def _broken(done: subprocess.CompletedProcess[str]) -> str:
    return done.stdout.partition("Broken contracts")[2]


def test_a_forbidden_import_breaks_the_contract_that_forbids_it(tmp_path):
    tree = _copy_tree(tmp_path)
    airflow_line = _append(tree / "models/data/privacy.py", "import airflow")
    training_line = _append(tree / "services/heap.py", "from models.training import device")
    wiring_line = _append(tree / "models/features/store.py", "from models import pipeline")
    feast_line = _append(tree / "feature_repo/contract.py", "import feast")

    done = lint(tree)

    assert done.returncode == 1, report(done)
    broken = _broken(done)
    expected = {
        "library-without-frameworks": f"models.data.privacy -> airflow (l.{airflow_line})",
        "services-serving-only": f"services.heap -> models.training.device (l.{training_line})",
        "layers": f"models.features.store -> models.pipeline (l.{wiring_line})",
        "feature-contract-constants": f"feature_repo.contract -> feast (l.{feast_line})",
    }
    for contract_id, chain in expected.items():
        name = CONTRACTS[contract_id]["name"]
        assert f"{name} BROKEN" in done.stdout, report(done)
        section = broken.partition(name)[2]
        assert chain in section, f"{contract_id}: expected {chain!r}\n{report(done)}"


def test_a_service_reaching_training_code_through_the_library_breaks_the_services_contract(tmp_path):
    """Indirect imports count: a service module that only imports the registry is caught when the
    registry imports the training stage."""
    tree = _copy_tree(tmp_path)
    line = _append(tree / "models/registry.py", "from models.training import device")

    done = lint(tree, "services-serving-only", "layers")

    assert done.returncode == 1, report(done)
    broken = _broken(done)
    assert f"{CONTRACTS['services-serving-only']['name']} BROKEN" in done.stdout, report(done)
    assert f"models.registry -> models.training.device (l.{line})" in broken, report(done)
    # The registry sits below the offline stages, so the layers say the same.
    assert f"{CONTRACTS['layers']['name']} BROKEN" in done.stdout, report(done)
