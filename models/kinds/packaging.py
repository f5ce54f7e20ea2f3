"""Every model kind as one MLflow `python_function` model that any MLflow consumer can use.

A registered version holds the kind's native file (XGBoost UBJ, Keras `.keras`) as an artifact,
`meta.json` (kind and features), and the few modules that score it (`SHIPPED`, as MLflow
`code_paths`). The pyfunc itself is "models from code" (`pyfunc_model.py`): MLflow records the file,
it pickles nothing, and the native file is loaded in its safe format. So `mlflow.pyfunc` loading
models:/ctr-wide-deep@champion in a process that has never imported this project, and
`mlflow models serve`, predict the probability of purchase intent per row, the same numbers the
ranker serves.

The input schema is the FeatureService's raw features plus the ids (float64 features, missing as
NaN; int64 ids): what a JSON request to `/invocations` carries.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from feature_repo.contract import ID_COLUMNS
from models.kinds import kind_of
from models.kinds.base import pip_requirements

if TYPE_CHECKING:
    from models.scoring import ScoringModel

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PYFUNC_FILE = Path(__file__).with_name("pyfunc_model.py")
MODEL_ARTIFACT = "model"
META_ARTIFACT = "meta"
# What pyfunc_model.py imports, and all it imports in turn (tests/unit/test_mlflow_packaging.py
# checks this against the import graph): shipped with every version.
SHIPPED: tuple[str, ...] = (
    "feature_repo/__init__.py",
    "feature_repo/contract.py",
    "models/__init__.py",
    "models/scoring.py",
    "models/kinds/__init__.py",
    "models/kinds/base.py",
    "models/kinds/progress.py",
    "models/kinds/rows.py",
    "models/kinds/wide_deep.py",
    "models/kinds/xgb.py",
)


def input_columns(model: ScoringModel, frame_columns: Any = None) -> list[str]:
    """The signature's columns: the ids the frame has, then the model's features in order."""
    ids = [c for c in ID_COLUMNS if frame_columns is None or c in frame_columns]
    return [*ids, *model.features]


def as_signature(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """`frame`'s `columns` as the signature types them: ids int64, features float64 (NaN missing)."""
    return frame.reindex(columns=columns).astype(
        {c: "int64" if c in ID_COLUMNS else "float64" for c in columns}
    )


def signature_frame(model: ScoringModel, frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of `frame` as the model's pyfunc takes them."""
    return as_signature(frame, input_columns(model, frame.columns))


PICKLE_FREE = {"MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"}
# Scores rows with a registered version as a process without this project would: the editable
# install's finder and the project folder are taken off the import path first.
_OUTSIDE = """
import sys
sys.meta_path = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
sys.path = [p for p in sys.path if p not in ("", sys.argv[4])]
import mlflow, numpy as np, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
np.save(sys.argv[3], np.asarray(model.predict(pd.read_parquet(sys.argv[2])), dtype=np.float64))
"""


def pyfunc_scores(uri: str, frame: pd.DataFrame, timeout_s: float = 600) -> np.ndarray:
    """What a generic MLflow consumer gets: the pyfunc of `uri` predicting the rows of
    `frame` (as the signature types them), in a fresh process that cannot import this project, so
    only the code logged with the version is used. Raises RuntimeError with the process's error."""
    import mlflow

    columns = mlflow.models.get_model_info(uri).signature.inputs.input_names()
    with tempfile.TemporaryDirectory() as tmp:
        rows, scores = Path(tmp) / "rows.parquet", Path(tmp) / "scores.npy"
        as_signature(frame, columns).to_parquet(rows, index=False)
        # MLflow refuses to unpickle a python_model with this: only models from code load.
        env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(), **PICKLE_FREE}
        argv = [sys.executable, "-c", _OUTSIDE, uri, str(rows), str(scores), str(PROJECT_ROOT)]
        done = subprocess.run(argv, env=env, cwd=tmp, capture_output=True, text=True, timeout=timeout_s)
        if done.returncode != 0:
            lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
            raise RuntimeError(lines[-1] if lines else f"exit code {done.returncode}")
        return np.load(scores).reshape(-1)


def _code_tree(root: Path) -> list[str]:
    """The shipped modules copied under `root`, as the top-level folders MLflow puts on sys.path."""
    for relative in SHIPPED:
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(PROJECT_ROOT / relative, target)
    return sorted(str(root / top) for top in {Path(r).parts[0] for r in SHIPPED})


def log_pyfunc(model: ScoringModel, example: pd.DataFrame, registered_name: str) -> Any:
    """Log `model` in the active MLflow run as a pyfunc registered under `registered_name`."""
    import mlflow
    from mlflow.models import infer_signature

    kind = model.adapter
    x = signature_frame(model, example)
    y = model.predict(x).astype(np.float64)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        native = folder / kind.model_file
        kind.save(model.model, native)
        meta = folder / "meta.json"
        meta.write_text(json.dumps({"kind": model.kind, "features": model.features}))
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=str(PYFUNC_FILE),
            artifacts={MODEL_ARTIFACT: str(native), META_ARTIFACT: str(meta)},
            code_paths=_code_tree(folder / "code"),
            signature=infer_signature(x, y),
            input_example=x,
            registered_model_name=registered_name,
            pip_requirements=pip_requirements(*kind.pip_packages),
        )


def load_native(uri: str, kind: str) -> Any:
    """The native model of a registered version, in its kind's safe format.

    Versions registered before the pyfunc packaging, in the kind's own MLflow flavour, load through
    that flavour.
    """
    import mlflow
    from mlflow.models import Model

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    pyfunc = Model.load(str(local / "MLmodel")).flavors.get("python_function", {})
    artifact = (pyfunc.get("artifacts") or {}).get(MODEL_ARTIFACT)
    if artifact is None:
        return kind_of(kind).load_from_mlflow(uri)
    return kind_of(kind).load(local / artifact["path"])
