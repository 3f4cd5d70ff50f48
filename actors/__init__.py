"""Ray actors (cameras, the priority manager, the metrics sink): thin wrappers over driftlab.platform."""
