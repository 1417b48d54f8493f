"""Layers and blocks for any spatial rank: `layers` (picked by rank), `blocks`, `attention`."""

from medgen_cli.nn.attention import MultiHeadSelfAttention, SpatialSelfAttention, causal_mask
from medgen_cli.nn.blocks import ConvLayer, Downsample, ResBlock, ResBlockOptions, Upsample
from medgen_cli.nn.layers import as_tuple, conv_cls, make_act, make_conv, make_norm

__all__ = [
    "MultiHeadSelfAttention",
    "SpatialSelfAttention",
    "causal_mask",
    "ConvLayer",
    "Downsample",
    "ResBlock",
    "ResBlockOptions",
    "Upsample",
    "as_tuple",
    "conv_cls",
    "make_act",
    "make_conv",
    "make_norm",
]
