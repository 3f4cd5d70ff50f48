"""What cameras see: the synthetic world's drifting streams, and recordings (video files, frame directories)."""
from .conditions import CONDITIONS, SCENARIOS, Condition, Scenario, get_scenario
from .recorded import RecordedSource, SourceSpec, VideoError, expand_source_arg, open_recording
from .stream import CameraStream, FrameBatch, FrameSource, WorldConfig, render_condition_set

__all__ = ["CONDITIONS", "SCENARIOS", "Condition", "Scenario", "get_scenario", "CameraStream",
           "FrameBatch", "FrameSource", "RecordedSource", "SourceSpec", "VideoError", "WorldConfig",
           "expand_source_arg", "open_recording", "render_condition_set"]
