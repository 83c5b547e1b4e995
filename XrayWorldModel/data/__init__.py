"""Training data: CT sources, a preprocessed-CT cache, and views rendered on the fly."""
from .cache import PreprocessedCache, Preprocessing, default_cache_dir, preprocess, source_digest
from .sources import CTItem, resolve_source
from .views import ViewBatch, ViewRenderer, ViewSampling, sample_angles

__all__ = ["CTItem", "PreprocessedCache", "Preprocessing", "ViewBatch", "ViewRenderer",
           "ViewSampling", "default_cache_dir", "preprocess", "resolve_source", "sample_angles",
           "source_digest"]
