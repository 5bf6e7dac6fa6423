"""The Audio-Guided Transformer (AGT): audio tokens guide the fusion of video and text.

Per set: project to width ``d`` (an utterance vector becomes ``utt_tokens`` tokens, frame-level
sets keep one token per frame), add a learned set embedding, and append a learned *null token* that
is always visible, so a clip lacking the set still gives attention something to attend to.
Intra-channel: self-attention inside each set. Inter-channel: the guide's (audio's) tokens are
queries that cross-attend to each other set's tokens, giving one audio-guided stream per set.
Fusion: the audio stream and the guided streams are pooled and mixed by a learned softmax gate
(streams of absent sets get no weight), or concatenated; a linear head gives the logits.
See fusion/README.md for the equations.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import AGTConfig
from .common import Inputs, drop_modalities, masked_mean, modality_of


class Tokenizer(nn.Module):
    """One set's features -> tokens ``[B, T', d]`` with a mask; appends the null token."""

    def __init__(self, dim_in: int, cfg: AGTConfig, utt: bool) -> None:
        super().__init__()
        self.utt = utt
        self.k = cfg.utt_tokens if utt else 1
        # project to the width first, then expand to k tokens: a large input (5,120-d LLM features)
        # costs one width-sized projection, as in the baselines, not k of them
        self.proj = nn.Linear(dim_in, cfg.width)
        self.expand = nn.Linear(cfg.width, cfg.width * self.k) if self.k > 1 else None
        self.norm = nn.LayerNorm(cfg.width)
        self.drop = nn.Dropout(cfg.dropout)
        self.embed = nn.Parameter(torch.zeros(1, self.k if utt else 1, cfg.width))
        self.null = nn.Parameter(torch.zeros(1, 1, cfg.width))
        nn.init.normal_(self.embed, std=0.02)
        nn.init.normal_(self.null, std=0.02)

    def forward(self, x: Tensor, mask: Tensor, present: Tensor) -> tuple[Tensor, Tensor]:
        b = x.shape[0]
        if self.utt:
            tokens = self.proj(x[:, 0])
            if self.expand is not None:
                tokens = self.expand(nn.functional.gelu(tokens))
            tokens = tokens.view(b, self.k, -1)
            valid = present.unsqueeze(1).expand(b, self.k)
        else:
            tokens = self.proj(x)
            valid = mask & present.unsqueeze(1)
        tokens = self.drop(self.norm(tokens + self.embed))
        tokens = torch.cat([tokens, self.null.expand(b, 1, -1)], dim=1)
        valid = torch.cat([valid, torch.ones(b, 1, dtype=torch.bool, device=x.device)], dim=1)
        return tokens, valid


class CrossBlock(nn.Module):
    """Pre-norm cross-attention (queries attend to a context) + feed-forward, with residuals."""

    def __init__(self, cfg: AGTConfig) -> None:
        super().__init__()
        d = cfg.width
        self.q_norm, self.kv_norm, self.ff_norm = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, cfg.heads, dropout=cfg.dropout, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(d, cfg.ffn_mult * d), nn.GELU(), nn.Dropout(cfg.dropout),
                                nn.Linear(cfg.ffn_mult * d, d))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, q: Tensor, kv: Tensor, kv_valid: Tensor) -> Tensor:
        ctx = self.kv_norm(kv)
        attended, _ = self.attn(self.q_norm(q), ctx, ctx, key_padding_mask=~kv_valid, need_weights=False)
        q = q + self.drop(attended)
        return q + self.drop(self.ff(self.ff_norm(q)))


class AudioGuidedTransformer(nn.Module):
    """AGT over any sets; the sets of the guide modality (audio) provide the queries."""

    def __init__(self, cfg: AGTConfig, dims: dict[str, int], n_classes: int, utt: dict[str, bool]) -> None:
        super().__init__()
        self.cfg = cfg
        self.keys = list(dims)
        self.guides = [k for k in self.keys if modality_of(k) == cfg.guide]
        self.others = [k for k in self.keys if k not in self.guides]
        if not self.guides:
            raise ValueError(f"AGT needs at least one {cfg.guide!r} feature set to guide the fusion; got {', '.join(self.keys)}")
        if not self.others:
            raise ValueError("AGT needs at least one non-guide feature set (video or text) to fuse")
        d = cfg.width
        self.tok = nn.ModuleDict({_safe(k): Tokenizer(dims[k], cfg, utt[k]) for k in self.keys})
        self.intra = nn.ModuleDict({
            _safe(k): nn.TransformerEncoder(
                nn.TransformerEncoderLayer(d, cfg.heads, cfg.ffn_mult * d, cfg.dropout, batch_first=True,
                                           norm_first=True, activation="gelu"),
                num_layers=cfg.intra_layers, enable_nested_tensor=False)
            for k in self.keys} if cfg.intra_layers > 0 else {})
        self.inter = nn.ModuleDict({_safe(k): nn.ModuleList([CrossBlock(cfg) for _ in range(cfg.inter_layers)])
                                    for k in self.others})
        self.reverse = nn.ModuleDict({_safe(k): CrossBlock(cfg) for k in self.others} if cfg.bidirectional else {})
        n_streams = 1 + len(self.others)
        self.gate = nn.Linear(d, 1)
        self.stream_norm = nn.LayerNorm(d)
        head_in = d if cfg.fusion == "gate" else n_streams * d
        if cfg.fusion not in ("gate", "concat"):
            raise ValueError(f"fusion must be 'gate' or 'concat', got {cfg.fusion!r}")
        self.head = nn.Sequential(nn.LayerNorm(head_in), nn.Dropout(cfg.dropout), nn.Linear(head_in, n_classes))

    def _encode(self, key: str, inputs: Inputs, present: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        x, mask = inputs[key]
        tokens, valid = self.tok[_safe(key)](x, mask, present[key])
        if self.intra:
            tokens = self.intra[_safe(key)](tokens, src_key_padding_mask=~valid)
        return tokens, valid

    def forward(self, inputs: Inputs, present: dict[str, Tensor]) -> Tensor:
        present = drop_modalities(present, self.others, self.cfg.modality_dropout, self.training)
        enc = {k: self._encode(k, inputs, present) for k in self.keys}
        # queries: every guide set's tokens (its null token stands in when the clip lacks the guide)
        q = torch.cat([enc[k][0] for k in self.guides], dim=1)
        q_valid = torch.cat([enc[k][1] for k in self.guides], dim=1)
        streams = [masked_mean(q, q_valid)]
        alive = [torch.ones_like(present[self.others[0]])]
        for k in self.others:
            kv, kv_valid = enc[k]
            if self.cfg.bidirectional:
                kv = self.reverse[_safe(k)](kv, q, q_valid)
            guided = q
            for block in self.inter[_safe(k)]:
                guided = block(guided, kv, kv_valid)
            streams.append(masked_mean(guided, q_valid))
            alive.append(present[k])
        s = torch.stack([self.stream_norm(t) for t in streams], dim=1)  # [B, S, d]
        alive_t = torch.stack(alive, dim=1)
        if self.cfg.fusion == "gate":
            logits = self.gate(s).squeeze(-1).masked_fill(~alive_t, float("-inf"))
            z = (torch.softmax(logits, dim=1).unsqueeze(-1) * s).sum(1)
        else:
            z = (s * alive_t.unsqueeze(-1).to(s.dtype)).flatten(1)
        return self.head(z)


def _safe(key: str) -> str:
    return key.replace("/", "__").replace(".", "_")
