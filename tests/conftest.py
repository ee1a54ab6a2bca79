"""Shared fixtures: small synthetic check-in tables with a known structure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest


def synthetic_checkins(n_users: int = 40, visits_per_user: int = 14, n_pois: int = 30, classes=("Food", "Shop",
                       "Travel"), seed: int = 0) -> pd.DataFrame:
    """Check-ins in the Gowalla column layout. Each POI has one category; users walk POIs in a cycle so the
    next category is predictable from the last one."""
    rng = np.random.default_rng(seed)
    poi_category = [classes[i % len(classes)] for i in range(n_pois)]
    poi_latitude = 33.0 + rng.random(n_pois)
    poi_longitude = -87.0 + rng.random(n_pois)
    rows = []
    start = pd.Timestamp("2012-04-01 08:00")
    for user in range(n_users):
        poi = int(rng.integers(n_pois))
        for visit in range(visits_per_user):
            rows.append({"userid": f"u{user:03d}", "placeid": f"p{poi:03d}",
                         "datetime": start + pd.Timedelta(hours=user + 3 * visit),
                         "latitude": poi_latitude[poi], "longitude": poi_longitude[poi],
                         "category": poi_category[poi]})
            poi = (poi + 1) % n_pois
    return pd.DataFrame(rows)


@pytest.fixture
def checkin_csv(tmp_path):
    path = tmp_path / "checkins.csv"
    synthetic_checkins().to_csv(path, index=False)
    return path


def embedding_frame(pois: list[str], dim: int = 8, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(rng.normal(size=(len(pois), dim)).astype(np.float32), index=pd.Index(pois, name="poi_id"),
                        columns=[str(i) for i in range(dim)])


@pytest.fixture(scope="module")
def one_seed(tmp_path_factory):
    """Two fake runs (tests/runfixtures.py), one seed × 5 folds: 5 pairs. Read-only for the tests."""
    from runfixtures import one_seed_runs

    return one_seed_runs(tmp_path_factory.mktemp("one") / "outputs")


@pytest.fixture(scope="module")
def three_seeds(tmp_path_factory):
    """Three fake runs, 3 seeds × 5 folds: 15 pairs; 'better' is clearly better on every pair. Read-only."""
    from runfixtures import three_seed_runs

    return three_seed_runs(tmp_path_factory.mktemp("three") / "outputs")


# The bad-input harness's fixtures (tests/harness.py): the spy on the work and an output root with a user's file.
from harness import output_root, work_spy  # noqa: E402,F401
