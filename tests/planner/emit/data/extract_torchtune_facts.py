"""Extract what the torchtune YAML that ``plan configs`` writes must agree with, from torchtune's wheel, by parsing.

torchtune is not a dependency of tuneplan (and its development has stopped upstream), so these facts are
extracted once, offline, into ``torchtune_<version>.json`` next to this script, and
``tests/planner/emit/test_torchtune.py`` checks the generated configs against them.

How (reproduce):
    pip download --no-deps torchtune==0.6.1 -d /tmp/tt
    python tests/planner/emit/data/extract_torchtune_facts.py /tmp/tt/torchtune-0.6.1-py3-none-any.whl

Nothing is imported from torchtune. With :mod:`ast` the script reads, for each fine-tuning recipe in
``recipes/*.py``, the top-level config keys the recipe reads (``cfg.x`` is *required*, ``cfg.get("x")`` is
*optional*); the public names of ``torchtune.models.<family>``, ``torchtune.modules.loss``,
``torchtune.training`` and ``torchtune.datasets`` (their ``__all__``); the ``ModelType`` values of the
checkpointer; and, from the shipped ``recipes/configs/**/*.yaml`` (PyYAML), the tokenizer, checkpointer and
checkpoint files each model builder is used with.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import sys
import zipfile
from pathlib import Path

import yaml

RECIPES = (
    "full_finetune_single_device",
    "full_finetune_distributed",
    "lora_finetune_single_device",
    "lora_finetune_distributed",
)


def recipe_keys(src: str) -> dict[str, list[str]]:
    required, optional = set(), set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "cfg":
            if node.attr != "get":
                required.add(node.attr)
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "cfg"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            optional.add(node.args[0].value)
    return {"required": sorted(required), "optional": sorted(optional - required)}


def dunder_all(src: str) -> list[str]:
    for node in ast.parse(src).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return sorted(e.value for e in node.value.elts if isinstance(e, ast.Constant))
    return []


def model_types(src: str) -> list[str]:
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.ClassDef) and node.name == "ModelType":
            return sorted(
                s.target.id.upper() if isinstance(s, ast.AnnAssign) else s.targets[0].id
                for s in node.body
                if isinstance(s, (ast.AnnAssign, ast.Assign))
            )
    return []


def _in_download_dir(path: object) -> str | None:
    """``/tmp/Meta-Llama-3-8B-Instruct/original/tokenizer.model`` -> ``original/tokenizer.model``: the part
    below the folder ``tune download --output-dir /tmp/<repo>`` creates (every shipped config uses /tmp/<repo>)."""
    if not isinstance(path, str) or not path.startswith("/tmp/"):
        return None
    parts = [x for x in path.split("/") if x][2:]
    return "/".join(parts)


def _base_builder(component: str) -> str:
    module, _, name = component.rpartition(".")
    return f"{module}.{re.sub(r'^q?lora_|^q?dora_', '', name)}"


def config_facts(configs: dict[str, str]) -> dict[str, list[dict]]:
    """base model builder -> the (tokenizer, checkpointer, files, model_type) combinations shipped configs use."""
    out: dict[str, list[dict]] = {}
    for path, text in sorted(configs.items()):
        try:
            cfg = yaml.safe_load(text)
        except yaml.YAMLError:
            continue
        if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict):
            continue
        comp = cfg["model"].get("_component_")
        ck = cfg.get("checkpointer")
        tok = cfg.get("tokenizer")
        if not comp or not isinstance(ck, dict) or not isinstance(tok, dict):
            continue
        entry = {
            "config": path,
            "tokenizer": tok.get("_component_"),
            "tokenizer_files": {k: _in_download_dir(tok[k]) for k in ("path", "merges_file") if k in tok},
            "checkpoint_subdir": _in_download_dir(ck.get("checkpoint_dir")),
            "checkpointer": ck.get("_component_"),
            "checkpoint_files": ck.get("checkpoint_files"),
            "model_type": ck.get("model_type"),
        }
        same = [e for e in out.get(_base_builder(comp), []) if {**e, "config": None} == {**entry, "config": None}]
        if not same:  # one entry per distinct combination; the first config (sorted by path) names it
            out.setdefault(_base_builder(comp), []).append(entry)
    return out


def extract(wheel: Path) -> dict:
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        read = lambda n: z.read(n).decode()  # noqa: E731
        meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
        version = next(line.split(":", 1)[1].strip() for line in read(meta).splitlines() if line.startswith("Version:"))
        recipes = {r: recipe_keys(read(f"recipes/{r}.py")) for r in RECIPES}
        builders = {}
        for n in names:
            m = re.fullmatch(r"torchtune/models/([a-z0-9_]+)/__init__\.py", n)
            if m:
                builders[f"torchtune.models.{m.group(1)}"] = dunder_all(read(n))
        facts = {
            "losses": dunder_all(read("torchtune/modules/loss/__init__.py")),
            "training": dunder_all(read("torchtune/training/__init__.py")),
            "datasets": dunder_all(read("torchtune/datasets/__init__.py")),
            "lr_schedulers": sorted(
                n.name for n in ast.parse(read("torchtune/training/lr_schedulers.py")).body if isinstance(n, ast.FunctionDef)
            ),
            "metric_loggers": sorted(
                n.name for n in ast.parse(read("torchtune/training/metric_logging.py")).body if isinstance(n, ast.ClassDef)
            ),
            "model_types": model_types(read("torchtune/training/checkpointing/_utils.py")),
        }
        configs = {n: read(n) for n in names if n.startswith("recipes/configs/") and n.endswith(".yaml")}
    return {
        "_comment": (
            "Facts about torchtune extracted by tests/planner/emit/data/extract_torchtune_facts.py from the wheel named in "
            "'source' (ast over recipes/*.py and package __init__ files, PyYAML over recipes/configs). Do not edit: "
            "rerun the script."
        ),
        "source": f"https://pypi.org/project/torchtune/{version}/ ({wheel.name})",
        "wheel_sha256": hashlib.sha256(wheel.read_bytes()).hexdigest(),
        "torchtune_version": version,
        "recipes": recipes,
        "builders": builders,
        **facts,
        "configs_by_builder": config_facts(configs),
    }


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__)
        return 2
    data = extract(Path(argv[1]))
    out = Path(__file__).with_name(f"torchtune_{data['torchtune_version']}.json")
    out.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
