"""Change points of a sequence whose changes are known."""
import numpy as np

from driftlab.platform.wtal import ChangePointDetector, change_rate, local_peaks


def _piecewise(rng, bounds, T=300, D=32, noise=0.5):
    means = rng.normal(0, 1.5, (len(bounds) + 1, D))
    seg = np.searchsorted(bounds, np.arange(T), side="right")
    return means[seg] + rng.normal(0, noise, (T, D))


def test_change_rate_peaks_at_a_step():
    z = np.r_[np.zeros((50, 2)), np.ones((50, 2))]
    r = change_rate(z, 4)
    assert int(np.argmax(r)) == 50 and r[:40].max() == 0 and r[60:].max() == 0
    assert list(local_peaks(r, 4, threshold=1.0)) == [50]


def test_detector_finds_known_change_points_and_ignores_noise():
    rng = np.random.default_rng(0)
    bounds = [60, 130, 150, 230]
    train = [_piecewise(rng, sorted(rng.choice(np.arange(20, 280), 4, replace=False))) for _ in range(8)]
    det = ChangePointDetector(levels=3, latent_dim=8, threshold=3.0).fit(train)
    x = _piecewise(rng, bounds)
    found = det.detect(x)
    fine = found[2]
    for b in bounds:  # every true change, within a snippet or two, at the finest scale
        assert np.min(np.abs(fine - b)) <= 2, (b, fine)
    assert len(fine) <= 2 * len(bounds)  # few spurious peaks
    # The 20-snippet segment between 130 and 150 is too short for the coarsest
    # windows to separate both of its edges; coarse scales report fewer points.
    assert len(found[8]) <= len(fine)
    # Pure noise: (almost) nothing.
    quiet = det.detect(rng.normal(0, 0.5, (300, 32)) + rng.normal(0, 1.5, 32))
    assert len(quiet[2]) <= 2
