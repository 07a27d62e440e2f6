"""Eq. A4c (LitGPT's fused qkv kept alive by the saved value) against torch's own saving behaviour.

Independent truth: the tensor path of LitGPT's ``CausalSelfAttention.forward`` at lit-gpt 8641822 (the commit of
its 2023-10 resource tables, ``lit_gpt/model.py``), replayed line for line on real CPU tensors, with the storages
the autograd graph saves read through ``saved_tensors_hooks``. What the engine adds for ``framework="litgpt"`` must
be what torch keeps beyond the value tensor itself: the rest of the fused qkv output for multi-head attention,
nothing with grouped queries (where ``expand`` + ``reshape`` copies v)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from planner.engine.activations import layer_inventory  # noqa: E402
from planner.engine.dtypes import recipe_bytes  # noqa: E402
from planner.engine.facts import model_facts  # noqa: E402
from planner.engine.setup import Setup  # noqa: E402
from profiles.registry import get_model  # noqa: E402


def _apply_rope(x, cos, sin):  # lit_gpt/model.py at 8641822, apply_rope
    head_size = x.size(-1)
    x1 = x[..., : head_size // 2]
    x2 = x[..., head_size // 2:]
    rotated = torch.cat((-x2, x1), dim=-1)
    roped = (x * cos) + (rotated * sin)
    return roped.type_as(x)


def _saved_value_storage_bytes(n_head: int, n_query_groups: int, head_size: int, B: int = 2, T: int = 64) -> tuple[int, int]:
    """(bytes of the storage behind the value tensor SDPA saves, bytes of the value tensor itself), LitGPT's path."""
    total_qkv = n_head // n_query_groups + 2
    qkv = torch.randn(B, T, (n_head + 2 * n_query_groups) * head_size, dtype=torch.bfloat16, requires_grad=True) * 1
    # CausalSelfAttention.forward at 8641822, the lines from the qkv projection to the attention call
    q_per_kv = n_head // n_query_groups
    qkv = qkv.view(B, T, n_query_groups, total_qkv, head_size)
    qkv = qkv.permute(0, 2, 3, 1, 4)
    q, k, v = qkv.split((q_per_kv, 1, 1), dim=2)
    if n_query_groups != 1:
        k = k.expand(B, n_query_groups, q_per_kv, T, head_size)
        v = v.expand(B, n_query_groups, q_per_kv, T, head_size)
    q = q.reshape(B, -1, T, head_size)
    k = k.reshape(B, -1, T, head_size)
    v = v.reshape(B, -1, T, head_size)
    cos = torch.randn(T, head_size, dtype=torch.bfloat16)
    sin = torch.randn(T, head_size, dtype=torch.bfloat16)
    q = torch.cat((_apply_rope(q, cos, sin), q[..., head_size:]), dim=-1)
    k = torch.cat((_apply_rope(k, cos, sin), k[..., head_size:]), dim=-1)
    saved: dict[int, int] = {}

    def pack(t):
        if t.dtype == torch.bfloat16 and t.dim() == 4 and t.shape[-2] == T and t.data_ptr() != 0:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    v_storage = v.untyped_storage()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert v_storage.data_ptr() in saved, "SDPA saves the value it is given"
    return saved[v_storage.data_ptr()], v.numel() * v.element_size()


@pytest.mark.parametrize("name", ["llama2-7b", "llama3-8b"])
def test_engine_adds_what_litgpts_saved_value_keeps(name: str):
    model = get_model(name)
    hs = model.hidden_size // model.num_heads
    heads = 8  # an 8-head copy with the model's ratio of query heads to key-value heads (Llama 3: 4, so 2 groups)
    groups = heads * model.num_kv_heads // model.num_heads
    kept, own = _saved_value_storage_bytes(heads, groups, hs)
    B, T = 2, 64
    extra_per_token_torch = (kept - own) / (B * T) * (model.num_heads / heads)  # scaled back to the model's heads
    s = Setup(method="lora", recipe="bf16", lora_targets="q_proj,v_proj", framework="litgpt")
    inv = layer_inventory(model_facts(model, s), s, recipe_bytes(s), False)
    assert inv.items.get("litgpt_qkv", 0) == pytest.approx(extra_per_token_torch)
    assert (extra_per_token_torch > 0) == (model.num_kv_heads == model.num_heads)
