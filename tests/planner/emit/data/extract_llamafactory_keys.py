"""Extract the argument names LLaMA-Factory's ``llamafactory-cli train`` accepts, from its wheel, by parsing.

Why: the LLaMA-Factory YAML that ``plan configs`` writes must only use keys LLaMA-Factory parses, but installing
LLaMA-Factory would change this environment's transformers. So the key list is extracted once, offline, into
``llamafactory_keys_<version>.json`` next to this script, and ``tests/planner/emit/test_llamafactory.py`` checks
every generated key against it.

How (reproduce):
    pip download --no-deps llamafactory==0.9.5 -d /tmp/lf
    python tests/planner/emit/data/extract_llamafactory_keys.py /tmp/lf/llamafactory-0.9.5-py3-none-any.whl

The script never imports LLaMA-Factory. It reads ``llamafactory/hparams/*.py`` with :mod:`ast`, collects the
annotated fields of every ``@dataclass`` (skipping ``field(init=False)``, which HfArgumentParser does not
accept), follows base classes inside LLaMA-Factory, and takes the fields of transformers'
``Seq2SeqTrainingArguments`` (the base of LLaMA-Factory's ``TrainingArguments``) from the installed
transformers, whose version it records. It also records the choices of ``Literal[...]`` fields, the values of
the ``StrEnum`` types used as field types (``extras/constants.py``) and the template names registered in
``data/template.py``. The five classes are the ones ``hparams/parser.py`` puts in ``_TRAIN_ARGS``.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import sys
import zipfile
from pathlib import Path

TRAIN_ARGS = ("ModelArguments", "DataArguments", "TrainingArguments", "FinetuningArguments", "GeneratingArguments")
"""``llamafactory/hparams/parser.py``: ``_TRAIN_ARGS = [ModelArguments, DataArguments, TrainingArguments,
FinetuningArguments, GeneratingArguments]``."""


def _is_field_init_false(value: ast.expr | None) -> bool:
    if not isinstance(value, ast.Call):
        return False
    for kw in value.keywords:
        if kw.arg == "init" and isinstance(kw.value, ast.Constant) and kw.value.value is False:
            return True
    return False


def _literal_choices(ann: ast.expr) -> list | None:
    """``Literal["a", "b"]`` (possibly inside ``X | None`` / ``Optional[...]``) -> ["a", "b"]."""
    if isinstance(ann, ast.BinOp):
        return _literal_choices(ann.left) or _literal_choices(ann.right)
    if isinstance(ann, ast.Subscript) and isinstance(ann.value, ast.Name):
        if ann.value.id == "Literal":
            elts = ann.slice.elts if isinstance(ann.slice, ast.Tuple) else [ann.slice]
            return [e.value for e in elts if isinstance(e, ast.Constant)]
        if ann.value.id in ("Optional", "Union"):
            inner = ann.slice.elts if isinstance(ann.slice, ast.Tuple) else [ann.slice]
            for e in inner:
                c = _literal_choices(e)
                if c:
                    return c
    return None


def _type_names(ann: ast.expr) -> list[str]:
    return [n.id for n in ast.walk(ann) if isinstance(n, ast.Name)]


def parse_dataclasses(sources: dict[str, str]) -> dict[str, dict]:
    """class name -> {"bases": [...], "fields": {name: {"choices": [...]?, "types": [...]}}} for every class."""
    out: dict[str, dict] = {}
    for src in sources.values():
        tree = ast.parse(src)
        for node in tree.body:
            if not isinstance(node, ast.ClassDef):
                continue
            fields: dict[str, dict] = {}
            for stmt in node.body:
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                    if _is_field_init_false(stmt.value):
                        continue
                    info: dict = {"types": _type_names(stmt.annotation)}
                    choices = _literal_choices(stmt.annotation)
                    if choices:
                        info["choices"] = choices
                    fields[stmt.target.id] = info
            out[node.name] = {"bases": [b.id for b in node.bases if isinstance(b, ast.Name)], "fields": fields}
    return out


def resolve_fields(classes: dict[str, dict], name: str) -> dict[str, dict]:
    """Fields of ``name`` including its LLaMA-Factory bases (bases outside the parsed sources are skipped)."""
    cls = classes[name]
    merged: dict[str, dict] = {}
    for base in reversed(cls["bases"]):
        if base in classes:
            merged.update(resolve_fields(classes, base))
    merged.update(cls["fields"])
    return merged


def str_enums(src: str) -> dict[str, list[str]]:
    """``class X(StrEnum): A = "a"`` -> {"X": ["a", ...]} from ``extras/constants.py``."""
    out: dict[str, list[str]] = {}
    for node in ast.parse(src).body:
        if isinstance(node, ast.ClassDef) and any(isinstance(b, ast.Name) and b.id in ("StrEnum", "str", "Enum") for b in node.bases):
            vals = [
                s.value.value
                for s in node.body
                if isinstance(s, ast.Assign) and isinstance(s.value, ast.Constant) and isinstance(s.value.value, str)
            ]
            if vals:
                out[node.name] = vals
    return out


def template_names(src: str) -> list[str]:
    names = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "register_template":
            for kw in node.keywords:
                if kw.arg == "name" and isinstance(kw.value, ast.Constant):
                    names.add(kw.value.value)
    return sorted(names)


def extract(wheel: Path) -> dict:
    import transformers
    from transformers import Seq2SeqTrainingArguments

    with zipfile.ZipFile(wheel) as z:
        hparams = {n: z.read(n).decode() for n in z.namelist() if n.startswith("llamafactory/hparams/") and n.endswith(".py")}
        constants = z.read("llamafactory/extras/constants.py").decode()
        templates = z.read("llamafactory/data/template.py").decode()
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        version = next(line.split(":", 1)[1].strip() for line in z.read(meta).decode().splitlines() if line.startswith("Version:"))
        requires_tf = [line.split(":", 1)[1].strip() for line in z.read(meta).decode().splitlines()
                       if line.startswith("Requires-Dist: transformers")]
    classes = parse_dataclasses(hparams)
    enums = str_enums(constants)
    keys: dict[str, list[str]] = {}
    choices: dict[str, list] = {}
    for name in TRAIN_ARGS:
        fields = resolve_fields(classes, name)
        if name == "TrainingArguments":
            for f in dataclasses.fields(Seq2SeqTrainingArguments):
                if f.init:
                    fields.setdefault(f.name, {"types": []})
        keys[name] = sorted(fields)
        for fname, info in fields.items():
            if "choices" in info:
                choices[fname] = info["choices"]
            for t in info.get("types", []):
                if t in enums:
                    choices[fname] = enums[t]
    choices["template"] = template_names(templates)
    return {
        "_comment": (
            "Argument names accepted by `llamafactory-cli train`, extracted by "
            "tests/planner/emit/data/extract_llamafactory_keys.py (ast over llamafactory/hparams/*.py of the wheel; "
            "TrainingArguments adds transformers' Seq2SeqTrainingArguments fields from the transformers version below). "
            "Do not edit by hand: rerun the script."
        ),
        "source": f"https://pypi.org/project/llamafactory/{version}/ ({wheel.name})",
        "wheel_sha256": hashlib.sha256(wheel.read_bytes()).hexdigest(),
        "llamafactory_version": version,
        "llamafactory_requires_transformers": requires_tf,
        "transformers_version_for_training_args": transformers.__version__,
        "classes": keys,
        "choices": dict(sorted(choices.items())),
    }


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__)
        return 2
    wheel = Path(argv[1])
    data = extract(wheel)
    out = Path(__file__).with_name(f"llamafactory_keys_{data['llamafactory_version']}.json")
    out.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out} ({sum(len(v) for v in data['classes'].values())} keys)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
