"""Scans of the project's code: nothing unpickles (models load as XGBoost UBJ and Keras `.keras` in
safe mode, data as Parquet and JSON), and no secret is written in code or configuration."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SOURCE_DIRS = ("models", "services", "feature_repo", "dags", "scripts", "benchmarks")


def _sources() -> list[Path]:
    return [p for d in SOURCE_DIRS for p in sorted((ROOT / d).rglob("*.py"))]


UNSAFE_LOADS = re.compile(
    r"\b(?:pickle|cPickle|cloudpickle|dill|joblib)\.loads?\(|allow_pickle\s*=\s*True|\btorch\.load\(|"
    r"\byaml\.load\(|\bpd\.read_pickle\(|\bsafe_mode\s*=\s*False|"
    r"\bmlflow\.(?:pyfunc|sklearn|pytorch)\.load_model\(|^\s*(?:import|from)\s+(?:c?[pP]ickle|cloudpickle|dill|joblib)\b"
)


PYFUNC_LOAD = re.compile(r"\bmlflow\.pyfunc\.load_model\(")
# MLflow's own switch: with it, mlflow.pyfunc loads models from code and refuses pickled ones.
PICKLE_FREE_PYFUNC = '{"MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"}'


def _unsafe_lines(path: Path) -> list[str]:
    text = path.read_text()
    return [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for n, line in enumerate(text.splitlines(), 1)
        if UNSAFE_LOADS.search(line) and not (PYFUNC_LOAD.search(line) and PICKLE_FREE_PYFUNC in text)
    ]


def test_no_code_deserialises_with_pickle_or_unsafe_loaders():
    found = [line for path in _sources() for line in _unsafe_lines(path)]
    assert found == [], "models load as XGBoost UBJ / Keras .keras (safe mode), data as Parquet/JSON"


def test_a_pyfunc_load_passes_only_where_mlflow_is_told_to_refuse_pickles(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    bare = tmp_path / "bare.py"
    bare.write_text("model = mlflow.pyfunc.load_model(uri)\n")
    guarded = tmp_path / "guarded.py"
    guarded.write_text(f"ENV = {PICKLE_FREE_PYFUNC}\nmodel = mlflow.pyfunc.load_model(uri)\npickle.load(f)\n")
    assert _unsafe_lines(bare) == ["bare.py:1: model = mlflow.pyfunc.load_model(uri)"]
    assert _unsafe_lines(guarded) == ["guarded.py:3: pickle.load(f)"]  # the switch covers pyfunc only


def test_the_unpickling_scan_finds_what_it_looks_for():
    for line in (
        "model = pickle.load(handle)",
        "joblib.load(path)",
        "np.load(path, allow_pickle=True)",
        "torch.load(path)",
        "import cloudpickle",
        "mlflow.pyfunc.load_model(uri)",
        "keras.saving.load_model(path, safe_mode=False)",
    ):
        assert UNSAFE_LOADS.search(line), line
    assert not UNSAFE_LOADS.search("keras.saving.load_model(path, safe_mode=True)")


SECRET_PATTERNS = re.compile(
    r"""(?ix)
    (?:password|passwd|secret|token|api_key|apikey|private_key)\w*\s*[:=]\s*["'][^"'\s<>${}]{8,}["']
    | -----BEGIN\ [A-Z ]*PRIVATE\ KEY-----
    | \bAKIA[0-9A-Z]{16}\b
    | \bgh[pousr]_[A-Za-z0-9]{30,}\b
    | \bsk-[A-Za-z0-9]{20,}\b
    | ://[^/\s:@'"]+:(?!PASSWORD@|change-me@)[^/\s@'"]{3,}@   # the documented placeholders are fine
    """
)


def test_no_secret_is_written_in_the_code_or_its_configuration():
    files = [
        *_sources(),
        *(ROOT / "infra").rglob("*.y*ml"),
        *(ROOT / "infra").rglob("*.env"),
        ROOT / ".env.example",
        ROOT / "feature_repo/feature_store.yaml",
        ROOT / "Makefile",
    ]
    found = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in files
        if path.is_file()
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if SECRET_PATTERNS.search(line)
    ]
    assert found == [], "secrets belong in the environment (CTR_* variables, Airflow connections)"


def test_the_secret_scan_finds_what_it_looks_for():
    for line in (
        'password = "hunter2hunter2"',
        "redis://user:hunter2@redis:6379",
        "-----BEGIN RSA PRIVATE KEY-----",
        'API_TOKEN: "abcd1234efgh5678"',
    ):
        assert SECRET_PATTERNS.search(line), line
    assert not SECRET_PATTERNS.search('api_token=_env("CTR_API_TOKEN", "")')
    assert not SECRET_PATTERNS.search("postgresql+psycopg2://ctr:change-me@postgres:5432/airflow")
    assert SECRET_PATTERNS.search("postgresql+psycopg2://ctr:change-me-now@postgres:5432/airflow")
