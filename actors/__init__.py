"""Ray actors (cameras, the priority manager, the Train job pool) and the Ray runner: thin wrappers over driftlab.platform."""
