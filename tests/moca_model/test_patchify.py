import pytest
import torch

from moca_model.compat import pil_image_processor_class
from moca_model.patchify import patchify

from .conftest import draw_image


@pytest.mark.parametrize(
    ("size", "bounds"),
    [((900, 700), (256, 1024)), ((40, 300), (4, 64)), ((56, 56), (4, 64)), ((3000, 200), (256, 1024))],
)
def test_patchify_equals_upstream_pil_processor(size, bounds):
    lo, hi = (b * 28 * 28 for b in bounds)
    img = draw_image(*size, seed=3)
    ref = pil_image_processor_class()(min_pixels=lo, max_pixels=hi)(images=[img], return_tensors="pt")
    rows, grid = patchify(img, min_pixels=lo, max_pixels=hi, mean=ref_mean(), std=ref_std())
    assert torch.equal(grid, ref["image_grid_thw"])
    torch.testing.assert_close(rows, ref["pixel_values"], rtol=0, atol=2e-6)


def ref_mean():
    return tuple(pil_image_processor_class()().image_mean)


def ref_std():
    return tuple(pil_image_processor_class()().image_std)
