"""The model kinds: one module per kind, each implementing the protocol in `models.kinds.base`.

`KINDS` is the one place the kinds are listed: scoring, the registry, explanations, the promotion
gate, training and the ranker look a model's kind up here and never switch on it.
"""

from __future__ import annotations

from models.kinds.base import ModelKind
from models.kinds.wide_deep import WideDeepKind
from models.kinds.xgb import XGBoostKind

KINDS: dict[str, ModelKind] = {kind.name: kind for kind in (XGBoostKind(), WideDeepKind())}


def kind_of(name: str) -> ModelKind:
    """The adapter of a model kind, by the name recorded with every saved or registered model."""
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown model kind {name!r}; expected one of {tuple(KINDS)}") from None
