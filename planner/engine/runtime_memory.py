"""What a GPU holds beyond the tensors: allocated -> reserved -> device (docs/memory.md eq. R1-R7).

The engine's categories are tensor bytes (what the FakeTensor trace counts). A real run reports three larger
figures, each a function of the one before:

* **allocated** (``torch.cuda.max_memory_allocated``): the tensors, each rounded up to 512 bytes by the caching
  allocator, plus the cuBLAS workspaces, which torch allocates through that same allocator (eq. R1, R2);
* **reserved** (``torch.cuda.max_memory_reserved``): allocated plus the allocator's segment rounding and the
  cached blocks it cannot hand out again (fragmentation; worse when micro-batch shapes change) (eq. R3);
* **device** (``nvidia-smi`` / NVML "used"): reserved plus the CUDA context, NCCL's communicator buffers and
  the pages of bitsandbytes' paged optimizer states that happen to sit on the GPU (eq. R4-R6), none of which go
  through torch's allocator.

Every constant below is read from the library that sets it (file and version named) or from a published
measurement (named). What no source fixes (the fragmentation fraction, the kernels a run loads into its
context, NCCL's channel count on a given topology) is a parameter with a stated default, for calibration to
fit; those defaults say which way they err. Pure functions, bytes in and bytes out, no torch.
"""

from __future__ import annotations

import functools

from dataclasses import dataclass

KiB = 1024
MiB = 1024**2
GiB = 1024**3

# ---- torch's CUDA caching allocator (c10/cuda/CUDACachingAllocator.cpp, torch 2.13) ----------------------
ALLOC_MIN_BLOCK = 512
"""``kMinBlockSize``: every allocation is rounded up to a multiple of 512 bytes."""
ALLOC_SMALL_SIZE = 1 * MiB
"""``kSmallSize``: the largest "small" allocation; small ones share 2 MiB segments (``kSmallBuffer``)."""
ALLOC_SMALL_SEGMENT = 2 * MiB
"""``kSmallBuffer``: segment size of the small pool."""
ALLOC_LARGE_SEGMENT = 20 * MiB
"""``kLargeBuffer``: allocations between 1 and 10 MiB are carved from 20 MiB segments."""
ALLOC_MIN_LARGE = 10 * MiB
"""``kMinLargeAlloc``: from 10 MiB up, an allocation gets its own segment ..."""
ALLOC_ROUND_LARGE = 2 * MiB
"""``kRoundLarge``: ... rounded up to a multiple of 2 MiB."""

# ---- cuBLAS workspaces (aten/src/ATen/cuda/CublasHandlePool.cpp, torch 2.13) -------------------------------
CUBLAS_WORKSPACE_SM90 = 4096 * KiB * 8
"""``parseChosenWorkspaceSize`` default on compute capability 9.0 (H100 / H800 / H20 / H200): ``:4096:8``, 32 MiB."""
CUBLAS_WORKSPACE_DEFAULT = 4096 * KiB * 2 + 16 * KiB * 8
"""The default elsewhere: ``:4096:2:16:8``, 8.125 MiB. ``CUBLAS_WORKSPACE_CONFIG`` overrides both. cuBLASLt shares
this workspace (``TORCH_CUBLASLT_UNIFIED_WORKSPACE`` defaults to on outside fbcode)."""
CUBLAS_HANDLES_TRAINING = 2
"""One workspace per (cuBLAS handle, stream); handles are thread-local, and a training step runs GEMMs on the
main thread (forward) and on autograd's device thread (backward): two workspaces, both through the caching
allocator (``getNewWorkspace``), so they are part of ``max_memory_allocated``."""

COMPUTE_CAPABILITY: dict[str, tuple[int, int]] = {
    "A100": (8, 0), "A800": (8, 0), "H100": (9, 0), "H800": (9, 0), "H20": (9, 0), "H200": (9, 0), "GH200": (9, 0),
    "B200": (10, 0), "GB200": (10, 0), "RTX 3090": (8, 6), "RTX 4090": (8, 9), "RTX 5090": (12, 0),
    "RTX 6000 Ada": (8, 9), "RTX A6000": (8, 6), "L20": (8, 9), "L40S": (8, 9), "L4": (8, 9), "T4": (7, 5), "V100": (7, 0),
}
"""GPU name prefix -> CUDA compute capability (NVIDIA's CUDA GPUs table, developer.nvidia.com/cuda-gpus)."""

# ---- CUDA context -------------------------------------------------------------------------------------------
CUDA_CONTEXT_LAZY = 426 * MiB
"""A bare CUDA context with lazy module loading (the Linux default since CUDA 12.2, and what torch sets): 426 MiB
in nvidia-smi on an RTX 6000 Ada with torch 2.10 + CUDA 13.0 (unslothai/unsloth-zoo PR #1053, measured table);
256 MiB on an RTX 3090 with torch 2.7.1 + CUDA 12.8 (invoke-ai/InvokeAI #9413); "about 300-400 MB" (ptrblck in
pytorch/pytorch #107667, #109888). The largest of those: a bare context, before the kernels a run loads."""
CUDA_CONTEXT_EAGER = 1000 * MiB
"""Without lazy loading (CUDA < 11.7, or ``CUDA_MODULE_LOADING=EAGER``) every kernel of every library is loaded
at start: ">1000MB" (ptrblck, pytorch/pytorch #107667)."""
LOADED_KERNELS_DEFAULT = 0
"""Kernels a training run loads lazily on top of the bare context (cuBLAS/cuBLASLt GEMMs, attention, NCCL,
fused optimizers, Triton): no published figure isolates them; 0 until calibration fits it (errs low)."""

# ---- NCCL communicator buffers (NCCL src/init.cc computeBuffSizes) ------------------------------------------
NCCL_SIMPLE_BUFFSIZE = 1 << 22
"""``DEFAULT_BUFFSIZE``: 4 MiB per connection for the Simple protocol (``NCCL_BUFFSIZE``)."""
NCCL_LL_BUFFSIZE = 8 * 512 * 8 * 16
"""``DEFAULT_LL_BUFFSIZE`` = lines per thread 8 x 512 threads x 8 steps x 16-byte lines = 512 KiB."""
NCCL_LL128_BUFFSIZE = 120 * 640 * 8 * 8
"""``DEFAULT_LL128_BUFFSIZE`` = 120 elements per thread x 640 threads x 8 steps x 8 bytes = 4,915,200 B."""
NCCL_CHANNELS_NVLINK = 16
"""Channels NCCL builds on NVLink/NVSwitch nodes (it chooses up to ``NCCL_MAX_NCHANNELS``, 32, from the topology
search; 16 on an 8-GPU NVSwitch node is the usual result) [assumption: topology-dependent, to be fitted]."""
NCCL_CHANNELS_PCIE = 4
"""Channels on PCIe-only nodes [assumption: topology-dependent, to be fitted]."""
NCCL_PEERS_PER_CHANNEL = 2
"""Connections per channel that own receive buffers: the ring's previous rank and one tree link [assumption]."""

FRAGMENTATION_PRIOR: dict[str, float] = {"static": 0.05, "dynamic": 0.25, "sharded": 0.25, "fsdp2": 0.25}
"""The assumptions before any fit (no source states them): 5 % of a step's churn stays fragmented with the same
shapes every step (the old engine-wide margin), 25 % with shapes that change or parameters gathered on a side
stream (with or without ``record_stream``). Used for a class the fit has no data for."""
FRAGMENTATION: dict[str, float] = {"static": 0.29, "dynamic": 0.25, "sharded": 0.43, "fsdp2": 0.22}
"""Cached-but-unusable fraction of the memory freed and re-allocated within a step (activations, logits,
gradients, gathered parameters), eq. R3, by :func:`fragmentation_class` (``sharded`` was 0.53 while the engine read
fms-acceleration's FOAK kernels as Liger's, with a SwiGLU saving its FSDP runs do not show; 0.43 with eq. A10c and L1b,
2026-12: the median gap error over the grid is rugged, its minimum moving between 0.40-0.45 and 0.53 as the
engine's tensors change, so this fraction is loosely determined). ``static`` and ``sharded`` are fitted by
``python benchmarks/memory_vs_corpus.py`` (benchmarks/results/memory_fit.json) to the 45 published runs whose
source gives both ``max_memory_allocated`` and nvidia-smi (IBM fms-acceleration, A100-80GB, 1-2 GPUs; its 2-GPU runs
counted as FSDP1, eq. C4b): median gap error 9.9 % of the nvidia-smi figure with the priors. One source, so no
leave-one-source-out error exists; out of sample (the 69 reserved and nvidia-smi records of other sources, FSDP2's
each with the fsdp2 fraction fitted without its source) a median 6.9 % against 8.0 % with the priors
(docs/accuracy.md, memory section). ``fsdp2`` has no published pair either; it is fitted to the reserved and
nvidia-smi figures of its own published runs (:data:`RESERVED_FITTED`), each source predicted by a fit without it,
so it absorbs the engine's tensor errors on those runs as well as the allocator's. ``dynamic`` has no published
pair and keeps its prior. The least-sourced term of the engine."""

FRAGMENTATION_CLASSES = ("static", "dynamic", "sharded", "fsdp2")


FRAGMENTATION_TENSOR_CAP_BYTES = 256 * MiB
"""Eq. R3b: the activation-tensor size beyond which the fragmented share of the activations stops growing with the
tensors' size (it keeps growing with their number). Measured as one bf16 residual-stream tensor of a micro-batch
(:func:`planner.engine.memory.residual_tensor_bytes`). Where it comes from (docs/memory.md R3b,
``benchmarks/fragmentation_forms.py``): IBM fms-acceleration's runs at micro-batch 4 and 8 x 4096 tokens, whose residual
tensors are 256 MiB, need the linear law up to there (at 128 MiB three of their out-of-memory runs come out as fits);
ml-engineering's ZeRO-3 runs at 64K-256K tokens (512 MiB-2 GiB) hold a constant 5.3-5.7 GiB of reserved beyond their
tensors, where the linear law gives 16-62 GiB. So the cap is the largest size at which the corpus sees the linear
growth, not a fit to the long runs, which are predicted (8.9 % at most with it, 43 % without); 384 MiB predicts them
within 19 %, 512 MiB does not (29 %). The form was chosen after seeing those runs and rests on them alone above 256 MiB
(ZeRO-3 runs; the other fragmentation classes get the same cap by the same mechanism, unchecked): it errs low (too
little reserve) if fragmentation grows with tensor size in patterns they do not show."""


def fragmentation_size_scale(residual_bytes: int) -> float:
    """Eq. R3b's factor on the activations' fragmented share: 1 up to :data:`FRAGMENTATION_TENSOR_CAP_BYTES`, then
    the cap over the tensor size (so the fragmented bytes follow the count of activation tensors, not their size)."""
    cap = FRAGMENTATION_TENSOR_CAP_BYTES
    return 1.0 if residual_bytes <= cap else cap / residual_bytes


def fragmented_bytes(churn_bytes: int, fraction: float, token_churn_bytes: int = 0, residual_bytes: int = 0) -> int:
    """Eq. R3 / R3b, the one place R3, R3c and the corpus report compute them: the bytes the caching allocator keeps
    cached in blocks the next requests cannot use, ``fraction`` of the memory freed and re-allocated within a step
    (``churn_bytes``). The part of the churn that grows with the micro-batch's tokens (``token_churn_bytes``:
    activations and logits) counts at :func:`fragmentation_size_scale` of the micro-batch's residual tensor
    (``residual_bytes``); the rest (gradients, gathered parameters, buffers) counts in full. With the defaults, the
    linear law of eq. R3. Errs low (too little reserve) if fragments grow with the tensors' size in patterns
    ml-engineering's long runs do not show; no run with tensors beyond 2 GiB was measured (docs/memory.md R3b)."""
    churn = max(churn_bytes, 0)
    tokens = min(max(token_churn_bytes, 0), churn)
    return int(fraction * (churn - tokens + tokens * fragmentation_size_scale(residual_bytes)))


RESERVED_FITTED = ("fsdp2",)
"""Classes with no published allocated + nvidia-smi pair whose fraction is fitted to their runs' reserved and
nvidia-smi figures instead (the whole figure, tensors included). Only ``fsdp2``, whose split from ``sharded`` rests on
a documented mechanism (:func:`fragmentation_class`) and whose fit lands below ``sharded`` as that mechanism says.
``dynamic`` is not: fitted the same way it would come out at 0.05, below ``static``, the opposite of its mechanism,
so there the figure errors are the engine's tensors, not the allocator (docs/memory.md R3)."""

STRANDED_PRIOR: dict[str, float] = {"static": 0.0, "dynamic": 0.0, "sharded": 0.0, "fsdp2": 0.0}
"""The assumption before any fit: the allocator's retry frees every cached fragment (eq. R3's cap alone, which
can never predict an out-of-memory below the card)."""
STRANDED: dict[str, float] = {"static": 0.0, "dynamic": 0.02, "sharded": 0.165, "fsdp2": 0.0}
"""Most of the card, as a fraction, that the retry after a failed ``cudaMalloc`` cannot give back (eq. R3c), by
:func:`fragmentation_class`. Fitted by ``python benchmarks/memory_vs_corpus.py`` (benchmarks/results/memory_fit.json)
to the published runs whose verdict depends on it:
out-of-memory runs whose tensors fit the card and runs that fitted although the fragmented share of their churn would
not; for each class the centre of the shares that get the most of those verdicts right
(``validation.corpus_memory.fit_stranded``), each source's verdicts predicted by a fit without it (docs/accuracy.md,
memory section). ``sharded``: seven verdicts from four sources decide it: out of memory with 2.7 % (Liger-Kernel's
FSDP1 Llama-3-8B), 3.4 % (LitGPT's 2-GPU LoRA 13B), 13.1 % (IBM fms-acceleration's 2-GPU QLoRA 70B, twice) and 14.0 %
(the same with fms-acceleration's FOAK kernels, eq. A10c) of the card left beside their tensors; ran with 18.6 %
(LitGPT's 4-GPU LoRA 13B) and 21.6 % (chenyaofo's ZeRO-3 run). All seven hold in (0.140, 0.186]: the fit takes its
centre, 0.165 (0.18 while the FOAK run was read with Liger's kernels and left 17.3 %; 0.14 before eq. R3b). Held out,
every verdict holds: fms-acceleration's come from 0.1425, LitGPT's from 0.18. ``dynamic``: one verdict decides it since
eq. L1b (BAdam's Llama-3-8B on an RTX 3090, which ran with 4.1 % of the card beside its tensors): any share up to
0.041 keeps it, the fit takes the centre, 0.02; held out (BAdam's source alone decides it), the prior 0. LitGPT's 1-GPU
LoRA 7B at micro-batch 4, out of memory, no longer decides it: since eq. A4c (its fused qkv storage, +0.64 GiB per
1304-token row) its tensors alone exceed the card. ``static`` and ``fsdp2`` keep the prior (FSDP2's published
out-of-memory runs exceed the card with their tensors alone). A class no verdict constrains keeps the prior; the
least-sourced term of the engine after the fragmentation fractions. The bounds are read off the engine's own
tensors, so the share makes the engine's verdicts right and absorbs its tensor errors rather than measuring the
allocator alone: chenyaofo's ZeRO-3 run measured 70.5 GiB allocated where the engine has 62.0, and with its
measured figure it ran with 11 % of the card left, inside the range where the others went out of memory (the report
keeps it; a GPU run's own out-of-memory message measures the share directly, docs/validation.md)."""


def fragmentation_class(packed: bool, sharded_gathers: bool, record_stream: bool = True) -> str:
    """Which fragmentation fraction a run gets (eq. R3).

    - ``sharded``: parameters all-gathered on a side stream and freed with ``record_stream`` (FSDP1, DeepSpeed
      ZeRO-3 on more than one GPU: ``free_param`` calls ``param.data.record_stream(current_stream())``,
      deepspeed ``partition_parameters.py``), so the allocator may reuse a freed buffer only once the compute
      stream has passed the recorded event; blocks cached per stream cannot serve the other stream's requests.
    - ``fsdp2``: FSDP2 (``fully_shard``) on more than one GPU, which gathers on side streams but "implements a
      different memory management approach to handle the multi-stream usages that avoids
      ``torch.Tensor.record_stream``. This ensures deterministic and expected memory usage" (torch docs,
      ``torch.distributed.fsdp.fully_shard``, "Compared to PyTorch FSDP1"). Expected below ``sharded``.
    - ``dynamic``: padded batches whose shapes change from step to step: blocks cached for earlier, smaller
      shapes cannot be split for later, larger ones.
    - ``static``: everything else (packed rows, one stream)."""
    if sharded_gathers:
        return "sharded" if record_stream else "fsdp2"
    return "static" if packed else "dynamic"


@functools.lru_cache(maxsize=256)
def compute_capability(gpu_name: str) -> tuple[int, int] | None:
    """The CUDA compute capability of a GPU profile's name (longest matching prefix), None if not NVIDIA."""
    name = gpu_name.upper()
    best = None
    for prefix, cc in COMPUTE_CAPABILITY.items():
        if name.startswith(prefix.upper()) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, cc)
    return best[1] if best else None


def allocator_block_bytes(nbytes: int) -> int:
    """Eq. R1: bytes the caching allocator hands out for one tensor of ``nbytes`` (``round_size``: up to a
    multiple of 512; ``roundup_power2_divisions`` is off by default). Exact."""
    return max(ALLOC_MIN_BLOCK, -(-nbytes // ALLOC_MIN_BLOCK) * ALLOC_MIN_BLOCK)


def allocator_segment_bytes(nbytes: int) -> int:
    """Eq. R3a: the ``cudaMalloc`` a fresh request of ``nbytes`` triggers when no cached block fits
    (``get_allocation_size``): a 2 MiB small segment up to 1 MiB, a 20 MiB segment up to 10 MiB, else the
    request rounded up to 2 MiB. Exact; how many requests find no cached block is the fragmentation term."""
    size = allocator_block_bytes(nbytes)
    if size <= ALLOC_SMALL_SIZE:
        return ALLOC_SMALL_SEGMENT
    if size < ALLOC_MIN_LARGE:
        return ALLOC_LARGE_SEGMENT
    return -(-size // ALLOC_ROUND_LARGE) * ALLOC_ROUND_LARGE


def cublas_workspace_bytes(gpu_name: str, handles: int = CUBLAS_HANDLES_TRAINING) -> int:
    """Eq. R2: cuBLAS workspaces torch allocates (through the caching allocator, so inside ``allocated``):
    32 MiB each on compute capability 9.0, 8.125 MiB elsewhere, one per (handle, stream) in use. Exact for the
    defaults; errs low if more streams run GEMMs (e.g. overlapped communication kernels with their own GEMMs)."""
    cc = compute_capability(gpu_name)
    if cc is None:
        return 0
    per = CUBLAS_WORKSPACE_SM90 if cc == (9, 0) else CUBLAS_WORKSPACE_DEFAULT
    return per * handles


def allocated_bytes(tensor_peak: int, gpu_name: str, live_tensors: int = 0) -> int:
    """Eq. R1-R2: ``max_memory_allocated`` from the engine's tensor peak: + the cuBLAS workspaces + at most 511
    bytes of rounding per live tensor (``live_tensors``, 0 when unknown: the rounding is below 0.01 % for the
    tensor sizes of LLM training). Errs low by the kernels' own scratch tensors (flash-attention backward
    accumulators) that torch allocates and the trace cannot see."""
    return tensor_peak + cublas_workspace_bytes(gpu_name) + (ALLOC_MIN_BLOCK - 1) * live_tensors


def reserved_bytes(allocated_peak: int, churn_bytes: int, fragmentation: float = FRAGMENTATION["static"],
                   expandable_segments: bool = False, limit: int | None = None, *, token_churn_bytes: int = 0,
                   residual_bytes: int = 0) -> int:
    """Eq. R3: ``max_memory_reserved`` from the allocated peak.

    ``churn_bytes`` is the memory freed and re-allocated within a step (activations, logits, gradients, gathered
    parameters: everything but weights and optimizer states, which are allocated once and never fragment). A
    fraction ``fragmentation`` of it stays cached in blocks the next requests cannot use (:func:`fragmented_bytes`:
    of the part that grows with the tokens, ``token_churn_bytes``, a share that stops growing with the tensor size
    ``residual_bytes``, eq. R3b); :func:`fragmentation_class` picks the fraction. Segment rounding adds at most one 20 MiB
    large segment's tail plus one 2 MiB small segment; ``expandable_segments:True`` maps physical memory in
    2 MiB pages into one growing segment (torch docs, "Optimizing memory usage with PYTORCH_CUDA_ALLOC_CONF"),
    which removes the 20 MiB tail and most of the fragmentation: pass the smaller fraction calibration finds for
    it. ``limit``: the most the allocator can hold (the card less what lives outside it): when ``cudaMalloc``
    fails, the caching allocator frees its unused cached blocks and retries (``release_cached_blocks`` in
    ``CUDACachingAllocator.cpp``), so cached fragments never push reserved past the card; the figure is capped
    there (never below allocated). Errs low for runs that go out of memory *through* fragmentation (no free
    block large enough although enough bytes are free), which this term cannot predict."""
    if fragmentation < 0:
        raise ValueError(f"fragmentation must be >= 0, got {fragmentation}")
    rounding = ALLOC_SMALL_SEGMENT + (0 if expandable_segments else ALLOC_LARGE_SEGMENT)
    out = allocated_peak + fragmented_bytes(churn_bytes, fragmentation, token_churn_bytes, residual_bytes) + rounding
    if limit is not None:
        out = max(allocated_peak, min(out, limit))
    return out


def retry_floor_bytes(allocated_peak: int, churn_bytes: int, fragmentation: float, stranded: float,
                      capacity_bytes: int, *, token_churn_bytes: int = 0, residual_bytes: int = 0) -> int:
    """Eq. R3c: the least the caching allocator holds after a failed ``cudaMalloc`` and its retry: the allocated
    tensors plus the fragmented share of the churn (eq. R3, R3b) that it cannot release, at most ``stranded`` of the card.

    Mechanism (c10/cuda/CUDACachingAllocator.cpp): on a failed ``cudaMalloc`` the allocator calls
    ``release_cached_blocks``, which frees "all non-split blocks", i.e. only cached segments with no live tensor in
    them; a free block split off a segment that still holds a live tensor stays reserved. If what stays is more than
    the card can spare, the request fails: the run goes out of memory although its tensors alone would fit. How
    much stays depends on how the step's allocations interleave, which the engine does not see, so the share of
    the card it can reach is fitted per fragmentation class (:data:`STRANDED`). With ``stranded`` 0 it is the
    allocated peak (eq. R3's cap alone). Errs either way near the card; far from it, it never decides a verdict
    (the floor is at most the uncapped reserved figure)."""
    if not 0 <= stranded <= 1:
        raise ValueError(f"stranded must be in [0, 1], got {stranded}")
    frag = fragmented_bytes(churn_bytes, fragmentation, token_churn_bytes, residual_bytes)
    return allocated_peak + min(frag, int(stranded * capacity_bytes))


def cuda_context_bytes(lazy_loading: bool = True, loaded_kernels: int = LOADED_KERNELS_DEFAULT) -> int:
    """Eq. R4: the CUDA context per process, outside torch's allocator: the bare context (lazy loading: 426 MiB,
    the largest of the published measurements; eager: 1000 MiB) plus the kernels a run loads (a parameter for
    calibration). Errs low by those kernels until fitted."""
    return (CUDA_CONTEXT_LAZY if lazy_loading else CUDA_CONTEXT_EAGER) + loaded_kernels


def nccl_buffer_bytes(world_size: int, nvlink: bool, communicators: int = 1, channels: int | None = None,
                      peers_per_channel: int = NCCL_PEERS_PER_CHANNEL) -> int:
    """Eq. R5: NCCL's receive buffers per GPU, outside torch's allocator: for every communicator, channel and
    peer connection one buffer per protocol (Simple 4 MiB + LL 512 KiB + LL128 4.69 MiB = 9.19 MiB, NCCL
    ``computeBuffSizes``). 0 for one GPU. Channel count and peers follow the topology search: defaults are
    [assumptions] to be fitted; NVLink SHARP (NVLS) buffers on NVSwitch systems come on top and are not counted
    (errs low there). Each process group torch creates (FSDP, DeepSpeed's data-parallel groups) is a
    communicator."""
    if world_size <= 1:
        return 0
    ch = channels if channels is not None else (NCCL_CHANNELS_NVLINK if nvlink else NCCL_CHANNELS_PCIE)
    per_connection = NCCL_SIMPLE_BUFFSIZE + NCCL_LL_BUFFSIZE + NCCL_LL128_BUFFSIZE
    return communicators * ch * peers_per_channel * per_connection


def paged_resident_bytes(paged_bytes: int, capacity: int, used_without_paged: int) -> int:
    """Eq. R6: pages of bitsandbytes' paged optimizer states resident on the GPU at the optimizer step.

    bitsandbytes allocates them with ``cudaMallocManaged(..., cudaMemAttachHost)`` and wraps them as CPU tensors
    (``torch.frombuffer``), so ``max_memory_allocated`` and ``max_memory_reserved`` never include them; before each
    parameter's update it prefetches that parameter's states to the GPU (``prefetch_state`` ->
    ``cudaMemPrefetchAsync``). The driver keeps them there while memory is free and evicts them to the host under
    pressure (QLoRA paper, sec. 2 "Paged Optimizers"). So nvidia-smi shows between 0 and all of them: the
    smaller of the states and the free memory. Never raises what the run needs to fit."""
    return max(0, min(paged_bytes, capacity - used_without_paged))


@dataclass(frozen=True)
class DevicePeak:
    """The three figures of one peak, each containing the one before (eq. R7)."""

    tensors: int
    """the engine's tensor bytes (what the trace counts)"""
    allocated: int
    """``torch.cuda.max_memory_allocated``"""
    reserved: int
    """``torch.cuda.max_memory_reserved``"""
    device: int
    """nvidia-smi "used" for the process, with evictable paged-optimizer pages not counted"""
    context: int
    nccl: int
    paged_resident: int
    """paged-optimizer pages nvidia-smi may show on top of ``device`` (evicted first under pressure)"""

    @property
    def shown_by_nvidia_smi(self) -> int:
        return self.device + self.paged_resident

    def fits(self, capacity: int) -> bool:
        """Whether the run fits: the device figure without the evictable pages, against the driver's capacity."""
        return self.device <= capacity


def device_peak_bytes(tensor_peak: int, churn_bytes: int, gpu_name: str, capacity: int, world_size: int,
                      nvlink: bool, *, paged_bytes: int = 0, fragmentation: float = FRAGMENTATION["static"],
                      expandable_segments: bool = False, lazy_loading: bool = True,
                      loaded_kernels: int = LOADED_KERNELS_DEFAULT, communicators: int = 1) -> DevicePeak:
    """Eq. R7: tensors -> allocated -> reserved -> device for one peak (see the module docstring); ``fits`` is
    decided on ``device``. ``churn_bytes``: the peak's bytes other than weights and optimizer states."""
    alloc = allocated_bytes(tensor_peak, gpu_name)
    reserved = reserved_bytes(alloc, churn_bytes, fragmentation, expandable_segments)
    context = cuda_context_bytes(lazy_loading, loaded_kernels)
    nccl = nccl_buffer_bytes(world_size, nvlink, communicators)
    device = reserved + context + nccl
    return DevicePeak(tensor_peak, alloc, reserved, device, context, nccl,
                      paged_resident_bytes(paged_bytes, capacity, device))
