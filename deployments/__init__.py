"""Ray Serve deployments (the teacher): thin wrappers over driftlab.platform."""
