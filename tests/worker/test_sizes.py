"""What the cache charges a model and reserves before a load (``worker.sizes``): pure logic."""

from __future__ import annotations

from worker.sizes import SizeEstimator


def test_size_charges_follow_the_median_not_polluted_measurements() -> None:
    sizes = SizeEstimator(min_samples=8)
    # Until enough loads are measured, a model is charged its own measurement.
    assert sizes.charge("xgboost", 1000, 3000) == 3000
    clean = [3000] * 7
    for m in clean:
        sizes.charge("xgboost", 1000, m)
    # Loads polluted by other threads' allocations (3x, 6x) are a minority: the charge stays
    # at the typical ratio, scaled to each model's own artifact size.
    assert sizes.charge("xgboost", 1000, 18_000) == 3000
    assert sizes.charge("xgboost", 2000, 9_000) == 6000
    assert sizes.charge("lightgbm", 1000, 5000) == 5000  # per framework


def test_a_reservation_guesses_the_charge_once_loads_are_measured() -> None:
    """Reserving more than a load will be charged displaces a model for nothing (in a full
    tier of like-sized models every miss would evict two): once enough loads are measured the
    guess is the charge's own rule; before that it keeps a margin."""
    sizes = SizeEstimator(min_samples=4, margin=1.1)
    sizes.charge("xgboost", 1000, 3000)
    assert sizes.estimate("xgboost", 1000) == 3301  # one measurement: the EMA with a margin
    for _ in range(3):
        sizes.charge("xgboost", 1000, 3000)
    assert sizes.estimate("xgboost", 2000) == 6000 == sizes.charge("xgboost", 2000, 6000)
