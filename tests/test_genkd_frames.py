"""Seed 2 in a camera's retraining (``distill: genkd``): the late map, the
teacher's head, the two phases inside a job, and the head and CVAE a camera
keeps from job to job."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from driftlab.platform.distill import DistillConfig, FeatureCVAE
from driftlab.platform.distill.frames import GENKD_DIM, GenKD, GenKDTargets, late_map
from driftlab.platform.models import build_student, build_teacher, logits, to_tensor
from driftlab.platform.teacher import teach
from driftlab.platform.training import TrainSpec, fit
from driftlab.platform.world import render_condition_set
from driftlab.platform.pretrained import load_teacher_genkd, teacher_genkd_checkpoint

from conftest import SMALL_WORLD


def _state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def _changed(before, module):
    return [k for k, v in module.state_dict().items() if not torch.equal(v, before[k])]


@pytest.fixture(scope="module")
def frames():
    return render_condition_set(SMALL_WORLD, ["day", "night"], 24, seed=3)


def test_late_map_is_what_the_classifier_pools():
    model = build_student("mobilenet_v3_small", 4).eval()
    x = to_tensor(render_condition_set(SMALL_WORLD, ["day"], 4, seed=1).images)
    with torch.no_grad():
        late, z = late_map(model, x)
        assert late.shape[:2] == (4, 576)
        torch.testing.assert_close(z, model(x))
        torch.testing.assert_close(model.classifier(late.mean((2, 3))), z)
    with pytest.raises(ValueError, match="no avgpool"):
        late_map(build_student("shufflenet_v2_x0_5", 4), x)


def test_teacher_head_learns_on_the_frozen_teacher_and_rides_along_with_its_labels(teacher_ckpt, frames):
    teacher = build_teacher("resnet18", SMALL_WORLD.num_classes)
    teacher.load_state_dict(torch.load(teacher_ckpt, weights_only=True))
    before = _state(teacher)
    path = teacher_genkd_checkpoint(SMALL_WORLD, teacher, teacher_ckpt, log=lambda *_: None)
    assert _changed(before, teacher) == []                     # phase 1 leaves the teacher as it was
    assert teacher_genkd_checkpoint(SMALL_WORLD, teacher, teacher_ckpt) == path   # cached
    head, cvae_state = load_teacher_genkd(path)
    out = teach(teacher, frames.images, head)
    np.testing.assert_array_equal(out["logits"], logits(teacher, frames.images))  # labels unchanged
    assert out["attention"].shape == (len(frames), GENKD_DIM)
    assert ((out["attention"] > 0) & (out["attention"] < 1)).all() and out["attention"].std() > 0.01
    # The head's own classifier on the teacher's foreground features learned the task.
    with torch.no_grad():
        head_preds = head(late_map(teacher.eval(), to_tensor(frames.images))[0]).logits.argmax(1).numpy()
    assert (head_preds == frames.labels).mean() > 0.5
    assert "fold.0.weight" in cvae_state and set(teach(teacher, frames.images)) == {"logits"}


def _targets(n, value, seed=0):
    torch.manual_seed(seed)
    return GenKDTargets(np.full((n, GENKD_DIM), value, np.float32),
                        FeatureCVAE(GENKD_DIM, (1, 1)).state_dict())


def test_each_phase_of_a_genkd_job_leaves_the_frozen_part_untouched(frames):
    model = build_student("mobilenet_v3_small", SMALL_WORLD.num_classes)
    x = to_tensor(frames.images)
    seed2 = GenKD(model, x, _targets(len(frames), 0.5))
    student, head, cvae, teacher = (_state(m) for m in (model, seed2.head, seed2.cvae, seed2.teacher_cvae))
    batches = [torch.arange(0, 16), torch.arange(16, 32)]
    seed2.before_epoch(model, x, batches)                       # phase a: only the CVAE learns
    assert _changed(student, model) == [] and _changed(head, seed2.head) == []
    assert _changed(teacher, seed2.teacher_cvae) == [] and _changed(cvae, seed2.cvae)
    cvae = _state(seed2.cvae)
    model.train()
    opt = torch.optim.Adam(list(model.parameters()) + seed2.parameters(), 1e-3)
    z = model(x[:16])                                           # phase b: the CVAE is frozen
    extra = seed2.loss(z, batches[0])
    (torch.nn.functional.cross_entropy(z, torch.as_tensor(frames.labels[:16])) + extra).backward()
    opt.step()
    seed2.close()
    assert _changed(cvae, seed2.cvae) == [] and _changed(teacher, seed2.teacher_cvae) == []
    assert _changed(head, seed2.head) and _changed(student, model)


def test_a_genkd_job_pulls_attention_to_the_teachers_and_hands_its_parts_on(frames):
    spec = TrainSpec(epochs=8, lr=5e-3, seed=2)
    means = {}
    for value in (0.1, 0.9):
        model = build_student("mobilenet_v3_small", SMALL_WORLD.num_classes)
        result = fit(model, frames.images, frames.labels, spec, plugins=[_targets(len(frames), value)])
        parts = result.plugin_states["genkd"]
        seed2 = GenKD(model, to_tensor(frames.images), replace(_targets(len(frames), value), parts=parts, jobs=1))
        torch.testing.assert_close(seed2.head.state_dict(), parts["head"])
        seed2.close()
        with torch.no_grad():
            seed2.head.eval()
            late = late_map(model.eval(), to_tensor(frames.images))[0]
            means[value] = seed2.head(late).attention.mean().item()
    assert means[0.1] < 0.4 < 0.6 < means[0.9]
    # The generated-feature term ramps over a camera's jobs.
    cfg = DistillConfig()
    weights = [GenKD(model, to_tensor(frames.images[:4]), replace(_targets(4, 0.5), jobs=j)).weight
               for j in (0, 1, cfg.ramp_epochs, 10 * cfg.ramp_epochs)]
    assert weights == pytest.approx([cfg.recon_peak / cfg.ramp_epochs, 2 * cfg.recon_peak / cfg.ramp_epochs,
                                     cfg.recon_peak, cfg.recon_peak])
