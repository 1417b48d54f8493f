"""Label maps over images: the slice shown, the colours, and the picture written."""

import numpy as np
from PIL import Image

from medgen_cli.meta import ImageMeta
from medgen_cli.viz.masks import label_colours, mask_overlay_grid, overlay_slices


def test_a_volume_is_shown_at_its_most_labelled_axial_slice():
    meta = ImageMeta(affine=np.diag([1.0, 1.0, 2.0, 1.0]))  # RAS: k is the axial normal
    image = np.random.default_rng(0).normal(size=(8, 8, 6)).astype(np.float32)
    labels = np.zeros((8, 8, 6), np.int16)
    labels[2:6, 2:6, 4] = 3
    labels[3, 3, 1] = 1
    shown, lab = overlay_slices(image, labels, meta)
    assert (lab.image == 3).sum() == 16  # slice k = 4
    assert np.isclose(np.sort(shown.image.ravel()), np.sort(image[:, :, 4].ravel())).all()


def test_colours_skip_the_background_and_the_picture_is_written(tmp_path):
    colours = label_colours([0, 1, 4])
    assert list(colours) == [1, 4] and colours[1] != colours[4]
    meta = ImageMeta(affine=np.diag([-1.0, -1.0, 1.0, 1.0]))
    image = np.linspace(-1, 1, 256, dtype=np.float32).reshape(16, 16)
    labels = np.zeros((16, 16), np.int16)
    labels[4:9, 4:9] = 1
    path = mask_overlay_grid(tmp_path / "o.png", [[(image, labels, meta), None]], ("sample", "real"), ["a"], -1, 1,
                             [0, 1, 4], title="t")
    with Image.open(path) as png:
        pixels = np.asarray(png.convert("RGB")).astype(int)
    assert png.size[0] > 100 and (np.abs(pixels[..., 0] - pixels[..., 2]) > 40).any()  # a colour, not only grey
