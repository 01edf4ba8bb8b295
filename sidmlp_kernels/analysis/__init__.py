"""Memorization vs generalization analysis of GR and item-ID recommenders (arXiv 2603.19809).

labels: item-level instance labels; token_level: SID-prefix support; hybrid: MSP-weighted
fusion of an ID model and a GR model; report: the end-to-end study (markdown + PNG).
"""

from .hybrid import fuse_rankings, grid_search_adaptive, grid_search_fixed, max_softmax_probability
from .labels import (
    GENERALIZATION_TYPES,
    LABELS,
    InstanceLabels,
    TransitionGraph,
    build_transition_graph,
    label_instances,
    label_shares,
    metrics_by_label,
)
from .token_level import TokenSupport, prefix_ids, token_level_table, token_support

__all__ = [
    "GENERALIZATION_TYPES",
    "LABELS",
    "InstanceLabels",
    "TokenSupport",
    "TransitionGraph",
    "build_transition_graph",
    "fuse_rankings",
    "grid_search_adaptive",
    "grid_search_fixed",
    "label_instances",
    "label_shares",
    "max_softmax_probability",
    "metrics_by_label",
    "prefix_ids",
    "token_level_table",
    "token_support",
]
