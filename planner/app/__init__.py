"""The application layer: argument parsing, the commands, terminal / Markdown / HTML rendering and file
output. It alone talks to the user, and it alone may import :mod:`validation` (lazily, inside the commands
that run or trace a plan).
"""
