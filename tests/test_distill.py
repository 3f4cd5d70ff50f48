"""Seed 2: the losses on hand-made tensors, the phase alternation, clips, the experiment."""
from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml

from driftlab.platform.distill import (ABLATIONS, MOTIONS, ClipConfig, DistillConfig, FeatureCVAE, action_student,
                                       action_teacher, clips_to_tensor, count_macs, count_params,
                                       foreground, make_clips, set_frozen, train_student)
from driftlab.platform.distill import losses as L
from driftlab.platform.distill.clips import _trajectory
from driftlab.platform.distill.training import _cvae_phase, _task_phase

ROOT = Path(__file__).resolve().parents[1]
B, C, T, H, W = 2, 8, 4, 2, 2


def test_cvae_loss_is_reconstruction_plus_weighted_kl_to_the_attention_prior():
    feats = torch.rand(B, C, T, H, W)
    att = torch.rand(B, C, T)
    zero = torch.zeros(B, C, T)
    assert L.cvae_loss(feats, feats, att, zero, att).item() == pytest.approx(0.0, abs=1e-7)
    # recon off by 1 everywhere: MSE 1; mean one unit from the prior: KL 0.5 per unit.
    assert L.cvae_loss(feats + 1, feats, att + 1, zero, att, kl_weight=0.1).item() == pytest.approx(1.05)
    # variance e instead of 1: KL = 0.5 * (e - 1 - 1) per unit.
    one = torch.ones(B, C, T)
    assert L.cvae_loss(feats, feats, att, one, att, kl_weight=1.0).item() == pytest.approx(0.5 * (math.e - 2))


def test_distillation_losses_known_values_and_no_gradient_into_the_teacher():
    s = torch.zeros(B, C, T, H, W, requires_grad=True)
    t = torch.ones(B, C, T, H, W, requires_grad=True)
    assert L.generative_distillation_loss(s, t).item() == pytest.approx(1.0)
    L.generative_distillation_loss(s, t).backward()
    assert t.grad is None and s.grad is not None
    assert L.attention_distillation_loss(torch.full((B, C, T), 0.5), torch.full((B, C, T), 0.25)).item() \
        == pytest.approx(0.0625)
    assert L.hint_loss(torch.full((1, 2), 2.0), torch.zeros(1, 2)).item() == pytest.approx(4.0)


def test_reconstruction_weight_ramps_to_its_peak():
    assert L.reconstruction_weight(1, 20) == pytest.approx(0.025)
    assert L.reconstruction_weight(10, 20) == pytest.approx(0.25)
    assert L.reconstruction_weight(20, 20) == L.reconstruction_weight(35, 20) == pytest.approx(0.5)


def test_hinton_kd_known_value():
    same = torch.tensor([[1.0, -2.0, 0.5]])
    assert L.hinton_kd_loss(same, same, 4.0).item() == pytest.approx(0.0, abs=1e-7)
    # T=1, teacher uniform, student (0.75, 0.25): KL = 0.5 ln(0.5/0.75) + 0.5 ln(0.5/0.25).
    expected = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(2.0)
    got = L.hinton_kd_loss(torch.tensor([[math.log(3.0), 0.0]]), torch.zeros(1, 2), 1.0).item()
    assert got == pytest.approx(expected, rel=1e-5)
    # T^2 scaling: at T=2 the same logits doubled give 4x the T=1 value.
    assert L.hinton_kd_loss(torch.tensor([[2 * math.log(3.0), 0.0]]), torch.zeros(1, 2), 2.0).item() \
        == pytest.approx(4 * expected, rel=1e-5)
    # Per sample (what a weighted retraining job needs), and its mean is the default.
    student = torch.tensor([[math.log(3.0), 0.0], [1.0, 1.0]])
    each = L.hinton_kd_loss(student, torch.zeros(2, 2), 1.0, reduction="none")
    assert each.tolist() == pytest.approx([expected, 0.0], abs=1e-6)
    assert L.hinton_kd_loss(student, torch.zeros(2, 2), 1.0).item() == pytest.approx(expected / 2, rel=1e-5)


def test_attention_transfer_ignores_scale_and_sees_where():
    f = torch.rand(B, C, T, H, W)
    assert L.attention_transfer_loss(3 * f, f).item() == pytest.approx(0.0, abs=1e-7)
    a, b = torch.zeros(1, C, T, H, W), torch.zeros(1, C, T, H, W)
    a[0, :, 0, 0, 0], b[0, :, 1, 0, 0] = 1.0, 1.0     # energy at two different places
    n = T * H * W
    assert L.attention_transfer_loss(a, b).item() == pytest.approx(2.0 / n)


def test_foreground_keeps_the_mass_and_moves_it_to_attended_steps():
    feats = torch.rand(B, C, T, H, W) + 0.1
    assert torch.allclose(foreground(feats, torch.full((B, C, T), 0.3)), feats, atol=1e-6)
    att = torch.zeros(B, C, T)
    att[:, :, 0] = 1.0
    fg = foreground(feats, att)
    assert torch.allclose(fg.sum((1, 2, 3, 4)), feats.sum((1, 2, 3, 4)), rtol=1e-5)
    assert fg[:, :, 1:].abs().max() == 0


def test_cvae_generates_feature_maps_of_the_right_shape():
    torch.manual_seed(0)
    cvae = FeatureCVAE(C, (H, W))
    feats, att = torch.rand(B, C, T, H, W), torch.rand(B, C, T)
    mean, logvar, recon = cvae(feats, att)
    assert mean.shape == logvar.shape == att.shape and recon.shape == feats.shape
    assert cvae.generate(att).shape == feats.shape and (recon >= 0).all()


def _state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def _changed(before, module):
    return [k for k, v in module.state_dict().items() if not torch.equal(v, before[k])]


def test_each_phase_leaves_the_frozen_part_untouched():
    torch.manual_seed(0)
    clips = make_clips(ClipConfig(), 14, seed=5)   # two batches of 7: BatchNorm needs more than one clip
    x = clips_to_tensor(clips.videos)
    y = torch.as_tensor(clips.labels)
    net = action_student(ClipConfig().num_classes)
    with torch.no_grad():
        shape = net.eval().features(x[:2]).shape
    cvae, teacher_cvae = FeatureCVAE(shape[1], shape[3:]), FeatureCVAE(shape[1], shape[3:])
    cfg = DistillConfig(batch_size=7)
    rng = np.random.default_rng(0)
    net_opt = torch.optim.Adam(net.parameters(), 1e-3)
    cvae_opt = torch.optim.Adam(cvae.parameters(), 1e-3)

    # Phase a: the network (weights and BatchNorm buffers) frozen, the CVAE learns.
    net_before, cvae_before, teacher_before = _state(net), _state(cvae), _state(teacher_cvae)
    _cvae_phase(net, cvae, cvae_opt, x, cfg, rng, teacher_cvae)
    assert _changed(net_before, net) == [] and _changed(teacher_before, teacher_cvae) == []
    assert _changed(cvae_before, cvae)

    # Phase b: the CVAE frozen, even though the loss runs through it.
    net_before, cvae_before = _state(net), _state(cvae)
    _task_phase(net, net_opt, x, cfg, rng, frozen=cvae, loss_fn=lambda out, b: (
        F.cross_entropy(out.logits, y[b]) + F.mse_loss(cvae.generate(out.attention), out.features)))
    assert _changed(cvae_before, cvae) == []
    assert any(k.startswith("stem") for k in _changed(net_before, net))
    set_frozen(net, True)
    assert not any(p.requires_grad for p in net.parameters()) and not net.training


def test_clips_are_deterministic_balanced_and_show_their_condition():
    cfg = ClipConfig(conditions=("night",))
    a, b = make_clips(cfg, 32, seed=1), make_clips(cfg, 32, seed=1)
    assert a.videos.shape == (32, 8, 32, 32, 3) and a.videos.dtype == np.uint8
    assert np.array_equal(a.videos, b.videos) and np.bincount(a.labels).tolist() == [2] * len(MOTIONS)
    assert not np.array_equal(a.videos, make_clips(cfg, 32, seed=2).videos)
    day = make_clips(ClipConfig(conditions=("day",)), 32, seed=1)
    assert a.videos.mean() < 0.7 * day.videos.mean()          # night is darker
    # The actor moves: consecutive frames differ.
    assert (np.abs(np.diff(a.videos.astype(int), axis=1)).sum((2, 3, 4)) > 0).all()
    with pytest.raises(ValueError, match="unknown conditions"):
        ClipConfig(conditions=("hail",))
    with pytest.raises(ValueError, match="displacement"):
        ClipConfig(displacement=(0.2, 0.1))


def test_motions_differ_by_direction_and_order_only():
    def path(name):
        return _trajectory(MOTIONS.index(name), 10.0, 9)     # 9 frames: frame 4 is the turn

    right_up, up_right, back = path("right_then_up"), path("up_then_right"), path("right_then_left")
    # First half right (x grows, y still), second half up (y falls, x still).
    assert np.allclose(np.diff(right_up[:5, 0]), 2.5) and np.allclose(np.diff(right_up[:5, 1]), 0)
    assert np.allclose(np.diff(right_up[4:, 1]), -2.5) and np.allclose(np.diff(right_up[4:, 0]), 0)
    # The same two movements in the other order: same net displacement, another corner.
    assert np.allclose(right_up[-1] - right_up[0], (10, -10)) and np.allclose(up_right[-1] - up_right[0], (10, -10))
    assert not np.allclose(right_up[4] - right_up[0], up_right[4] - up_right[0])
    assert np.allclose(back[0], back[-1]) and np.allclose(path("right")[-1] - path("right")[0], (20, 0))
    for name in MOTIONS:
        assert np.allclose(path(name).mean(0), 0)       # centred: where it is says nothing


def test_student_is_much_lighter_than_the_teacher():
    teacher, student = action_teacher(7), action_student(7)
    assert count_params(student) < 0.2 * count_params(teacher)
    assert count_macs(student, 8, 32) < 0.15 * count_macs(teacher, 8, 32)


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_each_ablation_zeroes_weights_that_are_on_by_default(name):
    cfg = replace(DistillConfig(), **ABLATIONS[name])
    assert all(getattr(DistillConfig(), k) > 0 and getattr(cfg, k) == 0 for k in ABLATIONS[name])


def test_unknown_method_and_missing_targets_are_clear_errors():
    clips = make_clips(ClipConfig(num_classes=7), 7, seed=1)
    with pytest.raises(ValueError, match="unknown distillation method 'magic'"):
        train_student("magic", clips, 7, DistillConfig())
    with pytest.raises(ValueError, match="needs the teacher's targets"):
        train_student("hinton", clips, 7, DistillConfig())
    with pytest.raises(ValueError, match="needs the teacher's CVAE"):   # an ablation is still seed 2
        train_student("genkd-att", clips, 7, DistillConfig(), targets=object())


def _action_kd(*args):
    return subprocess.run([sys.executable, str(ROOT / "experiments" / "action_kd.py"), "--quick",
                           "--seeds", "1", *args], capture_output=True, text=True, timeout=600)


def test_action_kd_quick_end_to_end(tmp_path):
    methods = ["none", "hinton", "fitnet", "at", "genkd", "genkd-att"]
    out = _action_kd("--methods", ",".join(methods), "--seeds", "2", "--out", str(tmp_path),
                     "--report", str(tmp_path / "report.md"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "student: genkd" in out.stdout and "teacher (r3d-18)" in out.stdout
    df = pd.read_parquet(tmp_path / "results.parquet")
    assert sorted(df.method) == sorted(methods * 2)
    assert df.test_top1.between(0, 1).all() and (tmp_path / "top1.png").stat().st_size > 0
    # Paired per seed: the Markdown row of Hinton KD against no KD is its mean difference.
    wide = df.pivot(index="seed", columns="method", values="test_top1")
    diff = 100 * (wide["hinton"] - wide["none"])
    report = (tmp_path / "report.md").read_text()
    assert report == (tmp_path / "results.md").read_text() and "at commit" in report
    assert f"| {diff.mean():+.1f} ± {diff.std():.1f} |" in report.split("student: hinton")[1].splitlines()[0]
    # Same seed, same numbers (the teacher now comes from the cache).
    again = _action_kd("--methods", "genkd", "--out", str(tmp_path / "again"))
    assert again.returncode == 0 and "training the action teacher" not in again.stdout
    assert pd.read_parquet(tmp_path / "again" / "results.parquet").test_top1.iloc[0] \
        == df[(df.method == "genkd") & (df.seed == 0)].test_top1.iloc[0]
    bad = _action_kd("--methods", "genkd,magic", "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "unknown method(s) magic" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_action_kd_search_chooses_on_validation_and_hparams_repeat_it(tmp_path):
    out = _action_kd("--methods", "none,hinton", "--search", "2", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr[-2000:]
    chosen = yaml.safe_load((tmp_path / "hparams.yaml").read_text())
    assert list(chosen) == ["hinton"] and set(chosen["hinton"]) == {"temperature", "hinton_alpha"}
    trials = pd.read_parquet(tmp_path / "search.parquet")
    assert len(trials) == 2 and trials.val_top1.between(0, 1).all()
    paper = DistillConfig()     # one trial is the paper's weights, the other a random draw
    assert ((trials.temperature == paper.temperature) & (trials.hinton_alpha == paper.hinton_alpha)).sum() == 1
    best = trials.sort_values(["val_top1", "trial"], ascending=[False, True]).iloc[0]
    assert chosen["hinton"] == {k: pytest.approx(best[k]) for k in chosen["hinton"]}
    # The students were trained with the chosen weights, and the report says where they came from.
    df = pd.read_parquet(tmp_path / "results.parquet")
    row = df[df.method == "hinton"].iloc[0]
    assert (row.cfg_temperature, row.cfg_hinton_alpha) == (chosen["hinton"]["temperature"],
                                                          pytest.approx(chosen["hinton"]["hinton_alpha"]))
    assert "chosen on the validation split by `--search 2`" in (tmp_path / "results.md").read_text()
    # --hparams repeats the choice without searching: the same student.
    again = _action_kd("--methods", "hinton", "--hparams", str(tmp_path / "hparams.yaml"),
                       "--out", str(tmp_path / "again"))
    assert again.returncode == 0 and "search:" not in again.stdout
    assert pd.read_parquet(tmp_path / "again" / "results.parquet").test_top1.iloc[0] == row.test_top1
    for text, message in (("hinton: {beta: 1.0}", "hinton has no weight beta"),
                          ("genkd: {ramp_epochs: 0}", "genkd: epochs and ramp_epochs must be >= 1"),
                          ("fitnet: {hint_weight: lots}", "fitnet: hint_weight: expected a number")):
        (tmp_path / "bad.yaml").write_text(text + "\n")
        bad = _action_kd("--hparams", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "bad"))
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr
