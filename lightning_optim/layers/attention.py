"""Multi-head attention whose inner width differs from its embedding width: what ``nn.MultiheadAttention``
becomes when structured pruning removes some of its heads.

``nn.MultiheadAttention`` ties the head width to ``embed_dim // num_heads`` and its inner width to
``embed_dim``, so it cannot lose heads and stay itself. :class:`PrunedMultiheadAttention` keeps its call
signature, its ``batch_first`` convention and its parameter names (``in_proj_weight``, ``in_proj_bias``,
``out_proj.weight``, ``out_proj.bias``, so checkpoints keep their keys) with ``3 * num_heads * head_dim``
projection rows. :func:`from_multihead_attention` builds one from a torch module (all heads, or a subset).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: attributes of an attention module that hold its head count, its inner width (heads x head width) and its
#: head width: a module that loses heads gets the first two updated (``num_heads`` and ``attn_dim`` in timm,
#: ``num_attention_heads`` and ``all_head_size`` in transformers...); the head width does not change
HEAD_COUNT_ATTRIBUTES = (
    "num_heads",
    "num_attention_heads",
    "n_heads",
    "n_head",
    "num_head",
    "nhead",
    "heads",
)
INNER_WIDTH_ATTRIBUTES = ("attn_dim", "all_head_size", "inner_dim", "inner_size", "proj_dim")
HEAD_WIDTH_ATTRIBUTES = ("head_dim", "attention_head_size", "head_size", "d_head", "dim_head")


class PrunedMultiheadAttention(nn.Module):
    """Multi-head attention with ``num_heads`` heads of ``head_dim`` features each, on ``embed_dim``-wide
    inputs and outputs (packed q/k/v projections, as in ``nn.MultiheadAttention``).

    Args:
        embed_dim: width of the query, key, value and output.
        num_heads: number of heads (>= 1).
        head_dim: features per head.
        dropout: dropout on the attention weights (training only).
        bias: whether the projections have biases.
        batch_first: inputs and outputs are ``(batch, sequence, features)`` (else ``(sequence, batch, features)``).

    Raises:
        ValueError: for a non-positive ``embed_dim``, ``num_heads`` or ``head_dim``, or ``dropout`` outside [0, 1).
    """

    #: read by ``nn.TransformerEncoderLayer``/``DecoderLayer`` before their fused fast path, which assumes torch's
    #: own packed layout: ``False`` sends them to the ordinary path, which calls this module's ``forward``
    _qkv_same_embed_dim = False

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        head_dim: int,
        dropout: float = 0.0,
        bias: bool = True,
        batch_first: bool = False,
    ) -> None:
        super().__init__()
        for option, value in (("embed_dim", embed_dim), ("num_heads", num_heads), ("head_dim", head_dim)):
            if value < 1:
                raise ValueError(f"`{option}` must be >= 1, got {value}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1), got {dropout}.")
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.dropout, self.batch_first = dropout, batch_first
        inner = num_heads * head_dim
        self.in_proj_weight = nn.Parameter(torch.empty(3 * inner, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * inner)) if bias else None
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias)
        nn.init.xavier_uniform_(self.in_proj_weight)

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.head_dim

    def _project(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The q/k/v projections (slices of the packed ``in_proj_weight``)."""
        inner = self.inner_dim
        w, b = self.in_proj_weight, self.in_proj_bias
        bq, bk, bv = (None, None, None) if b is None else (b[:inner], b[inner : 2 * inner], b[2 * inner :])
        return (
            F.linear(query, w[:inner], bq),
            F.linear(key, w[inner : 2 * inner], bk),
            F.linear(value, w[2 * inner :], bv),
        )

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Same arguments and results as ``nn.MultiheadAttention.forward``."""
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        inner = self.inner_dim
        q, k, v = self._project(query, key, value)
        n, lq, _ = q.shape
        ls = k.shape[1]
        q = q.reshape(n, lq, self.num_heads, self.head_dim).transpose(1, 2)
        k = k.reshape(n, ls, self.num_heads, self.head_dim).transpose(1, 2)
        v = v.reshape(n, ls, self.num_heads, self.head_dim).transpose(1, 2)
        mask = _merge_masks(attn_mask, key_padding_mask, n, self.num_heads, lq, ls, q.dtype)
        dropout = self.dropout if self.training else 0.0
        if need_weights:
            scores = (q @ k.transpose(-2, -1)) / self.head_dim**0.5
            if is_causal and mask is None:
                mask = torch.ones(lq, ls, dtype=torch.bool, device=q.device).tril().logical_not()
                mask = torch.zeros(lq, ls, dtype=q.dtype, device=q.device).masked_fill(mask, float("-inf"))
            if mask is not None:
                scores = scores + mask
            weights = F.dropout(scores.softmax(-1), dropout, self.training)
            out = weights @ v
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal and mask is None
            )
            weights = None
        out = self.out_proj(out.transpose(1, 2).reshape(n, lq, inner))
        if weights is not None and average_attn_weights:
            weights = weights.mean(1)
        if unbatched:
            out = out.squeeze(0)
            weights = weights.squeeze(0) if weights is not None else None
        elif not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
            f"batch_first={self.batch_first}"
        )


class SeparateProjectionAttention(PrunedMultiheadAttention):
    """:class:`PrunedMultiheadAttention` with the q, k and v projections as three ``nn.Linear`` layers
    (``q_proj``, ``k_proj``, ``v_proj``) instead of slices of one packed weight: what a quantizer that annotates
    linear layers (torchao's x86 PT2E quantizer) can quantize. Build one with :func:`separate_projections`."""

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        head_dim: int,
        dropout: float = 0.0,
        bias: bool = True,
        batch_first: bool = False,
    ) -> None:
        super().__init__(embed_dim, num_heads, head_dim, dropout, bias, batch_first)
        del self.in_proj_weight
        del self.in_proj_bias
        # read (and found None) by nn.TransformerEncoderLayer's fast-path check, which then takes the ordinary path
        self.in_proj_weight: Tensor | None = None
        self.in_proj_bias: Tensor | None = None
        inner = num_heads * head_dim
        self.q_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.k_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.v_proj = nn.Linear(embed_dim, inner, bias=bias)

    def _project(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.q_proj(query), self.k_proj(key), self.v_proj(value)


def _merge_masks(
    attn_mask: Tensor | None,
    key_padding_mask: Tensor | None,
    n: int,
    heads: int,
    lq: int,
    ls: int,
    dtype: torch.dtype,
) -> Tensor | None:
    """One additive float mask broadcastable to ``(n, heads, lq, ls)`` from torch's two mask arguments."""

    def additive(m: Tensor) -> Tensor:
        if m.dtype == torch.bool:
            return torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(m, float("-inf"))
        return m.to(dtype)

    mask = None
    if attn_mask is not None:
        mask = additive(attn_mask)
        mask = mask.reshape(n, heads, lq, ls) if mask.dim() == 3 else mask
    if key_padding_mask is not None:
        pad = additive(key_padding_mask).reshape(n, 1, 1, ls)
        mask = pad if mask is None else mask + pad
    return mask


@torch.no_grad()
def from_multihead_attention(
    module: nn.MultiheadAttention | PrunedMultiheadAttention, heads: list[int] | None = None
) -> PrunedMultiheadAttention:
    """A :class:`PrunedMultiheadAttention` computing what ``module`` computes with only the ``heads`` kept (all
    of them when ``None``); its parameters are copies.

    Raises:
        ValueError: for a module with separate q/k/v widths, ``bias_k``/``add_zero_attn``, or unknown heads.
    """
    if isinstance(module, nn.MultiheadAttention):
        if not module._qkv_same_embed_dim or module.bias_k is not None or module.add_zero_attn:
            raise ValueError(
                "Only nn.MultiheadAttention with kdim == vdim == embed_dim, no bias_k/bias_v and no add_zero_attn "
                "can lose heads."
            )
        total, head_dim = module.num_heads, module.head_dim
    else:
        total, head_dim = module.num_heads, module.head_dim
    heads = list(range(total)) if heads is None else sorted(heads)
    if not heads or any(not 0 <= h < total for h in heads):
        raise ValueError(f"`heads` must be a non-empty subset of range({total}), got {heads}.")
    inner = total * head_dim
    rows = torch.tensor(
        [part * inner + h * head_dim + j for part in range(3) for h in heads for j in range(head_dim)],
        dtype=torch.long,
    )
    cols = rows[: len(heads) * head_dim]
    bias = module.in_proj_bias is not None
    new = PrunedMultiheadAttention(
        module.embed_dim, len(heads), head_dim, float(module.dropout), bias, module.batch_first
    ).to(module.in_proj_weight)
    new.in_proj_weight.copy_(module.in_proj_weight.index_select(0, rows.to(module.in_proj_weight.device)))
    if bias:
        new.in_proj_bias.copy_(module.in_proj_bias.index_select(0, rows.to(module.in_proj_bias.device)))
    new.out_proj.weight.copy_(module.out_proj.weight.index_select(1, cols.to(module.out_proj.weight.device)))
    if bias and module.out_proj.bias is not None:
        new.out_proj.bias.copy_(module.out_proj.bias)
    new.train(module.training)
    return new


def separate_projections(
    module: nn.MultiheadAttention | PrunedMultiheadAttention,
) -> SeparateProjectionAttention:
    """A :class:`SeparateProjectionAttention` computing what ``module`` computes (its parameters are copies).

    Raises:
        ValueError: as :func:`from_multihead_attention` (separate q/k/v widths, ``bias_k``, ``add_zero_attn``).
    """
    packed = from_multihead_attention(module)
    new = SeparateProjectionAttention(
        packed.embed_dim,
        packed.num_heads,
        packed.head_dim,
        packed.dropout,
        packed.in_proj_bias is not None,
        packed.batch_first,
    ).to(packed.in_proj_weight)
    inner = packed.inner_dim
    with torch.no_grad():
        for i, proj in enumerate((new.q_proj, new.k_proj, new.v_proj)):
            proj.weight.copy_(packed.in_proj_weight[i * inner : (i + 1) * inner])
            if proj.bias is not None:
                proj.bias.copy_(packed.in_proj_bias[i * inner : (i + 1) * inner])
        new.out_proj.load_state_dict(packed.out_proj.state_dict())
    new.train(module.training)
    return new


def unpack_attention(model: nn.Module) -> list[str]:
    """Replace, in place, every ``nn.MultiheadAttention``/:class:`PrunedMultiheadAttention` of ``model`` that
    :func:`separate_projections` supports by its separate-projection equivalent; returns the replaced names."""
    replaced = []
    for name, module in list(model.named_modules()):
        if (
            not name  # the model itself: nothing to put it in
            or not isinstance(module, (nn.MultiheadAttention, PrunedMultiheadAttention))
            or isinstance(module, SeparateProjectionAttention)
        ):
            continue
        try:
            new = separate_projections(module)
        except ValueError:
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
        replaced.append(name)
    return replaced


__all__ = [
    "HEAD_COUNT_ATTRIBUTES",
    "HEAD_WIDTH_ATTRIBUTES",
    "INNER_WIDTH_ATTRIBUTES",
    "PrunedMultiheadAttention",
    "SeparateProjectionAttention",
    "from_multihead_attention",
    "separate_projections",
    "unpack_attention",
]
