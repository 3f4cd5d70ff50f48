"""Weakly supervised temporal action localization (seed 3): change points over
a hierarchy of latent representations, and the detection metric's protocol."""
from .changepoints import ChangePointDetector, change_rate, local_peaks

__all__ = ["ChangePointDetector", "change_rate", "local_peaks"]
