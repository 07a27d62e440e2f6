"""Probe for docs/memory.md eq. A9d, run by tests/validation/test_fsdp1_hooks.py in a subprocess (it initialises a
process group): a tiny LoRA model (frozen bf16 base, fp32 adapters, peft's wrap policy: every adapter its own
unit, decoder blocks frozen units) under real FSDP1 (torch's FullyShardedDataParallel, use_orig_params=True,
BACKWARD_PRE, on torch's fake process group of 2 ranks) or without FSDP, with HF-style block checkpointing
(reentrant or not). Prints one JSON line: the bytes alive as each block's input gradient arrives in backward.
Written for issue 11 (research in docs/fsdp1.md).

    python tests/validation/fsdp1_probe.py fsdp|nofsdp reentrant|nonreentrant
"""
import sys, weakref, functools, torch, torch.nn as nn, torch.nn.functional as F
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
torch.manual_seed(0)
H, L, V, FF, T, B, R = 256, 8, 256, 512, 128, 2, 8
MODE = sys.argv[1]            # nofsdp | fsdp
REENTRANT = sys.argv[2] == "reentrant"

class Tracker(TorchDispatchMode):
    def __init__(s): super().__init__(); s.live={}; s.cur=0; s.peak=0; s.marks=[]
    def track(s, t):
        st=t.untyped_storage(); k=id(st)
        if k in s.live: return
        n=st.nbytes(); s.live[k]=[n, weakref.ref(st, lambda _r,k=k: s._free(k))]; s.cur+=n; s.peak=max(s.peak,s.cur)
    def _free(s,k):
        r=s.live.pop(k,None)
        if r: s.cur-=r[0]
    def resized(s, st):
        r=s.live.get(id(st))
        if r is None: return
        s.cur += st.nbytes()-r[0]; r[0]=st.nbytes(); s.peak=max(s.peak,s.cur)
    def __enter__(s):
        orig=torch.UntypedStorage.resize_; s._o=orig; tr=s
        def rz(st,n):
            out=orig(st,n); tr.resized(st); return out
        torch.UntypedStorage.resize_=rz; return super().__enter__()
    def __exit__(s,*a):
        torch.UntypedStorage.resize_=s._o; return super().__exit__(*a)
    def __torch_dispatch__(s, func, types, args=(), kwargs=None):
        out=func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor): s.track(t)
        return out
    def mark(s, name): s.marks.append((name, s.cur, s.peak))

class RMS(nn.Module):
    def __init__(s): super().__init__(); s.weight=nn.Parameter(torch.ones(H, dtype=torch.bfloat16))
    def forward(s,x):
        dt=x.dtype; x=x.to(torch.float32); v=x.pow(2).mean(-1,keepdim=True); x=x*torch.rsqrt(v+1e-5)
        return s.weight*x.to(dt)
class LoraLinear(nn.Module):
    def __init__(s, i, o):
        super().__init__(); s.base=nn.Linear(i,o,bias=False,dtype=torch.bfloat16)
        s.lora_A=nn.Linear(i,R,bias=False); s.lora_B=nn.Linear(R,o,bias=False); s.drop=nn.Dropout(0.1)
    def forward(s,x):
        r=s.base(x); dt=r.dtype; x=x.to(s.lora_A.weight.dtype)
        r = r + s.lora_B(s.lora_A(s.drop(x)))*2.0
        return r.to(dt)
class Block(nn.Module):
    def __init__(s):
        super().__init__(); s.n1=RMS(); s.n2=RMS()
        s.q=LoraLinear(H,H); s.k=LoraLinear(H,H//4); s.v=LoraLinear(H,H//4); s.o=LoraLinear(H,H)
        s.g=nn.Linear(H,FF,bias=False,dtype=torch.bfloat16); s.u=nn.Linear(H,FF,bias=False,dtype=torch.bfloat16); s.d=nn.Linear(FF,H,bias=False,dtype=torch.bfloat16)
    def forward(s,x):
        h=s.n1(x); b,t,_=h.shape
        q=s.q(h).view(b,t,4,H//4).transpose(1,2); k=s.k(h).view(b,t,1,H//4).transpose(1,2); v=s.v(h).view(b,t,1,H//4).transpose(1,2)
        k=k.expand(b,4,t,H//4); v=v.expand(b,4,t,H//4)
        a=F.scaled_dot_product_attention(q,k,v,is_causal=True).transpose(1,2).reshape(b,t,H)
        x=x+s.o(a); h=s.n2(x)
        return x+s.d(F.silu(s.g(h))*s.u(h))
class Model(nn.Module):
    def __init__(s):
        super().__init__(); s.emb=nn.Embedding(V,H,dtype=torch.bfloat16); s.layers=nn.ModuleList([Block() for _ in range(L)])
        s.norm=RMS(); s.lm_head=nn.Linear(H,V,bias=False,dtype=torch.bfloat16)
    def forward(s, ids, labels):
        x=s.emb(ids); x.requires_grad_(True)   # enable_input_require_grads
        s.grad_marks=[]
        for i,l in enumerate(s.layers):
            if torch.is_grad_enabled(): x.register_hook(lambda g, i=i: (TK[0].mark(f"grad_in_L{i}") if TK else None))
            x=torch.utils.checkpoint.checkpoint(l, x, use_reentrant=REENTRANT)
        x=s.norm(x); logits=s.lm_head(x)
        lf=logits.float()
        loss=F.cross_entropy(lf[:, :-1].reshape(-1,V), labels[:,1:].reshape(-1))
        return loss

TK=[]
m=Model()
for n,p in m.named_parameters(): p.requires_grad_('lora_' in n)
if MODE=="fsdp":
    from torch.testing._internal.distributed.fake_pg import FakeStore
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=2)
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP, ShardingStrategy, BackwardPrefetch
    from torch.distributed.fsdp.wrap import _or_policy, lambda_auto_wrap_policy, transformer_auto_wrap_policy
    lam=functools.partial(lambda_auto_wrap_policy, lambda_fn=lambda mod: len(list(mod.named_children()))==0 and getattr(mod,'weight',None) is not None and mod.weight.requires_grad)
    tr=functools.partial(transformer_auto_wrap_policy, transformer_layer_cls={Block})
    m=FSDP(m, auto_wrap_policy=functools.partial(_or_policy, policies=[lam,tr]), sharding_strategy=ShardingStrategy.FULL_SHARD,
           backward_prefetch=BackwardPrefetch.BACKWARD_PRE, limit_all_gathers=True, use_orig_params=True, device_id=torch.device("cpu"))
opt=torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
ids=torch.randint(0,V,(B,T)); 
def step(tk):
    loss=m(ids, ids); tk.mark("after_forward"); tk.peak_fwd=tk.peak
    loss.backward(); tk.mark("after_backward")
    opt.step(); opt.zero_grad(set_to_none=True); tk.mark("after_step")
step(Tracker())  # warm up: optimizer states
tk=Tracker(); TK.append(tk)
with tk:
    # count what exists now as baseline by tracking params/states
    base=0
    seen=set()
    for t in list(m.parameters())+[v for s in opt.state.values() for v in s.values() if torch.is_tensor(v)]:
        st=t.untyped_storage()
        if id(st) not in seen: seen.add(id(st)); tk.track(t)
    tk.peak=tk.cur; tk.mark("start")
    # hook the grad of the embedding output / each block input
    step(tk)
import json

marks = [(n, c) for n, c, _ in tk.marks if n.startswith("grad_in_L")]
print(json.dumps({"mode": MODE, "reentrant": REENTRANT, "block_input_bytes": B * T * H * 2,
                  "alive_at_block_input_grads": [c for _, c in marks]}))
