#!/usr/bin/env bash
# Set-up-free entry point for a fresh machine with Python 3.11 and pip:
#   ./nextpoi.sh main   set up, run baseline + A-D and the reference methods on the embedded dataset, write outputs/report.html
#   ./nextpoi.sh test   set up (with test tools), run the whole test suite
#   ./nextpoi.sh setup  only set up the virtual environment (.venv, or $NEXTPOI_VENV)
#   ./nextpoi.sh results  the runs behind docs/results.md (baselines, the recommended experiments and their
#                         variants, the person-proxy folds, baseline, A-D) + report
# Set NEXTPOI_PYTHON to the python of an existing environment (e.g. a conda env with a CUDA torch) to use it
# instead of creating .venv.
set -euo pipefail
cd "$(dirname "$0")"

VENV=${NEXTPOI_VENV:-.venv}
if [ -n "${NEXTPOI_PYTHON:-}" ]; then
  PY=$NEXTPOI_PYTHON
else
  if [ ! -x "$VENV/bin/python" ]; then
    echo "== creating virtual environment $VENV"
    python3 -m venv "$VENV"
  fi
  PY=$VENV/bin/python
fi
export PATH="$(dirname "$PY"):$PATH"

pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }

setup() {
  local with_tests=$1
  local stamp_file="$("$PY" -c 'import sys; print(sys.prefix)')/.nextpoi-setup"
  local wanted
  wanted=$(cat requirements.txt pyproject.toml $([ "$with_tests" = yes ] && echo requirements-test.txt) | sha256sum | cut -c1-16)
  if [ -f "$stamp_file" ] && grep -qx "$wanted" "$stamp_file"; then
    return 0
  fi
  echo "== installing dependencies into $("$PY" -c 'import sys; print(sys.prefix)')"
  # torch only when missing: a CPU build 2.13.0 is available locally on our machines; an unpinned torch
  # would download a multi-GB CUDA build. A GPU workstation keeps the torch it has.
  if ! "$PY" -c "import torch" 2>/dev/null; then
    pip_install torch==2.13.0
  fi
  pip_install -r requirements.txt
  # The embedded dataset: GPL-3 check-ins shipped inside mat-data; its own dependencies are not needed.
  pip_install --no-deps mat-data==0.1rc6
  pip_install --no-deps -e .
  if [ "$with_tests" = yes ]; then
    pip_install -r requirements-test.txt
  fi
  echo "$wanted" >> "$stamp_file"
}

ensure_chromium() {
  # Browser tests drive Debian's Chromium (Playwright's own browser download does not work here).
  if command -v chromium >/dev/null 2>&1; then return 0; fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing Debian chromium for the browser tests"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "!! chromium is not installed and cannot be installed here (needs root + apt-get): browser tests will be skipped"
  fi
}

case "${1:-}" in
  setup)
    setup yes ;;
  main)
    setup no
    shift
    # Full settings on a GPU, the quick CPU profile otherwise (the report says which one produced the runs).
    # One BLAS thread per process: on a small shared CPU more threads slow these tiny models down.
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
    # The reference methods (majority, last category, Markov, boosted trees) run in the same batch under the same
    # profile, so on the same windows and folds: the report's "Δ best reference" says what a model adds to them.
    # Every run uses our users' 7 Gowalla classes (parameters/classes/gowalla7.yaml; runs and report under
    # outputs/foursquare_nyc_gowalla7): the sample's 10th root category, Event, has 26 check-ins, two or three
    # training windows per fold at the cpu profile's stride, and would decide the macro-F1 of the whole grid.
    status=0
    nextpoi batch parameters/baseline.yaml parameters/A.yaml parameters/B.yaml parameters/C.yaml parameters/D.yaml \
      parameters/baselines/majority.yaml parameters/baselines/last_category.yaml parameters/baselines/markov.yaml \
      parameters/baselines/gradient_boosting.yaml \
      --layer parameters/classes/gowalla7.yaml --profile auto "$@" || status=$?
    nextpoi report --dataset foursquare_nyc_gowalla7 --output outputs/report.html
    echo "== report: outputs/report.html"
    exit $status ;;
  results)
    setup no
    shift
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
    # Baselines and the recommended experiments (their 20-epoch GRUs included) always at full settings; the
    # grid of our users' 100-epoch runs at full settings on a GPU, on a CPU-only machine with the cpu-results
    # profile (5 epochs, one seed). Complete runs are skipped, so an interrupted call resumes.
    profile=cpu-results
    if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then profile=gpu; fi
    status=0
    nextpoi batch parameters/baselines/*.yaml parameters/recommended.yaml parameters/recommended_labels_only.yaml \
      parameters/recommended_neural.yaml parameters/recommended_neural_labels_only.yaml \
      parameters/blended_dgi.yaml parameters/blended_dgi_labels_only.yaml \
      parameters/gru_dgi.yaml parameters/gru_category_only.yaml \
      parameters/neural_transition.yaml parameters/neural_transition_all_users.yaml parameters/neural_identity.yaml \
      parameters/neural_labels_past.yaml \
      parameters/neural_place_past.yaml \
      parameters/neural_labels_past_tuned.yaml parameters/neural_place_past_tuned.yaml \
      parameters/neural_place_stats_tuned.yaml parameters/neural_wide_stats.yaml parameters/neural_gru_tuned.yaml \
      parameters/blended_place_stats.yaml \
      --output-root outputs/results --cell-timeout 0 "$@" || status=$?
    # The reference trees and the recommended experiments again with folds grouped by a person proxy.
    nextpoi batch parameters/baselines/gradient_boosting.yaml parameters/neural_place_past.yaml \
      parameters/recommended_neural.yaml parameters/recommended.yaml --layer parameters/folds/person_proxy.yaml \
      --output-root outputs/results_person_proxy --cell-timeout 0 "$@" || status=$?
    nextpoi batch parameters/baseline.yaml parameters/A.yaml parameters/B.yaml parameters/C.yaml parameters/D.yaml \
      --profile "$profile" --output-root outputs/results --cell-timeout 0 "$@" || status=$?
    nextpoi report --output-root outputs/results --output outputs/results/report.html
    exit $status ;;
  test)
    setup yes
    ensure_chromium
    shift
    "$PY" -m pytest -q "$@" ;;
  *)
    sed -n '2,9p' "$0"; exit 2 ;;
esac
