"""EpochTracker: the selection rule (strictly greater inner-validation macro-F1), early stopping, progress lines."""

from nextpoi_lib.training.tracker import EpochTracker


def curve(epoch: int, score: float) -> dict:
    return {"epoch": epoch, "train_loss": 1.0 / epoch, "val_loss": 2.0, "val_macro_f1": score}


def run(scores, epochs, patience):
    lines = []
    tracker = EpochTracker("[f]", epochs, patience, lines.append)
    improved = []
    for epoch, score in enumerate(scores, start=1):
        improved.append(tracker.update(curve(epoch, score)))
        if tracker.stopped:
            break
    return tracker, improved, lines


def test_a_tie_keeps_the_earlier_epoch_and_patience_counts_epochs_without_a_strict_gain():
    # epoch:  1    2    3 (tie) 4    5 (new best) 6    7    8 -> third epoch without gain: stop
    scores = [0.2, 0.5, 0.5, 0.4, 0.6, 0.3, 0.6, 0.1, 0.9, 0.9]
    tracker, improved, lines = run(scores, epochs=10, patience=3)
    assert improved == [True, True, False, False, True, False, False, False]
    assert (tracker.best_epoch, tracker.best_score, tracker.last_epoch) == (5, 0.6, 8)
    assert tracker.stopped and tracker.epochs_without_gain == 3
    assert [c["epoch"] for c in tracker.curves] == list(range(1, 9))
    # a line every 10 // 5 = 2 epochs, then the early stop
    assert lines == [
        "  [f] epoch   2/10  train loss 0.5000  val loss 2.0000  val macro-F1 0.5000  (best 0.5000 @ 2)",
        "  [f] epoch   4/10  train loss 0.2500  val loss 2.0000  val macro-F1 0.4000  (best 0.5000 @ 2)",
        "  [f] epoch   6/10  train loss 0.1667  val loss 2.0000  val macro-F1 0.3000  (best 0.6000 @ 5)",
        "  [f] epoch   8/10  train loss 0.1250  val loss 2.0000  val macro-F1 0.1000  (best 0.6000 @ 5)",
        "  [f] early stop at epoch 8: no gain for 3 epochs",
    ]


def test_without_patience_every_epoch_runs_and_the_last_epoch_is_reported():
    scores = [0.3, 0.1, 0.1, 0.2, 0.1, 0.1, 0.1]
    tracker, improved, lines = run(scores, epochs=7, patience=0)
    assert improved == [True] + [False] * 6
    assert (tracker.best_epoch, tracker.last_epoch, tracker.stopped) == (1, 7, False)
    # 7 // 5 = 1: a line every epoch, the last one included
    assert len(lines) == 7 and lines[-1].startswith("  [f] epoch   7/7 ") and lines[-1].endswith("(best 0.3000 @ 1)")


def test_a_first_epoch_with_zero_macro_f1_is_selected():
    tracker, improved, _ = run([0.0, 0.0], epochs=2, patience=1)
    # 0.0 beats the initial -1, the second 0.0 is no gain and patience 1 stops there
    assert improved == [True, False] and tracker.best_epoch == 1 and tracker.stopped and tracker.last_epoch == 2
