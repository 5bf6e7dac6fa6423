"""Fine-tune a Hugging Face speech encoder on labelled clips (``mer finetune audio``).

The encoder (HuBERT, wav2vec2, WavLM, data2vec-audio) is loaded by the ``hf-speech`` extractor and
waveforms are prepared by its code (resampling, normalisation, padding to the receptive field);
the audio is decoded by the same decode stage as ``mer extract audio``. A linear head classifies the
mean over the valid frames of the selected hidden layers (``layers`` / ``layer_pool``, as the
extractor pools). The conv feature encoder stays frozen by default; either every transformer layer
trains or only the last N. The saved folder (weights, config, ``preprocessor_config.json``) loads
with ``mer extract audio --extractor hf-speech --model DIR``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mer.pipeline.decode_audio import AudioDecodeConfig
from mer.pipeline.inputs import DecodeSettings, load_item
from mer.store.tables import ClipTable, read_clip_table

from .data import SplitConfig, select_clips
from .train import TrainConfig, param_groups, prepare_out, run_finetune

log = logging.getLogger(__name__)


@dataclass
class AudioFinetuneConfig:
    """What is fine-tuned and how its inputs are made; recorded in ``mer_finetune.json``."""

    model: str = ""  # HF speech encoder folder or hub id
    layers: str = "last"  # hidden states the head reads (as hf-speech's layers: "last", "last4", "-1,-2")
    layer_pool: str = "mean"  # how the selected layers combine: "mean" or "sum"
    normalize: bool = True  # zero-mean unit-variance waveform (the model's saved feature-extractor setting wins)
    max_seconds: float | None = 10.0  # train on at most the first N seconds of each clip (None: whole clips)
    freeze_feature_encoder: bool = True  # keep the conv feature encoder frozen (the usual choice)
    unfreeze: int = -1  # last N transformer layers trained (-1: all of them)
    dropout: float = 0.1  # dropout on the pooled vector before the head
    cache: bool = False  # keep each clip's decoded audio in memory: decode once, not every epoch


class SpeechTask:
    """Speech encoder + linear head on the frame mean of the selected layers."""

    kind = "audio"

    def __init__(self, cfg: AudioFinetuneConfig, table: ClipTable, n_classes: int, device: str = "cpu") -> None:
        import torch
        from mer.extractors.hf_speech import HFSpeechConfig, HFSpeechExtractor

        self.cfg = cfg
        self.table = table
        self._torch = torch
        self.device = torch.device(device)
        self.ext = HFSpeechExtractor(HFSpeechConfig(model=cfg.model, layers=cfg.layers, layer_pool=cfg.layer_pool,
                                                    normalize=cfg.normalize, window_s=0.0, device=device))
        self.settings = DecodeSettings(audio=AudioDecodeConfig(sample_rate=self.ext.sample_rate,
                                                               max_seconds=cfg.max_seconds))
        self._cache: dict[str, Any] = {}
        model = self.ext.model
        if getattr(model.config, "layerdrop", 0.0):  # LayerDrop would drop entries of hidden_states mid-training
            log.info("speech fine-tune: layerdrop %.2f -> 0 (the head reads fixed layers)", model.config.layerdrop)
            model.config.layerdrop = 0.0
        for p in model.parameters():
            p.requires_grad_(True)
        if cfg.freeze_feature_encoder:
            fe = getattr(model, "feature_extractor", None)
            if fe is not None:
                for p in fe.parameters():
                    p.requires_grad_(False)
        if cfg.unfreeze >= 0:
            layers = list(model.encoder.layers)
            if cfg.unfreeze > len(layers):
                raise ValueError(f"--unfreeze {cfg.unfreeze}: the encoder has only {len(layers)} layers")
            keep = {id(p) for layer in layers[len(layers) - cfg.unfreeze:] for p in layer.parameters()}
            norm = getattr(model.encoder, "layer_norm", None)
            if norm is not None and cfg.unfreeze > 0:
                keep |= {id(p) for p in norm.parameters()}
            for p in model.parameters():
                p.requires_grad_(id(p) in keep)
        self.head = torch.nn.Sequential(torch.nn.Dropout(cfg.dropout),
                                        torch.nn.Linear(self.ext.dim, n_classes)).to(self.device)
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log.info("speech fine-tune: %s, %s, %d of %d parameters trained", cfg.model, type(model).__name__, n_train,
                 sum(p.numel() for p in model.parameters()))

    def load(self, name: str) -> Any:
        """Decode the clip's audio as ``mer extract audio`` does (cut at ``max_seconds``); with ``cache``
        a clip is decoded once and kept in memory."""
        if name in self._cache:
            return self._cache[name]
        clip = load_item("audio", self.table, name, self.settings)
        if self.cfg.cache:
            self._cache[name] = clip
        return clip

    def _pooled(self, waves: list[Any]):  # list of float32 arrays -> [B, D]
        torch = self._torch
        from mer.extractors.base import masked_mean
        from mer.extractors.hf_speech import pool_layers

        lengths = [len(w) for w in waves]
        wav = torch.zeros(len(waves), max(lengths))
        mask = torch.zeros(len(waves), max(lengths), dtype=torch.long)
        for r, w in enumerate(waves):
            wav[r, : lengths[r]] = torch.from_numpy(w)
            mask[r, : lengths[r]] = 1
        kw: dict[str, Any] = {"output_hidden_states": True, "return_dict": True}
        if self.ext.uses_mask:
            kw["attention_mask"] = mask.to(self.device)
        out = self.ext.model(wav.to(self.device), **kw)
        h = pool_layers(out.hidden_states, self.ext.layer_idx, self.cfg.layer_pool).float()
        valid = torch.tensor([self.ext.output_frames(n) for n in lengths], device=h.device)
        fmask = torch.arange(h.shape[1], device=h.device)[None, :] < valid[:, None]
        return masked_mean(h, fmask)

    def forward(self, items: list[Any]):  # -> torch.Tensor [B, C]
        """Class logits. Group-norm encoders (no attention mask) run one forward per distinct clip
        length, so padding never leaks in (clips cut at ``max_seconds`` share one length)."""
        torch = self._torch
        waves = [self.ext._prepare(it)[0] for it in items]
        if self.ext.uses_mask:
            return self.head(self._pooled(waves))
        groups: dict[int, list[int]] = {}
        for i, w in enumerate(waves):
            groups.setdefault(len(w), []).append(i)
        pooled = [None] * len(waves)
        for idx in groups.values():
            out = self._pooled([waves[i] for i in idx])
            for r, i in enumerate(idx):
                pooled[i] = out[r]
        return self.head(torch.stack(pooled))

    def param_groups(self, cfg: TrainConfig) -> list[dict[str, Any]]:
        return param_groups(list(self.ext.model.parameters()), list(self.head.parameters()), cfg)

    def modules(self) -> list[Any]:
        return [self.ext.model, self.head]

    def describe(self) -> dict[str, Any]:
        return {"base_model": self.cfg.model, "model_options": asdict(self.cfg),
                "decode": {"audio": self.settings.audio.record()}}

    def save(self, out: Path) -> dict[str, Any]:
        """Weights + config + a feature-extractor config with the sample rate and normalisation used."""
        torch = self._torch
        from transformers import Wav2Vec2FeatureExtractor

        self.ext.model.eval()
        self.ext.model.save_pretrained(out)
        Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=self.ext.sample_rate, padding_value=0.0,
                                 do_normalize=self.ext.do_normalize,
                                 return_attention_mask=self.ext.uses_mask).save_pretrained(out)
        head = self.head[1]
        torch.save({"weight": head.weight.detach().cpu(), "bias": head.bias.detach().cpu(), "layers": self.cfg.layers,
                    "layer_pool": self.cfg.layer_pool, "dim": self.ext.dim}, out / "mer_head.pt")
        return {"head": {"file": "mer_head.pt", "input": "frame mean of the selected layers", "dim": self.ext.dim},
                "extract": {"extractor": "hf-speech", "model": str(out),
                            "options": {"layers": self.cfg.layers, "layer_pool": self.cfg.layer_pool}}}


def finetune_audio(clips: Path, labels: Path, out: Path, model: AudioFinetuneConfig, split: SplitConfig,
                   train: TrainConfig, *, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Fine-tune the speech encoder ``model`` on the labelled clips of ``clips``; save it into ``out``.

    Returns the ``mer_finetune.json`` record.
    """
    prepare_out(out, overwrite)  # refuse a non-empty --out before loading anything
    table = read_clip_table(clips)
    sel = select_clips(table, labels, split)
    task = SpeechTask(model, table, len(sel.classes), device=train.device)
    return run_finetune(task, clips, labels, out, split, train, selection=sel, overwrite=overwrite, progress=progress)
