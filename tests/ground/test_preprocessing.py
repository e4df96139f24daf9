"""The evaluation transform's two forms: the model server's Pillow/NumPy one (EvalPixels, which lets a worker run
without torch) gives exactly the numbers of torchvision's, which training uses."""
import numpy as np
import pytest
from PIL import Image

from image_classifier.preprocessing import EvalPixels, build_transforms

# Square, landscape, portrait, odd sizes, one already at the resized size, smaller than the crop, very long.
SIZES = [(20, 20), (500, 375), (375, 500), (257, 256), (18, 40), (256, 256), (301, 17), (73, 219)]


@pytest.mark.parametrize("image_size", [16, 64, 224])
def test_lean_preprocessing_equals_torchvision_s(image_size):
    _, torchvision_transform = build_transforms(image_size, "none", mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    lean = EvalPixels(image_size, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    rng = np.random.default_rng(image_size)
    for width, height in SIZES:
        picture = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        expected = torchvision_transform(picture).numpy()
        got = lean(picture)
        assert got.dtype == np.float32 and got.shape == expected.shape == (3, image_size, image_size)
        assert np.array_equal(got, expected), (width, height, float(np.abs(got - expected).max()))
