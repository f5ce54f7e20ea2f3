"""Progress of a long fit in the log: XGBoost's rounds and Keras's epochs at 100 M events run for
many minutes, and a stage that prints nothing meanwhile looks hung."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

logger = logging.getLogger("models.training.progress")


class FitProgress:
    """Logs `what`'s step i of `total` with its latest metrics, at most once per `every_s` seconds
    (the first and the last step always), with the elapsed time and an estimate of what remains."""

    def __init__(self, what: str, total: int, every_s: float = 30.0) -> None:
        self.what, self.total, self.every_s = what, max(int(total), 1), every_s
        self.started = self.shown = time.perf_counter()
        self.first = True

    def step(self, done: int, metrics: Mapping[str, float], last: bool = False) -> None:
        now = time.perf_counter()
        if not (self.first or last or now - self.shown >= self.every_s):
            return
        self.first, self.shown = False, now
        elapsed = now - self.started
        if last:
            logger.info("%s: finished after %d of at most %d, %.0f s", self.what, done, self.total, elapsed)
            return
        left = elapsed / done * (self.total - done) if done else 0.0
        shown = ", ".join(f"{k} {v:.5f}" for k, v in metrics.items())
        logger.info(
            "%s: %d/%d%s, %.0f s elapsed%s",
            self.what, done, self.total, f" ({shown})" if shown else "", elapsed,
            f", at most ~{left:.0f} s left" if left else "",
        )  # fmt: skip


def xgboost_callback(progress: FitProgress):
    """An XGBoost TrainingCallback reporting each round's last validation metric to `progress`."""
    import xgboost as xgb

    class Progress(xgb.callback.TrainingCallback):
        def after_iteration(self, model, epoch: int, evals_log) -> bool:
            metrics = {f"{data} {name}": v[-1] for data, m in evals_log.items() for name, v in m.items()}
            progress.step(epoch + 1, metrics)
            return False

        def after_training(self, model):
            progress.step(model.num_boosted_rounds(), {}, last=True)
            return model

    return Progress()


def keras_callback(progress: FitProgress, within_s: float = 30.0):
    """A Keras callback reporting each epoch's losses to `progress`, and within an epoch its batch
    and loss at most once per `within_s` seconds (an epoch over millions of rows on a CPU takes
    many minutes)."""
    import keras

    class Progress(keras.callbacks.Callback):
        done = 0

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch_started = self.shown = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            now = time.perf_counter()
            if now - self.shown < within_s:
                return
            self.shown = now
            elapsed, steps = now - self.epoch_started, (self.params or {}).get("steps")
            loss = (logs or {}).get("loss")
            logger.info(
                "%s: epoch %d, batch %d%s%s, %.0f s into the epoch%s",
                progress.what, self.done + 1, batch + 1, f" of {steps}" if steps else "",
                f" (loss {float(loss):.5f})" if loss is not None else "", elapsed,
                f", ~{elapsed / (batch + 1) * (steps - batch - 1):.0f} s left in it" if steps else "",
            )  # fmt: skip

        def on_epoch_end(self, epoch, logs=None):
            self.done = epoch + 1
            progress.step(self.done, {k: float(v) for k, v in (logs or {}).items()})

        def on_train_end(self, logs=None):
            progress.step(self.done, {}, last=True)

    return Progress()
