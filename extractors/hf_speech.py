"""Self-supervised speech encoders from Hugging Face: HuBERT, wav2vec 2.0, WavLM, data2vec-audio.

Everything that ``transformers.AutoModel`` loads as a speech encoder with a convolutional feature
encoder (``config.conv_kernel`` / ``config.conv_stride``) works. Features are hidden states of the
transformer, a selection of layers pooled together (the MER baselines average the last four).

Batching is exact: a clip extracted alone or inside a batch of longer clips gives the same vectors.

* Models whose conv feature encoder uses layer norm (``feat_extract_norm == "layer"``: wav2vec2-large,
  hubert-large, WavLM, data2vec-audio) take an ``attention_mask``; clips are sorted by length and
  zero-padded, and the model ignores the padding.
* Models with group norm (``feat_extract_norm == "group"``: hubert-base, wav2vec2-base) normalise
  each channel over the whole (padded) input and take no mask, so padding would change the result.
  Only clips (or windows) of identical length are batched together; the rest run one by one.

Torch and transformers are imported lazily so that importing this module stays cheap.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import (
    AudioClip,
    Extractor,
    ExtractorConfig,
    Features,
    ItemError,
    masked_mean,
    register_extractor,
    torch_dtype,
)

log = logging.getLogger(__name__)


# ---- helpers shared with hf_text --------------------------------------------------------
def parse_layers(spec: str, n_states: int) -> list[int]:
    """Indices (non-negative, into ``hidden_states``) selected by a layer spec.

    ``n_states`` is the length of the ``hidden_states`` tuple (number of layers + 1: index 0 is the
    embedding output). ``spec`` is ``"last"``, ``"lastN"`` (the last N states, e.g. ``"last4"``) or
    a comma list of indices, negative counting from the end (``"-1,-2"``, ``"6"``).
    """
    s = spec.strip().lower().replace(" ", "")
    if s == "last":
        idx = [n_states - 1]
    elif (m := re.fullmatch(r"last(\d+)", s)) is not None:
        n = int(m.group(1))
        if not 1 <= n <= n_states:
            raise ValueError(f"layers={spec!r}: the model has {n_states} hidden states (layers + embeddings)")
        idx = list(range(n_states - n, n_states))
    else:
        try:
            raw = [int(x) for x in s.split(",") if x != ""]
        except ValueError:
            raise ValueError(f"layers must be 'last', 'lastN' or a comma list of indices; got {spec!r}") from None
        if not raw:
            raise ValueError(f"layers={spec!r} selects no layer")
        idx = []
        for i in raw:
            if not -n_states <= i < n_states:
                raise ValueError(f"layers={spec!r}: index {i} out of range for {n_states} hidden states")
            idx.append(i % n_states)
    return idx


def pool_layers(hidden_states: Any, indices: list[int], how: str):  # -> torch.Tensor [B, T, D]
    """Mean or sum of the selected hidden states (each ``[B, T, D]``)."""
    if how not in ("mean", "sum"):
        raise ValueError(f"layer_pool must be 'mean' or 'sum', got {how!r}")
    if len(indices) == 1:
        return hidden_states[indices[0]]
    acc = hidden_states[indices[0]].float()
    for i in indices[1:]:
        acc = acc + hidden_states[i].float()
    if how == "mean":
        acc = acc / len(indices)
    return acc


def dtype_kwargs(dtype_name: str) -> dict[str, Any]:
    """``from_pretrained`` keyword for the compute dtype (``dtype`` from transformers 4.56, else ``torch_dtype``)."""
    import transformers

    major, minor = (int(x) for x in re.findall(r"\d+", transformers.__version__)[:2])
    key = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
    return {key: torch_dtype(dtype_name)}


# ---- the extractor ------------------------------------------------------------------------
@dataclass
class HFSpeechConfig(ExtractorConfig):
    """Config of :class:`HFSpeechExtractor`."""

    layers: str = "last4"  # hidden states used: "last", "lastN" (e.g. "last4") or indices like "-1,-2" (0 = conv/embedding output)
    layer_pool: str = "mean"  # how the selected layers combine: "mean" or "sum"
    window_s: float = 10.0  # long audio runs in windows of this many seconds (<= 0: whole clip at once); frames concatenated, utterance = mean over all frames
    normalize: bool = True  # zero-mean unit-variance waveform per clip; the model's saved feature-extractor `do_normalize` wins when present


@register_extractor("hf-speech")
class HFSpeechExtractor(Extractor):
    """Hidden states of a Hugging Face speech encoder (HuBERT / wav2vec2 / WavLM / data2vec-audio).

    Utterance level: mean over the valid frames (windows weighted by their frame counts, which is the
    mean over every frame of the clip). Frame level: ``[T, D]`` with ``times`` = frame index times the
    total conv stride over the sample rate (0.02 s for the standard 16 kHz encoders).
    """

    modality = "audio"
    config_class = HFSpeechConfig
    levels = ("utt", "frame")

    def __init__(self, config: HFSpeechConfig) -> None:
        super().__init__(config)
        import torch
        from transformers import AutoModel

        self.config: HFSpeechConfig = config
        self._torch = torch
        self.model = AutoModel.from_pretrained(config.model, **dtype_kwargs(config.dtype))
        self.model.eval().to(config.device)
        mc = self.model.config
        if not hasattr(mc, "conv_kernel") or not hasattr(mc, "conv_stride"):
            raise ValueError(f"{config.model!r} ({type(self.model).__name__}) has no conv feature encoder: not a speech encoder")
        self.kernels = [int(k) for k in mc.conv_kernel]
        self.strides = [int(s) for s in mc.conv_stride]
        self.hop = int(np.prod(self.strides))  # samples per output frame
        self.min_samples = self._receptive_field()
        self.uses_mask = getattr(mc, "feat_extract_norm", "layer") == "layer"
        n_states = int(mc.num_hidden_layers) + 1
        self.layer_idx = parse_layers(config.layers, n_states)
        if config.layer_pool not in ("mean", "sum"):
            raise ValueError(f"layer_pool must be 'mean' or 'sum', got {config.layer_pool!r}")
        self.sample_rate, self.do_normalize = self._feature_extractor_settings()
        log.info("hf-speech %s: %s, layers %s (%s), hop %d samples, mask=%s, normalize=%s",
                 config.model, type(self.model).__name__, self.layer_idx, config.layer_pool,
                 self.hop, self.uses_mask, self.do_normalize)

    # -- setup helpers
    def _receptive_field(self) -> int:
        """Fewest input samples that give one output frame."""
        n = 1
        for k, s in zip(reversed(self.kernels), reversed(self.strides)):
            n = (n - 1) * s + k
        return n

    def _feature_extractor_settings(self) -> tuple[int, bool]:
        """(sampling rate, do_normalize) from the model's saved feature-extractor config, if any."""
        sr, norm = 16000, bool(self.config.normalize)
        try:
            from transformers import AutoFeatureExtractor

            fe = AutoFeatureExtractor.from_pretrained(self.config.model)
        except Exception as e:  # no preprocessor_config.json: keep the config's settings
            log.debug("no feature-extractor config for %s (%s); normalize=%s", self.config.model, e, norm)
            return sr, norm
        sr = int(getattr(fe, "sampling_rate", sr) or sr)
        if hasattr(fe, "do_normalize"):
            norm = bool(fe.do_normalize)
            if norm != self.config.normalize:
                log.info("hf-speech: using the model's do_normalize=%s (config normalize=%s)", norm, self.config.normalize)
        return sr, norm

    # -- contract
    @property
    def dim(self) -> int:
        """Hidden size of the encoder."""
        return int(self.model.config.hidden_size)

    def decode_settings(self) -> dict[str, Any]:
        """Audio must be decoded mono at the model's sampling rate."""
        return {"sample_rate": self.sample_rate}

    def output_frames(self, n_samples: int) -> int:
        """Valid output frames for an input of ``n_samples`` (the conv length formula)."""
        n = int(n_samples)
        for k, s in zip(self.kernels, self.strides):
            n = (n - k) // s + 1
        return max(n, 0)

    def _prepare(self, clip: AudioClip) -> tuple[np.ndarray, dict[str, Any]]:
        """Mono float32 waveform at the model rate, normalised if asked, plus notes."""
        notes: dict[str, Any] = {}
        x = np.asarray(clip.samples, dtype=np.float32)
        if x.ndim == 2:  # tolerate [N, C] / [C, N] by averaging the channel axis
            x = x.mean(axis=int(np.argmin(x.shape)))
        if x.ndim != 1:
            raise ItemError(clip.name, f"audio samples must be 1-D, got shape {x.shape}")
        if x.size == 0:
            raise ItemError(clip.name, "empty audio (0 samples)")
        if not np.all(np.isfinite(x)):
            raise ItemError(clip.name, "audio has NaN or infinite samples")
        if clip.sample_rate != self.sample_rate:
            import torchaudio.functional as AF

            x = AF.resample(self._torch.from_numpy(x), int(clip.sample_rate), self.sample_rate).numpy()
            notes["resampled_from"] = int(clip.sample_rate)
            if x.size == 0:
                raise ItemError(clip.name, "empty audio after resampling")
        if self.do_normalize:
            x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
        if x.size < self.min_samples:
            x = np.concatenate([x, np.zeros(self.min_samples - x.size, np.float32)])
            notes["padded"] = True
        return x.astype(np.float32, copy=False), notes

    def _windows(self, n: int) -> list[tuple[int, int]]:
        """(start, end) sample ranges covering ``n`` samples; a too-short tail joins the previous window."""
        w = int(round(self.config.window_s * self.sample_rate)) if self.config.window_s > 0 else 0
        if w <= 0 or n <= w:
            return [(0, n)]
        w = max(w, self.min_samples)
        bounds = [(s, min(s + w, n)) for s in range(0, n, w)]
        if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < self.min_samples:
            last = bounds.pop()
            bounds[-1] = (bounds[-1][0], last[1])
        return bounds

    def _batches(self, lengths: list[int]) -> list[list[int]]:
        """Segment indices per forward pass: length-sorted; exact-length groups for group-norm models."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        bs = max(1, int(self.config.batch_size))
        out: list[list[int]] = []
        cur: list[int] = []
        for i in order:
            if cur and (len(cur) >= bs or (not self.uses_mask and lengths[cur[0]] != lengths[i])):
                out.append(cur)
                cur = []
            cur.append(i)
        if cur:
            out.append(cur)
        return out

    def extract(self, items: list[AudioClip]) -> list[Features]:
        """Features for each clip, in order (see the class docstring)."""
        torch = self._torch
        cfg = self.config
        frame_level = cfg.level == "frame"
        prepared = [self._prepare(c) for c in items]  # raises ItemError before any forward pass

        # segments: (item index, start sample, waveform)
        segs: list[tuple[int, int, np.ndarray]] = []
        for i, (x, notes) in enumerate(prepared):
            bounds = self._windows(len(x))
            if len(bounds) > 1:
                notes["windows"] = len(bounds)
            segs.extend((i, a, x[a:b]) for a, b in bounds)

        lengths = [len(s[2]) for s in segs]
        seg_frames: list[Any] = [None] * len(segs)  # frame level: [T, D] float32 arrays
        seg_mean: list[Any] = [None] * len(segs)  # utt level: [D] float32 tensors (on CPU)
        dtype = next(self.model.parameters()).dtype
        dev = torch.device(cfg.device)
        with torch.inference_mode():
            for batch in self._batches(lengths):
                L = max(lengths[j] for j in batch)
                wav = torch.zeros(len(batch), L, dtype=torch.float32)
                mask = torch.zeros(len(batch), L, dtype=torch.long)
                for r, j in enumerate(batch):
                    wav[r, : lengths[j]] = torch.from_numpy(segs[j][2])
                    mask[r, : lengths[j]] = 1
                kwargs: dict[str, Any] = {"output_hidden_states": True, "return_dict": True}
                if self.uses_mask:
                    kwargs["attention_mask"] = mask.to(dev)
                out = self.model(wav.to(dev, dtype), **kwargs)
                h = pool_layers(out.hidden_states, self.layer_idx, cfg.layer_pool).float()  # [B, T, D]
                valid = torch.tensor([self.output_frames(lengths[j]) for j in batch], device=h.device)
                if frame_level:
                    hc = h.cpu()
                    for r, j in enumerate(batch):
                        seg_frames[j] = hc[r, : int(valid[r])].numpy().copy()
                else:
                    fmask = torch.arange(h.shape[1], device=h.device)[None, :] < valid[:, None]
                    means = masked_mean(h, fmask).cpu()
                    for r, j in enumerate(batch):
                        seg_mean[j] = (means[r], int(valid[r]))

        results: list[Features] = []
        hop_s = self.hop / self.sample_rate
        by_item: dict[int, list[int]] = {}
        for j, s in enumerate(segs):
            by_item.setdefault(s[0], []).append(j)
        for i, (_x, notes) in enumerate(prepared):
            mine = by_item[i]
            if frame_level:
                parts = [seg_frames[j] for j in mine]
                times = np.concatenate([segs[j][1] / self.sample_rate + np.arange(len(seg_frames[j])) * hop_s
                                        for j in mine])
                values = np.concatenate(parts, axis=0).astype(np.float32)
                results.append(Features(values=values, times=times.astype(np.float64), notes=notes))
            else:
                vecs = torch.stack([seg_mean[j][0] for j in mine])
                w = torch.tensor([float(seg_mean[j][1]) for j in mine])
                v = (vecs * w[:, None]).sum(0) / w.sum().clamp(min=1.0)
                results.append(Features(values=v.numpy().astype(np.float32), notes=notes))
        return results

    # for windowing arithmetic in tests / callers
    def expected_frames(self, n_samples: int) -> int:
        """Total frames the extractor returns for ``n_samples`` at the model rate (windows included)."""
        n = max(int(n_samples), self.min_samples)
        return sum(self.output_frames(b - a) for a, b in self._windows(n))


__all__ = ["HFSpeechConfig", "HFSpeechExtractor", "parse_layers", "pool_layers", "dtype_kwargs"]
