"""Seed 2: generative feature distillation for video action recognition."""
from .clips import MOTIONS, ClipConfig, Clips, make_clips
from .models import (ActionNet, ActionOutput, FeatureCVAE, action_student, action_teacher,
                     clips_to_tensor, count_macs, count_params, foreground)
from .training import (ABLATIONS, METHODS, SEARCH_SPACE, DistillConfig, DistillJob, DistillResult,
                       TeacherTargets, accuracy, base_method, cached_teacher, set_frozen, teacher_targets,
                       train_student, train_teacher)

__all__ = ["MOTIONS", "ClipConfig", "Clips", "make_clips", "ActionNet", "ActionOutput",
           "FeatureCVAE", "action_student", "action_teacher", "clips_to_tensor", "count_macs",
           "count_params", "foreground", "ABLATIONS", "METHODS", "SEARCH_SPACE", "base_method",
           "DistillConfig", "DistillJob", "DistillResult", "TeacherTargets", "accuracy", "cached_teacher",
           "set_frozen", "teacher_targets", "train_student", "train_teacher"]
