"""Text encoders and language models from Hugging Face (BERT/RoBERTa, MiniLM, Llama, Qwen, Baichuan...).

``AutoModel`` gives the base model (no LM head) for encoders and causal LMs alike; features are
hidden states of a selection of layers, pooled over tokens with the attention mask (``"mean"``) or
taken at the last real token (``"last"``, the usual choice for causal LMs). Subtitles are batched by
token count with right padding, so a subtitle gives the same vector alone or in any batch.

Torch and transformers are imported lazily so that importing this module stays cheap.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .base import Extractor, ExtractorConfig, Features, ItemError, TextClip, masked_mean, register_extractor
from .hf_speech import dtype_kwargs, parse_layers, pool_layers

log = logging.getLogger(__name__)


@dataclass
class HFTextConfig(ExtractorConfig):
    """Config of :class:`HFTextExtractor`."""

    SPEED_FIELDS = (*ExtractorConfig.SPEED_FIELDS, "device_map")  # placement only, like device

    layers: str = "last"  # hidden states used: "last", "lastN" (e.g. "last4") or indices like "-1,-2" (0 = embeddings)
    layer_pool: str = "mean"  # how the selected layers combine: "mean" or "sum"
    max_tokens: int = 512  # longer subtitles are truncated (notes["truncated_tokens"] = tokens dropped)
    pooling: str = "mean"  # utterance pooling over tokens: "mean" (mask-aware) or "last" (last real token, for causal LMs)
    trust_remote_code: bool = False  # allow the model's own code from its folder / hub repo (Baichuan needs it)
    device_map: str | None = None  # e.g. "auto": spread a large model over the GPUs with accelerate; None: load on `device`


def load_padding_tokenizer(model: str | Path, trust_remote_code: bool = False, name: str | None = None) -> Any:
    """``AutoTokenizer`` of ``model`` padding on the right; a tokenizer without a pad token (Llama,
    Qwen...) pads with its eos or unk token, since padded positions are masked out anyway.

    Raises:
        ValueError: the tokenizer has none of pad, eos and unk (``name`` names the model).
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise ValueError(f"tokenizer of {(name or str(model))!r} has no pad, eos or unk token to pad with")
        tokenizer.pad_token = fallback
        log.info("tokenizer of %s has no pad token; padding with %r (masked out)", name or model, fallback)
    return tokenizer


@register_extractor("hf-text")
class HFTextExtractor(Extractor):
    """Hidden states of a Hugging Face text model for each subtitle.

    Utterance level: ``[D]`` (``pooling`` over the tokens, special tokens included). Frame level: the
    token vectors ``[T, D]`` (T = tokens after truncation), ``times=None``.
    """

    modality = "text"
    config_class = HFTextConfig
    levels = ("utt", "frame")

    def __init__(self, config: HFTextConfig) -> None:
        super().__init__(config)
        import torch
        from transformers import AutoModel

        self.config: HFTextConfig = config
        self._torch = torch
        if config.pooling not in ("mean", "last"):
            raise ValueError(f"pooling must be 'mean' or 'last', got {config.pooling!r}")
        if config.layer_pool not in ("mean", "sum"):
            raise ValueError(f"layer_pool must be 'mean' or 'sum', got {config.layer_pool!r}")
        if config.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {config.max_tokens}")
        trc = bool(config.trust_remote_code)
        self.tokenizer = load_padding_tokenizer(config.model, trc, name=config.model)
        load_kw: dict[str, Any] = {"trust_remote_code": trc, **dtype_kwargs(config.dtype)}
        if config.device_map:
            load_kw["device_map"] = config.device_map
        self.model = AutoModel.from_pretrained(config.model, **load_kw)
        self.model.eval()
        if not config.device_map:
            self.model.to(config.device)
        n_states = int(self.model.config.num_hidden_layers) + 1
        self.layer_idx = parse_layers(config.layers, n_states)
        params = inspect.signature(self.model.forward).parameters
        self._accepts = {k for k, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        self.max_len = int(config.max_tokens)
        tml = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(tml, int) and 0 < tml < self.max_len:
            log.info("hf-text: max_tokens %d capped at the tokenizer's model_max_length %d", self.max_len, tml)
            self.max_len = tml
        log.info("hf-text %s: %s, layers %s (%s), pooling %s, max %d tokens", config.model,
                 type(self.model).__name__, self.layer_idx, config.layer_pool, config.pooling, self.max_len)

    @property
    def dim(self) -> int:
        """Hidden size of the model."""
        return int(self.model.config.hidden_size)

    def _input_device(self):  # -> torch.device
        """Where input ids go (the embedding's device; differs from ``config.device`` with device_map)."""
        try:
            return self.model.get_input_embeddings().weight.device
        except Exception:
            return self._torch.device(self.config.device)

    def _tokenize(self, items: list[TextClip]) -> tuple[list[dict[str, list[int]]], list[dict[str, Any]]]:
        """Token dicts (truncated to ``max_len``) and notes per item; ItemError on empty text."""
        texts = []
        for it in items:
            t = it.text if isinstance(it.text, str) else ("" if it.text is None else str(it.text))
            t = t.strip()
            if not t:
                raise ItemError(it.name, "empty subtitle")
            texts.append(t)
        full = self.tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False)
        keys = [k for k in full.keys() if k in ("input_ids", "attention_mask", "token_type_ids")]
        encs: list[dict[str, list[int]]] = []
        notes: list[dict[str, Any]] = []
        for i, t in enumerate(texts):
            n = len(full["input_ids"][i])
            note: dict[str, Any] = {}
            if n > self.max_len:
                enc = self.tokenizer(t, add_special_tokens=True, truncation=True, max_length=self.max_len)
                enc = {k: list(enc[k]) for k in keys}
                note["truncated_tokens"] = n - len(enc["input_ids"])
            else:
                enc = {k: list(full[k][i]) for k in keys}
            if len(enc["input_ids"]) == 0:
                raise ItemError(items[i].name, "subtitle gives no tokens")
            encs.append(enc)
            notes.append(note)
        return encs, notes

    def extract(self, items: list[TextClip]) -> list[Features]:
        """Features for each subtitle, in order (see the class docstring)."""
        torch = self._torch
        cfg = self.config
        encs, notes = self._tokenize(items)
        order = sorted(range(len(encs)), key=lambda i: -len(encs[i]["input_ids"]))
        bs = max(1, int(cfg.batch_size))
        dev = self._input_device()
        out: list[Features | None] = [None] * len(encs)
        with torch.inference_mode():
            for s in range(0, len(order), bs):
                batch = order[s: s + bs]
                padded = self.tokenizer.pad([encs[i] for i in batch], padding=True, return_tensors="pt")
                kwargs = {k: v.to(dev) for k, v in padded.items() if k in self._accepts}
                kwargs["attention_mask"] = padded["attention_mask"].to(dev)
                if "use_cache" in self._accepts:
                    kwargs["use_cache"] = False
                res = self.model(**kwargs, output_hidden_states=True, return_dict=True)
                h = pool_layers(res.hidden_states, self.layer_idx, cfg.layer_pool).float()  # [B, T, D]
                mask = padded["attention_mask"].to(h.device)
                if cfg.level == "frame":
                    hc = h.cpu()
                    for r, i in enumerate(batch):
                        n = int(mask[r].sum())
                        out[i] = Features(values=hc[r, :n].numpy().copy(), times=None, notes=notes[i])
                else:
                    if cfg.pooling == "mean":
                        vec = masked_mean(h, mask)
                    else:
                        last = (mask.sum(1) - 1).clamp(min=0)
                        vec = h[torch.arange(h.shape[0], device=h.device), last]
                    vec = vec.cpu().numpy()
                    for r, i in enumerate(batch):
                        out[i] = Features(values=vec[r].astype(np.float32), notes=notes[i])
        return [f for f in out if f is not None]


__all__ = ["HFTextConfig", "HFTextExtractor"]
