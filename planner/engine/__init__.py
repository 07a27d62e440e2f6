"""The engine: pure formulas. Memory (tensor inventory and runtime terms), speed, the byte accounting of each
precision recipe, the model facts derived once per model and setup, typed calibration, and
:func:`planner.engine.evaluate.evaluate`, the one path from a setup to a verdict.

Rules: no printing, no file I/O, no torch / transformers / deepspeed import; it imports nothing from
:mod:`planner.search`, :mod:`planner.emit` or :mod:`planner.app` (``tests/test_architecture.py``).
"""
