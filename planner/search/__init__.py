"""The search: enumerate candidate setups, judge each with :func:`planner.engine.evaluate.evaluate`, rank
the ones that fit (:mod:`planner.search.rank`), and capacity questions built on it
(:mod:`planner.search.capacity`). Pure: no printing, no file I/O; imports only the engine and profiles.
"""
