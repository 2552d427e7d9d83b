"""`varlen_sdpa`: attention for padding-free batches, registered with transformers.

TRL packs conversations best-fit (`packing_strategy=bfd`) into one flattened row per batch, with
`position_ids` restarting at each conversation and the boundaries as `cu_seq_lens_q/k`. With
transformers' `sdpa` such a row gets a dense mask over the whole row and loses `is_causal`
(masking_utils: `sdpa_mask`), so every step computes (sum of lengths)^2 scores, 8-16x the work of
one causal attention per conversation at 4 x 2048 tokens. flash-attn's varlen kernels do one
attention per conversation, but need the flash-attn wheel; `varlen_sdpa` does the same with
torch's own kernel (`torch.nn.attention.varlen.varlen_attn`, FlashAttention-2 inside torch,
CUDA only), and honours the model's sliding window.

- Every forward without padding and without cached tokens (training rows, packed or not; the
  prompt of a generation) runs one causal attention per sequence: per conversation when the row
  is packed (from `cu_seq_lens_q` or the restarts of `position_ids`), else per row. On a CPU,
  where `varlen_attn` has no kernel, the same runs as one SDPA call per sequence.
- Padded batches and decoding with a KV cache go to transformers' `sdpa` with its own mask.

Registering the name once (importing this module) is all `attn_implementation="varlen_sdpa"`
needs; the models save it nowhere, so a saved model loads without this module.
"""

from __future__ import annotations

import functools
import inspect

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

VARLEN_SDPA = "varlen_sdpa"


def varlen_sdpa_mask(*, attention_mask=None, q_length: int, kv_length: int, q_offset=0, **kwargs):
    """No mask where `varlen_sdpa_forward` runs the sequences itself; sdpa's mask elsewhere."""
    if attention_mask is None and kv_length == q_length and isinstance(q_offset, int) and q_offset == 0:
        return None
    return sdpa_mask(
        attention_mask=attention_mask, q_length=q_length, kv_length=kv_length, q_offset=q_offset, **kwargs
    )


def varlen_sdpa_forward(
    module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    **kwargs,
):
    """query, key, value: (batch, heads, length, head_dim), as transformers' attention calls pass them."""
    batch, heads, length, head_dim = query.shape
    padded_or_cached = attention_mask is not None or key.shape[2] != length
    if padded_or_cached or not getattr(module, "is_causal", True):
        return sdpa_attention_forward(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=scaling,
            sliding_window=sliding_window,
            **kwargs,
        )
    if dropout:
        raise NotImplementedError(f"{VARLEN_SDPA} has no attention dropout (Phi-3's is 0.0)")
    cu_seq_lens, max_length = _sequences(batch, length, query.device, kwargs)
    if key.shape[1] != heads:  # grouped-query attention: one key/value head per group of query heads
        key, value = (t.repeat_interleave(heads // key.shape[1], dim=1) for t in (key, value))
    # (batch, heads, length, dim) -> (tokens, heads, dim): every sequence one after the other.
    q, k, v = (t.transpose(1, 2).reshape(batch * length, heads, head_dim) for t in (query, key, value))
    # transformers' sliding window keeps keys with kv_idx > q_idx - sliding_window: a query sees
    # itself and the sliding_window - 1 keys before it.
    left_window = sliding_window - 1 if sliding_window is not None and max_length > sliding_window else -1
    scale = scaling if scaling is not None else head_dim**-0.5
    if q.is_cuda:
        out = _varlen_attn(q, k, v, cu_seq_lens, max_length, scale, left_window)
    else:
        out = _sdpa_per_sequence(q, k, v, cu_seq_lens, scale, left_window)
    return out.reshape(batch, length, heads, head_dim), None  # as sdpa_attention_forward returns it


def _sequences(batch: int, length: int, device, kwargs: dict) -> tuple[torch.Tensor, int]:
    """(cumulative sequence starts over the flattened batch, the longest sequence)."""
    if kwargs.get("cu_seq_lens_q") is not None:  # TRL's padding-free collator, with the longest
        cu_seq_lens = kwargs["cu_seq_lens_q"].to(device=device, dtype=torch.int32)
        if kwargs.get("max_length_q") is not None:  # as an int: no device sync in every layer
            return cu_seq_lens, int(kwargs["max_length_q"])
    elif kwargs.get("position_ids") is not None:  # each sequence starts again at position 0
        positions = kwargs["position_ids"].expand(batch, length)
        (cu_seq_lens, _), _ = prepare_fa_kwargs_from_position_ids(positions)
    else:
        cu_seq_lens = torch.arange(0, (batch + 1) * length, length, dtype=torch.int32, device=device)
    return cu_seq_lens, int(cu_seq_lens.diff().max())


@functools.cache
def _varlen_attn_has_window() -> bool:
    from torch.nn.attention.varlen import varlen_attn

    # torch 2.11+: keyword-only scale and window_size ((-1, 0) is causal); 2.10: is_causal only.
    return "window_size" in inspect.signature(varlen_attn).parameters


def _varlen_attn(q, k, v, cu_seq_lens, max_length: int, scale: float, left_window: int) -> torch.Tensor:
    from torch.nn.attention.varlen import varlen_attn

    if _varlen_attn_has_window():
        window = (left_window, 0)
        return varlen_attn(
            q, k, v, cu_seq_lens, cu_seq_lens, max_length, max_length, scale=scale, window_size=window
        )
    if left_window != -1 or scale != q.shape[-1] ** -0.5:
        raise NotImplementedError(
            f"torch {torch.__version__}'s varlen_attn has no sliding window or scale: use "
            "model.attn_implementation=flash_attention_2 (flash-attn) or flex_attention"
        )
    return varlen_attn(q, k, v, cu_seq_lens, cu_seq_lens, max_length, max_length, is_causal=True)


def _sdpa_per_sequence(q, k, v, cu_seq_lens, scale: float, left_window: int) -> torch.Tensor:
    """The CPU's stand-in for `varlen_attn`: one causal SDPA call per sequence."""
    out = torch.empty_like(q)
    for start, end in zip(cu_seq_lens[:-1].tolist(), cu_seq_lens[1:].tolist()):
        qs, ks, vs = (t[start:end].transpose(0, 1) for t in (q, k, v))  # (heads, n, dim)
        if left_window == -1:
            attended = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale)
        else:
            index = torch.arange(end - start, device=q.device)
            offset = index[:, None] - index[None, :]  # query minus key position
            window = (offset >= 0) & (offset <= left_window)
            attended = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=window, scale=scale)
        out[start:end] = attended.transpose(0, 1)
    return out


AttentionInterface.register(VARLEN_SDPA, varlen_sdpa_forward)
AttentionMaskInterface.register(VARLEN_SDPA, varlen_sdpa_mask)
