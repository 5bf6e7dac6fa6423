"""Fine-tune a text encoder or causal LM on labelled subtitles (``mer finetune text``).

The backbone is ``AutoModel`` (a causal LM loads without its LM head); a linear head classifies
the mask-aware mean of the last hidden states (``pooling="mean"``, as the ``sentence`` and
``hf-text`` extractors pool) or the last real token's state (``pooling="last"``, for causal LMs).
Small models are fine-tuned fully; ``lora=True`` trains LoRA adapters through ``peft`` instead
(rank, alpha, dropout and target modules as options) with the base weights frozen, optionally in
bf16 with gradient checkpointing. On save the adapter is merged into the weights, so the directory
(weights, config, tokenizer) loads in ``hf-text`` and ``sentence`` like any model; the unmerged
adapter is kept in ``DIR/adapter`` and the head in ``DIR/mer_head.pt``.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mer.extractors.base import TextClip, masked_mean
from mer.pipeline.decode_errors import DecodeError
from mer.store.tables import ClipTable, read_clip_table

from .data import SplitConfig, select_clips
from .train import TrainConfig, param_groups, prepare_out, run_finetune

log = logging.getLogger(__name__)


@dataclass
class TextFinetuneConfig:
    """What is fine-tuned and how subtitles become inputs; recorded in ``mer_finetune.json``."""

    model: str = ""  # HF hub id or local folder, or the bundled alias all-MiniLM-L6-v2
    text_column: str = "text"  # clip-table column with the subtitle: text, english, chinese ...
    pooling: str = "mean"  # head input: "mean" (mask-aware mean of the last layer) or "last" (last real token)
    max_tokens: int = 128  # longer subtitles are truncated in training
    empty: str = "skip"  # empty subtitles: "skip" (not trained on) or "encode" (the empty string)
    dropout: float = 0.1  # dropout on the pooled vector before the head
    lora: bool = False  # train LoRA adapters (peft) instead of every weight
    lora_rank: int = 8  # LoRA rank r
    lora_alpha: int = 16  # LoRA alpha (scaling = alpha / r)
    lora_dropout: float = 0.05  # dropout on the LoRA branch
    lora_targets: str | None = None  # comma-separated module names, or "all-linear"; None: peft's default for the architecture
    gradient_checkpointing: bool = False  # recompute activations in the backward pass (less memory, slower)
    dtype: str = "auto"  # weights dtype: "auto" (bfloat16 with LoRA on CUDA, else float32), float32, bfloat16, float16
    trust_remote_code: bool = False  # allow the model's own code (Baichuan needs it)


class TextTask:
    """Transformers backbone (+ LoRA) and a linear head on the pooled last layer."""

    kind = "text"

    def __init__(self, cfg: TextFinetuneConfig, table: ClipTable, n_classes: int, device: str = "cpu") -> None:
        import torch
        from mer.extractors.base import torch_dtype
        from mer.extractors.bundled import resolve_model
        from mer.extractors.hf_speech import dtype_kwargs
        from mer.extractors.hf_text import load_padding_tokenizer
        from transformers import AutoModel

        if cfg.pooling not in ("mean", "last"):
            raise ValueError(f"pooling must be 'mean' or 'last', got {cfg.pooling!r}")
        if cfg.empty not in ("skip", "encode"):
            raise ValueError(f"empty must be 'skip' or 'encode', got {cfg.empty!r}")
        self.cfg = cfg
        self.table = table
        self._torch = torch
        self.device = torch.device(device)
        self.model_dir = resolve_model(cfg.model)
        dtype = cfg.dtype
        if dtype == "auto":
            dtype = "bfloat16" if (cfg.lora and self.device.type == "cuda") else "float32"
        torch_dtype(dtype)  # validates the name
        self.dtype = dtype
        trc = bool(cfg.trust_remote_code)
        self.tokenizer = load_padding_tokenizer(self.model_dir, trc, name=cfg.model)
        model = AutoModel.from_pretrained(self.model_dir, trust_remote_code=trc, **dtype_kwargs(dtype))
        model.to(self.device)
        if cfg.gradient_checkpointing:
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x names it so
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if hasattr(model.config, "use_cache"):
                model.config.use_cache = False
        if cfg.lora:
            from peft import LoraConfig, get_peft_model

            targets: Any = None
            if cfg.lora_targets:
                targets = cfg.lora_targets if cfg.lora_targets == "all-linear" else \
                    [t.strip() for t in cfg.lora_targets.split(",") if t.strip()]
            lcfg = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                              target_modules=targets, bias="none")
            model = get_peft_model(model, lcfg)
            self.lora_targets = sorted(model.peft_config["default"].target_modules)
        else:
            self.lora_targets = None
        self.model = model
        self.max_len = int(cfg.max_tokens)
        for cap in (getattr(self.tokenizer, "model_max_length", None),
                    getattr(self._base().config, "max_position_embeddings", None)):
            if isinstance(cap, int) and 0 < cap < self.max_len:
                self.max_len = cap
        params = inspect.signature(self._base().forward).parameters
        self._extra = {"use_cache": False} if "use_cache" in params else {}  # no KV cache while training
        hidden = int(self._base().config.hidden_size)
        self.dim = hidden
        self.head = torch.nn.Sequential(torch.nn.Dropout(cfg.dropout),
                                        torch.nn.Linear(hidden, n_classes)).to(self.device)
        self._lengths: dict[str, int] = {}
        self._texts = table.column(cfg.text_column) if cfg.text_column in table.columns else None
        if self._texts is None:
            raise ValueError(f"{table.path}: no column {cfg.text_column!r} (columns: {', '.join(table.columns)})")
        n_train = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        n_all = sum(p.numel() for p in self.model.parameters())
        lora = f" (LoRA r={cfg.lora_rank} on {', '.join(self.lora_targets or [])})" if cfg.lora else ""
        log.info("text fine-tune: %s, %s, %d of %d parameters trained%s", cfg.model, type(self._base()).__name__,
                 n_train, n_all, lora)

    def _base(self):
        """The transformers model under the peft wrapper (or the model itself)."""
        return self.model.get_base_model() if self.cfg.lora else self.model

    # -- Task protocol
    def text_of(self, name: str) -> str:
        """The clip's subtitle, stripped."""
        t = self._texts.get(name)
        return (t or "").strip()

    def length(self, name: str) -> int:
        """Tokens of the clip's subtitle (cached): batches group subtitles of similar length."""
        if name not in self._lengths:
            self._lengths[name] = len(self.tokenizer(self.text_of(name), truncation=True,
                                                     max_length=self.max_len)["input_ids"])
        return self._lengths[name]

    def load(self, name: str) -> TextClip:
        """The clip's subtitle; an empty one is a DecodeError with ``empty="skip"``."""
        text = self.text_of(name)
        if not text and self.cfg.empty == "skip":
            raise DecodeError(name, "empty subtitle")
        return TextClip(name, text)

    def pooled(self, items: list[TextClip]):  # -> torch.Tensor [B, D] float32
        """Pooled last hidden states of a batch of subtitles."""
        torch = self._torch
        enc = self.tokenizer([it.text for it in items], padding=True, truncation=True, max_length=self.max_len,
                             return_tensors="pt")
        enc = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        h = self.model(**enc, **self._extra).last_hidden_state.float()
        mask = enc["attention_mask"]
        if self.cfg.pooling == "mean":
            return masked_mean(h, mask)
        last = (mask.sum(1) - 1).clamp(min=0)
        return h[torch.arange(h.shape[0], device=h.device), last]

    def forward(self, items: list[TextClip]):  # -> torch.Tensor [B, C]
        """Class logits of a batch of subtitles."""
        return self.head(self.pooled(items))

    def param_groups(self, cfg: TrainConfig) -> list[dict[str, Any]]:
        """Trainable backbone weights (all, or the LoRA adapters) at ``cfg.lr``, head at ``cfg.head_lr``."""
        return param_groups(list(self.model.parameters()), list(self.head.parameters()), cfg)

    def modules(self) -> list[Any]:
        return [self.model, self.head]

    def describe(self) -> dict[str, Any]:
        return {"base_model": self.cfg.model, "base_dir": str(self.model_dir), "model_options": asdict(self.cfg),
                "dtype": self.dtype, "lora_targets": self.lora_targets,
                "decode": {"text_column": self.cfg.text_column}}

    def save(self, out: Path) -> dict[str, Any]:
        """Merge LoRA (keeping the adapter in ``out/adapter``), save weights, config, tokenizer and head."""
        torch = self._torch
        model = self.model
        model.eval()
        saved: dict[str, Any] = {}
        if self.cfg.lora:
            model.save_pretrained(out / "adapter")
            model = model.merge_and_unload()
            self.model = model
            self.cfg = TextFinetuneConfig(**{**asdict(self.cfg), "lora": False})  # merged: plain model from now on
            saved["adapter"] = "adapter"
        if self.cfg.gradient_checkpointing:
            disable = getattr(model, "activation_checkpointing_disable", None) or getattr(
                model, "gradient_checkpointing_disable", None)
            if disable is not None:
                disable()
        if hasattr(model.config, "use_cache"):
            model.config.use_cache = True
        model.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        head = self.head[1]
        torch.save({"weight": head.weight.detach().float().cpu(), "bias": head.bias.detach().float().cpu(),
                    "pooling": self.cfg.pooling, "dim": self.dim}, out / "mer_head.pt")
        ext = "sentence" if self.cfg.pooling == "mean" else "hf-text"
        opts = {} if ext == "sentence" else {"pooling": "last"}
        head_info = {"file": "mer_head.pt", "input": f"{self.cfg.pooling}-pooled last layer", "dim": self.dim}
        return {**saved, "head": head_info,
                "extract": {"extractor": ext, "model": str(out), "options": opts}}


def finetune_text(clips: Path, labels: Path, out: Path, model: TextFinetuneConfig, split: SplitConfig,
                  train: TrainConfig, *, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Fine-tune ``model`` on the labelled subtitles of ``clips``; save it into ``out``; return the record.

    With ``empty="skip"``, clips with an empty subtitle are dropped from training and validation
    before the split is used (listed under ``skipped`` in the record).
    """
    prepare_out(out, overwrite)  # refuse a non-empty --out before loading anything
    table = read_clip_table(clips)
    sel = select_clips(table, labels, split)
    task = TextTask(model, table, len(sel.classes), device=train.device)
    skipped: dict[str, str] = {}
    if model.empty == "skip":
        for names in (sel.train, sel.val):
            empty = [n for n in names if not task.text_of(n)]
            skipped.update({n: "empty subtitle" for n in empty})
            names[:] = [n for n in names if task.text_of(n)]
        if skipped:
            log.info("%d clips with an empty subtitle are not used", len(skipped))
    return run_finetune(task, clips, labels, out, split, train, selection=sel, skipped=skipped, overwrite=overwrite,
                        progress=progress)
