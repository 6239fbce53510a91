"""The book's GPT model of chapter 4, written out here so the pipeline owns it.

Code and the book's sections:

- GPTConfig: the GPT_CONFIG_124M dictionary of 4.1 (Coding an LLM architecture), as a frozen dataclass.
- LayerNorm: 4.2 (Normalizing activations with layer normalization).
- GELU, FeedForward: 4.3 (Implementing a feed forward network with GELU activations).
- TransformerBlock.forward's two shortcuts: 4.4 (Adding shortcut connections).
- MultiHeadAttention: chapter 3's causal multi-head attention (3.6.2), which 4.5 plugs into a block.
- TransformerBlock: 4.5 (Connecting attention and linear layers in a transformer block).
- GPTModel: 4.6 (Coding the GPT model).

Every module, parameter and buffer has the book's name, and every forward runs the book's operations in
the book's order: a state_dict of llms_from_scratch.ch04.GPTModel loads into GPTModel (strict) and back,
and both give the same logits. check_config and pick_device turn a bad setting into a PipelineError.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

import torch
from torch import nn

from llmpipe.errors import PipelineError, shown

# The params.yaml key behind each field, so an error names what to change.
PARAM_NAMES = {
    "vocab_size": "the tokenizer's vocabulary size (tokenize.encoding)",
    "context_length": "embed.context_length",
    "emb_dim": "embed.dim",
    "n_heads": "train.n_heads",
    "n_layers": "train.n_layers",
    "drop_rate": "train.drop_rate",
    "qkv_bias": "train.qkv_bias",
}


@dataclass(frozen=True)
class GPTConfig:
    """The model's sizes, with the book's names: GPTConfig(**GPT_CONFIG_124M) is the book's GPT-2 small."""

    vocab_size: int
    context_length: int
    emb_dim: int
    n_heads: int
    n_layers: int
    drop_rate: float
    qkv_bias: bool


def check_config(config: GPTConfig) -> None:
    """Check that `config` describes a model that can be built.

    Takes a GPTConfig; returns nothing. Raises PipelineError, naming the params.yaml key, when a size is not a
    positive integer, n_heads does not divide emb_dim (each head gets emb_dim // n_heads dimensions), drop_rate
    is not a number in [0, 1), or qkv_bias is not a boolean.
    """
    for field in fields(config):
        value = getattr(config, field.name)
        if field.name == "drop_rate":
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
                raise PipelineError(f"{PARAM_NAMES['drop_rate']} is {shown(value)}: use a number in [0, 1)")
        elif field.name == "qkv_bias":
            if not isinstance(value, bool):
                raise PipelineError(f"{PARAM_NAMES['qkv_bias']} is {shown(value)}: use true or false")
        elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise PipelineError(f"{PARAM_NAMES[field.name]} is {shown(value)}: use a positive integer")
    if config.emb_dim % config.n_heads:
        raise PipelineError(
            f"train.n_heads {config.n_heads} does not divide embed.dim {config.emb_dim}: each head needs a whole "
            "share of the embedding, so pick train.n_heads among the divisors of embed.dim"
        )


def pick_device(name: str) -> torch.device:
    """The torch device that params.yaml's train.device names.

    Takes "auto" (CUDA if available, then Apple's MPS, else the CPU), "cpu", "cuda", "cuda:N" or "mps".
    Returns the torch.device. Raises PipelineError naming train.device and the devices available here when
    the name is unknown or the device is not available on this machine.
    """
    cuda = torch.cuda.is_available()
    mps = torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", name) if isinstance(name, str) else None
    usable = (
        name == "cpu"
        or (name == "mps" and mps)
        or (match is not None and cuda and int(match[1] or 0) < torch.cuda.device_count())
    )
    if not usable:
        raise PipelineError(
            f"train.device is {shown(name)}, which is not available here: use one of {', '.join(available_devices())}"
        )
    return torch.device(name)


def available_devices() -> list[str]:
    """The train.device values that pick_device accepts on this machine, "auto" first."""
    names = ["auto", "cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        names.append("mps")
    return names


class LayerNorm(nn.Module):
    """Normalise each embedding to mean 0 and variance 1, then scale and shift it (learned, per dimension)."""

    def __init__(self, emb_dim: int):
        super().__init__()
        self.eps = 1e-5
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=-1, keepdim=True)
        var = x.var(dim=-1, keepdim=True, unbiased=False)  # GPT-2 divides by n, as torch's nn.LayerNorm does
        norm_x = (x - mean) / torch.sqrt(var + self.eps)
        return self.scale * norm_x + self.shift


# The book computes sqrt(2/pi) as a float32 tensor; the same float32 value as a Python number gives
# bit-identical activations without building a tensor on every call.
SQRT_2_OVER_PI = torch.sqrt(torch.tensor(2.0 / torch.pi)).item()


class GELU(nn.Module):
    """GPT-2's activation: GELU in its tanh approximation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1 + torch.tanh(SQRT_2_OVER_PI * (x + 0.044715 * torch.pow(x, 3))))


class FeedForward(nn.Module):
    """Expand each embedding to 4 * emb_dim, apply GELU, project back to emb_dim."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(config.emb_dim, 4 * config.emb_dim),
            GELU(),
            nn.Linear(4 * config.emb_dim, config.emb_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class MultiHeadAttention(nn.Module):
    """Causal self-attention with n_heads heads, split out of one query, key and value projection each."""

    def __init__(self, d_in: int, d_out: int, context_length: int, dropout: float, num_heads: int, qkv_bias: bool):
        super().__init__()
        self.d_out = d_out
        self.num_heads = num_heads
        self.head_dim = d_out // num_heads
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)
        self.dropout = nn.Dropout(dropout)
        # Persistent and float, as in the book, so that state_dicts carry the same keys both ways.
        self.register_buffer("mask", torch.triu(torch.ones(context_length, context_length), diagonal=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, num_tokens, _ = x.shape
        # (b, num_tokens, d_out) -> (b, num_heads, num_tokens, head_dim)
        keys = self.W_key(x).view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
        queries = self.W_query(x).view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
        values = self.W_value(x).view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)

        attn_scores = queries @ keys.transpose(2, 3)
        attn_scores.masked_fill_(self.mask.bool()[:num_tokens, :num_tokens], -torch.inf)  # no look at later tokens
        attn_weights = torch.softmax(attn_scores / keys.shape[-1] ** 0.5, dim=-1)
        attn_weights = self.dropout(attn_weights)

        context_vec = (attn_weights @ values).transpose(1, 2).reshape(b, num_tokens, self.d_out)
        return self.out_proj(context_vec)


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: x + attention(norm1(x)), then x + feed_forward(norm2(x)), each with dropout."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.att = MultiHeadAttention(
            d_in=config.emb_dim,
            d_out=config.emb_dim,
            context_length=config.context_length,
            dropout=config.drop_rate,
            num_heads=config.n_heads,
            qkv_bias=config.qkv_bias,
        )
        self.ff = FeedForward(config)
        self.norm1 = LayerNorm(config.emb_dim)
        self.norm2 = LayerNorm(config.emb_dim)
        self.drop_resid = nn.Dropout(config.drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_resid(self.att(self.norm1(x)))
        return x + self.drop_resid(self.ff(self.norm2(x)))


class GPTModel(nn.Module):
    """The book's GPT: token ids of shape [batch, seq] in, next-token logits of shape [batch, seq, vocab] out.

    Takes a GPTConfig (checked with check_config, so a bad one raises PipelineError). Sequences may be at most
    config.context_length tokens long, the number of learned positions.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        check_config(config)
        self.tok_emb = nn.Embedding(config.vocab_size, config.emb_dim)
        self.pos_emb = nn.Embedding(config.context_length, config.emb_dim)
        self.drop_emb = nn.Dropout(config.drop_rate)
        self.trf_blocks = nn.Sequential(*[TransformerBlock(config) for _ in range(config.n_layers)])
        self.final_norm = LayerNorm(config.emb_dim)
        self.out_head = nn.Linear(config.emb_dim, config.vocab_size, bias=False)

    def forward(self, in_idx: torch.Tensor) -> torch.Tensor:
        seq_len = in_idx.shape[1]
        x = self.tok_emb(in_idx) + self.pos_emb(torch.arange(seq_len, device=in_idx.device))
        x = self.drop_emb(x)
        x = self.trf_blocks(x)
        x = self.final_norm(x)
        return self.out_head(x)


def config_for(embeddings: dict[str, torch.Tensor], max_length: int, vocab_size: int, params: dict) -> GPTConfig:
    """The GPTConfig of the train stage: width and context from the embed stage's tensors, the rest from params.

    Takes the embed stage's tensors (load_embeddings), the dataset's max_length and vocab_size, and the checked
    train params (n_heads, n_layers, drop_rate, qkv_bias). Returns a checked GPTConfig. Raises PipelineError,
    naming the params.yaml key, when the embeddings come from another vocabulary, their context is shorter than
    window.max_length, or the config cannot be built (check_config).
    """
    vocab_rows, emb_dim = embeddings["token_embedding.weight"].shape
    context_length = embeddings["pos_embedding.weight"].shape[0]
    if vocab_rows != vocab_size:
        raise PipelineError(
            f"the embeddings have {vocab_rows} token rows but the dataset's vocabulary has {vocab_size}: they come "
            "from another tokenizer, so run `dvc repro embed`"
        )
    if context_length < max_length:
        raise PipelineError(
            f"embed.context_length {context_length} is shorter than window.max_length {max_length}: the model could "
            f"not place a window's tokens, so raise embed.context_length to at least {max_length} (or null)"
        )
    names = ("n_heads", "n_layers", "drop_rate", "qkv_bias")
    config = GPTConfig(vocab_size, context_length, emb_dim, **{name: params[name] for name in names})
    check_config(config)
    size = num_parameters(config) * 4
    if size > MAX_MODEL_BYTES:
        raise PipelineError(
            f"train.n_layers {config.n_layers} at embed.dim {emb_dim} makes a model of {size / (1 << 30):,.1f} GiB "
            f"of float32 weights, over the {MAX_MODEL_BYTES >> 30} GiB limit: lower train.n_layers or embed.dim"
        )
    return config


# GPT-2 XL (1.5 B parameters) is 6 GiB; a typo like n_layers: 12000 stops here, not in the OOM killer.
MAX_MODEL_BYTES = 16 << 30


def num_parameters(config: GPTConfig) -> int:
    """The number of parameters of GPTModel(config), counted from its sizes without building it."""
    d, bias = config.emb_dim, config.qkv_bias
    block = 3 * d * d + (3 * d if bias else 0) + d * d + d + 8 * d * d + 5 * d + 4 * d
    return 2 * config.vocab_size * d + config.context_length * d + config.n_layers * block + 2 * d


def model_from_embeddings(config: GPTConfig, token_weight: torch.Tensor, pos_weight: torch.Tensor) -> GPTModel:
    """A GPTModel initialised as the book does (seed torch first), its two embedding matrices then replaced.

    The token and positional embeddings start as the embed stage's tensors: the random matrices of chapter 2 are
    the ones that learn. With the embed stage's seed equal to the one seeded before this call, they are the very
    values the book's GPTModel draws first, so the whole initial model equals the book's.
    """
    model = GPTModel(config)
    with torch.no_grad():
        model.tok_emb.weight.copy_(token_weight)
        model.pos_emb.weight.copy_(pos_weight)
    return model


def load_gpt(model_dir) -> GPTModel:
    """The model the train stage wrote to `model_dir` (llmpipe.formats.load_model), in eval mode.

    Raises PipelineError when the files are missing, edited or do not fit the architecture of their config.
    """
    from llmpipe.formats import load_model

    state_dict, config = load_model(model_dir)
    model = GPTModel(GPTConfig(**config))
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        raise PipelineError(
            f"{model_dir} holds weights that do not fit its config ({str(error).splitlines()[0]}): "
            "run `dvc checkout data/model` or `dvc repro -f train`"
        ) from None
    return model.eval()
