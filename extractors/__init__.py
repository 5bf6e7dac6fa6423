"""mer.extractors: registered feature extractors (one module per model family)."""
