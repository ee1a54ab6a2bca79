"""Analysis of finished run folders: compute in one place, draw in another.

* `tables` computes every number: comparability checks, the leaderboard with paired Wilcoxon tests, the
  per-class table, confusion counts and panels, mean training curves, attention per position;
* `figures` draws plotly figures from those tables and computes nothing;
* `report` lays tables and figures out as one self-contained HTML file (`nextpoi report`).

Run folders are read by `nextpoi_lib.runfolder` (`load_run`, `select_runs`, ...); the interactive
explorer around these functions is `nextpoi_lib.widgets.AnalysisApp`. The names below are re-exported for
convenience, e.g. `from nextpoi_lib.analysis import leaderboard, leaderboard_figure`.
"""

from .figures import attention_figure, confusion_figure, curves_figure, leaderboard_figure, per_class_figure
from .report import leaderboard_html, profile_note, write_report
from .tables import (
    Comparability,
    attention_table,
    check_comparable,
    confusion_counts,
    confusion_panels,
    leaderboard,
    per_class_table,
    training_curves,
)

__all__ = [
    "Comparability",
    "check_comparable",
    "leaderboard",
    "per_class_table",
    "confusion_counts",
    "confusion_panels",
    "training_curves",
    "attention_table",
    "leaderboard_figure",
    "per_class_figure",
    "confusion_figure",
    "curves_figure",
    "attention_figure",
    "leaderboard_html",
    "profile_note",
    "write_report",
]
