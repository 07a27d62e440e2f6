"""torchtitan TOML: every key a field of torchtitan 0.2.2's JobConfig and every Literal value one of its choices
(tests/planner/emit/data/torchtitan_jobconfig_0.2.2.json, dumped from the wheel), the model table matches torchtitan's
flavors (tests/planner/emit/data/torchtitan_flavors_0.2.2.json, extracted from the same wheel), the file reads back to
the plan, and what 0.2.2 checks only at training start is checked here. When torchtitan 0.2.2 and tyro are
importable (or ``TUNEPLAN_TORCHTITAN_ROOT`` names an unzipped 0.2.2 wheel and tyro is on the path), torchtitan's own
``ConfigManager`` loads the files with ``UserWarning`` as an error; otherwise that test skips.

To run it without installing anything (what was done for issue 12)::

    pip download torchtitan==0.2.2 --no-deps -d /tmp/tt && unzip -q /tmp/tt/torchtitan-0.2.2-py3-none-any.whl -d /tmp/tt/w022
    pip install --target /tmp/ttdeps tyro
    PYTHONPATH=/tmp/ttdeps TUNEPLAN_TORCHTITAN_ROOT=/tmp/tt/w022 python -m pytest tests/planner/emit/test_torchtitan.py
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from planner.emit import NotExpressible, Target, build_files, trainers_for
from planner.emit import torchtitan as tt
from planner.emit.tomltext import dump
from planner.engine.evaluate import evaluate
from planner.engine.setup import Setup
from profiles.cluster import parse_cluster
from profiles.registry import get_model

DATA = Path(__file__).parent / "data"
KEYS = json.loads((DATA / "torchtitan_jobconfig_0.2.2.json").read_text())
FLAVORS = json.loads((DATA / "torchtitan_flavors_0.2.2.json").read_text())

FULL = dict(method="full", fsdp="full-shard", checkpointing="full", compile=True, framework="torchtitan")
PLANS = {
    "70b-fp8-fsdp-8xh100": ("llama3.1-70b", "8xH100",
                            dict(FULL, recipe="bf16", fp8="tensorwise", optimizer_in_backward=True, grad_accum=1)),
    "70b-tp8-8xh100": ("llama3.1-70b", "8xH100",
                       dict(FULL, recipe="bf16", tp=8, async_tp=True, optimizer_in_backward=True, micro_batch=8)),
    "70b-tp8-fsdp2-2x8xh100": ("llama3.1-70b", "2x8xH100", dict(FULL, recipe="bf16", tp=8, micro_batch=2, grad_accum=4)),
    "8b-fp8-rowwise-cp2": ("llama3.1-8b", "8xH100", dict(FULL, recipe="hf-amp", fp8="rowwise", cp=2, seq_len=16384,
                                                        checkpointing="op")),
    "qwen3-8b-offload-2xh100": ("qwen3-8b", "2xH100", dict(FULL, recipe="hf-amp", offload="optimizer+params")),
    "8b-ddp-1gpu": ("llama3-8b", "H100", dict(method="full", recipe="bf16", checkpointing="none")),
    "8b-foreach-adamw": ("llama3-8b", "8xH100", dict(FULL, recipe="bf16", optimizer_kernel="foreach")),
}


def target(case: str) -> Target:
    model, gpus, fields = PLANS[case]
    m, c = get_model(model), parse_cluster(gpus)
    return Target(evaluate(m, c, Setup(**fields)), m, c)


def _allowed(type_text: str) -> set[str] | None:
    """The choices of a ``Literal[...]`` (or ``Optional[Literal[...]]``) type string, else None."""
    m = re.search(r"Literal\[(.*?)\]", type_text)
    return None if m is None else set(re.findall(r"'([^']*)'", m.group(1)))


def _type_ok(value, type_text: str) -> bool:
    if "list[str]" in type_text:
        return isinstance(value, list) and all(isinstance(x, str) for x in value)
    if "bool" in type_text:
        return isinstance(value, bool)
    if "float" in type_text:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if "int" in type_text:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, str)


def flat(cfg: dict, prefix: str = "") -> dict:
    """A parsed TOML as ``section.sub.key -> value`` (tables nest: ``[quantize.linear.float8]``)."""
    out = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_keys(cfg: dict) -> None:
    fields = KEYS["fields"]
    for path, value in flat(cfg).items():
        assert path in fields, f"{path} is not a torchtitan {KEYS['torchtitan']} JobConfig field"
        t = fields[path]["type"]
        choices = _allowed(t)
        if choices is not None:
            assert value in choices, (path, value, choices)
        else:
            assert _type_ok(value, t), (path, value, t)


def test_key_file_is_the_pinned_version_and_says_where_it_came_from():
    assert KEYS["torchtitan"] == tt.TORCHTITAN_VERSION == FLAVORS["torchtitan_version"]
    assert "73a0e6979dd10b6b1904098eb3c8f62c18ab87ce" in KEYS["source"] and "job_config.py" in KEYS["_comment"]
    assert len(KEYS["fields"]) == 149


@pytest.mark.parametrize("case", list(PLANS))
def test_every_key_and_literal_is_torchtitans(case):
    t = target(case)
    text = tt.emit(t).files[tt.FILENAME]
    cfg = tomllib.loads(text)
    check_keys(cfg)
    want = {f"{k}.{kk}": vv for k, v in tt.torchtitan_config(t).items() for kk, vv in v.items() if vv is not None}
    assert flat(cfg) == want


@pytest.mark.parametrize("case", list(PLANS))
def test_file_reads_back_to_the_plan(case):
    t = target(case)
    s = t.setup
    c = tomllib.loads(tt.emit(t).files[tt.FILENAME])
    if "quantize" in c:
        c["quantize.linear.float8"] = c["quantize"]["linear"]["float8"]
    tr, par = c["training"], c["parallelism"]
    dp = t.world_size // (par["tensor_parallel_degree"] * par["context_parallel_degree"])
    assert tr["local_batch_size"] == s.micro_batch and tr["seq_len"] == s.seq_len
    assert tr["global_batch_size"] == s.micro_batch * s.grad_accum * dp  # train.py: accumulation = global / (local x dp)
    assert tr["global_batch_size"] // (tr["local_batch_size"] * dp) == s.grad_accum
    assert par["tensor_parallel_degree"] == s.tp and par["context_parallel_degree"] == s.cp
    assert par["enable_async_tensor_parallel"] == s.async_tp
    assert tr["dtype"] == ("bfloat16" if s.recipe == "bf16" else "float32")
    assert tr["enable_cpu_offload"] == (s.offload == "optimizer+params")
    assert c["optimizer"]["early_step_in_backward"] == s.optimizer_in_backward
    assert (c["activation_checkpoint"]["mode"] == "none") == (s.checkpointing == "none")
    assert ("quantize.linear.float8" in c) == (s.fp8 != "none")
    if s.fp8 == "tensorwise":
        f8 = c["quantize.linear.float8"]
        assert f8["enable_fsdp_float8_all_gather"] and "recipe_name" not in f8 and f8["filter_fqns"] == ["output"]
        assert c["model"]["converters"] == ["quantize.linear.float8"] and c["compile"]["enable"]
    if s.fp8 == "rowwise":
        assert c["quantize.linear.float8"]["recipe_name"] == "rowwise"
        assert not c["quantize.linear.float8"]["enable_fsdp_float8_all_gather"]  # Float8LinearConverter asserts it
    # ParallelDims._validate: dp x cp x tp == world; parallelize_llama: seq_len % (tp x 2 x cp) == 0
    assert s.seq_len % (2 * s.tp * s.cp) == 0 and dp * s.tp * s.cp == t.world_size
    if s.optimizer_in_backward:
        assert tr["global_batch_size"] == tr["local_batch_size"] * dp  # no accumulation with the early step


def test_model_table_matches_torchtitans_flavors():
    """torchtitan 0.2.2 llama3_args / qwen3_args against the shipped profiles (dims from each model's config.json)."""
    for name, (family, flavor) in tt.TORCHTITAN_MODELS.items():
        m = get_model(name)
        f = FLAVORS["flavors"][family][flavor]
        assert (f["dim"], f["n_layers"], f["n_heads"], f.get("n_kv_heads", f["n_heads"])) == (
            m.hidden_size, m.num_layers, m.num_heads, m.num_kv_heads), name
        if family == "llama3":  # FeedForward: int(8 h / 3 x multiplier) rounded up to multiple_of
            hidden = int(f["ffn_dim_multiplier"] * int(2 * 4 * f["dim"] / 3))
            hidden = f["multiple_of"] * -(-hidden // f["multiple_of"])
            assert hidden == m.intermediate_size, name
        else:
            assert f["hidden_dim"] == m.intermediate_size and f["head_dim"] == m.head_dim, name
            assert f.get("enable_weight_tying", False) == m.tie_embeddings, name


@pytest.mark.parametrize("model, gpus, fields, why", [
    ("llama3-8b", "8xA800", dict(method="lora", fsdp="full-shard", recipe="bf16"), "no LoRA"),
    ("llama3-8b", "8xA800", dict(method="full", zero=3), "DeepSpeed ZeRO-3"),
    ("llama3-8b", "8xA800", dict(method="full", fsdp="full-shard", recipe="bf16", optimizer="adamw-8bit"), "Adam or AdamW"),
    ("llama3-8b", "8xA800", dict(method="full", fsdp="full-shard", recipe="bf16", loss="liger"), "plain fp32 cross-entropy"),
    ("llama3-8b", "8xA800", dict(method="full", fsdp="full-shard", recipe="bf16", offload="optimizer"), "optimizer+params"),
    ("llama3-8b", "8xH100", dict(method="full", recipe="bf16", fp8="te"), "not TransformerEngine"),
    ("qwen2.5-7b", "8xA800", dict(method="full", fsdp="full-shard", recipe="bf16"), "no flavor for Qwen2.5-7B"),
    ("llama3-8b", "A800", dict(method="full", recipe="bf16", galore_rank=16), "galore"),
    ("llama3-8b", "A800", dict(method="full", recipe="bf16", checkpointing="full", activation_offload=True),
     "no activation offloading"),
])
def test_not_expressible_says_why(model, gpus, fields, why):
    m, c = get_model(model), parse_cluster(gpus)
    t = Target(evaluate(m, c, Setup(**fields)), m, c)
    with pytest.raises(NotExpressible) as e:
        tt.emit(t)
    assert why in str(e.value) and "\n" not in str(e.value)


def test_all_writes_torchtitan_first_for_its_plans_and_says_why_others_cannot():
    t = target("70b-tp8-8xh100")
    b = build_files(t, trainers_for(t, "all"))
    assert [e.trainer for e in b.emitted] == ["torchtitan"]
    assert {r.trainer for r in b.refused} == {"hf-fsdp", "llamafactory", "torchtune"}
    assert all("tensor" in r.reason or "optimizer-in-backward" in r.reason for r in b.refused)
    assert "torchrun --nproc_per_node 8 -m torchtitan.train --job.config_file torchtitan.toml" in b.files["launch.sh"]
    assert "torchtitan cannot" not in b.files["PLAN.md"] and "llamafactory" in b.files["PLAN.md"]


def test_toml_writer_round_trips():
    data = {"a": {"s": 'quote " and \\ and é', "i": -3, "f": 1e-05, "g": 2.0, "t": True, "l": ["x", "y"], "n": None},
            "a.b.c": {"k": 0.5}}
    back = tomllib.loads(dump(data, comments={"a": "section", "a.s": "note # with hash"}, header=["head"]))
    assert back == {"a": {"s": 'quote " and \\ and é', "i": -3, "f": 1e-05, "g": 2.0, "t": True, "l": ["x", "y"],
                          "b": {"c": {"k": 0.5}}}}


def _torchtitan_root() -> str | None:
    root = os.environ.get("TUNEPLAN_TORCHTITAN_ROOT")
    if root:
        return root
    try:
        import torchtitan  # noqa: F401
    except Exception:  # noqa: BLE001 - absent, or its package import needs triton (CPU-only torch)
        return None
    return str(Path(torchtitan.__file__).resolve().parents[1])


LOADER = r'''
import os, sys, types, warnings
warnings.simplefilter("error", UserWarning)
root, files = sys.argv[1], sys.argv[2:]
# torchtitan/__init__.py imports its float8 converter, which imports triton (absent from CPU-only torch): register
# the two parent packages so that only torchtitan/config/{job_config,manager}.py run
for name, sub in (("torchtitan", "torchtitan"), ("torchtitan.config", os.path.join("torchtitan", "config"))):
    mod = types.ModuleType(name)
    mod.__path__ = [os.path.join(root, sub)]
    sys.modules[name] = mod
from torchtitan.config.manager import ConfigManager
for f in files:
    cfg = ConfigManager().parse_args(["--job.config_file", f])
    print(f, cfg.model.name, cfg.model.flavor, cfg.parallelism.tensor_parallel_degree,
          cfg.parallelism.context_parallel_degree, cfg.training.local_batch_size, cfg.model.converters)
'''


@pytest.mark.slow
def test_torchtitans_own_parser_loads_the_files(tmp_path):
    root = _torchtitan_root()
    try:
        import tyro  # noqa: F401
    except ImportError:
        pytest.skip("tyro is not importable (pip install --target DIR tyro; PYTHONPATH=DIR)")
    if root is None or not (Path(root) / "torchtitan" / "config" / "manager.py").is_file():
        pytest.skip("torchtitan 0.2.2 not importable; set TUNEPLAN_TORCHTITAN_ROOT to an unzipped 0.2.2 wheel")
    files = []
    for case in PLANS:
        p = tmp_path / f"{case}.toml"
        p.write_text(tt.emit(target(case)).files[tt.FILENAME])
        files.append(str(p))
    bad = tmp_path / "bad.toml"
    bad.write_text(tt.emit(target("70b-tp8-8xh100")).files[tt.FILENAME].replace('mode = "full"', 'mode = "fulll"'))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH", "")]))}
    r = subprocess.run([sys.executable, "-c", LOADER, root, *files], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    assert len(lines) == len(files)
    for line, case in zip(lines, PLANS):
        s = target(case).setup
        _, name, flavor, tp, cp, lbs, conv = line.split(" ", 6)
        assert (int(tp), int(cp), int(lbs)) == (s.tp, s.cp, s.micro_batch), line
    # the same parser refuses a bad Literal (as an error with UserWarning promoted) and a misspelt key
    r = subprocess.run([sys.executable, "-c", LOADER, root, str(bad)], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=600)
    assert r.returncode != 0 and "fulll" in (r.stderr + r.stdout)
    typo = tmp_path / "typo.toml"
    typo.write_text(Path(files[0]).read_text().replace("local_batch_size", "local_batch_sise"))
    r = subprocess.run([sys.executable, "-c", LOADER, root, str(typo)], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=600)
    assert r.returncode != 0 and "local_batch_sise" in r.stderr


def test_per_op_sac_is_written_as_torchtitans_op_option_and_only_torchtitan_runs_it():
    """``--checkpointing op`` is torchtitan's ``mode = "selective"``, ``selective_ac_option = "op"`` (docs/memory.md
    eq. A12); the trainers that checkpoint whole blocks refuse it, and torchtitan refuses the attention-only mode it
    does not have."""
    from planner.emit import check_trainer

    m, c = get_model("llama3-8b"), parse_cluster("8xH100")
    t = Target(evaluate(m, c, Setup(**dict(FULL, recipe="hf-amp", checkpointing="op"))), m, c)
    cfg = tomllib.loads(tt.emit(t).files[tt.FILENAME])
    assert cfg["activation_checkpoint"] == {"mode": "selective", "selective_ac_option": "op"}
    check_keys(cfg)
    for trainer in ("hf-fsdp", "llamafactory", "torchtune"):
        with pytest.raises(NotExpressible, match="per-op selective checkpointing"):
            check_trainer(trainer, t)
    sel = Target(evaluate(m, c, Setup(**dict(FULL, recipe="hf-amp", checkpointing="selective"))), m, c)
    with pytest.raises(NotExpressible, match="no attention-only recompute"):
        tt.emit(sel)


def test_optimizer_kernel_is_written():
    """``optimizer.implementation`` is the plan's AdamW kernel (torchtitan's choices: for-loop, foreach, fused)."""
    assert tt.torchtitan_config(target("8b-foreach-adamw"))["optimizer"]["implementation"] == "foreach"
    assert tt.torchtitan_config(target("8b-ddp-1gpu"))["optimizer"]["implementation"] == "fused"
