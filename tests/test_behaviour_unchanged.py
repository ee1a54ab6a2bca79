"""The per-fold metrics of four small runs (a Transformer, a reference baseline, trees with every optional
feature, trees blended with a GRU) equal, byte for byte, those recorded before the library was restructured.

`tests/behaviour/record.py` runs them on the embedded data in a fresh process with one intra-op thread and
compares fold_metrics.csv, per_class.csv and confusion.csv with tests/behaviour/expected/. A change that is
meant to change results re-records them with `--write` and says so in its commit.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

RECORD = Path(__file__).resolve().parent / "behaviour" / "record.py"


@pytest.mark.slow
def test_recorded_runs_give_identical_metrics():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(RECORD), "--check"], capture_output=True, text=True, env=env,
                          timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "identical to the record: every file of every config" in done.stdout
