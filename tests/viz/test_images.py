"""PNG writers: files exist, have the planned pixel size, and validate their inputs."""

from __future__ import annotations

import json

import matplotlib.image as mpimg
import numpy as np
import pytest

from medgen_cli.meta import ImageMeta
from medgen_cli.viz import (
    box_plot,
    error_map,
    figure_size,
    histograms,
    mip,
    multi_slice_strip,
    orthogonal_views,
    plot_metrics,
    reconstruction_grid,
    save_grid,
)
from medgen_cli.viz.images import DPI, MAX_FIGURE_PX, panel_inches

META = ImageMeta(affine=np.diag([0.8, 0.8, 2.5, 1.0]))


def size_px(path) -> tuple[int, int]:
    h, w = mpimg.imread(path).shape[:2]
    return w, h


def planned(*args, **kw) -> tuple[int, int]:
    w, h = figure_size(*args, **kw)
    return round(w * DPI), round(h * DPI)


@pytest.fixture
def vol():
    return np.random.default_rng(0).random((20, 18, 10))


def test_save_grid_writes_the_planned_size(tmp_path):
    img = np.random.default_rng(1).random((12, 16))
    rows = [[img, img * 0.9, img * 0.1 - 0.05], [img, None, img * -0.1]]
    path = save_grid(tmp_path / "sub" / "grid.png", rows, ["input", "reconstruction", "error"], 0.0, 1.0,
                     error_columns=(2,))
    assert path == tmp_path / "sub" / "grid.png" and path.is_file()
    assert size_px(path) == planned(2, 3, 1, colorbar=True) == (3 * 128 + 48, 2 * 128 + 28)
    with pytest.raises(ValueError, match="2D"):
        save_grid(tmp_path / "bad.png", [[np.zeros((2, 2, 2))]])
    with pytest.raises(ValueError, match="vmax"):
        save_grid(tmp_path / "bad.png", [[img]], vmin=1.0, vmax=0.0)


def test_volume_pictures(tmp_path, vol):
    assert size_px(orthogonal_views(tmp_path / "o.png", vol, META)) == planned(1, 3, 1)
    assert size_px(multi_slice_strip(tmp_path / "s.png", vol, META, n=4)) == planned(1, 4, 1)
    assert size_px(multi_slice_strip(tmp_path / "s2.png", vol[:, :, :3], META, n=8)) == planned(1, 3, 1)
    assert size_px(mip(tmp_path / "m.png", vol, META, axis="coronal")) == planned(1, 1, 1)
    assert size_px(error_map(tmp_path / "e.png", vol * 0.9, vol, META, vmax=0.2)) == planned(1, 3, 1, colorbar=True)
    assert size_px(error_map(tmp_path / "e2.png", vol[:, :, 0], vol[:, :, 1])) == planned(1, 1, 1, colorbar=True)
    with pytest.raises(ValueError, match="volume"):
        mip(tmp_path / "bad.png", vol[:, :, 0], META)
    with pytest.raises(ValueError, match="same shape"):
        error_map(tmp_path / "bad.png", vol, vol[:, :, :4])


def test_reconstruction_grid_has_a_row_per_view(tmp_path, vol):
    img = vol[:, :, 0]
    path = reconstruction_grid(tmp_path / "r.png", [vol, img], [vol * 0.9, img * 0.8], [META, META])
    assert size_px(path) == planned(4, 3, 1, row_labels=True, colorbar=True)


def test_plots(tmp_path):
    log = tmp_path / "metrics.jsonl"
    records = [{"step": s, "phase": "train", "loss": 1 / (s + 1), "lr": 1e-3} for s in range(5)]
    records += [{"step": 4, "phase": "val", "loss": 0.3, "ssim": 0.8}]
    log.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 5, "pha')  # torn last line
    path = plot_metrics(log, tmp_path / "plots" / "curves.png")
    assert path.is_file() and size_px(path) == (1200, 280)  # three 4-inch panels at 100 dpi
    # one panel is still readable: >= 800 px wide (it was 208 px)
    assert size_px(plot_metrics(log, tmp_path / "loss.png", keys=["loss"], log_scale=["loss"]))[0] >= 800
    with pytest.raises(ValueError, match="accuracy"):
        plot_metrics(log, tmp_path / "bad.png", keys=["accuracy"])
    rng = np.random.default_rng(2)
    hist = histograms(tmp_path / "h.png", {"real": rng.normal(0, 100, 500), "samples": rng.normal(20, 90, 400)},
                      xlabel="HU")
    box = box_plot(tmp_path / "b.png", {"ssim": rng.random(10), "ms_ssim": rng.random(10)})
    for path in (hist, box):
        w, h = size_px(path)
        assert w >= 800 and 300 <= h < w, (path.name, w, h)


@pytest.mark.parametrize("shape,long_side", [((2000, 1500), 512), ((512, 512), 512), ((300, 200), 300), ((40, 30), 122)])
def test_panels_show_large_images_at_512_px_and_small_ones_one_to_one(tmp_path, shape, long_side):
    """A panel draws min(image long side, 512) screen pixels (>= 122: small images are enlarged)."""
    img = np.zeros(shape)  # drawn black on the white figure: its extent is the dark pixels
    path = save_grid(tmp_path / "g.png", [[img]], vmin=0.0, vmax=1.0)
    png = mpimg.imread(path)[..., :3].mean(-1)
    w, h = size_px(path)
    assert max(w, h) >= min(long_side, 512)
    rows, cols = np.nonzero(png < 0.2)
    drawn = max(rows.max() - rows.min(), cols.max() - cols.min()) + 1
    assert abs(drawn - long_side) <= 2, (drawn, long_side)


def test_large_image_preview_is_at_least_512_px(tmp_path):
    from medgen_cli.io.store import Store
    from medgen_cli.viz.previews import store_preview

    store = Store.create(tmp_path / "s.zarr")
    xray = np.random.default_rng(4).random((1200, 900)).astype(np.float32)
    store.write("xr", xray, ImageMeta(affine=np.diag([-0.2, -0.2, 1.0, 1.0]), modality="XR"), dtype="float32")
    w, h = size_px(store_preview(tmp_path / "p.png", store))
    assert max(w, h) >= 512 and min(w, h) >= 512 - 1  # a square panel holding the radiograph


def test_many_large_panels_stay_within_the_pixel_budget(tmp_path):
    big = np.zeros((1024, 1024))
    w, h = figure_size(200, 3, cell=panel_inches([big.shape] * 600, 600))
    assert w * h * DPI**2 <= MAX_FIGURE_PX * 1.1 and panel_inches([big.shape]) * DPI > 512
