"""RASA: known answers on constructed tokens, and the issue's checks on a tiny pretrained model with real images."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from franca_core.config import PipelineConfig, RasaConfig
from franca_core.eval.cache import cached_features
from franca_core.eval.data import EvalSet
from franca_core.eval.knn import knn_accuracies
from franca_core.eval.overcluster import overcluster
from franca_core.eval.position_probe import augmented_tokens, fit_rasa_on
from franca_core.models.io import load_backbone, save_backbone
from franca_core.models.rasa_backbone import RasaBackbone
from franca_core.rasa import (
    chance_mse,
    compose_rounds,
    dihedral,
    dihedral_choices,
    fit_rasa,
    gram_schmidt,
    position_targets,
    project_out,
)

FAST = RasaConfig(rounds=4, epochs=3, lr=0.01, batch_size=64, min_steps=150)


def _planted(n: int, grid: int = 8, dim: int = 64, amplitude: float = 3.0, seed: int = 0) -> torch.Tensor:
    """(n, grid, grid, dim) tokens: Gaussian content + a rank-4 code of (row, col, row^2, col^2) on fixed axes."""
    g = torch.Generator().manual_seed(seed)
    axes = torch.linalg.qr(torch.randn(dim, 4, generator=torch.Generator().manual_seed(7)))[0].t()
    pos = position_targets(grid, grid).reshape(grid, grid, 2) - 0.5
    code = torch.cat([pos, pos**2], dim=-1) * amplitude
    return torch.randn(n, grid, grid, dim, generator=g) + code @ axes


# --------------------------------------------------------------------------------------- constructed inputs
def test_chance_mse__paper_value_at_16() -> None:
    assert chance_mse(16) == pytest.approx(0.0944, abs=1e-4)
    assert chance_mse(8, 8) == pytest.approx((64 - 1) / (12 * 49))
    assert chance_mse(4, 8) == pytest.approx((chance_mse(4) + chance_mse(8)) / 2)


def test_gram_schmidt__orthonormal_and_orthogonal_to_the_basis() -> None:
    g = torch.Generator().manual_seed(0)
    basis = gram_schmidt(torch.randn(4, 32, generator=g))
    new = gram_schmidt(torch.randn(2, 32, generator=g), basis)
    full = torch.cat([basis, new])
    assert torch.allclose(full @ full.t(), torch.eye(6), atol=1e-5)


def test_dihedral__group_elements_keep_the_grid_shape() -> None:
    x = torch.arange(12.0).reshape(1, 1, 3, 4)
    assert dihedral_choices(3, 4) == [0, 2, 4, 6] and dihedral_choices(4, 4) == list(range(8))
    assert all(dihedral(x, k).shape == x.shape for k in dihedral_choices(3, 4))
    assert torch.equal(dihedral(x, 4), x.flip(-1)) and torch.equal(dihedral(x, 0), x)


def test_fit_rasa__planted_position_code_is_removed_to_chance() -> None:
    res = fit_rasa(_planted(400), _planted(100, seed=1), FAST)
    assert res.mse_before < 0.5 * res.chance, f"planted code not found: {res.mse_before} vs chance {res.chance}"
    assert abs(res.mse_after - res.chance) <= 0.1 * res.chance, res.summary()
    assert res.directions.shape == (8, 64)


@pytest.mark.parametrize("composition", ["orthogonal", "sequential"])
def test_fit_rasa__stored_matrix_equals_round_by_round_projection(composition: str) -> None:
    test = _planted(50, seed=2)
    res = fit_rasa(_planted(300), test, FAST.model_copy(update={"composition": composition}))
    stepwise = test.clone()
    for r in range(len(res.rounds)):
        stepwise = project_out(stepwise, res.directions[2 * r : 2 * r + 2])
    assert torch.allclose(test @ res.matrix, stepwise, atol=1e-5)
    assert res.composition == composition and res.summary()["composition"] == composition
    if composition == "orthogonal":
        assert torch.allclose(res.matrix, res.matrix.t(), atol=1e-6)  # an orthogonal projector
    assert abs(res.mse_after - res.chance) <= 0.1 * res.chance, res.summary()


def _franca_round_map(weight: torch.Tensor) -> torch.Tensor:
    """Franca's ``decompose_pos_2D`` as a (D, D) map for row vectors: u_r = w_r / |w_r|, u_c = w_c orthonormalised
    against u_r only, I - u_r u_r^T - u_c u_c^T (float64)."""
    w = weight.double()
    u_r = w[0] / w[0].norm()
    u_c = w[1] - (w[1] @ u_r) * u_r
    u_c = u_c / u_c.norm()
    return torch.eye(w.shape[1], dtype=torch.float64) - torch.outer(u_r, u_r) - torch.outer(u_c, u_c)


def _round_weights(rounds: int = 9, dim: int = 192, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, dim, generator=g) for _ in range(rounds)]


def test_compose_rounds__sequential_is_the_product_of_franca_round_maps() -> None:
    weights = _round_weights()
    matrix, directions = compose_rounds(weights, "sequential")
    expected = torch.eye(192, dtype=torch.float64)
    for weight in weights:
        expected = expected @ _franca_round_map(weight)
    assert torch.allclose(matrix.double(), expected, atol=1e-5)
    assert directions.shape == (18, 192)
    x = torch.randn(5, 192, generator=torch.Generator().manual_seed(1))
    stepwise = x.double()
    for weight in weights:  # applied round by round, as Franca's RASAHead.forward does
        stepwise = stepwise @ _franca_round_map(weight)
    assert torch.allclose((x @ matrix).double(), stepwise, atol=1e-5)
    assert not torch.allclose(matrix, matrix.t(), atol=1e-3)  # planes of different rounds overlap


def test_compose_rounds__orthogonal_is_a_symmetric_idempotent_projector() -> None:
    weights = _round_weights()
    matrix, directions = compose_rounds(weights, "orthogonal")
    assert torch.allclose(directions @ directions.t(), torch.eye(18), atol=1e-5)
    assert torch.allclose(matrix, matrix.t(), atol=1e-6)
    assert torch.allclose(matrix @ matrix, matrix, atol=1e-5)
    assert float(torch.trace(matrix)) == pytest.approx(192 - 18, abs=1e-3)  # rank of a projector = its trace
    for weight in weights:  # every round's plane is removed entirely
        assert float((weight @ matrix).abs().max()) < 1e-4


def test_compose_rounds__sequential_and_orthogonal_differ_by_a_few_percent() -> None:
    gaps = []
    for seed in range(5):
        weights = _round_weights(seed=seed)
        seq, _ = compose_rounds(weights, "sequential")
        orth, _ = compose_rounds(weights, "orthogonal")
        gaps.append(float(torch.linalg.matrix_norm(seq - orth) / torch.linalg.matrix_norm(orth)))
    assert all(0.02 < gap < 0.15 for gap in gaps), gaps  # about 6 % at D = 192, the tiny width


def test_compose_rounds__unknown_composition_raises_naming_it() -> None:
    with pytest.raises(ValueError, match="'diagonal'"):
        compose_rounds(_round_weights(1), "diagonal")


def test_fit_rasa__empty_or_flat_inputs_raise_naming_the_cause() -> None:
    with pytest.raises(ValueError, match="empty"):
        fit_rasa(torch.zeros(0, 4, 4, 8), torch.zeros(2, 4, 4, 8), FAST)
    with pytest.raises(ValueError, match=r"\(images, h, w, D\)"):
        fit_rasa(torch.zeros(4, 16, 8), torch.zeros(2, 16, 8), FAST)


# ------------------------------------------------------------------------------ tiny pretrained model, real data
@pytest.fixture(scope="module")
def fitted(tiny_pretrained: Path, tiny_cfg: PipelineConfig, shared_data: Path) -> dict:
    loaded = load_backbone(tiny_pretrained)
    patch = loaded.model_cfg.patch_size
    rasa_set = EvalSet(shared_data / "tinyimagenet-train.parquet", patch, max_images=300, seed=1)
    result = fit_rasa_on(loaded.backbone, rasa_set, tiny_cfg.rasa)
    return {"backbone": loaded.backbone, "result": result, "patch": patch}


@pytest.mark.slow
def test_fit_rasa__pretrained_tiny_position_mse_after_within_10pct_of_chance(fitted: dict) -> None:
    res = fitted["result"]
    assert len(res.rounds) == 9 and res.grid == (8, 8)
    assert abs(res.mse_after - res.chance) <= 0.1 * res.chance, res.summary()


@pytest.mark.slow
def test_fit_rasa__pretrained_tiny_matrix_equals_round_by_round_on_real_tokens(fitted: dict,
                                                                               shared_data: Path) -> None:
    res = fitted["result"]
    evalset = EvalSet(shared_data / "tinyimagenet-val.parquet", fitted["patch"], max_images=16)
    tokens = augmented_tokens(fitted["backbone"], evalset, views=1).float()[:, 0]
    stepwise = tokens
    for r in range(len(res.rounds)):
        stepwise = project_out(stepwise, res.directions[2 * r : 2 * r + 2])
    assert torch.allclose(tokens @ res.matrix, stepwise, atol=1e-4)
    wrapped = RasaBackbone(fitted["backbone"], res.matrix)
    images = torch.stack([evalset[i][0] for i in range(4)])
    with torch.no_grad():
        plain, projected = fitted["backbone"].forward_masked(images), wrapped.forward_masked(images)
    assert torch.equal(plain["cls"], projected["cls"]), "RASA must not touch CLS"
    assert torch.allclose(projected["patch"], plain["patch"] @ res.matrix, atol=1e-5)


@pytest.mark.slow
def test_fit_rasa__knn_on_mean_patch_tokens_drops_at_most_1_point(fitted: dict, shared_data: Path,
                                                                  tmp_path_factory: pytest.TempPathFactory) -> None:
    cache = tmp_path_factory.mktemp("rasa-features")
    bank = cached_features(fitted["backbone"], EvalSet(shared_data / "tinyimagenet-train.parquet", fitted["patch"],
                                                       max_images=1000, seed=2), cache)
    query = cached_features(fitted["backbone"], EvalSet(shared_data / "tinyimagenet-val.parquet", fitted["patch"],
                                                        max_images=500, seed=3), cache)
    m = fitted["result"].matrix
    before = knn_accuracies(bank["patch_mean"], bank["labels"], query["patch_mean"], query["labels"], [20])[20]
    after = knn_accuracies(bank["patch_mean"] @ m, bank["labels"], query["patch_mean"] @ m, query["labels"], [20])[20]
    assert after >= before - 0.01, f"k-NN on mean patch tokens fell from {before:.3f} to {after:.3f}"
    assert before > 1 / 200, "mean-pooled tokens should beat 200-class chance"


@pytest.mark.slow
def test_fit_rasa__overclustering_miou_on_pets_test_drops_at_most_1_point(fitted: dict, shared_data: Path) -> None:
    evalset = EvalSet(shared_data / "pets-test.parquet", fitted["patch"])
    feats = cached_features(fitted["backbone"], evalset, None, keep_patches=True)
    m = fitted["result"].matrix
    before = overcluster(feats["patch"], feats["masks"], 2, [2])["miou"][2]
    after = overcluster((feats["patch"].float() @ m), feats["masks"], 2, [2])["miou"][2]
    assert not math.isnan(before) and after >= before - 0.01, f"mIoU fell from {before:.3f} to {after:.3f}"


@pytest.mark.slow
def test_save_backbone__rasa_matrix_ships_with_the_model(fitted: dict, tiny_cfg: PipelineConfig,
                                                         tmp_path: Path) -> None:
    path = save_backbone(RasaBackbone(fitted["backbone"], fitted["result"].matrix), tiny_cfg.train.model,
                         tmp_path / "backbone.safetensors")
    loaded = load_backbone(path)
    assert torch.equal(loaded.rasa_matrix, fitted["result"].matrix.float())
    assert isinstance(loaded.model(), RasaBackbone)
