"""Extract torchtitan 0.2.2's model flavors from its wheel, without importing torchtitan (whose package import pulls
triton, absent from CPU-only torch): ``llama3_args`` and ``qwen3_args`` in ``torchtitan/models/{llama3,qwen3}/
__init__.py`` are dict literals of ``...ModelArgs(key=value, ...)`` calls, read with ``ast``.

Usage (the wheel from PyPI, unzipped, never installed):

    pip download torchtitan==0.2.2 --no-deps -d /tmp/tt && unzip -q /tmp/tt/torchtitan-0.2.2-py3-none-any.whl -d /tmp/tt/w022
    python tests/planner/emit/data/extract_torchtitan_facts.py /tmp/tt/w022 > tests/planner/emit/data/torchtitan_flavors_0.2.2.json

The key list ``torchtitan_jobconfig_0.2.2.json`` next to it was dumped from the same wheel's ``JobConfig``
(``torchtitan/config/job_config.py``: every dataclass field, flattened to ``section.key``, with its type and
default; see its ``_comment``).
"""

from __future__ import annotations

import ast
import hashlib
import json
import sys
from pathlib import Path

MODELS = {"llama3": "llama3_args", "qwen3": "qwen3_args"}
KEYS = ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "hidden_dim", "ffn_dim_multiplier", "multiple_of",
        "head_dim", "enable_weight_tying", "moe_enabled")


def flavors(root: Path, name: str, var: str) -> dict[str, dict]:
    tree = ast.parse((root / "torchtitan" / "models" / name / "__init__.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == var for t in node.targets):
            out = {}
            for k, v in zip(node.value.keys, node.value.values):
                if isinstance(v, ast.Call):
                    out[ast.literal_eval(k)] = {kw.arg: ast.literal_eval(kw.value) for kw in v.keywords
                                                if kw.arg in KEYS}
            return out
    raise SystemExit(f"{var} not found in {name}")


def main(root: str) -> None:
    r = Path(root)
    data = {
        "_comment": "torchtitan 0.2.2 model flavors (dict literals of models/llama3/__init__.py llama3_args and "
                    "models/qwen3/__init__.py qwen3_args), extracted with ast by tests/planner/emit/data/"
                    "extract_torchtitan_facts.py from the PyPI wheel torchtitan-0.2.2-py3-none-any.whl",
        "torchtitan_version": "0.2.2",
        "job_config_sha256": hashlib.sha256((r / "torchtitan" / "config" / "job_config.py").read_bytes()).hexdigest(),
        "flavors": {name: flavors(r, name, var) for name, var in MODELS.items()},
    }
    json.dump(data, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])
