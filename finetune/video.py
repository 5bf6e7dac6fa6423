"""Fine-tune a CLIP image tower on labelled video clips (``mer finetune video``).

The model is loaded by the ``clip`` extractor itself and frames go through its own preprocessing
and embedding code, so training sees the very inputs extraction sees (same decode stage: fps or
number of frames, face crop). A linear head classifies the utterance embedding, the mean of the
clip's frame embeddings. Either the whole image tower is trained, or only its last N transformer
blocks plus the final norm and projection. The saved directory loads with
``mer extract video --extractor clip --model DIR``: a Hugging Face ``CLIPModel`` folder (weights,
config, ``preprocessor_config.json`` with the preprocessing used) or an open_clip folder
(``open_clip_config.json`` + ``open_clip_pytorch_model.bin``), plus ``mer_head.pt`` (the head) and
``mer_finetune.json``.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from mer.extractors.base import VideoClip
from mer.pipeline.decode_video import VideoDecodeConfig
from mer.pipeline.inputs import DecodeSettings, load_item
from mer.store.tables import ClipTable, read_clip_table

from .data import SplitConfig
from .train import TrainConfig, param_groups, prepare_out, run_finetune

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json")


@dataclass
class VideoFinetuneConfig:
    """What is fine-tuned and how its inputs are made; recorded in ``mer_finetune.json``."""

    model: str = ""  # HF CLIP folder / hub id, open_clip architecture, or open_clip folder (as the clip extractor takes)
    backend: str = "auto"  # "hf", "open_clip" or "auto" (as the clip extractor)
    pretrained: str | None = None  # open_clip: weights file or pretrained tag of the base model
    image_size: int | None = None  # input resolution override (as the clip extractor's image_size)
    unfreeze: int = -1  # last N transformer blocks of the image tower trained (-1: the whole tower; 0: norm + projection only)
    max_frames: int | None = 16  # frames per clip used in training, evenly subsampled (None: all decoded frames)
    dropout: float = 0.1  # dropout on the utterance embedding before the head
    cache: bool = False  # keep each clip's decoded frames (after max_frames) in memory: decode once, not every epoch
    decode: VideoDecodeConfig = field(default_factory=VideoDecodeConfig)  # frames: same settings as `mer extract video`


class ClipTask:
    """CLIP image tower + linear head on the mean frame embedding (see the module docstring)."""

    kind = "video"

    def __init__(self, cfg: VideoFinetuneConfig, table: ClipTable, n_classes: int, device: str = "cpu") -> None:
        import torch
        from mer.extractors.clip_image import ClipConfig, ClipExtractor

        self.cfg = cfg
        self.table = table
        self.settings = DecodeSettings(video=cfg.decode)
        self._cache: dict[str, VideoClip] = {}
        self.ext = ClipExtractor(ClipConfig(model=cfg.model, backend=cfg.backend, pretrained=cfg.pretrained,
                                            image_size=cfg.image_size, device=device, dtype="float32"))
        self._torch = torch
        self.device = torch.device(device)
        model = self.ext.model
        for p in model.parameters():
            p.requires_grad_(False)
        self.trainable = self._unfreeze(cfg.unfreeze)
        self.head = torch.nn.Sequential(torch.nn.Dropout(cfg.dropout),
                                        torch.nn.Linear(self.ext.dim, n_classes)).to(self.device)
        n_train = sum(p.numel() for p in self.trainable)
        log.info("clip fine-tune: %s (%s), %d trainable backbone parameters, head %d -> %d", cfg.model,
                 self.ext.backend, n_train, self.ext.dim, n_classes)

    # -- which parameters train
    def _tower(self) -> tuple[Any, list[Any], list[Any]]:
        """(image tower module, its transformer blocks, modules after the blocks: norm + projection)."""
        m = self.ext.model
        if self.ext.backend == "hf":
            tower = m.vision_model
            return tower, list(tower.encoder.layers), [tower.post_layernorm, m.visual_projection]
        visual = m.visual
        blocks = list(getattr(getattr(visual, "transformer", None), "resblocks", []) or [])
        tail = [mod for mod in (getattr(visual, "ln_post", None), getattr(visual, "attn_pool", None),
                                getattr(visual, "head", None)) if mod is not None]
        return visual, blocks, tail

    def _unfreeze(self, n: int) -> list[Any]:
        tower, blocks, tail = self._tower()
        if n < 0:
            mods = [tower] + ([self.ext.model.visual_projection] if self.ext.backend == "hf" else [])
        else:
            if n > len(blocks):
                raise ValueError(f"--unfreeze {n}: the image tower has only {len(blocks)} blocks")
            mods = blocks[len(blocks) - n:] + tail if n else list(tail)
        params: list[Any] = []
        for mod in mods:
            for p in mod.parameters():
                p.requires_grad_(True)
                params.append(p)
        proj = getattr(tower, "proj", None)  # open_clip: the projection is a bare Parameter
        if self.ext.backend == "open_clip" and proj is not None and n >= 0:
            proj.requires_grad_(True)
            params.append(proj)
        seen: set[int] = set()
        return [p for p in params if not (id(p) in seen or seen.add(id(p)))]

    # -- Task protocol
    def load(self, name: str) -> Any:
        """Decode the clip's frames exactly as ``mer extract video`` does (then keep ``max_frames`` of
        them); with ``cache`` a clip is decoded once and kept in memory."""
        if name in self._cache:
            return self._cache[name]
        clip = load_item("video", self.table, name, self.settings)
        idx = self._frame_index(len(clip.frames))
        if idx is not None:
            clip = VideoClip(clip.name, clip.frames[idx], np.asarray(clip.times)[idx], clip.faces)
        if self.cfg.cache:
            self._cache[name] = clip
        return clip

    def _frame_index(self, n: int) -> np.ndarray | None:
        k = self.cfg.max_frames
        if k is None or n <= k:
            return None
        return np.linspace(0, n - 1, int(k)).round().astype(int)

    def embed(self, items: list[Any]):  # -> torch.Tensor [B, D]
        """Utterance embeddings: mean of each clip's frame embeddings (with gradients when training)."""
        torch = self._torch
        frames = [it.frames for it in items]
        with torch.no_grad():
            x = torch.cat([self.ext.preprocess(f) for f in frames])
        emb = self.ext._embed(x).float()
        counts = [len(f) for f in frames]
        return torch.stack([part.mean(0) for part in torch.split(emb, counts)])

    def forward(self, items: list[Any]):  # -> torch.Tensor [B, C]
        """Class logits of a batch of decoded clips."""
        return self.head(self.embed(items))

    def param_groups(self, cfg: TrainConfig) -> list[dict[str, Any]]:
        """Backbone (unfrozen part) at ``cfg.lr``, head at ``cfg.head_lr``."""
        return param_groups(self.trainable, list(self.head.parameters()), cfg)

    def modules(self) -> list[Any]:
        return [self.ext.model, self.head]

    def describe(self) -> dict[str, Any]:
        opts = asdict(self.cfg)
        opts.pop("decode")
        return {"base_model": self.cfg.model, "backend": self.ext.backend, "model_options": opts,
                "decode": {"video": self.settings.video.record()}}

    def save(self, out: Path) -> dict[str, Any]:
        """Write a folder the ``clip`` extractor loads, plus the head."""
        torch = self._torch
        model = self.ext.model
        model.eval()
        if self.ext.backend == "hf":
            from transformers import CLIPImageProcessor

            model.save_pretrained(out)
            CLIPImageProcessor(do_resize=True, size={"shortest_edge": int(self.ext.resize_to)}, do_center_crop=True,
                               crop_size={"height": int(self.ext.crop), "width": int(self.ext.crop)},
                               do_normalize=True, image_mean=list(self.ext.mean),
                               image_std=list(self.ext.std)).save_pretrained(out)
            base = Path(self.cfg.model)
            for name in TOKENIZER_FILES:  # keep the text side usable when the base folder had it
                if base.is_dir() and (base / name).is_file():
                    shutil.copyfile(base / name, out / name)
        else:
            model_cfg = self._open_clip_model_cfg()
            pre = {"size": int(self.ext.crop), "mean": list(self.ext.mean), "std": list(self.ext.std)}
            (out / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": pre},
                                                                  indent=2))
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            torch.save(state, out / "open_clip_pytorch_model.bin")
        head = self.head[1]
        torch.save({"weight": head.weight.detach().cpu(), "bias": head.bias.detach().cpu(), "input": "utterance mean",
                    "dim": int(self.ext.dim)}, out / "mer_head.pt")
        return {"head": {"file": "mer_head.pt", "input": "mean of the frame embeddings", "dim": int(self.ext.dim)},
                "extract": {"extractor": "clip", "model": str(out),
                            "options": {"image_size": self.cfg.image_size} if self.cfg.image_size else {}}}

    def _open_clip_model_cfg(self) -> dict[str, Any]:
        import open_clip

        name, p = self.cfg.model, Path(self.cfg.model)
        if p.is_dir() and (p / "open_clip_config.json").is_file():
            cfg = json.loads((p / "open_clip_config.json").read_text())["model_cfg"]
        else:
            cfg = open_clip.get_model_config(name.removeprefix("hf-hub:"))
            if cfg is None:
                raise ValueError(f"cannot find the open_clip model config of {name!r} to save with the weights")
        cfg = json.loads(json.dumps(cfg))
        if self.cfg.image_size:
            cfg.setdefault("vision_cfg", {})["image_size"] = int(self.cfg.image_size)
        return cfg


def finetune_video(clips: Path, labels: Path, out: Path, model: VideoFinetuneConfig, split: SplitConfig,
                   train: TrainConfig, *, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Fine-tune the CLIP image tower of ``model`` on the labelled clips of ``clips``; save it into ``out``.

    Returns the ``mer_finetune.json`` record.
    """
    from .data import select_clips

    prepare_out(out, overwrite)  # refuse a non-empty --out before loading anything
    table = read_clip_table(clips)
    if "video" not in table.columns:
        raise ValueError(f"{clips}: the clip table has no 'video' column")
    sel = select_clips(table, labels, split)
    task = ClipTask(model, table, len(sel.classes), device=train.device)
    return run_finetune(task, clips, labels, out, split, train, selection=sel, overwrite=overwrite, progress=progress)
