"""The speed model: FLOPs per token, compute / communication / offload time, tokens/s and MFU.

Pure arithmetic: no printing, no files, no torch. Every formula lives in exactly one function, whose
docstring names its source, its assumptions and whether it errs high or low; ``docs/speed.md`` carries
the derivations under the equation ids (S1, S2, ...) the docstrings cite. One module per equation group:

* :mod:`.flops` (S1-S6): FLOPs per token by phase and part;
* :mod:`.compute` (S7-S9): peak FLOP/s, matmul time, QLoRA dequantisation, the GPU optimizer step;
* :mod:`.comm` (S10-S13): collectives, ring bandwidth, overlap;
* :mod:`.offload` (S14-S16): PCIe traffic, the host optimizer step, activation offload;
* :mod:`.step` (S18): :func:`estimate_speed`, the step time of one setup;
* :mod:`.train_time` (S17, S19): tokens per step, time and cost of a run.

Units: FLOPs are floating-point operations (a multiply-add is 2), bytes are bytes, times are seconds,
bandwidths are bytes per second. Conversion to TFLOPS / GB/s happens only in the constants' names.
"""

