"""Training data: CT sources, a preprocessed-CT cache, views rendered on the fly, and DRR
stacks written by ``xray2xray drr`` (``stacks:DIR``)."""
from .cache import (CTLoadWarning, PreprocessedCache, Preprocessing, VolumeProvider, default_cache_dir,
                    preprocess, source_digest)
from .sources import CTItem, resolve_source
from .stacks import (DRRStackSet, StackItem, StackLoadWarning, evaluate_stacks, is_stack_source,
                     list_stacks, mean_stack_views)
from .views import ViewBatch, ViewRenderer, ViewSampling, clean_sampling, render_views, sample_angles

__all__ = ["CTLoadWarning", "VolumeProvider", "clean_sampling", "render_views", "CTItem", "DRRStackSet", "PreprocessedCache", "Preprocessing", "ViewBatch", "ViewRenderer",
           "StackItem", "StackLoadWarning", "ViewSampling", "default_cache_dir", "evaluate_stacks",
           "is_stack_source", "list_stacks", "mean_stack_views", "preprocess", "resolve_source",
           "sample_angles", "source_digest"]
