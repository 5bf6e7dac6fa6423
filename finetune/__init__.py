"""mer.finetune: fine-tune extractor models on labelled clips and save them as loadable local models.

``mer finetune video`` (CLIP image tower), ``mer finetune text`` (encoder or causal LM, full or LoRA)
and ``mer finetune audio`` (HF speech encoders) train a classification head on the same decoded inputs
the extractors see, then save a directory that ``mer extract ... --model DIR`` loads like any model,
with a ``mer_finetune.json`` record (base model, options, label set, trained-on clips, metrics).
Nothing here imports torch at import time.
"""

from .record import RECORD_NAME, read_record

__all__ = ["RECORD_NAME", "read_record"]
