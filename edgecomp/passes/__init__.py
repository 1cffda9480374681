"""Graph passes on the ONNX model: each is a pure function ModelProto -> ModelProto."""

from edgecomp.passes.dead_channels import interval_upper_bounds, observed_upper_bounds, zero_dead_channels
from edgecomp.passes.fold_constants import fold_constants
from edgecomp.passes.prune import (
    count_macs,
    dead_channel_masks,
    magnitude_prune,
    parse_prune,
    prunable_groups,
    prune_channels,
)
from edgecomp.passes.simplify import simplify

__all__ = [
    "count_macs",
    "dead_channel_masks",
    "fold_constants",
    "magnitude_prune",
    "parse_prune",
    "prunable_groups",
    "prune_channels",
    "simplify",
    "interval_upper_bounds",
    "observed_upper_bounds",
    "zero_dead_channels",
]
