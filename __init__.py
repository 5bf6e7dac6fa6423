"""mer: multimodal emotion recognition from stored features.

The repository's top-level folders install as sub-packages of ``mer``:
``mer.pipeline`` (decode stages, CLI, scheduling), ``mer.extractors`` (models),
``mer.store`` (the Zarr feature store) and ``mer.fusion`` (fusion models and training).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mer")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
