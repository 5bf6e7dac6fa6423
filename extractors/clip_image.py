"""CLIP image embeddings of decoded video frames (Hugging Face ``CLIPModel`` or ``open_clip``).

Each frame gives the projected image embedding (``get_image_features`` / ``encode_image``, e.g. 768-d
for ViT-L/14, not L2-normalised). Frames of several clips share forward passes (up to
``batch_size * 16`` frames). Preprocessing runs as batched torch ops on the compute device: resize
the shorter side (bicubic, antialiased), centre crop, scale to [0, 1], normalise with the model's
mean/std; this matches the CLIP processors up to interpolation rounding.

Torch, transformers and open_clip are imported lazily so that importing this module stays cheap.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .base import (
    Extractor,
    ExtractorConfig,
    Features,
    ItemError,
    VideoClip,
    hub_revision,
    register_extractor,
    torch_dtype,
)

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP image normalisation
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ClipConfig(ExtractorConfig):
    """Config of :class:`ClipExtractor`. ``model`` is a HF folder / hub id, or an open_clip architecture
    name (``"ViT-L-14"``), ``"hf-hub:org/repo"`` or a local open_clip folder (open_clip_config.json)."""

    backend: str = "auto"  # "hf", "open_clip" or "auto" (a folder with config.json -> hf, otherwise open_clip)
    pretrained: str | None = None  # open_clip only: weights file path or pretrained tag (None: random init / folder weights)
    image_size: int | None = None  # input resolution override (None: the model's own); HF interpolates position embeddings


@register_extractor("clip")
class ClipExtractor(Extractor):
    """CLIP image features per frame.

    Frame level: ``[T, D]``, one vector per decoded frame, ``times`` = the clip's frame times.
    Utterance level: mean over the frames.
    """

    modality = "video"
    config_class = ClipConfig
    levels = ("utt", "frame")

    def __init__(self, config: ClipConfig) -> None:
        super().__init__(config)
        import torch

        self.config: ClipConfig = config
        self._torch = torch
        self.backend = self._resolve_backend()
        self.device = torch.device(config.device)
        self.dtype = torch_dtype(config.dtype)
        if self.backend == "hf":
            self._load_hf()
        elif self.backend == "open_clip":
            self._load_open_clip()
        else:
            raise ValueError(f"backend must be 'auto', 'hf' or 'open_clip', got {config.backend!r}")
        self.model.eval()
        self._mean = torch.tensor(self.mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(self.std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._dim = self._find_dim()
        log.info("clip %s (%s): resize %d, crop %d, dim %d", config.model, self.backend,
                 self.resize_to, self.crop, self._dim)

    # -- loading
    def _resolve_backend(self) -> str:
        b = self.config.backend
        if b != "auto":
            return b
        p = Path(self.config.model)
        return "hf" if p.is_dir() and (p / "config.json").is_file() else "open_clip"

    def _load_hf(self) -> None:
        from transformers import CLIPModel

        from .hf_speech import dtype_kwargs

        self.model = CLIPModel.from_pretrained(self.config.model, **dtype_kwargs(self.config.dtype)).to(self.device)
        native = int(self.model.config.vision_config.image_size)
        resize_to, crop, mean, std = native, native, CLIP_MEAN, CLIP_STD
        proc = None
        try:
            from transformers import CLIPImageProcessor

            proc = CLIPImageProcessor.from_pretrained(self.config.model)
        except Exception as e:  # no preprocessor_config.json: standard CLIP preprocessing
            log.debug("no CLIPImageProcessor for %s (%s); using standard CLIP preprocessing", self.config.model, e)
        if proc is not None:
            size = getattr(proc, "size", None) or {}
            size = dict(size) if not isinstance(size, int) else {"shortest_edge": size}
            crop_size = getattr(proc, "crop_size", None) or {}
            crop_size = dict(crop_size) if not isinstance(crop_size, int) else {"height": crop_size}
            resize_to = int(size.get("shortest_edge") or size.get("height") or native)
            crop = int(crop_size.get("height") or resize_to)
            mean = tuple(getattr(proc, "image_mean", None) or CLIP_MEAN)
            std = tuple(getattr(proc, "image_std", None) or CLIP_STD)
        if self.config.image_size:
            resize_to = crop = int(self.config.image_size)
        self.resize_to, self.crop, self.mean, self.std = resize_to, crop, mean, std
        self._interp_pos = crop != native

    def _load_open_clip(self) -> None:
        import open_clip

        name = self.config.model
        p = Path(name)
        if p.is_dir() and (p / "open_clip_config.json").is_file():
            name = "local-dir:" + str(p)
        precision = {"float32": "fp32", "fp32": "fp32", "float16": "pure_fp16", "fp16": "pure_fp16",
                     "bfloat16": "pure_bf16", "bf16": "pure_bf16"}[self.config.dtype]
        kw: dict[str, Any] = {}
        if self.config.image_size:
            kw["force_image_size"] = int(self.config.image_size)
        model, _, _ = open_clip.create_model_and_transforms(
            name, pretrained=self.config.pretrained, precision=precision, device=self.device, **kw)
        self.model = model
        pc = open_clip.get_model_preprocess_cfg(model)
        size = pc.get("size", getattr(model.visual, "image_size", 224))
        size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.resize_to = self.crop = size
        self.mean = tuple(pc.get("mean") or CLIP_MEAN)
        self.std = tuple(pc.get("std") or CLIP_STD)
        if pc.get("resize_mode", "shortest") not in ("shortest", None):
            log.warning("open_clip model wants resize_mode=%r; this extractor resizes the shorter side and crops",
                        pc.get("resize_mode"))
        self._interp_pos = False

    def _find_dim(self) -> int:
        if self.backend == "hf":
            return int(self.model.config.projection_dim)
        d = getattr(self.model.visual, "output_dim", None)
        if isinstance(d, int) and d > 0:
            return d
        with self._torch.inference_mode():  # fall back on one dummy forward
            x = self._torch.zeros(1, 3, self.crop, self.crop, device=self.device, dtype=self._param_dtype())
            return int(self._embed(x).shape[-1])

    def _param_dtype(self):  # -> torch.dtype
        return next(self.model.parameters()).dtype

    def weights_path(self) -> Path | None:
        """The open_clip weights file when given, else the model folder."""
        if self.config.pretrained and Path(self.config.pretrained).is_file():
            return Path(self.config.pretrained)
        return super().weights_path()

    def revision(self) -> str | None:
        """Hub snapshot commit: of the HF model, or of the open_clip ``hf-hub:`` repo or pretrained tag
        (``None`` for local folders and files, whose content hash identifies them)."""
        if self.backend == "hf":
            return super().revision()
        if self.weights_path() is not None:
            return None
        repo = self._open_clip_repo()
        return hub_revision(repo) if repo else None

    def _open_clip_repo(self) -> str | None:
        """The hub repo open_clip loads the weights from, or ``None`` (random init, a URL, a local file)."""
        model, tag = self.config.model, self.config.pretrained
        if model.startswith("hf-hub:"):
            return model[len("hf-hub:"):].split("@")[0].strip("/")
        if not tag or Path(tag).exists():
            return None
        import open_clip

        hub = (open_clip.get_pretrained_cfg(model, tag) or {}).get("hf_hub") or ""
        parts = [x for x in hub.split("/") if x]
        return "/".join(parts[:2]) if len(parts) >= 2 else None

    # -- contract
    @property
    def dim(self) -> int:
        """Projected CLIP embedding size."""
        return self._dim

    def preprocess(self, frames: np.ndarray, chunk: int = 32):  # uint8 [N, H, W, 3] -> tensor [N, 3, crop, crop]
        """Resize the shorter side to the model size, centre crop, normalise (batched torch ops on the
        compute device, ``chunk`` frames at a time so that large frames never sit in float32 all at once)."""
        if len(frames) > chunk:
            return self._torch.cat([self._preprocess(frames[i: i + chunk]) for i in range(0, len(frames), chunk)])
        return self._preprocess(frames)

    def _preprocess(self, frames: np.ndarray):
        torch = self._torch
        F = torch.nn.functional
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)
        x = x.permute(0, 3, 1, 2).float()
        h, w = x.shape[-2:]
        s = self.resize_to / min(h, w)
        nh, nw = max(self.crop, round(h * s)), max(self.crop, round(w * s))
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
            x = x.clamp_(0.0, 255.0)
        top, left = (nh - self.crop) // 2, (nw - self.crop) // 2
        x = x[:, :, top: top + self.crop, left: left + self.crop]
        x = (x / 255.0 - self._mean) / self._std
        return x.to(self._param_dtype())

    def _embed(self, x):  # [N, 3, S, S] -> [N, D]
        if self.backend == "hf":
            kw = {"interpolate_pos_encoding": True} if self._interp_pos else {}
            out = self.model.get_image_features(pixel_values=x, **kw)
            if not isinstance(out, self._torch.Tensor):  # transformers 5 returns a model output
                out = out.pooler_output
            return out
        return self.model.encode_image(x)

    def _check(self, clip: VideoClip) -> None:
        f = clip.frames
        if f is None or getattr(f, "ndim", 0) != 4 or f.shape[0] == 0:
            shape = getattr(f, "shape", None)
            raise ItemError(clip.name, f"no frames to embed (frames shape {shape})")
        if f.shape[-1] != 3:
            raise ItemError(clip.name, f"frames must be [T, H, W, 3] RGB, got shape {f.shape}")
        if self.config.level == "frame" and (clip.times is None or len(clip.times) != f.shape[0]):
            raise ItemError(clip.name, f"{f.shape[0]} frames but {None if clip.times is None else len(clip.times)} times")

    def extract(self, items: list[VideoClip]) -> list[Features]:
        """Features for each clip, in order (see the class docstring)."""
        torch = self._torch
        for c in items:
            self._check(c)
        max_frames = max(1, int(self.config.batch_size) * 16)
        parts: list[list[np.ndarray]] = [[] for _ in items]
        pending: list[tuple[int, np.ndarray]] = []  # (clip index, frames) awaiting a forward pass
        n_pending = 0

        def flush() -> None:
            nonlocal pending, n_pending
            if not pending:
                return
            x = torch.cat([self.preprocess(f) for _, f in pending])
            emb = self._embed(x).float().cpu().numpy()
            k = 0
            for i, f in pending:
                parts[i].append(emb[k: k + len(f)])
                k += len(f)
            pending, n_pending = [], 0

        with torch.inference_mode():
            for i, c in enumerate(items):
                frames = c.frames
                start = 0
                while start < len(frames):
                    take = min(len(frames) - start, max_frames - n_pending)
                    pending.append((i, frames[start: start + take]))
                    n_pending += take
                    start += take
                    if n_pending >= max_frames:
                        flush()
            flush()

        out: list[Features] = []
        for c, p in zip(items, parts):
            v = np.concatenate(p, axis=0).astype(np.float32)
            notes: dict[str, Any] = {"frames": int(len(v))}
            if self.config.level == "frame":
                out.append(Features(values=v, times=np.asarray(c.times, dtype=np.float64), notes=notes))
            else:
                out.append(Features(values=v.mean(0), notes=notes))
        return out


__all__ = ["ClipConfig", "ClipExtractor", "CLIP_MEAN", "CLIP_STD"]
