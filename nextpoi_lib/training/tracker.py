"""The selection rule of a training run, in one place: which epoch is kept, when a fold stops, what it prints.

Selection uses the inner validation users only: an epoch is the best so far when its validation macro-F1 is
strictly greater than every earlier epoch's (so ties keep the earlier epoch). With early stopping on, a fold
stops after `patience` epochs in a row without such a gain. Every `epochs // 5` epochs (and at the last one) a
progress line reports the epoch; an early stop prints a line of its own. Every epoch is also a progress step of
the stage "train" with the (seed, fold) as its job (`progress.progress_step`: the live bars of `nextpoi batch`);
an early stop counts the epochs left out as done. `train_fold` keeps one tracker, the stacked path one per fold.
"""

from __future__ import annotations

from ..progress import Progress, progress_step


class EpochTracker:
    """Per-epoch curve rows of one (seed, fold), its best epoch so far and whether it has stopped."""

    def __init__(self, label: str, epochs: int, patience: int, progress: Progress):
        self.label, self.epochs, self.patience, self.progress = label, epochs, patience, progress
        self.report_every = max(1, epochs // 5)
        self.job = label.strip("[] ")  # "[seed 0 fold 2/5]" -> "seed 0 fold 2/5"
        self.curves: list[dict] = []
        self.best_score, self.best_epoch, self.epochs_without_gain = -1.0, 0, 0
        self.last_epoch = 0
        self.stopped = False

    def update(self, curve: dict) -> bool:
        """Record one epoch's curve row (see `loop.epoch_curve`); True when it is the best epoch so far, whose
        weights the caller keeps. Afterwards `stopped` says whether early stopping ends the fold here."""
        epoch, score = curve["epoch"], curve["val_macro_f1"]
        self.curves.append(curve)
        self.last_epoch = epoch
        improved = score > self.best_score
        if improved:
            self.best_score, self.best_epoch, self.epochs_without_gain = score, epoch, 0
        else:
            self.epochs_without_gain += 1
        if epoch % self.report_every == 0 or epoch == self.epochs:
            self.progress(f"  {self.label} epoch {epoch:>3}/{self.epochs}  train loss {curve['train_loss']:.4f}  "
                          f"val loss {curve['val_loss']:.4f}  val macro-F1 {score:.4f}  (best {self.best_score:.4f} "
                          f"@ {self.best_epoch})")
        progress_step(self.progress, "train", epoch, self.epochs, f"{self.job} epoch {epoch}/{self.epochs}",
                      job=self.job)
        if self.patience and self.epochs_without_gain >= self.patience:
            self.progress(f"  {self.label} early stop at epoch {epoch}: no gain for {self.epochs_without_gain} "
                          f"epochs")
            self.stopped = True
            progress_step(self.progress, "train", self.epochs, self.epochs,
                          f"{self.job} early stop at epoch {epoch}/{self.epochs}", job=self.job)
        return improved
