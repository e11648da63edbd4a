"""The multi-crop Gaussian blur: PIL's filter on PIL images agrees with torchvision's on tensors, sigma in [0.1, 2]."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from franca_core.config import load_config
from franca_core.data.multicrop import SIGMA, GaussianBlur, MultiCropAugmentation
from franca_core.data.synthetic import render_image


def _image() -> Image.Image:
    image, _, _ = render_image(np.random.default_rng(0), size=96)
    return image


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_gaussian_blur__pil_agrees_with_the_tensor_blur(sigma: float, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("franca_core.data.multicrop.SIGMA", (sigma, sigma))
    image, blur = _image(), GaussianBlur(224)
    tensor = v2.functional.pil_to_tensor(image)
    pil_out = v2.functional.pil_to_tensor(blur(image)).float()
    tensor_out = blur(tensor).float()
    inner = (slice(None), slice(8, -8), slice(8, -8))  # borders: PIL extends edges, torchvision reflects
    change = (tensor.float() - tensor_out)[inner].abs().mean()
    diff = (pil_out - tensor_out)[inner].abs().mean()
    assert change > 0.2  # the blur did something
    assert diff < 0.25 * change, f"PIL and tensor blur differ by {diff:.2f} for a change of {change:.2f}"


def test_gaussian_blur__sigma_drawn_from_torch_rng_in_range(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[float] = []
    monkeypatch.setattr("PIL.ImageFilter.GaussianBlur.__init__",
                        lambda self, radius=2: (seen.append(radius), setattr(self, "radius", radius))[0])
    blur = GaussianBlur(96)
    torch.manual_seed(0)
    for _ in range(50):
        blur(_image())
    assert all(SIGMA[0] <= s <= SIGMA[1] for s in seen) and max(seen) - min(seen) > 1.0
    torch.manual_seed(0)
    again: list[float] = []
    seen, again = again, seen
    for _ in range(50):
        blur(_image())
    assert seen == again  # seeded like the other transforms


def test_multicrop__seeded_crops_repeat_and_the_first_global_is_always_blurred() -> None:
    crops = load_config("tiny", ["train.crops.blur=true"]).train.crops
    aug, image = MultiCropAugmentation(crops), _image()
    torch.manual_seed(3)
    a = aug(image)
    torch.manual_seed(3)
    b = aug(image)
    assert all(torch.equal(x, y) for x, y in zip(a["global"] + a["local"], b["global"] + b["local"]))
    blurs = [t for t in aug.global1.transforms if isinstance(t, v2.RandomApply)
             and isinstance(t.transforms[0], GaussianBlur)]
    assert [b.p for b in blurs] == [1.0]
    names = [type(t).__name__ for t in aug.global1.transforms]
    assert names.index("RandomApply", names.index("RandomGrayscale")) < names.index("ToImage")  # blur on PIL
