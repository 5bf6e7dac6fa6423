"""Sentence-transformer style text encoder through transformers: the default text model.

Mask-aware mean of the last hidden layer, optionally L2-normalised (as sentence-transformers'
``Normalize`` module does). The bundled default is all-MiniLM-L6-v2 (384-d).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .base import Extractor, ExtractorConfig, Features, ItemError, TextClip, masked_mean, register_extractor
from .bundled import resolve_model


@dataclass
class SentenceConfig(ExtractorConfig):
    """Sentence encoder settings."""

    model: str = "all-MiniLM-L6-v2"  # bundled alias, hub id or local folder of a BERT-like encoder
    max_tokens: int = 256  # longer subtitles are truncated (recorded per clip as truncated_tokens)
    normalize: bool = True  # L2-normalise the pooled vector
    empty: str = "fail"  # empty subtitle: "fail" (record the clip as failed) or "encode" (embed "")
    batch_size: int = 64  # subtitles per forward


@register_extractor("sentence")
class SentenceEncoder(Extractor):
    """Mean-pooled sentence embeddings."""

    modality = "text"
    config_class = SentenceConfig
    levels = ("utt",)

    def __init__(self, config: SentenceConfig) -> None:
        super().__init__(config)
        import torch
        from transformers import AutoModel, AutoTokenizer

        from .base import torch_dtype

        self.model_dir = resolve_model(config.model)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.model = AutoModel.from_pretrained(self.model_dir, dtype=torch_dtype(config.dtype))
        self.model.to(config.device).eval()
        self._torch = torch

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def weights_path(self) -> Path | None:
        return Path(self.model_dir) if Path(self.model_dir).exists() else None

    def extract(self, items: list[TextClip]) -> list[Features]:
        torch = self._torch
        cfg: SentenceConfig = self.config  # type: ignore[assignment]
        texts = [c.text.strip() for c in items]
        if cfg.empty == "fail":
            for c, t in zip(items, texts):
                if not t:
                    raise ItemError(c.name, "empty subtitle")
        out: list[Features | None] = [None] * len(items)
        order = sorted(range(len(items)), key=lambda i: len(texts[i]))  # similar lengths share a batch
        for lo in range(0, len(order), max(1, cfg.batch_size)):
            idx = order[lo:lo + cfg.batch_size]
            full = self.tokenizer([texts[i] for i in idx], add_special_tokens=True, verbose=False)["input_ids"]
            enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                 max_length=cfg.max_tokens, return_tensors="pt").to(cfg.device)
            with torch.inference_mode():
                hidden = self.model(**enc).last_hidden_state
                pooled = masked_mean(hidden, enc["attention_mask"])
                if cfg.normalize:
                    pooled = torch.nn.functional.normalize(pooled, dim=-1)
            vecs = pooled.float().cpu().numpy()
            for j, i in enumerate(idx):
                cut = max(0, len(full[j]) - cfg.max_tokens)
                out[i] = Features(vecs[j].astype(np.float32), notes={"truncated_tokens": cut} if cut else {})
        return [f for f in out if f is not None]
