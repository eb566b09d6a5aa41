"""A decoder-only transformer (GPT), readable top to bottom, with KV-cache generation.

Pre-norm blocks, rotary position embeddings (RoPE), scaled-dot-product attention, tied input
and output embeddings, no biases. RoPE rather than GPT-2's learned positions because these
tasks are in-context lookups ("which edge ends at this node?"): with relative positions the
previous-token and induction heads they need are easy to form; in development the CPU demo
only showed the path-star result once positions were rotary (docs/ARCHITECTURE.md). Greedy
generation with the cache gives exactly the tokens of generation without it
(tests/test_model.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UserError, require

# Sizes from a CPU demo up to ~85M parameters. `paper` is the path-star model of
# Bachmann & Nagarajan (2024): 6 layers, width 384, 6 heads. `gpt2-small` has GPT-2 small's
# shape (12 layers, width 768, 12 heads): ~85M parameters with these tasks' vocabularies of
# at most ~1,000 tokens (GPT-2's 124M count its 50,257-token embedding); the GPU throughput
# benchmark trains it at a context of 1,024 (benchmarks/bench_train.py).
PRESETS = {
    "tiny": dict(n_layer=2, n_head=2, n_embd=64),
    "small": dict(n_layer=4, n_head=4, n_embd=128),
    "base": dict(n_layer=4, n_head=4, n_embd=256),
    "paper": dict(n_layer=6, n_head=6, n_embd=384),
    "medium": dict(n_layer=8, n_head=8, n_embd=512),
    "gpt2-small": dict(n_layer=12, n_head=12, n_embd=768),
}


@dataclass
class GPTConfig:
    vocab_size: int
    block_size: int
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0

    def validate(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            require(isinstance(value, int) and value >= 1,
                    f"model {name} must be a positive integer, got {value!r}.")
        require(self.n_embd % self.n_head == 0,
                f"model n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head}).")
        require((self.n_embd // self.n_head) % 2 == 0,
                f"model head width n_embd / n_head = {self.n_embd // self.n_head} must be even (RoPE).")
        require(0.0 <= self.dropout < 1.0, f"model dropout must be in [0, 1), got {self.dropout!r}.")

    def to_dict(self) -> dict:
        return asdict(self)


def training_memory_floor(cfg: GPTConfig) -> int:
    """Bytes that training `cfg` takes at the least, before any activation: fp32 weights,
    gradients and AdamW's two moments (16 bytes a parameter) and the RoPE tables. Counted from
    the config, so an impossible size is refused before the allocator is asked."""
    params = cfg.vocab_size * cfg.n_embd + cfg.n_layer * (12 * cfg.n_embd**2 + 2 * cfg.n_embd) + cfg.n_embd
    rope = 2 * cfg.block_size * (cfg.n_embd // cfg.n_head // 2) * 4
    return 16 * params + rope


class KVCache:
    """Keys and values of every layer for a batch, filled as generation proceeds."""

    def __init__(self, cfg: GPTConfig, batch: int, length: int, device, dtype):
        shape = (cfg.n_layer, batch, cfg.n_head, length, cfg.n_embd // cfg.n_head)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.pos = 0  # tokens already in the cache


def rope_tables(block_size: int, head_dim: int, base: float = 10000.0):
    """cos and sin of every (position, frequency) pair, (block_size, head_dim // 2)."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(block_size, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    """Rotate pairs (x[..., :d/2], x[..., d/2:]) of a (B, H, T, D) tensor by position."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=False)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.dropout = cfg.dropout

    def forward(self, x, cos, sin, cache: KVCache | None = None, layer: int = 0):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            # Prefill starts at 0 (causal mask); later steps add one token that sees all.
            assert cache.pos == 0 or T == 1
            cache.k[layer, :, :, cache.pos: cache.pos + T] = k
            cache.v[layer, :, :, cache.pos: cache.pos + T] = v
            k = cache.k[layer, :, :, : cache.pos + T]
            v = cache.v[layer, :, :, : cache.pos + T]
        # causal from position 0 (training, prefill); a cached step's one token sees all. Not
        # `T > 1`: under torch.compile a symbolic width would break the graph there.
        causal = cache is None or cache.pos == 0
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.up = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=False)
        self.down = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.dropout(self.down(F.gelu(self.up(x))))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd, bias=False)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd, bias=False)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, cache=None, layer=0):
        x = x + self.attn(self.ln1(x), cos, sin, cache, layer)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        cos, sin = rope_tables(cfg.block_size, cfg.n_embd // cfg.n_head)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=False)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight  # weight tying
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2's scaled init of residual projections
            if name.endswith("proj.weight") or name.endswith("down.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx, cache: KVCache | None = None):
        """Logits for every position of `idx` (B, T). With a cache, `idx` continues it."""
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        if start + T > self.cfg.block_size:  # the message only here: formatting the length
            # (a symbolic size under torch.compile) would fix it and recompile every new width
            raise UserError(f"sequence of {start + T} tokens is longer than the model's context of "
                            f"{self.cfg.block_size}.")
        cos, sin = self.rope_cos[start: start + T], self.rope_sin[start: start + T]
        x = self.drop(self.tok_emb(idx))
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, cache, i)
        if cache is not None:
            cache.pos += T
        return self.head(self.ln_f(x))


LogitsHook = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def generate(model: GPT, prompts: torch.Tensor, max_new_tokens: int, eos_id: int,
             use_cache: bool = True, logits_hook: LogitsHook | None = None,
             temperature: float = 0.0, top_k: int = 0,
             generator: torch.Generator | list[torch.Generator] | None = None) -> torch.Tensor:
    """Continue equal-length `prompts` (B, T): greedy when `temperature` is 0, else sampled
    from softmax(logits / temperature) restricted to the `top_k` best (0: all) with
    `generator` (seeded sampling). `generator` may be a list of one CPU generator per row
    (`row_generators`): each row then draws only from its own, so what a row writes does not
    depend on the other rows of its batch, or on how many there are.

    Returns (B, <= max_new_tokens) new tokens; a row stops at its first `eos_id` and is
    padded with `eos_id` after it. `logits_hook(logits, generated_so_far)` may rewrite the
    next-token logits (decoding penalties). Stops early once every row has finished.
    `generate_with_logprobs` also returns the tokens' log-probabilities.
    """
    tokens, _ = _decode(model, prompts, max_new_tokens, eos_id, use_cache, logits_hook,
                        temperature, top_k, generator, logprobs=False)
    return tokens


@torch.no_grad()
def generate_with_logprobs(model: GPT, prompts: torch.Tensor, max_new_tokens: int, eos_id: int,
                           use_cache: bool = True, logits_hook: LogitsHook | None = None,
                           temperature: float = 0.0, top_k: int = 0,
                           generator: torch.Generator | list[torch.Generator] | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, logprobs): `generate`'s tokens, and each row's summed log-probability (B,) of
    its tokens up to and including its `eos_id`, under the distribution it was drawn from."""
    return _decode(model, prompts, max_new_tokens, eos_id, use_cache, logits_hook,
                   temperature, top_k, generator, logprobs=True)


def _decode(model: GPT, prompts: torch.Tensor, max_new_tokens: int, eos_id: int, use_cache: bool,
            logits_hook: LogitsHook | None, temperature: float, top_k: int,
            generator: torch.Generator | list[torch.Generator] | None, logprobs: bool
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """The decoding loop of `generate` and `generate_with_logprobs`: (tokens, summed
    log-probabilities), the latter computed only with `logprobs` (else zeros)."""
    model.eval()
    B, T = prompts.shape
    max_new_tokens = min(max_new_tokens, model.cfg.block_size - T)
    out = torch.full((B, max(0, max_new_tokens)), eos_id, dtype=torch.long, device=prompts.device)
    logprob = torch.zeros(B, dtype=torch.float32, device=prompts.device)
    if max_new_tokens <= 0:
        return out, logprob
    dtype = next(model.parameters()).dtype
    cache = KVCache(model.cfg, B, T + max_new_tokens, prompts.device, dtype) if use_cache else None
    finished = torch.zeros(B, dtype=torch.bool, device=prompts.device)
    logits = model(prompts, cache)[:, -1]
    seq = prompts
    for t in range(max_new_tokens):
        logits = logits.float()
        if logits_hook is not None:
            logits = logits_hook(logits, out[:, :t])
        if temperature > 0:
            logits = logits / temperature
            if top_k:
                kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            if isinstance(generator, list):
                nxt = _sample_per_row(logits, generator)
            else:
                probs = torch.softmax(logits, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        else:
            nxt = logits.argmax(dim=-1)
        nxt = torch.where(finished, torch.full_like(nxt, eos_id), nxt)
        if logprobs:
            step_lp = torch.log_softmax(logits, dim=-1).gather(1, nxt[:, None]).squeeze(1)
            logprob += torch.where(finished, torch.zeros_like(step_lp), step_lp)
        out[:, t] = nxt
        finished |= nxt == eos_id
        if bool(finished.all()) or t == max_new_tokens - 1:
            return out[:, : t + 1], logprob
        if use_cache:
            logits = model(nxt[:, None], cache)[:, -1]
        else:
            seq = torch.cat([seq, nxt[:, None]], dim=1)
            logits = model(seq)[:, -1]
    return out, logprob


def row_generators(seed: int, keys: list[tuple[int, int]]) -> list[torch.Generator]:
    """One CPU generator per (row, sample) of `keys`, seeded from (seed, row, sample) alone, so
    a sampled completion is a pure function of them, whatever the batch it is decoded in."""
    from ..rng import SplitMixPy

    gens = []
    for row, sample in keys:
        g = torch.Generator(device="cpu")
        g.manual_seed(SplitMixPy(seed, _SAMPLING_STREAM, row, sample).state)
        gens.append(g)
    return gens


_SAMPLING_STREAM = 7  # keeps sampling apart from the streams a suite is generated with


def _sample_per_row(logits: torch.Tensor, gens: list[torch.Generator]) -> torch.Tensor:
    """One token per row from softmax(`logits`), row b drawn with `gens[b]` alone (Gumbel-max:
    argmax of logits + Gumbel noise; a masked -inf logit is never drawn). The noise is drawn on
    the CPU in float64, one vector per row, and moved to the logits' device."""
    u = torch.stack([torch.rand(logits.shape[-1], generator=g, dtype=torch.float64) for g in gens])
    gumbel = -torch.log(-torch.log(u.clamp_min(1e-300)))
    return (logits.double() + gumbel.to(logits.device)).argmax(dim=-1)
