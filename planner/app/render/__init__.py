"""Rendering: rich tables for the terminal, Markdown / HTML reports and figures. Formats what the engine and
the search computed; never recomputes a number."""
