"""Print the markdown tables of docs/results.md from the run folders of `./nextpoi.sh results`.

Usage: python benchmarks/results_table.py [outputs/results/foursquare_nyc]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import yaml

from nextpoi_lib.analysis.tables import leaderboard
from nextpoi_lib.runfolder import load_runs

ORDER = ["majority", "last_category", "most_frequent_in_window", "markov", "gradient_boosting", "baseline", "A", "B",
         "C", "D",
         # The recommended experiments until 2026-12-01 (then recommended_*: the files keep their settings).
         "gru_category_only", "gru_dgi", "blended_dgi_labels_only", "blended_dgi",
         # Issue 15: heads that learn the place and the user's past, per-fold transition embeddings, their blend.
         "neural_transition", "neural_transition_all_users", "neural_identity", "neural_labels_past",
         "neural_place_past", "neural_labels_past_tuned",
         "neural_place_past_tuned", "neural_place_stats_tuned", "neural_wide_stats", "neural_gru_tuned",
         "blended_place_stats",
         # The recommended experiments since 2026-12-01, with their label-only twins; the nested study's run.
         "recommended_neural_labels_only", "recommended_neural", "recommended_labels_only", "recommended",
         "wide_stats_nested-nested"]


def main(root: Path) -> None:
    paths = [root / name for name in ORDER if (root / name / "manifest.json").exists()]
    runs = load_runs(paths)
    print("| run | kind | selection | macro-F1 (mean ± std) | macro-F1, classes ≥ 50 targets | accuracy | n (fold × seed) | epochs | device |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for path in paths:
        manifest = json.loads((path / "manifest.json").read_text())
        metrics = pd.read_csv(path / "fold_metrics.csv")
        config = yaml.safe_load((path / "config.yaml").read_text())
        epochs = "-" if manifest["kind"] == "baseline" else config["training"]["epochs"]
        for selection in ("selected", "calibrated"):
            rows = metrics[metrics.selection == selection]
            if rows.empty:
                continue
            print(f"| {path.name} | {manifest['kind']} | {selection} | {100 * rows.macro_f1.mean():.2f} ± "
                  f"{100 * rows.macro_f1.std(ddof=1):.2f} | {100 * rows.macro_f1_min50.mean():.2f} | "
                  f"{100 * rows.accuracy.mean():.2f} ± {100 * rows.accuracy.std(ddof=1):.2f} | {len(rows)} | "
                  f"{epochs} | "
                  f"{manifest['device_name']} |")
    print()
    for selection in ("selected", "calibrated"):
        table = leaderboard(runs, reference="gradient_boosting", selection=selection)
        print(f"Paired comparison against gradient_boosting ({selection}):\n")
        columns = [c for c in ("run", "macro_f1_mean", "macro_f1_std", "delta_macro_f1", "n_pairs", "p_wilcoxon", "note")
                   if c in table.columns]
        print("```\n" + table[columns].to_string(index=False) + "\n```")
        print()
    per_class = []
    for path in paths:
        summary = json.loads((path / "summary.json").read_text())["per_class"]
        per_class.append(pd.Series({name: values["f1"] for name, values in summary.items()}, name=path.name))
    print("Per-class F1 (selected epoch, mean over fold × seed):\n")
    print((100 * pd.DataFrame(per_class)).round(1).to_string())


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/results/foursquare_nyc"))
