"""Run plans for real and learn from the difference (docs/validation.md).

:mod:`validation.runner` trains a plan for a few steps on the device and records a
:class:`~validation.measurement.Measurement`; :mod:`validation.report` compares it with the estimate;
:mod:`validation.calibrate` fits :class:`planner.engine.calibration.Calibration` from the measurements;
:mod:`validation.launch` and :mod:`validation.worker` run multi-GPU plans, one process per rank.
:mod:`validation.trace` measures a step without a GPU, under FakeTensorMode (docs/trace.md).
"""
