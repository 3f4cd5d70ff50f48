"""The synthetic camera world: drifting conditions, rendered streams, video files."""
from .conditions import CONDITIONS, SCENARIOS, Condition, Scenario, get_scenario
from .stream import (CameraStream, FrameBatch, FrameSource, VideoError, VideoFileSource,
                     WorldConfig, render_condition_set)

__all__ = ["CONDITIONS", "SCENARIOS", "Condition", "Scenario", "get_scenario", "CameraStream",
           "FrameBatch", "FrameSource", "VideoError", "VideoFileSource", "WorldConfig",
           "render_condition_set"]
