"""Tiny randomly initialised models of the real architectures, saved to a folder (nothing downloaded).

Shared by the extractor tests (``test_extractors_hf.py``, which calls the extractors directly) and
the CLI tests (``test_extract_tiny_models.py``, which run ``mer extract`` on the saved folders).
Each ``build_*`` function writes one model (and its tokenizer / feature-extractor config where the
architecture has one) into ``d`` and returns ``d``. torch and transformers are imported inside the
functions, so importing this module is cheap and never fails.
"""

from __future__ import annotations

import json
from pathlib import Path

SR = 16000
CONV_KERNEL = (10, 3, 3)
CONV_STRIDE = (5, 2, 2)  # hop 20 samples
HIDDEN = 32  # hidden size of every tiny speech / text model
CLIP_PROJECTION = 24  # projection_dim of the tiny HF CLIPModel
OPEN_CLIP_EMBED = 16  # embed_dim of the tiny open_clip model


def conv_frames(n: int, kernels=CONV_KERNEL, strides=CONV_STRIDE) -> int:
    """Output frames of the conv feature encoder (the nn.Conv1d length formula, no padding)."""
    for k, s in zip(kernels, strides):
        n = (n - k) // s + 1
    return n


# ---- speech -----------------------------------------------------------------------------------
def _speech_cfg(cls, **kw):
    return cls(
        hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16, 16, 16), conv_kernel=CONV_KERNEL, conv_stride=CONV_STRIDE,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, vocab_size=12,
        mask_time_prob=0.0, **kw)


def build_hubert(d: Path, seed: int = 0) -> Path:
    """HuBERT-base style: group-norm conv encoder, no attention mask."""
    import torch
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(seed)
    HubertModel(_speech_cfg(HubertConfig, feat_extract_norm="group")).save_pretrained(d)
    return d


def build_w2v(d: Path, seed: int = 1) -> Path:
    """wav2vec2-large style: layer-norm conv encoder + stable layer norm, takes an attention mask."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    torch.manual_seed(seed)
    Wav2Vec2Model(_speech_cfg(Wav2Vec2Config, feat_extract_norm="layer", do_stable_layer_norm=True)).save_pretrained(d)
    Wav2Vec2FeatureExtractor(sampling_rate=SR, do_normalize=True, return_attention_mask=True).save_pretrained(d)
    return d


# ---- text -------------------------------------------------------------------------------------
WORDS = ("i you he she it we they is are was not no yes very so and but the a to of in on my your "
         "happy sad angry surprised worried neutral good bad love hate look getting married too also "
         "need rearrange yourself course everything finished eating yo what why how oh really know "
         "think can do go come see this that there here , . ! ? ' s t").split()
SENTENCES = ["i am so happy to see you .", "why are you so angry ?", "oh no , this is really bad !",
             "we need to go .", "yes .", "look , he is getting married too , you also need to rearrange yourself ."]


def build_bert(d: Path, seed: int = 2, words: list[str] | None = None) -> Path:
    """BERT with a WordPiece vocabulary of :data:`WORDS` or ``words`` (fast tokenizer, model_max_length 64)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(words or WORDS)]
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # from_pretrained(d) reads d/vocab.txt in transformers 4 and 5 alike; the constructor's
    # ``vocab_file=`` is silently ignored by transformers 5 (every word would be [UNK]).
    tok = BertTokenizerFast.from_pretrained(d, model_max_length=64)
    if len(tok) != len(vocab):
        raise RuntimeError(f"tiny BERT tokenizer has {len(tok)} tokens, expected {len(vocab)}")
    tok.save_pretrained(d)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(d)
    return d


def word_tokenizer(words: list[str] | None = None):
    """A WordLevel fast tokenizer of :data:`WORDS` or ``words``, built offline (no pad token: the
    extractor must add one)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", *(words or WORDS)])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"), len(vocab)


def build_llama(d: Path, seed: int = 3, words: list[str] | None = None) -> Path:
    """Llama causal LM (saved with its LM head; AutoModel loads the base model) + word tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok, n = word_tokenizer(words)
    tok.save_pretrained(d)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=n, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      bos_token_id=1, eos_token_id=2, pad_token_id=None)
    LlamaForCausalLM(cfg).save_pretrained(d)
    return d


def build_qwen(d: Path, seed: int = 4) -> Path:
    """Qwen2 causal LM + word tokenizer."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok, n = word_tokenizer()
    tok.save_pretrained(d)
    torch.manual_seed(seed)
    # transformers 5 loads a qwen2 folder's tokenizer as Qwen2Tokenizer (whatever tokenizer_config says),
    # which adds its own special tokens after our vocab: leave room for them.
    cfg = Qwen2Config(vocab_size=n + 32, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    Qwen2ForCausalLM(cfg).save_pretrained(d)
    return d


# ---- CLIP -------------------------------------------------------------------------------------
def build_hf_clip(d: Path, seed: int = 5) -> Path:
    """HF CLIPModel: 32x32 ViT with 8x8 patches, projection_dim :data:`CLIP_PROJECTION`."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=16),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=64),
        projection_dim=CLIP_PROJECTION)
    CLIPModel(cfg).save_pretrained(d)
    return d


OPEN_CLIP_NAME = "mer-tiny-vit"
OPEN_CLIP_CFG = {"embed_dim": OPEN_CLIP_EMBED,
                 "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
                 "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}}


def build_open_clip(d: Path, seed: int = 6):
    """A tiny open_clip architecture, in two forms.

    Registers :data:`OPEN_CLIP_NAME` with open_clip in *this* process (from ``d/cfg``) and returns
    ``(model, weights, local)``: the model in eval mode, its state dict saved as ``d/tiny.pt``, and
    ``d/local``, a self-contained open_clip folder (``open_clip_config.json`` +
    ``open_clip_pytorch_model.bin``) that any process can load by path.
    """
    import open_clip
    import torch

    (d / "cfg").mkdir(exist_ok=True)
    (d / "cfg" / f"{OPEN_CLIP_NAME}.json").write_text(json.dumps(OPEN_CLIP_CFG))
    open_clip.add_model_config(d / "cfg")
    torch.manual_seed(seed)
    model = open_clip.create_model(OPEN_CLIP_NAME, pretrained=None)
    weights = d / "tiny.pt"
    torch.save(model.state_dict(), weights)
    local = d / "local"
    local.mkdir(exist_ok=True)
    (local / "open_clip_config.json").write_text(json.dumps({"model_cfg": OPEN_CLIP_CFG, "preprocess_cfg": {}}))
    torch.save(model.state_dict(), local / "open_clip_pytorch_model.bin")
    return model.eval(), weights, local
