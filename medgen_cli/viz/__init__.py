"""Pictures as PNG files (matplotlib on the Agg canvas; nothing is displayed).

``orientation``: radiological display orientation derived from the affine. ``images``: grids,
orthogonal views, slice strips, maximum intensity projections, error maps, reconstruction grids.
``plots``: curves from ``metrics.jsonl``, histograms, box plots. ``masks``: label maps overlaid on
images. ``evaluation`` (imported on its own: ``from medgen_cli.viz import evaluation``): the pictures
and metric plots of ``medgen evaluate``. Every writer returns the path.
"""

from .images import (
    error_map,
    figure_size,
    mip,
    multi_slice_strip,
    orthogonal_views,
    reconstruction_grid,
    save_figure,
    save_grid,
)
from .masks import mask_overlay_grid
from .orientation import DisplaySlice, axis_codes, display_plane, display_slice, plane_axis
from .plots import box_plot, histograms, plot_metrics

__all__ = [
    "DisplaySlice", "axis_codes", "box_plot", "display_plane", "display_slice", "error_map", "figure_size",
    "histograms", "mask_overlay_grid", "mip", "multi_slice_strip", "orthogonal_views", "plane_axis", "plot_metrics",
    "reconstruction_grid", "save_figure", "save_grid",
]
