"""Training data: CT sources, a preprocessed-CT cache, views rendered on the fly, and DRR
stacks written by ``xray2xray drr`` (``stacks:DIR``); both data modes are a
:class:`ViewSource` (:class:`RenderedViewSet`, :class:`DRRStackSet`)."""
from .cache import (CTLoadWarning, PreprocessedCache, Preprocessing, VolumeProvider, default_cache_dir,
                    preprocess, source_digest)
from .sources import CTItem, resolve_source
from .stacks import DRRStackSet, StackItem, StackLoadWarning, is_stack_source, list_stacks
from .views import (RenderedViewSet, TrueViews, ViewBatch, ViewRenderer, ViewSampling, ViewSource,
                    clean_sampling, render_views, sample_angles)

__all__ = ["CTItem", "CTLoadWarning", "DRRStackSet", "PreprocessedCache", "Preprocessing",
           "RenderedViewSet", "StackItem", "StackLoadWarning", "TrueViews", "ViewBatch",
           "ViewRenderer", "ViewSampling", "ViewSource", "VolumeProvider", "clean_sampling",
           "default_cache_dir", "is_stack_source", "list_stacks", "preprocess", "render_views",
           "resolve_source", "sample_angles", "source_digest"]
