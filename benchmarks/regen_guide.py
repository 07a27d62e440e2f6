"""Re-run every ``$ plan ...`` command in the console blocks of docs/guide.md and paste the fresh output.

    python benchmarks/regen_guide.py            # rewrites docs/guide.md in place (atomically)

Keeps the guide's example output true to the code. Commands run with a 120-column terminal.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guide.md"
BLOCK = re.compile(r"```console\n(.*?)```", re.S)


def run_block(body: str) -> str:
    if "--out" in body:  # writes files: leave as documented (regenerate the report by hand)
        return body
    out: list[str] = []
    for line in body.splitlines():
        if not line.startswith("$ plan"):
            continue
        args = shlex.split(line[2:])
        env = dict(os.environ, COLUMNS="120", TERM="dumb")
        r = subprocess.run([sys.executable, "-m", "planner", *args[1:]], capture_output=True, text=True, env=env)
        out.append(line)
        out.append((r.stdout + r.stderr).rstrip("\n"))
    return "\n".join(out) + "\n"


def main() -> None:
    text = GUIDE.read_text(encoding="utf-8")
    new = BLOCK.sub(lambda m: "```console\n" + run_block(m.group(1)) + "```", text)
    fd, tmp = tempfile.mkstemp(dir=GUIDE.parent, suffix=".md")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(new)
    os.replace(tmp, GUIDE)


if __name__ == "__main__":
    main()
