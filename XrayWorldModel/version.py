"""The package version, for provenance in every file the package writes."""
try:
    from importlib.metadata import PackageNotFoundError, version as _distribution_version
    __version__ = _distribution_version("XrayWorldModel")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.1.0"
