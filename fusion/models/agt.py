"""The Audio-Guided Transformer (AGT): audio tokens guide the fusion of video and text.

Per set: project to width ``d`` (an utterance vector becomes ``utt_tokens`` tokens, frame-level
sets keep one token per frame), add a learned set embedding, and append a learned *null token* that
is always visible, so a clip lacking the set still gives attention something to attend to.
Intra-channel: self-attention inside each set. Inter-channel: the guide's (audio's) tokens are
queries that cross-attend to each other set's tokens, giving one audio-guided stream per set.
Fusion: the audio stream and the guided streams are pooled and mixed by a learned softmax gate
(streams of absent sets get no weight), or concatenated; a linear head gives the logits.

With ``share_blocks`` (default) all sets go through one intra stack in a single call (a
block-diagonal mask keeps attention inside each set) and all guided streams through one inter
stack in a single call (streams stacked along the batch): the same maths with shared weights, and
a third of the kernel launches, which is what dominates on CPU at these sizes.

Time: frame tokens get an encoding of their stored time in seconds (``time_encoding``; a frame of
unknown time is placed at its index), ``align_window`` lets an audio frame query see only the
other set's frames near it in time, and the null query is left out of the pooled streams
(``pool_null=False``) whenever the clip has real guide tokens.
See fusion/README.md for the equations.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import AGTConfig
from .common import Inputs, drop_modalities, masked_mean, modality_of, pooled, times_of

TIME_ENCODINGS = ("none", "sine", "learned")


class TimeEncoding(nn.Module):
    """Seconds ``[B, T]`` -> ``[B, T, d]``, shared by every frame-level set (one time, one code).

    ``sine``: ``W_t [sin(w_j t), cos(w_j t)]_j + b_t`` with ``w_j = 2 pi 2^j / time_scale``,
    ``j < time_freqs``. ``learned``: a table of vectors at knots ``t_i = i * step`` on
    ``[0, time_scale]`` (``step`` = the shortest sine period), linearly interpolated, clamped
    outside.
    """

    def __init__(self, cfg: AGTConfig) -> None:
        super().__init__()
        if cfg.time_scale <= 0 or cfg.time_freqs < 1:
            raise ValueError(f"time_scale must be > 0 and time_freqs >= 1, got {cfg.time_scale}, {cfg.time_freqs}")
        self.kind = cfg.time_encoding
        if self.kind == "sine":
            omega = 2 * math.pi * 2.0 ** torch.arange(cfg.time_freqs, dtype=torch.float32) / cfg.time_scale
            self.register_buffer("omega", omega, persistent=False)  # rebuilt from the config
            self.proj = nn.Linear(2 * cfg.time_freqs, cfg.width)
        else:
            knots = 2 ** (cfg.time_freqs - 1) + 1
            self.step = cfg.time_scale / (knots - 1)
            self.table = nn.Parameter(torch.randn(knots, cfg.width) * 0.02)

    def forward(self, t: Tensor) -> Tensor:
        if self.kind == "sine":
            phase = t.unsqueeze(-1) * self.omega
            return self.proj(torch.cat([torch.sin(phase), torch.cos(phase)], dim=-1))
        last = self.table.shape[0] - 1  # >= 1: time_freqs >= 1 gives at least 2 knots
        u = (t / self.step).clamp(0, last)
        lo = u.floor().long().clamp(max=last - 1)
        frac = (u - lo.to(u.dtype)).unsqueeze(-1)
        return self.table[lo] * (1 - frac) + self.table[lo + 1] * frac


def frame_positions(times: Tensor | None, n: int, like: Tensor) -> Tensor:
    """Positions ``[B, n]`` in seconds for the time encoding: the stored times, and a frame's index
    where its time is unknown (NaN, or no times given at all: frames ``0, 1, 2, ...``)."""
    index = torch.arange(n, device=like.device, dtype=torch.float32).expand(like.shape[0], n)
    if times is None:
        return index
    t = times.to(device=like.device, dtype=torch.float32)
    return torch.where(torch.isfinite(t), t, index)


class Tokenizer(nn.Module):
    """One set's features -> tokens ``[B, T', d]`` with a validity mask; appends the null token."""

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
        self.embed = nn.Parameter(torch.zeros(1, self.k, cfg.width))
        self.null = nn.Parameter(torch.zeros(1, 1, cfg.width))
        nn.init.normal_(self.embed, std=0.02)
        nn.init.normal_(self.null, std=0.02)

    def forward(self, x: Tensor, mask: Tensor, present: Tensor,
                time_code: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Tokens ``[B, T'+1, d]`` (the last is the null token) and their validity ``[B, T'+1]``;
        ``time_code`` ``[B, T, d]`` is added to a frame-level set's projected frames."""
        b = x.shape[0]
        if self.utt:
            tokens = self.proj(x[:, 0])
            if self.expand is not None:
                tokens = self.expand(F.gelu(tokens))
            tokens = tokens.view(b, self.k, -1)
            valid = present.unsqueeze(1).expand(b, self.k)
        else:
            tokens = self.proj(x)
            if time_code is not None:
                tokens = tokens + time_code
            valid = mask & present.unsqueeze(1)
        tokens = self.drop(self.norm(tokens + self.embed))
        tokens = torch.cat([tokens, self.null.expand(b, 1, -1)], dim=1)
        valid = torch.cat([valid, torch.ones(b, 1, dtype=torch.bool, device=x.device)], dim=1)
        return tokens, valid


class Block(nn.Module):
    """Pre-norm attention + feed-forward with residuals: self-attention when ``ctx`` is None,
    else cross-attention of ``x`` (queries) to ``ctx``. ``allowed[b, i, j]``: query i may see key j."""

    def __init__(self, cfg: AGTConfig) -> None:
        super().__init__()
        d = cfg.width
        self.heads = cfg.heads
        self.p = cfg.dropout
        self.q_norm, self.kv_norm, self.ff_norm = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.kv, self.o = nn.Linear(d, d), nn.Linear(d, 2 * d), nn.Linear(d, d)
        self.ff = nn.Sequential(nn.Linear(d, cfg.ffn_mult * d), nn.GELU(), nn.Dropout(cfg.dropout),
                                nn.Linear(cfg.ffn_mult * d, d))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, allowed: Tensor, ctx: Tensor | None = None) -> Tensor:
        b, sq, d = x.shape
        h, dh = self.heads, d // self.heads
        xq = self.q_norm(x)
        kv_in = xq if ctx is None else self.kv_norm(ctx)
        sk = kv_in.shape[1]
        q = self.q(xq).view(b, sq, h, dh).transpose(1, 2)
        k, v = self.kv(kv_in).view(b, sk, 2, h, dh).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed.unsqueeze(1),
                                             dropout_p=self.p if self.training else 0.0)
        x = x + self.drop(self.o(att.transpose(1, 2).reshape(b, sq, d)))
        return x + self.drop(self.ff(self.ff_norm(x)))


class AudioGuidedTransformer(nn.Module):
    """AGT over any sets; the sets of the guide modality (audio) provide the queries."""

    def __init__(self, cfg: AGTConfig, dims: dict[str, int], n_classes: int, utt: dict[str, bool]) -> None:
        super().__init__()
        if cfg.width % cfg.heads:
            raise ValueError(f"width {cfg.width} must be a multiple of heads {cfg.heads}")
        if cfg.fusion not in ("gate", "concat"):
            raise ValueError(f"fusion must be 'gate' or 'concat', got {cfg.fusion!r}")
        if cfg.time_encoding not in TIME_ENCODINGS:
            raise ValueError(f"time_encoding must be one of {', '.join(TIME_ENCODINGS)}, got {cfg.time_encoding!r}")
        if cfg.align_window < 0:
            raise ValueError(f"align_window must be >= 0 seconds, got {cfg.align_window}")
        self.cfg = cfg
        self.keys = list(dims)
        self.utt = {k: bool(utt[k]) for k in self.keys}
        self.guides = [k for k in self.keys if modality_of(k) == cfg.guide]
        self.others = [k for k in self.keys if k not in self.guides]
        if not self.guides:
            raise ValueError(f"AGT needs at least one {cfg.guide!r} feature set to guide the fusion; "
                             f"got {', '.join(self.keys)}")
        if not self.others:
            raise ValueError("AGT needs at least one non-guide feature set (video or text) to fuse")
        self.tok = nn.ModuleDict({_safe(k): Tokenizer(dims[k], cfg, utt[k]) for k in self.keys})
        stacks = 1 if cfg.share_blocks else len(self.keys)
        self.intra = nn.ModuleList([nn.ModuleList([Block(cfg) for _ in range(cfg.intra_layers)])
                                    for _ in range(stacks)])
        n_inter = 1 if cfg.share_blocks else len(self.others)
        self.inter = nn.ModuleList([nn.ModuleList([Block(cfg) for _ in range(cfg.inter_layers)])
                                    for _ in range(n_inter)])
        self.reverse = nn.ModuleList([Block(cfg) for _ in range(n_inter)]) if cfg.bidirectional else None
        d = cfg.width
        self.gate = nn.Linear(d, 1)
        self.stream_norm = nn.LayerNorm(d)
        head_in = d if cfg.fusion == "gate" else (1 + len(self.others)) * d
        self.head = nn.Sequential(nn.LayerNorm(head_in), nn.Dropout(cfg.dropout), nn.Linear(head_in, n_classes))
        # made last, so the other modules start from the same weights with and without it (ablations)
        frame_sets = any(not self.utt[k] for k in self.keys)
        self.time = TimeEncoding(cfg) if cfg.time_encoding != "none" and frame_sets else None
        self.skip = nn.Linear(sum(dims.values()), n_classes) if cfg.linear_skip else None

    # ---- intra-channel ----------------------------------------------------------------------
    def _intra(self, enc: list[tuple[Tensor, Tensor]]) -> list[tuple[Tensor, Tensor]]:
        if not self.cfg.intra_layers:
            return enc
        if not self.cfg.share_blocks:
            out = []
            for (x, valid), stack in zip(enc, self.intra):
                allowed = valid.unsqueeze(1).expand(-1, x.shape[1], -1)
                for block in stack:
                    x = block(x, allowed)
                out.append((x, valid))
            return out
        x = torch.cat([t for t, _ in enc], dim=1)
        valid = torch.cat([v for _, v in enc], dim=1)
        sizes = [t.shape[1] for t, _ in enc]
        owner = torch.repeat_interleave(torch.arange(len(sizes), device=x.device),
                                        torch.tensor(sizes, device=x.device))
        same_set = owner.unsqueeze(0) == owner.unsqueeze(1)  # block-diagonal: attention stays in its set
        allowed = same_set.unsqueeze(0) & valid.unsqueeze(1)
        for block in self.intra[0]:
            x = block(x, allowed)
        return [(part, v) for part, (_, v) in zip(torch.split(x, sizes, dim=1), enc)]

    # ---- inter-channel ----------------------------------------------------------------------
    def _near(self, q_times: Tensor, kv_times: Tensor) -> Tensor | None:
        """``[B, Sq, Sk]``: query i may see key j in time (``align_window``), or ``None`` (no window).

        Tokens without a time (NaN: utterance tokens, null tokens, frames of unknown time) are
        never cut off."""
        w = self.cfg.align_window
        if w <= 0:
            return None
        tq, tk = q_times.unsqueeze(2), kv_times.unsqueeze(1)
        return ((tq - tk).abs() <= w) | torch.isnan(tq) | torch.isnan(tk)

    def _guided(self, q: Tensor, q_valid: Tensor, q_times: Tensor,
                ctx: list[tuple[Tensor, Tensor, Tensor]]) -> list[Tensor]:
        """One audio-guided stream per context set ``(tokens, valid, times)``: queries ``q``
        cross-attend to it."""
        if not self.cfg.share_blocks:
            streams = []
            for i, (kv, kv_valid, kv_times) in enumerate(ctx):
                near = self._near(q_times, kv_times)
                if self.reverse is not None:
                    rev = q_valid.unsqueeze(1).expand(-1, kv.shape[1], -1)
                    kv = self.reverse[i](kv, rev if near is None else rev & near.transpose(1, 2), q)
                allowed = kv_valid.unsqueeze(1).expand(-1, q.shape[1], -1)
                allowed = allowed if near is None else allowed & near
                g = q
                for block in self.inter[i]:
                    g = block(g, allowed, kv)
                streams.append(g)
            return streams
        m, b = len(ctx), q.shape[0]
        s_max = max(kv.shape[1] for kv, _, _ in ctx)
        kv = torch.cat([F.pad(t, (0, 0, 0, s_max - t.shape[1])) for t, _, _ in ctx], dim=0)  # [M*B, S, d]
        kv_valid = torch.cat([F.pad(v, (0, s_max - v.shape[1]), value=False) for _, v, _ in ctx], dim=0)
        kv_times = torch.cat([F.pad(t, (0, s_max - t.shape[1]), value=float("nan")) for _, _, t in ctx], dim=0)
        qq, qv, qt = q.repeat(m, 1, 1), q_valid.repeat(m, 1), q_times.repeat(m, 1)
        near = self._near(qt, kv_times)
        if self.reverse is not None:
            rev = qv.unsqueeze(1).expand(-1, s_max, -1)
            kv = self.reverse[0](kv, rev if near is None else rev & near.transpose(1, 2), qq)
        allowed = kv_valid.unsqueeze(1).expand(-1, q.shape[1], -1)
        allowed = allowed if near is None else allowed & near
        for block in self.inter[0]:
            qq = block(qq, allowed, kv)
        return list(torch.split(qq, b, dim=0))

    # ---- tokens ------------------------------------------------------------------------------
    def _tokens(self, key: str, inp: tuple[Tensor, Tensor], present: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One set's tokens, validity, and token times ``[B, T'+1]`` (NaN: no time)."""
        x, mask = inp[0], inp[1]
        times = times_of(inp)
        code = None
        if not self.utt[key] and self.time is not None:
            code = self.time(frame_positions(times, x.shape[1], x))
        tokens, valid = self.tok[_safe(key)](x, mask, present, code)
        b, n = tokens.shape[:2]
        tok_times = torch.full((b, n), float("nan"), device=x.device)
        if not self.utt[key] and times is not None:
            tok_times[:, :x.shape[1]] = times.to(device=x.device, dtype=tok_times.dtype)
        return tokens, valid, tok_times

    def forward(self, inputs: Inputs, present: dict[str, Tensor]) -> Tensor:
        present = drop_modalities(present, self.others, self.cfg.modality_dropout, self.training)
        raw = [self._tokens(k, inputs[k], present[k]) for k in self.keys]
        enc = self._intra([(t, v) for t, v, _ in raw])
        by_key = {k: (t, v, tt) for k, (t, v), (_, _, tt) in zip(self.keys, enc, raw)}
        # queries: every guide set's tokens (its null token stands in when the clip lacks the guide)
        q = torch.cat([by_key[k][0] for k in self.guides], dim=1)
        q_valid = torch.cat([by_key[k][1] for k in self.guides], dim=1)
        q_times = torch.cat([by_key[k][2] for k in self.guides], dim=1)
        guided = self._guided(q, q_valid, q_times, [by_key[k] for k in self.others])
        pool = self._pool_mask(q_valid, [by_key[k][0].shape[1] for k in self.guides])
        streams = [masked_mean(q, pool)] + [masked_mean(g, pool) for g in guided]
        alive = torch.stack([torch.ones_like(present[self.others[0]])] + [present[k] for k in self.others], dim=1)
        s = self.stream_norm(torch.stack(streams, dim=1))  # [B, S, d]
        if self.cfg.fusion == "gate":
            logits = self.gate(s).squeeze(-1).masked_fill(~alive, float("-inf"))
            z = (torch.softmax(logits, dim=1).unsqueeze(-1) * s).sum(1)
        else:
            z = (s * alive.unsqueeze(-1).to(s.dtype)).flatten(1)
        logits = self.head(z)
        if self.skip is not None:  # wide path: the inputs as given (modality dropout applies to it too)
            logits = logits + self.skip(torch.cat([pooled(inputs, present, k) for k in self.keys], dim=1))
        return logits

    def _pool_mask(self, q_valid: Tensor, sizes: list[int]) -> Tensor:
        """Query positions pooled into the streams: the valid real tokens, or, for a clip without
        any (no guide set present), its null tokens; every valid position with ``pool_null``."""
        if self.cfg.pool_null:
            return q_valid
        is_null = torch.zeros(q_valid.shape[1], dtype=torch.bool, device=q_valid.device)
        is_null[torch.tensor(sizes, device=q_valid.device).cumsum(0) - 1] = True  # each set's last token
        real = q_valid & ~is_null
        return torch.where(real.any(1, keepdim=True), real, q_valid)


def _safe(key: str) -> str:
    return key.replace("/", "__").replace(".", "_")
