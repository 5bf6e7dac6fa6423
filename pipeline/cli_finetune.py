"""``mer finetune video|text|audio``: fine-tune an extractor's model on labelled clips, save a loadable folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from .cli_extract import _one_of

app = typer.Typer(no_args_is_help=True)


CLIPS = typer.Argument(..., help="Clip table CSV (name, video, text, ...).")
AUDIO_CLIPS = typer.Argument(..., help="Clip table CSV (name, audio or video, ...).")
LABELS = typer.Option(..., "--labels", "-l", help="Label file (name,discrete).")
OUT = typer.Option(..., "--out", "-o", help="Folder to save the fine-tuned model in (loadable by mer extract).")
EPOCHS = typer.Option(3, "--epochs", help="Passes over the training clips.")
BATCH = typer.Option(8, "--batch-size", "-b", help="Clips per forward pass.")
ACCUM = typer.Option(1, "--accum", help="Gradient accumulation: forward passes per optimiser step.")
HEAD_LR = typer.Option(1e-3, "--head-lr", help="Learning rate of the classification head.")
WD = typer.Option(0.01, "--weight-decay", help="AdamW weight decay.")
WARMUP = typer.Option(0.1, "--warmup", help="Share of the steps with linear warm-up (then linear decay).")
DEVICE = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1 ...")
AMP = typer.Option("auto", "--amp", callback=_one_of(["auto", "bf16", "fp16", "off"]),
                   help="Mixed precision: auto (bf16 on CUDA, off on CPU), bf16, fp16, off.")
SEED = typer.Option(0, "--seed", help="Seed of the head, dropout, batch order and validation split.")
EXCLUDE = typer.Option(None, "--exclude", help="Clips never to train or validate on (CSV with name, or one per line); "
                       "repeatable.")
FOLDS_FROM = typer.Option(None, "--folds-from", help="A `mer fuse train` run: hold out the validation clips of "
                          "its fold --fold.")
FOLD = typer.Option(None, "--fold", help="Fold of --folds-from (or of --kfold) whose validation clips are held out.")
VAL_FRACTION = typer.Option(0.1, "--val-fraction", help="Stratified share of the clips kept for validation (0: none).")
VAL = typer.Option(None, "--val", help="Validation clips (CSV with name, or one per line); wins over --val-fraction.")
KFOLD = typer.Option(None, "--kfold", help="Validate on fold --fold of a stratified k-fold of the remaining clips.")
CLASSES = typer.Option(None, "--classes", help="Comma-separated label set in head order (default: sorted labels).")
LIMIT = typer.Option(None, "--limit", help="Train on the first N selected clips only.")
THREADS = typer.Option(2, "--threads", help="Decode threads.")
FORCE = typer.Option(False, "--force", help="Replace a non-empty --out folder.")


def _split(exclude: list[Path] | None, folds_from: Path | None, fold: int | None, val_fraction: float,
           val: Path | None, kfold: int | None, classes: str | None, limit: int | None, seed: int):
    from mer.finetune.data import SplitConfig

    return SplitConfig(exclude=[str(p) for p in exclude or []], folds_from=str(folds_from) if folds_from else None,
                       fold=fold, val_fraction=val_fraction, val=str(val) if val else None, kfold=kfold,
                       classes=[c.strip() for c in classes.split(",")] if classes else None, limit=limit, seed=seed)


def _summary(record: dict[str, Any], out: Path) -> None:
    hist = [h for h in record["history"] if "val_waf" in h]
    line = f"saved {out}: trained on {record['trained_on']['count']} clips, {record['steps']} steps"
    if hist:
        line += f"; validation WAF {hist[0]['val_waf']:.3f} before, {hist[-1]['val_waf']:.3f} after"
    typer.echo(line)
    ex = record.get("extract", {})
    opts = " ".join(f"-O {k}={v}" for k, v in (ex.get("options") or {}).items())
    typer.echo(f"extract with: --extractor {ex.get('extractor')} --model {out} {opts}".rstrip())


@app.command()
def video(
    clips: Path = CLIPS, labels: Path = LABELS, out: Path = OUT,
    model: str = typer.Option(..., "--model", "-m", help="HF CLIP folder / hub id, open_clip architecture, or "
                              "open_clip folder."),
    backend: str = typer.Option("auto", "--backend", callback=_one_of(["auto", "hf", "open_clip"]),
                                help="auto, hf or open_clip (as the clip extractor)."),
    pretrained: str = typer.Option(None, "--pretrained", help="open_clip: weights file or pretrained tag."),
    image_size: int = typer.Option(None, "--image-size", help="Input resolution override."),
    unfreeze: int = typer.Option(-1, "--unfreeze", help="Train the last N blocks of the image tower (-1: all; "
                                 "0: final norm + projection only)."),
    max_frames: int = typer.Option(16, "--max-frames", help="Frames per clip used in training (evenly subsampled)."),
    cache: bool = typer.Option(False, "--cache", help="Decode each clip once and keep its frames in memory."),
    fps: float = typer.Option(2.0, help="Frames sampled per second (as mer extract video)."),
    num_frames: int = typer.Option(None, help="Instead of --fps: this many frames evenly spaced per clip."),
    size: int = typer.Option(None, help="Resize frames so the shorter side has this many pixels."),
    faces: bool = typer.Option(False, "--faces", help="Crop the largest face per frame (full frame when none)."),
    face_size: int = typer.Option(224, help="Side of the face crops in pixels."),
    epochs: int = EPOCHS, batch_size: int = BATCH, accum: int = ACCUM,
    lr: float = typer.Option(1e-5, "--lr", help="Learning rate of the image tower."),
    head_lr: float = HEAD_LR, weight_decay: float = WD, warmup: float = WARMUP, device: str = DEVICE, amp: str = AMP,
    seed: int = SEED, exclude: list[Path] = EXCLUDE, folds_from: Path = FOLDS_FROM, fold: int = FOLD,
    val_fraction: float = VAL_FRACTION, val: Path = VAL, kfold: int = KFOLD, classes: str = CLASSES,
    limit: int = LIMIT, threads: int = THREADS, force: bool = FORCE,
) -> None:
    """Fine-tune a CLIP image tower (head on the mean frame embedding); the folder loads in the clip extractor."""
    from mer.finetune.train import TrainConfig
    from mer.finetune.video import VideoFinetuneConfig, finetune_video

    from .decode_video import VideoDecodeConfig

    cfg = VideoFinetuneConfig(model=model, backend=backend, pretrained=pretrained, image_size=image_size,
                              unfreeze=unfreeze, max_frames=max_frames, cache=cache,
                              decode=VideoDecodeConfig(fps=fps, num_frames=num_frames, size=size, faces=faces,
                                                       face_size=face_size))
    train = TrainConfig(epochs=epochs, batch_size=batch_size, accum=accum, lr=lr, head_lr=head_lr,
                        weight_decay=weight_decay, warmup=warmup, device=device, amp=amp, seed=seed, threads=threads)
    split = _split(exclude, folds_from, fold, val_fraction, val, kfold, classes, limit, seed)
    _summary(finetune_video(clips, labels, out, cfg, split, train, overwrite=force), out)


@app.command()
def text(
    clips: Path = CLIPS, labels: Path = LABELS, out: Path = OUT,
    model: str = typer.Option(..., "--model", "-m", help="HF hub id or local folder (encoder or causal LM), or "
                              "all-MiniLM-L6-v2 (bundled)."),
    text_column: str = typer.Option("text", "--text-column", help="Subtitle column: text, english, chinese ..."),
    pooling: str = typer.Option("mean", "--pooling", callback=_one_of(["mean", "last"]),
                                help="Head input: mean of the last layer, or the last real token (causal LMs)."),
    max_tokens: int = typer.Option(128, "--max-tokens", help="Truncate longer subtitles in training."),
    empty: str = typer.Option("skip", "--empty", callback=_one_of(["skip", "encode"]),
                              help="Empty subtitles: skip (not trained on) or encode the empty string."),
    lora: bool = typer.Option(False, "--lora", help="Train LoRA adapters (peft) instead of every weight; "
                              "merged on save."),
    lora_rank: int = typer.Option(8, "--lora-rank", help="LoRA rank."),
    lora_alpha: int = typer.Option(16, "--lora-alpha", help="LoRA alpha."),
    lora_dropout: float = typer.Option(0.05, "--lora-dropout", help="LoRA dropout."),
    lora_targets: str = typer.Option(None, "--lora-targets", help="Comma-separated module names or all-linear "
                                     "(default: peft's choice for the architecture, e.g. q_proj,v_proj)."),
    gradient_checkpointing: bool = typer.Option(False, "--gradient-checkpointing", help="Trade compute for memory."),
    dtype: str = typer.Option("auto", "--dtype", callback=_one_of(["auto", "float32", "bfloat16", "float16"]),
                              help="Weights dtype: auto = bfloat16 with --lora on CUDA, else float32."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow the model's own code."),
    epochs: int = EPOCHS, batch_size: int = typer.Option(16, "--batch-size", "-b", help="Subtitles per forward pass."),
    accum: int = ACCUM, lr: float = typer.Option(2e-5, "--lr", help="Learning rate of the backbone (or adapters)."),
    head_lr: float = HEAD_LR, weight_decay: float = WD, warmup: float = WARMUP, device: str = DEVICE, amp: str = AMP,
    seed: int = SEED, exclude: list[Path] = EXCLUDE, folds_from: Path = FOLDS_FROM, fold: int = FOLD,
    val_fraction: float = VAL_FRACTION, val: Path = VAL, kfold: int = KFOLD, classes: str = CLASSES,
    limit: int = LIMIT, force: bool = FORCE,
) -> None:
    """Fine-tune a text encoder or causal LM (full or LoRA); the folder loads in the hf-text and sentence extractors."""
    from mer.finetune.text import TextFinetuneConfig, finetune_text
    from mer.finetune.train import TrainConfig

    cfg = TextFinetuneConfig(model=model, text_column=text_column, pooling=pooling, max_tokens=max_tokens, empty=empty,
                             lora=lora, lora_rank=lora_rank, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                             lora_targets=lora_targets, gradient_checkpointing=gradient_checkpointing, dtype=dtype,
                             trust_remote_code=trust_remote_code)
    train = TrainConfig(epochs=epochs, batch_size=batch_size, accum=accum, lr=lr, head_lr=head_lr,
                        weight_decay=weight_decay, warmup=warmup, device=device, amp=amp, seed=seed, threads=1)
    split = _split(exclude, folds_from, fold, val_fraction, val, kfold, classes, limit, seed)
    _summary(finetune_text(clips, labels, out, cfg, split, train, overwrite=force), out)


@app.command()
def audio(
    clips: Path = AUDIO_CLIPS, labels: Path = LABELS,
    out: Path = OUT,
    model: str = typer.Option(..., "--model", "-m", help="HF speech encoder folder or hub id (HuBERT, wav2vec2, "
                              "WavLM)."),
    layers: str = typer.Option("last", "--layers", help="Hidden states the head reads (as hf-speech: last, last4, "
                               "-1,-2)."),
    layer_pool: str = typer.Option("mean", "--layer-pool", callback=_one_of(["mean", "sum"]),
                                   help="How the selected layers combine."),
    max_seconds: float = typer.Option(10.0, "--max-seconds", help="Train on at most the first N seconds of each clip."),
    train_feature_encoder: bool = typer.Option(False, "--train-feature-encoder",
                                               help="Also train the conv feature encoder (frozen by default)."),
    unfreeze: int = typer.Option(-1, "--unfreeze", help="Train the last N transformer layers only (-1: all)."),
    cache: bool = typer.Option(False, "--cache", help="Decode each clip once and keep its audio in memory."),
    epochs: int = EPOCHS, batch_size: int = BATCH, accum: int = ACCUM,
    lr: float = typer.Option(2e-5, "--lr", help="Learning rate of the encoder."),
    head_lr: float = HEAD_LR, weight_decay: float = WD, warmup: float = WARMUP, device: str = DEVICE, amp: str = AMP,
    seed: int = SEED, exclude: list[Path] = EXCLUDE, folds_from: Path = FOLDS_FROM, fold: int = FOLD,
    val_fraction: float = VAL_FRACTION, val: Path = VAL, kfold: int = KFOLD, classes: str = CLASSES,
    limit: int = LIMIT, threads: int = THREADS, force: bool = FORCE,
) -> None:
    """Fine-tune a HF speech encoder (head on the frame mean); the folder loads in the hf-speech extractor."""
    from mer.finetune.audio import AudioFinetuneConfig, finetune_audio
    from mer.finetune.train import TrainConfig

    cfg = AudioFinetuneConfig(model=model, layers=layers, layer_pool=layer_pool, max_seconds=max_seconds,
                              freeze_feature_encoder=not train_feature_encoder, unfreeze=unfreeze, cache=cache)
    train = TrainConfig(epochs=epochs, batch_size=batch_size, accum=accum, lr=lr, head_lr=head_lr,
                        weight_decay=weight_decay, warmup=warmup, device=device, amp=amp, seed=seed, threads=threads)
    split = _split(exclude, folds_from, fold, val_fraction, val, kfold, classes, limit, seed)
    _summary(finetune_audio(clips, labels, out, cfg, split, train, overwrite=force), out)
