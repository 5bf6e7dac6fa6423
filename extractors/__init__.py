"""mer.extractors: registered feature extractors (one module per model family).

Importing this package registers every built-in extractor; none of the modules imports torch,
transformers, CTranslate2 or opensmile until an extractor is instantiated.
"""

from . import clip_image, hf_speech, hf_text, opensmile, sentence, table, whisper_ct2  # noqa: F401  (registration side effects)
from .base import (
    REGISTRY,
    AudioClip,
    Extractor,
    ExtractorConfig,
    Features,
    ItemError,
    TextClip,
    VideoClip,
    extractor_names,
    get_extractor,
    register_extractor,
)

__all__ = [
    "REGISTRY",
    "AudioClip",
    "Extractor",
    "ExtractorConfig",
    "Features",
    "ItemError",
    "TextClip",
    "VideoClip",
    "extractor_names",
    "get_extractor",
    "register_extractor",
]
