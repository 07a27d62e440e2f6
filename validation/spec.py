"""What to run: :class:`RunSpec`, built from CLI flags, a plan JSON, or a matrix YAML file.

A matrix file is YAML, either a plain list of runs or a mapping::

    defaults:            # applied to every run (a run's own keys win)
      gpus: H100
      steps: 3
    runs:                # explicit runs
      - {label: q05-full, model: qwen2.5-0.5b, method: full, seq: 512}
    grids:               # cartesian products: every list-valued key is expanded
      - {model: [qwen2.5-0.5b, qwen2.5-1.5b], method: [full, lora], seq: [512, 2048]}

Run keys: ``label``, ``model`` (a name, a config.json path, or a ModelProfile YAML file), ``gpus``, ``steps``,
``warmup``, ``device``, ``weights``, ``dataset``, ``timeline``, ``snapshot``, ``profile_step``, ``seed``,
``host_ram_gib``, ``inter_node_gb_s``; every other key is a :class:`~planner.engine.setup.Setup` field (``seq`` is
accepted for ``seq_len``). Unset Setup fields take the same defaults as ``plan estimate`` (the recipe:
DeepSpeed's with ZeRO, HF AMP otherwise, fp16 AMP on GPUs without bf16; LoRA alpha: 2 x rank).
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from profiles.errors import InputError, validation_message
from planner.engine.rules import validate_setup
from planner.engine.setup import Setup
from profiles.cluster import Cluster, make_cluster, parse_cluster
from profiles.schema import ModelProfile

RUN_KEYS = ("label", "model", "gpus", "steps", "warmup", "device", "weights", "dataset", "timeline", "snapshot",
            "profile_step", "seed", "host_ram_gib", "inter_node_gb_s")
SETUP_ALIASES = {"seq": "seq_len"}


class SpecError(InputError):
    """A bad run spec, matrix file or plan for a validation run (one line, names the bad value)."""


class RunSpec(BaseModel):
    """One validation run: model, plan cluster, setup, and how to run and measure it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    label: str
    model: ModelProfile
    cluster: Cluster = Field(description="the plan's cluster (the estimate is for it; world size decides launching)")
    setup: Setup
    steps: int = Field(3, ge=1, description="timed steps after warm-up")
    warmup: int = Field(2, ge=0, description="untimed steps first (the first step allocates optimizer states)")
    device: Literal["cuda", "cpu"] = "cuda"
    weights: str | None = Field(None, description="local checkpoint folder; None: random weights from the config")
    dataset: str | None = Field(None, description="JSONL samples; None: synthetic tokens")
    timeline: bool = Field(True, description="profile one step: memory timeline HTML and categories at the peak")
    snapshot: bool = Field(True, description="CUDA allocator snapshot (_record_memory_history) of that step")
    profile_step: int | None = Field(None, ge=0, description="step to profile; None: one extra step at the end")
    seed: int = 0

    @property
    def world_size(self) -> int:
        return self.cluster.world_size

    @property
    def total_steps(self) -> int:
        """Warm-up + timed steps, plus the extra profiled step when ``profile_step`` is None."""
        extra = 1 if (self.timeline and self.profile_step is None) else 0
        return self.warmup + self.steps + extra

    @property
    def profiled_step(self) -> int | None:
        if not self.timeline:
            return None
        return self.warmup + self.steps if self.profile_step is None else self.profile_step

    def slug(self) -> str:
        return slugify(self.label)


def slugify(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:80] or "run"


REPO_ROOT = Path(__file__).resolve().parent.parent


def resolve_model(arg: str, base: Path | None = None) -> ModelProfile:
    """``--model``, as :func:`profiles.registry.get_model` reads it (a name, a ModelProfile YAML file, a
    config.json...). A relative YAML path is looked up from the working directory, then ``base`` (a matrix
    file's folder), then the project root (so ``validation/data/tiny-qwen2.yaml`` works from anywhere)."""
    from profiles.registry import get_model

    p = Path(arg)
    if p.suffix in (".yaml", ".yml") and not p.is_absolute() and not p.is_file():
        for root in [x for x in (base, REPO_ROOT) if x is not None]:
            if (root / p).is_file():
                return get_model(str(root / p))
    return get_model(arg)


def default_recipe(cluster: Cluster, zero: int, fsdp: str | None) -> str:
    from planner.engine.setup import default_recipe as _default

    return _default(cluster.gpu.supports_bf16, zero, fsdp)


def make_setup(fields: dict[str, Any], cluster: Cluster, where: str = "") -> Setup:
    """A Setup from (possibly partial) fields with the CLI's default recipe (LoRA alpha defaults in Setup)."""
    f = {SETUP_ALIASES.get(k, k): v for k, v in fields.items()}
    unknown = sorted(set(f) - set(Setup.model_fields))
    if unknown:
        raise SpecError(
            f"{where}unknown key {', '.join(unknown)}; valid: {', '.join(RUN_KEYS)} or a setup field "
            f"({', '.join(Setup.model_fields)})"
        )
    f.setdefault("zero", 0)
    if f.get("recipe") is None:
        f["recipe"] = default_recipe(cluster, f["zero"], f.get("fsdp"))
    try:
        return Setup(**f)
    except ValidationError as e:
        raise SpecError(f"{where}invalid setup: {validation_message(e)}") from None


def cluster_from(gpus: str, host_ram_gib: float | None = None, inter_node_gb_s: float | None = None) -> Cluster:
    return parse_cluster(str(gpus), host_ram_gib, inter_node_gb_s)


def check(spec: RunSpec) -> RunSpec:
    """Reject, before anything runs (and before ``--dry-run`` says it would): impossible setups
    (:func:`planner.engine.rules.validate_setup`), a ``dataset`` that is not a file and ``weights`` that are not
    a folder (else the run would fail after loading the model and leave an error record)."""
    validate_setup(spec.setup, spec.model, spec.cluster)
    if spec.dataset is not None and not Path(spec.dataset).expanduser().is_file():
        raise SpecError(f"dataset {spec.dataset!r} is not a file; give a JSONL file of samples")
    if spec.weights is not None and not Path(spec.weights).expanduser().is_dir():
        raise SpecError(f"weights {spec.weights!r} is not a folder; give a local checkpoint folder (from_pretrained)")
    return spec


def spec_from_mapping(entry: dict[str, Any], defaults: dict[str, Any], index: int, base: Path | None = None) -> RunSpec:
    """One matrix entry (defaults merged under it) -> RunSpec."""
    d = {**defaults, **entry}
    where = f"run {index + 1} ({d.get('label', d.get('model', '?'))}): "
    if "model" not in d:
        raise SpecError(f"{where}no model; every run needs model: NAME")
    if "gpus" not in d:
        raise SpecError(f"{where}no gpus; give gpus: SPEC (e.g. H100) in the run or in defaults")
    run = {k: d.pop(k) for k in list(d) if k in RUN_KEYS}
    cluster = cluster_from(run["gpus"], run.get("host_ram_gib"), run.get("inter_node_gb_s"))
    model = resolve_model(str(run["model"]), base)
    setup = make_setup(d, cluster, where)
    label = run.get("label") or default_label(model, setup)
    kw = {k: run[k] for k in ("steps", "warmup", "device", "weights", "dataset", "timeline", "snapshot",
                              "profile_step", "seed") if run.get(k) is not None}
    try:
        spec = RunSpec(label=str(label), model=model, cluster=cluster, setup=setup, **kw)
    except ValidationError as e:
        raise SpecError(f"{where}{validation_message(e)}") from None
    try:
        return check(spec)
    except ValueError as e:
        raise SpecError(f"{where}{e}") from None


def default_label(model: ModelProfile, setup: Setup) -> str:
    ck = "ckpt" if setup.checkpointing != "none" else "nockpt"
    return f"{model.name}-{setup.method}-s{setup.seq_len}-mb{setup.micro_batch}-{ck}-{setup.recipe}"


def load_matrix(path: str | Path, overrides: dict[str, Any] | None = None) -> list[RunSpec]:
    """Read a matrix YAML file into RunSpecs (``overrides``, e.g. the CLI's ``--device``, win over the file)."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise SpecError(f"cannot read matrix file {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise SpecError(f"matrix file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    defaults: dict[str, Any] = {}
    entries: list[dict[str, Any]] = []
    if isinstance(data, list):
        entries = data
    elif isinstance(data, dict):
        bad = sorted(set(data) - {"defaults", "runs", "grids"})
        if bad:
            raise SpecError(f"matrix file {path}: unknown top-level key {', '.join(bad)}; valid: defaults, runs, grids")
        defaults = dict(data.get("defaults") or {})
        entries = list(data.get("runs") or [])
        for grid in data.get("grids") or []:
            entries += expand_grid(grid)
    else:
        raise SpecError(f"matrix file {path}: expected a list of runs or a mapping with runs/grids")
    if not entries:
        raise SpecError(f"matrix file {path} has no runs")
    specs = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            raise SpecError(f"matrix file {path}: run {i + 1} is not a mapping")
        specs.append(spec_from_mapping({**e, **(overrides or {})}, defaults, i, p.parent))
    labels = [s.label for s in specs]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise SpecError(f"matrix file {path}: duplicate labels {', '.join(dup)}; give each run a unique label")
    return specs


def expand_grid(grid: dict[str, Any]) -> list[dict[str, Any]]:
    """Cartesian product over list-valued keys; ``label`` may use ``{key}`` placeholders."""
    keys = list(grid)
    values = [v if isinstance(v, list) else [v] for v in grid.values()]
    out = []
    for combo in itertools.product(*values):
        e = dict(zip(keys, combo))
        if isinstance(e.get("label"), str):
            e["label"] = e["label"].format(**{k: v for k, v in e.items() if k != "label"})
        out.append(e)
    return out


def read_plan_file(path: str | Path) -> dict[str, Any]:
    """Model name, model profile (stored in the file, else resolved by name), cluster and setup of a plan JSON
    (:func:`planner.plan_file.read_plan_file`, the one reader)."""
    from planner.plan_file import read_plan_file as read

    pf = read(path)
    return {"model": pf.model, "profile": pf.load_model(), "cluster": pf.cluster, "setup": pf.setup}


def cluster_from_json(c: dict[str, Any], host_ram_gib: float | None = None,
                      inter_node_gb_s: float | None = None) -> Cluster:
    from profiles.registry import get_gpu

    return make_cluster(get_gpu(str(c["gpu"])), int(c.get("gpus_per_node", 1)), int(c.get("nodes", 1)),
                        host_ram_gib, inter_node_gb_s)
