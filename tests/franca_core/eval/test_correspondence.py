"""Keypoint correspondence on known warps: the geometry, PCK with features of known behaviour, and the suite task."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from franca_core.config import load_config
from franca_core.eval.correspondence import (
    apply_homography,
    correspondence_errors,
    patch_centres,
    pck,
    random_homographies,
    warp_images,
)
from franca_core.eval.evaluate import synthetic_sets
from franca_core.eval.report import markdown
from franca_core.eval.suite import EvalSuite
from franca_core.models.backbone import build_backbone
from tasks.evaluate import headline


class PositionFeatures(nn.Module):
    """Patch features that identify the grid position and ignore the content: one-hot of the token index."""

    patch_size = 8

    def forward_masked(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        n = (x.shape[-2] // 8) * (x.shape[-1] // 8)
        return {"cls": x.new_zeros(len(x), n), "patch": torch.eye(n).expand(len(x), n, n)}


class PixelFeatures(nn.Module):
    """Patch features that are the patch's pixels: they follow the content exactly."""

    patch_size = 8

    def forward_masked(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        patch = F.unfold(x, 8, stride=8).transpose(1, 2)  # (B, N, 3 * 64), row-major patches
        return {"cls": patch.mean(1), "patch": patch}


def _translation(dx: float, dy: float, n: int = 1) -> torch.Tensor:
    h = torch.eye(3, dtype=torch.float64).repeat(n, 1, 1)
    h[:, 0, 2], h[:, 1, 2] = dx, dy
    return h


def test_apply_homography__known_matrices_give_the_analytic_points() -> None:
    affine = torch.tensor([[[2.0, 0, 3], [0, 2, -1], [0, 0, 1]]], dtype=torch.float64)
    assert apply_homography(affine, torch.tensor([[1.5, 2.5]]))[0, 0].tolist() == [6.0, 4.0]
    projective = torch.tensor([[[1.0, 0, 0], [0, 1, 0], [0.1, 0, 1]]], dtype=torch.float64)  # w = 1 + 0.1 x
    assert apply_homography(projective, torch.tensor([[2.0, 4.0]]))[0, 0].tolist() == pytest.approx([2 / 1.2, 4 / 1.2])
    assert patch_centres(2, 3, 8).tolist() == [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]]


def test_warp_images__content_lands_at_the_homography_image_of_its_source() -> None:
    image = torch.zeros(1, 1, 32, 32)
    image[0, 0, 7, 10] = 1.0  # pixel (x=10, y=7): centre (10.5, 7.5)
    moved = warp_images(image, _translation(5, 3))[0, 0]
    assert moved[10, 15] == pytest.approx(1.0) and moved.sum() == pytest.approx(1.0)
    # a smooth blob under a random homography: its intensity centroid follows H(centre) (to blur-level accuracy)
    ys, xs = torch.meshgrid(torch.arange(64) + 0.5, torch.arange(64) + 0.5, indexing="ij")
    blob = torch.exp(-((xs - 30.5) ** 2 + (ys - 26.5) ** 2) / (2 * 1.5**2))[None, None]
    h = random_homographies(1, 64, 64, 1.0, torch.Generator().manual_seed(3))
    warped = warp_images(blob, h)[0, 0].double()
    centroid = torch.stack([(warped * xs).sum(), (warped * ys).sum()]) / warped.sum()
    expected = apply_homography(h, torch.tensor([[30.5, 26.5]]))[0, 0]
    assert (centroid - expected).norm() < 0.3, (centroid, expected)


def test_random_homographies__identity_at_strength_0_seeded_and_moderate() -> None:
    assert torch.equal(random_homographies(3, 48, 64, 0.0), torch.eye(3, dtype=torch.float64).repeat(3, 1, 1))
    a = random_homographies(50, 64, 64, 1.0, torch.Generator().manual_seed(1))
    b = random_homographies(50, 64, 64, 1.0, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.allclose(a, torch.eye(3, dtype=torch.float64))
    true = apply_homography(a, patch_centres(8, 8, 8))
    inside = ((true >= 0) & (true < 64)).all(-1).double().mean()
    assert 0.8 < inside < 1.0  # warped, yet most of the image stays in view


def test_correspondence_errors__identity_warp_with_position_features_gives_pck_1() -> None:
    images = torch.randn(3, 3, 32, 32)
    errors = correspondence_errors(PositionFeatures(), images, _translation(0, 0, 3))
    assert errors["raw"].numel() == 3 * 16 and pck(errors["raw"], 32) == {"pck@0.05": 1.0, "pck@0.1": 1.0}
    assert pck(errors["oracle"], 32) == {"pck@0.05": 1.0, "pck@0.1": 1.0}


def test_correspondence_errors__a_shift_is_followed_by_content_not_by_position_features() -> None:
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    shift = _translation(8, 0, 2)  # one patch right: the last column leaves the image
    content = correspondence_errors(PixelFeatures(), images, shift)
    assert content["raw"].numel() == 2 * 8 * 7
    assert pck(content["raw"], 64)["pck@0.05"] == 1.0
    position = correspondence_errors(PositionFeatures(), images, shift)
    assert pck(position["raw"], 64) == {"pck@0.05": 0.0, "pck@0.1": 0.0}  # 8 px off: beyond 0.1 x 64 = 6.4 px


def test_eval_suite__correspondence_on_generated_images_raw_and_rasa(tmp_path) -> None:
    torch.manual_seed(0)
    model = build_backbone(load_config("tiny").train.model, drop_path=0.0).eval()
    u = F.normalize(torch.randn(2, 192), dim=1)
    matrix = torch.eye(192) - u.T @ u  # a projection, as RASA's
    sets = synthetic_sets(patch_size=8, n_images=12)
    results = {}
    for warp in (1.0, 0.0):
        cfg = load_config("tiny", ["eval.tasks=[correspondence]", "eval.correspondence_images=5",
                                   f"eval.correspondence_warp={warp}"])
        report = EvalSuite(model, sets, cfg.eval, cfg.rasa, rasa_matrix=matrix, log=lambda s: None).run()
        results[warp] = report["results"]["correspondence"]["synthetic"]
    warped = results[1.0]
    assert warped["images"] == 5 and 0 < warped["points"] <= 5 * 64 and warped["image_size"] == [64, 64]
    for variant in ("raw", "rasa", "oracle"):
        p05, p10 = warped[variant]["pck@0.05"], warped[variant]["pck@0.1"]
        assert 0 <= p05 <= p10 <= 1, (variant, p05, p10)
    assert warped["oracle"]["pck@0.1"] == 1.0  # a patch centre is always within half a diagonal (5.7 px)
    assert results[0.0]["raw"] == {"pck@0.05": 1.0, "pck@0.1": 1.0} and results[0.0]["points"] == 5 * 64
    summary = headline(report)
    assert {"pck05.synthetic.raw", "pck10.synthetic.rasa"} <= set(summary)
    assert "## Keypoint correspondence (PCK, %)" in markdown(report)
