"""mer.store: the Zarr v3 feature store (feature sets, completion ledger, provenance, import/export).

Typical use::

    from mer.store import FeatureStore, Provenance
    store = FeatureStore("features.zarr")
    fs = store.create("audio/whisper-base", level="utt", dim=512,
                      provenance=Provenance(extractor="whisper-ct2", model="openai/whisper-base"))
    with fs.writer() as w:
        for name, vec in results:
            w.add(name, vec)
    X = store.read("audio/whisper-base", names=["clip1", "clip2"])
"""

from .errors import (
    ClipValueError,
    FeatureSetNotFound,
    MissingClipsError,
    ProvenanceMismatch,
    StoreError,
    StoreLockTimeout,
    StoreWriteError,
)
from .featureset import FeatureSet, FrameBatch
from .featurestore import FeatureStore, JoinedFeatures
from .provenance import Provenance, hash_path
from .segments import Segment
from .writer import FeatureSetWriter

__all__ = [
    "ClipValueError",
    "FeatureSet",
    "FeatureSetNotFound",
    "FeatureSetWriter",
    "FeatureStore",
    "FrameBatch",
    "JoinedFeatures",
    "MissingClipsError",
    "ProvenanceMismatch",
    "Provenance",
    "Segment",
    "StoreError",
    "StoreLockTimeout",
    "StoreWriteError",
    "hash_path",
]
