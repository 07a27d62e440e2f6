"""The speed model's physical parameters (docs/speed.md, "Parameters"): each a named, documented quantity
with its source, either taken from a measurement of the hardware (a sourced constant) or fitted to the
evidence corpus by ``plan calibrate --corpus`` (:mod:`validation.corpus_fit`), which writes the fitted values
and their leave-one-source-out error to ``profiles/calibration/speed.json``. The shipped defaults below are
the priors the fit starts from; the app layer loads the shipped fit and hands it to the engine inside the
:class:`~planner.engine.calibration.CalibrationBook`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from planner.engine.setup import FLASH_KERNEL_ARCH, FRAMEWORKS, Framework  # noqa: F401  (the choice lives with the Setup)

Arch = Literal["volta", "turing", "ampere", "ada", "hopper", "blackwell", "cdna3", "davinci"]


class SpeedParams(BaseModel):
    """Parameters of the per-op time inventory (docs/speed.md S20-S27). Every field says where its value
    comes from; ``fitted`` lists the ones the shipped values were fitted for."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    matmul_efficiency: dict[str, float] = Field(
        default_factory=lambda: {
            "ampere": 0.869, "hopper": 0.803, "blackwell": 0.776, "cdna3": 0.514,
            "ada": 0.80, "volta": 0.80, "turing": 0.80, "davinci": 0.80,
        },
        description="eq. S20: large-GEMM ceiling as a fraction of the dense peak, per architecture. Ampere, "
        "Hopper, Blackwell, CDNA3: 'Maximum Achievable Matmul FLOPS' (stas00/ml-engineering "
        "compute/accelerator/README.md: A100 271.2 of 312, H100 794.5 of 989, B200 1745 of 2250, MI300X 668.4 of "
        "1300; shared/reference/hardware.md); the others have no published figure: 0.80 prior, fitted where the "
        "corpus has runs",
    )
    gemm_half_rows: float = Field(
        256.0, gt=0,
        description="eq. S20: rows (tokens per micro-batch reaching one weight matrix) at which a GEMM runs at "
        "half its ceiling: tile and wave quantisation of small-M GEMMs. Prior from cuBLAS tile sizes "
        "(128-256 rows per CTA tile); fitted",
    )
    attention_efficiency: dict[str, float] = Field(
        default_factory=lambda: {
            "ampere": 0.60, "ada": 0.60, "hopper": 0.35, "blackwell": 0.35,
            "volta": 0.40, "turing": 0.40, "cdna3": 0.14, "davinci": 0.35,
        },
        description="eq. S21: FlashAttention-2 / SDPA-flash fraction of the dense peak, forward and backward "
        "together. Ampere: 'reaching 50-73% of the theoretical maximum FLOPs/s on A100' (Dao 2023, "
        "arXiv:2307.08691, abstract): 0.60; Hopper: 'FlashAttention-2 achieves only 35% utilization on the "
        "H100' (Shah et al. 2024, FlashAttention-3, arXiv:2407.08608, abstract); CDNA3 (MI300X): PyTorch SDPA's "
        "ROCm kernel (AOTriton) measured forward at 256.9 / 289.5 TFLOPS, 0.196 / 0.221 of 1307.4, at 4096 / 8192 "
        "causal, head dim 128 (midiareshadi/attn-dsl-bench results/raw/sweep_v1.csv @ 603819b3, torch 2.10), with "
        "no MI300X backward measurement of it; backward taken at 0.6 of forward, the ratio of flash-attn's CK "
        "backend on MI300X (ROCm/flash-attention issue #142: 194-207 against 340-356 TFLOPS): 3.5 / (1/f + "
        "2.5/(0.6 f)) = 0.13 / 0.15, 0.14 (docs/speed.md S21); the others are assumptions by analogy (Ada as "
        "Ampere, Blackwell as Hopper, pre-Ampere 0.40 for the memory-efficient SDPA kernel)",
    )
    fused_attention_efficiency: dict[str, float] = Field(
        default_factory=lambda: {"hopper": 0.56, "blackwell": 0.56},
        description="eq. S21b: Transformer Engine's cuDNN fused attention (framework megatron), forward and backward "
        "together, where TE picks it over FlashAttention-2: on Hopper and later ('Disabling FlashAttention to give "
        "FusedAttention preference on Hopper+ for performance reasons', transformer_engine/pytorch/attention/"
        "dot_product_attention/utils.py, since June 2024). Hopper: FlashAttention-3 / cuDNN-class kernels reach "
        "75 % of the H100's peak forward and run the backward 1.5-1.75x faster than FlashAttention-2's 35 % "
        "(Shah et al. 2024, arXiv:2407.08608, abstract and sec. 4): 0.35 x 1.6 = 0.56, errs either way. The same class "
        "prices FlashAttention-3 on Hopper (--attention fa3, the kernels of that paper) and FlashAttention-4 on Blackwell "
        "(--attention fa4): on a B200, causal, head dim 128, 8,192 tokens, 1418 TFLOPS forward and 1118-1208 backward "
        "(Dao-AILab/flash-attention PR #2280, 2026-02), 0.63 / 0.50-0.54 of 2250, together 3.5 / (1/0.63 + 2.5/0.52) = "
        "0.55: Blackwell 0.56 as Hopper. Other architectures keep attention_efficiency",
    )
    hbm_efficiency: float = Field(
        0.80, gt=0, le=1,
        description="eq. S22: fraction of the HBM bandwidth that streaming kernels (elementwise ops, the "
        "optimizer step, dequantisation) reach. STREAM-like copy kernels reach 80-92 % of the datasheet figure "
        "on A100/H100 (Jia et al. 2018-style microbenchmarks; ml-engineering 'memory bandwidth' notes); 0.80",
    )
    memory_passes: float = Field(
        6.0, gt=0,
        description="eq. S22: HBM bytes moved by the elementwise ops of a block (norms, activation, RoPE, residual "
        "adds, casts) per byte of the block's activation inventory: each intermediate is written once and read "
        "once in forward, and its gradient written and read again in backward (about 2 + 4 = 6 passes). Prior "
        "from that count; fitted",
    )
    fused_memory_factor: float = Field(
        0.5, gt=0, le=1,
        description="eq. S22: fraction of the elementwise traffic and of the per-layer host overhead that is "
        "left when kernels are fused (torch.compile / inductor, or Liger's fused RMSNorm, SwiGLU, RoPE and "
        "cross-entropy). Prior 0.5; fitted from the corpus's compiled and Liger runs",
    )
    layer_overhead_s: dict[str, float] = Field(
        default_factory=lambda: {"hf": 1.0e-3, "torchtune": 0.6e-3, "torchtitan": 0.4e-3, "litgpt": 0.8e-3,
                                 "other": 0.8e-3},
        description="eq. S26: host-side time per transformer block per micro-step (forward + backward) that the "
        "GPU waits for when kernels are small: Python, the dispatcher and kernel launches (~40-60 kernels per "
        "block forward and twice that backward, 5-10 us each). Priors from that count; fitted per framework",
    )
    step_overhead_s: dict[str, float] = Field(
        default_factory=lambda: {"hf": 0.05, "torchtune": 0.02, "torchtitan": 0.02, "litgpt": 0.03, "other": 0.03},
        description="eq. S26: fixed time per optimizer step: the trainer's bookkeeping (logging, gradient-norm "
        "reduction, learning-rate scheduler, DeepSpeed engine hooks, the data loader's hand-off). Priors; fitted "
        "per framework",
    )
    fsdp1_unit_s: float = Field(
        1.0e-3, ge=0,
        description="eq. S26b: host time per FSDP1 unit per micro-step (its pre-forward unshard, post-forward "
        "reshard, pre-backward unshard and post-backward reduction hooks with their small collectives), added to "
        "the host time that competes with the GPU's. Prior: 0.99 ms per unit per forward + backward (9 paired runs, "
        "0.88-1.11 ms), measured with torch 2.13's FSDP1 on a 2-core CPU "
        "(benchmarks/evidence_scripts/fsdp1_unit_overhead.py, benchmarks/results/fsdp1_unit_overhead.json: the hooks' Python "
        "only; errs low for a GPU run, whose unshards launch NCCL collectives and wait on FSDP1's rate limiter); "
        "fitted where the training set has multi-GPU FSDP1 runs",
    )
    zero3_block_host_s: float = Field(
        5.4e-3, ge=0,
        description="eq. S26c: host time of DeepSpeed ZeRO-3's module hooks (parameter fetch and release, the "
        "per-parameter gradient hooks and their bookkeeping) per decoder block per micro-step, added to the step: "
        "DeepSpeed waits on its fetch events (at most 2 in flight, partitioned_param_coordinator.py) and reduce "
        "events, so the hooks do not hide under the GPU's queue as launches do. Prior: 5.4 ms, ZeRO-3 against ZeRO-2 "
        "with DeepSpeed 0.19.8 on this project's 2-core CPU (benchmarks/evidence_scripts/zero3_host_overhead.py, "
        "benchmarks/results/zero3_host_overhead.json: Python and bookkeeping only, the CPU accelerator's events are "
        "no-ops; errs low for a CUDA host); x step.ZERO3_RECOMPUTE_HOOKS under full checkpointing, whose recompute "
        "runs the forward hooks again. Fitted where the training set has ZeRO-3 runs",
    )
    link_efficiency: float = Field(
        0.80, gt=0, le=1,
        description="eq. S23: achieved fraction of the link bandwidth in large collectives over NVLink / xGMI / "
        "the network (NCCL bus bandwidth / link figure). nccl-tests all_reduce on 8xA100 NVLink reaches ~230 of "
        "300 GB/s busBW (NVIDIA nccl-tests PERFORMANCE.md and DGX A100 reference numbers): 0.77-0.8; fitted",
    )
    pcie_link_efficiency: float = Field(
        0.30, gt=0, le=1,
        description="eq. S23: the same for GPUs that talk over PCIe only (no NVLink): GeForce cards have no "
        "peer-to-peer over PCIe, so NCCL stages every transfer through host memory (NCCL_P2P_DISABLE paths, SHM "
        "transport), and all GPUs of a node share the host's root complex. Prior 0.30 of the PCIe figure; fitted",
    )
    collective_latency_s: float = Field(
        30e-6, ge=0,
        description="eq. S23: fixed time per collective call (NCCL ring latency, tens of microseconds for small "
        "messages on NVLink; nccl-tests small-message timings)",
    )
    host_optimizer_bytes_per_s: dict[str, float] = Field(
        default_factory=lambda: {"deepspeed": 25e9, "fsdp": 25e9},
        description="eq. S15: host memory bandwidth one node's CPU optimizer step reaches, per implementation: "
        "DeepSpeed's CPU Adam under ZeRO-Offload ('deepspeed'), torch's AdamW on the CPU under FSDP CPUOffload "
        "('fsdp'). See planner.engine.speed.offload for the measurements behind the 25 GB/s prior; fitted",
    )
    pcie_efficiency: float = Field(
        0.80, gt=0, le=1,
        description="eq. S14: fraction of the PCIe figure that pinned host<->device copies reach (cudaMemcpy "
        "bandwidth tests: ~25 of 31.5 GB/s on PCIe 4.0 x16)",
    )
    fp8_matmul_ratio: dict[str, float] = Field(
        default_factory=lambda: {"tensorwise": 0.95, "rowwise": 0.70, "te": 0.835},
        description="eq. S28: an FP8 GEMM's achieved fraction of the FP8 dense peak, relative to the bf16 GEMM "
        "ceiling of eq. S20 (the FP8 GEMM runs at fp8_peak x eta_arch x this ratio x rows/(rows + m_half)). "
        "TransformerEngine v2.18 docs/examples/gemm_profiling/gemm_profiling.rst, H200, pre-quantized operands "
        "(GEMM only, casts excluded; those are eq. S28's cast bytes): current (per-tensor) scaling 1.90x bf16 -> "
        "0.95 of 2x for torchao tensorwise; delayed scaling 1.67x -> 0.835 for TransformerEngine; rowwise: the "
        "nearest published figure is TE's block scaling, 1.40x bf16 with autocast -> 0.70 [assumption by analogy: "
        "torchao rowwise runs CUTLASS per-row-scaled GEMMs, slower than cuBLAS tensorwise]. Priors; not fitted",
    )
    fp8_arch_ratio: dict[str, float] = Field(
        default_factory=lambda: {"cdna3": 1.0},
        description="eq. S28b: an architecture's FP8 GEMMs relative to the recipe ratios above, which were measured "
        "on NVIDIA's (1.0 = as fast relative to the FP8 peak as there). CDNA3's FP8 runs through hipBLASLt "
        "(torch._scaled_mm on ROCm, ROCm TransformerEngine with NVTE_USE_HIPBLASLT=1): prior 1.0 (tuned GEMMs: MI300X's "
        "FP8 / bf16 share of peak 0.487 / 0.541 (ROCm blog 'Measuring Max-Achievable FLOPs - Part 2', Table 1) against "
        "H200's 0.734 / 0.803 (stas00/ml-engineering insights/when-to-upgrade-gpus): 0.98), fitted where the "
        "training set has CDNA3 FP8 runs (today torchao's torchtitan table alone, so in sample only: docs/speed.md "
        "S28b); absent architectures read 1.0",
    )
    async_tp_overlap: float = Field(
        0.5, ge=0, le=1,
        description="eq. S30: fraction of the TP collectives that torchtitan's asynchronous TP hides behind the "
        "matmuls (micro-pipelined all-gather / reduce-scatter matmuls, torch._inductor _micro_pipeline_tp). "
        "[assumption] 0.5; torchtitan's asyncTP benchmark (Llama3 70B FSDP 32 x TP 8 on 256 H100: 1.09x bf16, "
        "1.16x float8 tensorwise; 8B FSDP 8 x TP 8: 1.10x) is the check; not fitted",
    )
    svd_efficiency: float = Field(
        0.003, gt=0, le=1,
        description="eq. S31: achieved fraction of the bf16 dense peak of GaLore's fp32 projection SVD "
        "(torch.linalg.svd on the GPU, cuSOLVER gesvd: iterative, far from any tensor-core rate). [assumption] "
        "0.003 (about 1 TFLOP/s on an A100, the order a 4096 x 4096 fp32 SVD takes, ~1-2 s); no published per-matrix "
        "timing was found; LLaMA-Factory warns GaLore 'may cause hanging at the start of training'. Not fitted",
    )
    fitted: tuple[str, ...] = Field((), description="fields whose values were fitted to the corpus")
    source: str = Field("priors (docs/speed.md)", description="where these values come from")

    def matmul(self, arch: str) -> float:
        return self.matmul_efficiency.get(arch, 0.80)

    def attention(self, arch: str, framework: str | None = None, kernel: str = "sdpa") -> float:
        """The attention kernel's fraction of peak (eq. S21): FlashAttention-2 / SDPA, or the Hopper-and-later class
        of kernels (Transformer Engine's cuDNN fused attention under Megatron where TE prefers it, FlashAttention-3
        on Hopper, FlashAttention-4 on Blackwell: eq. S21b)."""
        if (framework == "megatron" or kernel in FLASH_KERNEL_ARCH) and arch in self.fused_attention_efficiency:
            return self.fused_attention_efficiency[arch]
        return self.attention_efficiency.get(arch, 0.35)

    def link(self, interconnect: str) -> float:
        """Achieved fraction of the intra-node link (eq. S23): PCIe-only GPUs have their own factor."""
        return self.pcie_link_efficiency if interconnect == "pcie" else self.link_efficiency

    def host_optimizer(self, implementation: str) -> float:
        return self.host_optimizer_bytes_per_s.get(implementation, 25e9)

    def fp8(self, recipe: str, arch: str | None = None) -> float:
        """Eq. S28 / S28b: the recipe's FP8 GEMM ratio, scaled by the architecture's factor where it has one."""
        return self.fp8_matmul_ratio.get(recipe, 0.7) * (self.fp8_arch(arch) if arch else 1.0)

    def fp8_arch(self, arch: str) -> float:
        """Eq. S28b: the architecture's FP8 GEMM factor (1.0 where none is known)."""
        return self.fp8_arch_ratio.get(arch, 1.0)

    def layer_overhead(self, framework: str) -> float:
        return self.layer_overhead_s.get(framework, self.layer_overhead_s.get("other", 0.0))

    def step_overhead(self, framework: str) -> float:
        return self.step_overhead_s.get(framework, self.step_overhead_s.get("other", 0.0))


PRIORS = SpeedParams()
"""The priors: sourced constants and the starting values of the fit."""
