"""Run real FSDP2 in the trace: ``fully_shard`` as accelerate prepares it, over torch's fake process group.

A setup with ``--fsdp`` is traced by running PyTorch's own FSDP2 (``torch.distributed.fsdp.fully_shard``) on
rank 0 of a ``world_size``-rank *fake* process group (``torch.testing._internal.distributed.fake_pg``: every
collective returns at once without moving data), inside ``FakeTensorMode``. So the trace holds exactly what
one rank of a real FSDP2 job holds: fp32 parameter shards, the unsharded compute-dtype parameters of the
groups that are gathered, the flat all-gather and reduce-scatter buffers, the unsharded gradients of the
group in backward and the fp32 gradient shards - no division by the world size after the fact.

The model is wrapped by accelerate's own ``fsdp2_prepare_model`` (accelerate 1.15,
``accelerate/utils/fsdp_utils.py``), which is what the HF Trainer calls with ``fsdp_config["version"] = 2``
(the default in transformers 5.24, ``training_args.py``), with the plugin the Trainer builds:
transformer-based auto wrap (one group per decoder block), the input embedding as its own group, the final
norm and LM head as a group that stays gathered from forward to backward, the root last;
``reshard_after_forward`` True for ``full-shard`` and False for ``shard-grad-op``; and, for the AMP recipes,
``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=bf16, output_dtype=bf16)``, which accelerate's
``FullyShardedDataParallelPlugin.set_mixed_precision`` sets from ``mixed_precision="bf16"``. Autocast stays
on as well (accelerate's ``native_amp`` wraps ``model.forward``), but every weight it sees is already bf16,
so it makes no copies.

What this cannot show: the CUDA streams (the CPU runs each collective synchronously, so an all-gather issued
ahead of its use on a GPU is counted when it is waited for), NCCL's own buffers, and the caching allocator's
stream-aware reuse (see ``planner.engine.runtime_memory``).
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace
from typing import TYPE_CHECKING, Iterator

import torch
from torch import nn

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

    from planner.engine.setup import Setup
    from validation.trace.tracker import StorageTracker

MESH_DIM = "dp_shard"


@contextlib.contextmanager
def fake_process_group(world_size: int) -> Iterator["DeviceMesh"]:
    """Rank 0 of a ``world_size``-rank fake process group for the duration of the trace (torch's own test
    backend: collectives complete at once and move no data; tensors keep their real shapes), and its 1-D CPU
    device mesh (made here, outside ``FakeTensorMode``, which cannot build one). When a process group already
    exists (real ranks, e.g. gloo in the tests), its mesh is used instead and left in place."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():  # a real multi-process run (the gloo test): use its group as it is
        if dist.get_world_size() != world_size:
            raise RuntimeError(f"the process group has {dist.get_world_size()} ranks, the setup {world_size}")
        yield init_device_mesh("cpu", (world_size,), mesh_dim_names=(MESH_DIM,))
        return
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size)
    try:
        yield init_device_mesh("cpu", (world_size,), mesh_dim_names=(MESH_DIM,))
    finally:
        dist.destroy_process_group()


def mixed_precision_name(setup: "Setup") -> str:
    """accelerate's ``mixed_precision`` for the recipe: the AMP recipes train with ``bf16`` / ``fp16``;
    pure bf16 (torchtune style: weights already bf16) runs without it."""
    return {"hf-amp": "bf16", "fp16-amp": "fp16"}.get(setup.recipe, "no")


def accelerate_fsdp2(net: nn.Module, setup: "Setup", mesh: "DeviceMesh") -> nn.Module:
    """Shard ``net`` with accelerate's ``fsdp2_prepare_model`` and the plugin the HF Trainer builds for
    ``setup`` (see the module docstring), over the 1-D data-parallel ``mesh`` (dimension name ``dp_shard``)."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model

    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2,
        reshard_after_forward=setup.fsdp == "full-shard",
        auto_wrap_policy="transformer_based_wrap",
    )
    mp = mixed_precision_name(setup)
    if mp != "no":
        plugin.set_mixed_precision(mp)
    # the attributes of ``Accelerator`` that fsdp2_prepare_model reads
    accelerator = SimpleNamespace(
        state=SimpleNamespace(fsdp_plugin=plugin),
        torch_device_mesh=mesh,
        parallelism_config=SimpleNamespace(fsdp_dim_names=(MESH_DIM,)),
        mixed_precision=mp,
        is_main_process=True,
        device=torch.device(mesh.device_type),
    )
    return fsdp2_prepare_model(accelerator, net)


TORCHTUNE_SEPARATE_UNITS = ("embed_tokens", "lm_head")
"""The HF names of torchtune's ``custom_sharded_layers: ['tok_embeddings', 'output']`` (set by torchtune's own
larger configs, e.g. llama3_1/8B_full.yaml and 70B_full.yaml, "Layers to shard separately (useful for large vocab
size models). Lower Memory", and written by tuneplan's torchtune emitter for a model whose LM head is not tied)."""


def torchtune_fsdp2(net: nn.Module, setup: "Setup", mesh: "DeviceMesh") -> nn.Module:
    """Shard ``net`` as torchtune's ``training.shard_model`` does (torchtune/training/_distributed.py, main at
    bd2a0fc): ``fully_shard`` on every module named ``...layers.<i>`` (``get_shard_conditions``) and on the
    ``custom_sharded_layers``, bottom-up, with ``reshard_after_forward`` True for ``full-shard``; then the root with
    ``reshard_after_forward=False``, which keeps whatever no unit claimed (the final norm; the embedding too when the
    LM head is tied to it, as torchtune's tied models shard no separate unit) gathered for the whole step. torchtune
    trains in pure bf16 with no ``MixedPrecisionPolicy``; the AMP recipes get accelerate's policy as above (torchtune
    itself never runs them). The HF module tree stands in for torchtune's: ``model.layers.<i>``, ``embed_tokens`` for
    ``tok_embeddings``, ``lm_head`` for ``output``."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kw: dict = {"mesh": mesh, "reshard_after_forward": setup.fsdp == "full-shard"}
    mp = mixed_precision_name(setup)
    if mp != "no":
        dt = torch.bfloat16 if mp == "bf16" else torch.float16
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=dt, reduce_dtype=dt, output_dtype=dt)
    tied = lm_head_tied(net)
    layers = 0
    for name, m in reversed(list(net.named_modules())):
        parts = name.split(".")
        is_layer = len(parts) >= 2 and parts[-2] == "layers" and parts[-1].isdigit()
        separate = not tied and parts[-1] in TORCHTUNE_SEPARATE_UNITS and any(True for _ in m.parameters())
        if is_layer or separate:
            fully_shard(m, **kw)
            layers += is_layer
    if not layers:  # torchtune's shard_model raises here too ("No layer modules were sharded")
        from validation.trace.errors import NotTraceable

        raise NotTraceable(f"{type(net).__name__} has no modules named layers.<i> for torchtune's FSDP2 wrapping; "
                           "use --framework hf (accelerate's wrapping)")
    fully_shard(net, **{**kw, "reshard_after_forward": False})
    return net


def lm_head_tied(net: nn.Module) -> bool:
    """Whether the model's output projection shares the input embedding's weight."""
    inp = net.get_input_embeddings() if hasattr(net, "get_input_embeddings") else None
    out = net.get_output_embeddings() if hasattr(net, "get_output_embeddings") else None
    if inp is None or out is None:
        return False
    return getattr(out, "weight", None) is getattr(inp, "weight", None)


def shard_fsdp2(net: nn.Module, setup: "Setup", mesh: "DeviceMesh") -> nn.Module:
    """FSDP2 as the setup's framework wraps it: torchtune's ``shard_model`` (:func:`torchtune_fsdp2`) for
    ``--framework torchtune``, else accelerate's ``fsdp2_prepare_model`` (:func:`accelerate_fsdp2`)."""
    if setup.framework == "torchtune":
        return torchtune_fsdp2(net, setup, mesh)
    return accelerate_fsdp2(net, setup, mesh)


@contextlib.contextmanager
def tag_fsdp_buffers(tracker: "StorageTracker") -> Iterator[None]:
    """Tag what FSDP2 allocates for the tracker: the flat all-gather output and the unsharded parameters
    (``FSDPParamGroup.unshard`` / ``wait_for_unshard``) and the reduce-scatter buffers
    (``post_backward``) as ``fsdp_buffers``; the unsharded gradients autograd accumulates into the gathered
    parameters as ``fsdp_unsharded_grad``; the fp32 gradient shards ``post_backward`` leaves on the sharded
    parameters as ``gradients``. Tags only name the bytes; the bytes are FSDP2's own."""
    from torch.distributed.fsdp._fully_shard._fsdp_param_group import FSDPParamGroup

    names = ("unshard", "wait_for_unshard", "post_backward")
    original = {n: getattr(FSDPParamGroup, n) for n in names}
    hooked: set[int] = set()

    def tag_unsharded_grad(p: torch.Tensor) -> None:
        if p.grad is not None:
            tracker.track(p.grad, "fsdp_unsharded_grad")

    def wrap(name: str):  # type: ignore[no-untyped-def]
        fn = original[name]

        def method(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            previous = tracker.default_tag
            if previous == "activations":
                tracker.default_tag = "fsdp_buffers"
            try:
                return fn(self, *args, **kwargs)
            finally:
                tracker.default_tag = previous
                for fp in self.fsdp_params:
                    if name == "post_backward":
                        grad = fp.sharded_param.grad
                        if grad is not None:
                            tracker.track(grad, "gradients")
                    elif name == "wait_for_unshard":
                        up = getattr(fp, "_unsharded_param", None)
                        if up is not None and up.requires_grad and id(up) not in hooked:
                            hooked.add(id(up))
                            up.register_post_accumulate_grad_hook(tag_unsharded_grad)

        return method

    from torch.distributed.tensor._sharding_prop import ShardingPropagator

    # DTensor's sharding propagation builds global-shape tensors to infer output shapes; on a real run it does so
    # in a FakeTensorMode of its own (no memory), in a trace it reuses the trace's: do not count them
    propagate = ShardingPropagator._propagate_tensor_meta_non_cached

    def propagate_untracked(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        tracker.paused += 1
        try:
            return propagate(self, *args, **kwargs)
        finally:
            tracker.paused -= 1

    for n in names:
        setattr(FSDPParamGroup, n, wrap(n))
    ShardingPropagator._propagate_tensor_meta_non_cached = propagate_untracked  # type: ignore[method-assign]
    try:
        yield
    finally:
        for n, fn in original.items():
            setattr(FSDPParamGroup, n, fn)
        ShardingPropagator._propagate_tensor_meta_non_cached = propagate  # type: ignore[method-assign]
