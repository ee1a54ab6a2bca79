#!/usr/bin/env bash
# Engine speed of an earlier commit against the working tree, interleaved in one run on one machine:
#   benchmarks/compare_commits.sh REV [ROUNDS] [engine_speed.py options...]
# e.g. benchmarks/compare_commits.sh c97ee4a 3 --size ci --epochs 6
# REV is checked out in a temporary git worktree; each round runs REV's benchmarks/engine_speed.py on REV's
# library, then this tree's on this tree's (PYTHONPATH), so load changes hit both alike. Prints the seconds of
# every run and the medians per (case, variant, side), with the mean test macro-F1 of each.
set -euo pipefail
cd "$(dirname "$0")/.."
rev=${1:?usage: benchmarks/compare_commits.sh REV [ROUNDS] [engine_speed.py options...]}
rounds=${2:-3}
shift $(( $# >= 2 ? 2 : 1 ))
PY=${NEXTPOI_PYTHON:-.venv/bin/python}
PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")
work=$(mktemp -d)
trap 'git worktree remove --force "$work/before" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
git worktree add --detach "$work/before" "$rev" >/dev/null
for round in $(seq "$rounds"); do
  for side in before after; do
    root=$([ "$side" = before ] && echo "$work/before" || pwd)
    (cd "$root" && PYTHONPATH="$root" "$PY" benchmarks/engine_speed.py --no-memory-check --repeats 1 "$@" \
       --json "$work/$side-$round.json" > "$work/$side-$round.log" 2>&1) || { echo "$side round $round failed:"; tail -5 "$work/$side-$round.log"; exit 1; }
    echo "round $round: $side done"
  done
done
"$PY" - "$work" "$rounds" "$rev" <<'PY'
import json, statistics, sys
work, rounds, rev = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rows = {}
for side in ("before", "after"):
    for round_ in range(1, rounds + 1):
        for row in json.load(open(f"{work}/{side}-{round_}.json"))["rows"]:
            rows.setdefault((row["case"], row["variant"], side), []).append((row["seconds"], row["macro_f1"]))
print(f"{'case':<16} {'variant':<10} {'side':<7} {'seconds per run':<24} median  macro-F1")
for (case, variant, side), values in sorted(rows.items()):
    seconds = [s for s, _ in values]
    label = f"{side} ({rev})" if side == "before" else side
    print(f"{case:<16} {variant:<10} {label:<7} {' '.join(f'{s:.2f}' for s in seconds):<24} "
          f"{statistics.median(seconds):.2f}   {sorted({round(f, 4) for _, f in values})}")
PY
