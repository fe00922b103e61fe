"""Building blocks: depthwise-separable convolution, channels-first layer norm, distillation feature adapters,
multi-head attention with fewer heads (what pruning leaves), name maps."""

from lightning_optim.layers.activations import ACTIVATIONS, create_act
from lightning_optim.layers.adapters import FlattenLinearAdapter, SpatialAdapter, build_feature_adapter
from lightning_optim.layers.attention import PrunedMultiheadAttention, from_multihead_attention
from lightning_optim.layers.norm import NORM_LAYERS, LayerNorm2d, create_norm
from lightning_optim.layers.separable_conv import DepthwiseSeparableConv2d

__all__ = [
    "ACTIVATIONS",
    "NORM_LAYERS",
    "DepthwiseSeparableConv2d",
    "FlattenLinearAdapter",
    "LayerNorm2d",
    "PrunedMultiheadAttention",
    "SpatialAdapter",
    "build_feature_adapter",
    "create_act",
    "create_norm",
    "from_multihead_attention",
]
