"""The MLflow pyfunc of every model kind ("models from code": MLflow stores this file, not a
pickle). Loaded by `mlflow.pyfunc.load_model`, it reads the kind and features from `meta.json`,
loads the native model file through its kind (safe formats) and predicts the probability of
purchase intent per row, exactly as the ranker scores it (models.scoring.ScoringModel).

The modules it imports travel with the model (models.kinds.packaging.SHIPPED, as code_paths).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel


class PurchaseIntentModel(PythonModel):
    def load_context(self, context: Any) -> None:
        from models.kinds import kind_of
        from models.scoring import wrap

        meta = json.loads(Path(context.artifacts["meta"]).read_text())
        native = kind_of(meta["kind"]).load(Path(context.artifacts["model"]))
        self.scorer = wrap(meta["kind"], native, meta)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> np.ndarray:
        return np.asarray(self.scorer.predict(pd.DataFrame(model_input)), dtype=np.float64)


mlflow.models.set_model(PurchaseIntentModel())
