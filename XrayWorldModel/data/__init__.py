"""Training data: CT sources, a preprocessed-CT cache, views rendered on the fly, and DRR
stacks written by ``xray2xray drr`` (``stacks:DIR``)."""
from .cache import PreprocessedCache, Preprocessing, default_cache_dir, preprocess, source_digest
from .sources import CTItem, resolve_source
from .stacks import (DRRStackSet, StackItem, StackLoadWarning, evaluate_stacks, is_stack_source,
                     list_stacks, mean_stack_views)
from .views import ViewBatch, ViewRenderer, ViewSampling, sample_angles

__all__ = ["CTItem", "DRRStackSet", "PreprocessedCache", "Preprocessing", "ViewBatch", "ViewRenderer",
           "StackItem", "StackLoadWarning", "ViewSampling", "default_cache_dir", "evaluate_stacks",
           "is_stack_source", "list_stacks", "mean_stack_views", "preprocess", "resolve_source",
           "sample_angles", "source_digest"]
