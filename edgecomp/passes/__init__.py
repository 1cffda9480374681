"""Graph passes on the ONNX model: each is a pure function model -> PassResult(model, report)
(passes/base.py), with a docstring saying what it preserves."""

from edgecomp.passes.base import PassResult
from edgecomp.passes.channels import dead_channel_masks, prunable_groups
from edgecomp.passes.dead_channels import interval_upper_bounds, observed_upper_bounds, zero_dead_channels
from edgecomp.passes.fold_constants import fold_constants
from edgecomp.passes.prune import prune_channels
from edgecomp.passes.simplify import simplify
from edgecomp.passes.sparsity import magnitude_prune
from edgecomp.passes.stats import count_macs, count_params

__all__ = [
    "PassResult",
    "count_macs",
    "count_params",
    "dead_channel_masks",
    "fold_constants",
    "interval_upper_bounds",
    "magnitude_prune",
    "observed_upper_bounds",
    "prunable_groups",
    "prune_channels",
    "simplify",
    "zero_dead_channels",
]
