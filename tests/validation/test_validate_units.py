"""Fast checks of the validation pieces that need no training: records, atomic appends, matrices, plans,
launch command lines, data batches."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from planner.fileio import OutputError

from profiles.errors import InputError as CliError  # every one-line input error
from validation.measurement import (
    MEASUREMENTS_FILE,
    Measurement,
    append_measurement,
    read_measurements,
)
from validation.spec import expand_grid, load_matrix, read_plan_file, spec_from_mapping

TINY = str(Path(__file__).resolve().parents[2] / "validation" / "data" / "tiny-qwen2.yaml")
TINY_LLAMA = str(Path(__file__).resolve().parents[2] / "validation" / "data" / "tiny-llama.yaml")


def record(run_id: str = "r1", **kw) -> Measurement:
    base = dict(run_id=run_id, label=run_id, started_at="t0", finished_at="t1", status="ok", reached="steady_state",
                model="tiny", model_profile={}, cluster={"gpu": "H100 80GB SXM", "gpus_per_node": 1, "nodes": 1},
                setup={}, device="cpu", device_name="CPU", steps=1, warmup=1, data="synthetic", weights="random")
    base.update(kw)
    return Measurement(**base)


def test_append_keeps_every_record_and_reads_back(tmp_path):
    append_measurement(tmp_path, record("a"))
    append_measurement(tmp_path, record("b", status="oom", reached="first_forward", error="CUDA out of memory"))
    ms = read_measurements(tmp_path)
    assert [m.run_id for m in ms] == ["a", "b"]
    assert ms[1].status == "oom" and ms[1].reached == "first_forward"
    lines = (tmp_path / MEASUREMENTS_FILE).read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(x)["schema_version"] == 1 for x in lines)


def test_append_is_atomic_when_the_write_fails(tmp_path, monkeypatch):
    append_measurement(tmp_path, record("a"))
    before = (tmp_path / MEASUREMENTS_FILE).read_text()

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OutputError, match="disk full"):  # one line naming the file, not a traceback
        append_measurement(tmp_path, record("b"))
    monkeypatch.undo()
    assert (tmp_path / MEASUREMENTS_FILE).read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == [MEASUREMENTS_FILE]  # no temporary file left behind


def test_a_torn_last_line_is_skipped_and_the_next_append_stays_on_its_own_line(tmp_path):
    append_measurement(tmp_path, record("a"))
    with (tmp_path / MEASUREMENTS_FILE).open("a") as f:
        f.write('{"run_id": "half')  # a writer killed mid-line (not ours: ours replace the file whole)
    append_measurement(tmp_path, record("c"))
    assert [m.run_id for m in read_measurements(tmp_path)] == ["a", "c"]
    with pytest.raises(ValueError, match=":2: not a measurement record"):
        read_measurements(tmp_path, strict=True)


def test_matrix_grid_defaults_and_labels(tmp_path):
    f = tmp_path / "m.yaml"
    f.write_text(
        "defaults: {gpus: H100, device: cpu, steps: 1}\n"
        "runs:\n  - {label: one, model: " + TINY + ", seq: 64}\n"
        "grids:\n  - {label: 'g-{method}-{seq}', model: " + TINY + ", method: [full, lora], seq: [32, 64]}\n"
    )
    specs = load_matrix(f)
    assert [s.label for s in specs] == ["one", "g-full-32", "g-full-64", "g-lora-32", "g-lora-64"]
    assert specs[0].setup.seq_len == 64 and specs[0].steps == 1 and specs[0].device == "cpu"
    assert specs[0].setup.recipe == "hf-amp" and specs[3].setup.lora_alpha == 16
    assert len(expand_grid({"a": [1, 2], "b": 3})) == 2


@pytest.mark.parametrize("text, message", [
    ("- {model: " + TINY + ", gpus: H100, sequence: 64}", "unknown key sequence"),
    ("- {model: " + TINY + "}", "no gpus"),
    ("- {label: x, model: " + TINY + ", gpus: H100}\n- {label: x, model: " + TINY + ", gpus: H100}", "duplicate labels x"),
    ("- {model: " + TINY + ", gpus: H100, method: qlora, dora: true, zero: 3, offload: optimizer+params}",
     "QLoRA with ZeRO-3 offload"),
    ("nope: 1", "unknown top-level key nope"),
    ("[: bad", "not valid YAML"),
])
def test_matrix_errors_are_one_line(tmp_path, text, message):
    f = tmp_path / "m.yaml"
    f.write_text(text)
    with pytest.raises((CliError, ValueError), match=message) as e:
        load_matrix(f)
    assert "\n" not in str(e.value)


def test_plan_files_of_every_shape(tmp_path):
    from planner.engine.evaluate import evaluate
    from planner.engine.setup import Setup
    from profiles.cluster import parse_cluster
    from profiles.registry import get_model

    model, cluster = get_model("qwen2.5-0.5b"), parse_cluster("2xH100")
    setup = Setup(recipe="deepspeed-bf16", method="lora", zero=2, seq_len=512)
    est = evaluate(model, cluster, setup).memory.to_json()
    shapes = {"estimate.json": est, "plan.json": {"rank": 1, "setup": setup.model_dump(), "memory": est},
              "search.json": {"schema_version": 1, "plans": [{"rank": 1, "setup": setup.model_dump(), "memory": est}]}}
    for name, data in shapes.items():
        p = tmp_path / name
        p.write_text(json.dumps(data))
        got = read_plan_file(p)
        assert got["model"] == "Qwen2.5-0.5B" and got["cluster"]["gpus_per_node"] == 2
        assert got["setup"]["zero"] == 2
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(CliError, match="is not a plan"):
        read_plan_file(tmp_path / "bad.json")


def test_launch_commands(tmp_path, monkeypatch):
    from validation.launch import launch_command, launcher_name

    base = {"model": "qwen2.5-0.5b", "seq": 512}
    zero3 = spec_from_mapping({**base, "gpus": "8xH100", "zero": 3}, {}, 0)
    assert launcher_name(zero3) == "deepspeed"
    cmd = launch_command(zero3, tmp_path, tmp_path / "spec.json", "rid", env={})
    assert cmd[:3] == ["deepspeed", "--num_gpus", "8"] and "--module" in cmd and "validation.worker" in cmd
    assert cmd[-2:] == ["--run-id", "rid"]
    fsdp = spec_from_mapping({**base, "gpus": "4xH100", "fsdp": "full-shard", "recipe": "bf16"}, {}, 0)
    cmd = launch_command(fsdp, tmp_path, tmp_path / "spec.json", "rid", env={})
    assert launcher_name(fsdp) == "torchrun" and "--standalone" in cmd and cmd[cmd.index("--nproc_per_node") + 1] == "4"
    multi = spec_from_mapping({**base, "gpus": "2x8xH100", "zero": 2}, {}, 0)
    cmd = launch_command(multi, tmp_path, tmp_path / "spec.json", "rid", env={})
    assert launcher_name(multi) == "torchrun"  # multi-node: torchrun on every node
    assert cmd[cmd.index("--nnodes") + 1] == "2" and "$NODE_RANK" in cmd and "$MASTER_ADDR" in cmd
    cmd = launch_command(multi, tmp_path, tmp_path / "spec.json", "rid",
                         env={"NODE_RANK": "1", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "6000"})
    assert cmd[cmd.index("--node_rank") + 1] == "1" and cmd[cmd.index("--master_addr") + 1] == "10.0.0.1"


def test_multi_node_launch_needs_the_node_variables(tmp_path, monkeypatch):
    from validation.launch import run_distributed

    for k in ("NODE_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    spec = spec_from_mapping({"model": "qwen2.5-0.5b", "gpus": "2x8xH100", "zero": 2, "seq": 512}, {}, 0)
    with pytest.raises(CliError, match="set NODE_RANK, MASTER_ADDR, MASTER_PORT"):
        run_distributed(spec, tmp_path)


def test_deepspeed_config_comes_from_the_emitter(tmp_path):
    from validation.launch import deepspeed_config

    spec = spec_from_mapping({"model": "qwen2.5-0.5b", "gpus": "8xH100", "zero": 3, "seq": 512, "micro_batch": 2,
                              "grad_accum": 4}, {}, 0)
    cfg, source = deepspeed_config(spec)
    assert source.startswith("planner.emit")
    assert cfg["zero_optimization"]["stage"] == 3 and cfg["train_batch_size"] == 2 * 4 * 8
    assert "auto" not in json.dumps(cfg) and "_comment" not in cfg


def test_dry_run_prints_the_launch_command(capsys, tmp_path):
    from planner.app.cli import main

    code = main(["validate", "--model", "qwen2.5-0.5b", "--gpus", "8xH100", "--zero", "3", "--seq", "512", "--device", "cuda",
                 "--dry-run", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and "deepspeed --num_gpus 8" in out and "validation.worker" in out
    assert not any(tmp_path.iterdir())


def test_validate_bad_input_is_one_line(capsys, tmp_path):
    from planner.app.cli import main

    assert main(["validate", "--gpus", "H100", "--out", str(tmp_path)]) == 2
    assert "give --plan FILE, --matrix FILE, or --model MODEL with --gpus SPEC" in capsys.readouterr().err
    assert main(["validate", "--model", TINY, "--gpus", "H100", "--seq", "5000", "--out", str(tmp_path)]) == 2
    assert "exceeds tiny-qwen2's max positions 4096" in capsys.readouterr().err


def test_data_packed_and_padded(tmp_path):
    from validation.data import IGNORE, batches

    f = tmp_path / "d.jsonl"
    f.write_text("\n".join(json.dumps(x) for x in [{"input_ids": [1, 2, 3]}, {"text": "hello"}, {"input_ids": [9] * 40}]))
    packed = spec_from_mapping({"model": TINY, "gpus": "H100", "seq": 16, "micro_batch": 2, "dataset": str(f)}, {}, 0)
    b = batches(packed)
    one = next(iter(b))
    assert one["input_ids"].shape == (2, 16) and "attention_mask" not in one and b.description.endswith(":packed")
    padded = spec_from_mapping({"model": TINY, "gpus": "H100", "seq": 16, "micro_batch": 3, "dataset": str(f),
                                "packing": False}, {}, 0)
    b = batches(padded)
    one = next(iter(b))
    assert one["input_ids"].shape == (3, 16) and one["attention_mask"][0].tolist() == [1] * 3 + [0] * 13
    assert one["labels"][0, 3:].eq(IGNORE).all() and one["input_ids"][1, :5].tolist() == list(b"hello")
    assert b.real_tokens(one) == 3 + 5 + 16
    (tmp_path / "bad.jsonl").write_text('{"input_ids": [999]}\n')
    bad = spec_from_mapping({"model": TINY, "gpus": "H100", "seq": 16, "dataset": str(tmp_path / "bad.jsonl")}, {}, 0)
    with pytest.raises(CliError, match="token id 999 outside the model's vocabulary"):
        batches(bad)


def test_not_runnable_reasons():
    from validation.build import not_runnable_reason

    def reason(**kw):
        return not_runnable_reason(spec_from_mapping({"model": TINY, "gpus": "H100", "device": "cpu", **kw}, {}, 0))

    assert "QLoRA (bitsandbytes NF4 kernels) needs a CUDA device" in reason(method="qlora")
    assert "FlashAttention-2" in reason(attention="flash")
    assert "needs a CUDA device" in reason(loss="liger")
    assert "Liger's fused RMSNorm / SwiGLU / RoPE (Triton) needs a CUDA device" in reason(fused_kernels=True)
    # the engine models Unsloth's kernels for fms-acceleration's runs (eq. A10c); validate builds Liger's only
    assert "does not build Unsloth's kernels" in reason(fused_kernels=True, kernel_library="unsloth")
    assert reason(method="lora", dora=True) is None


def test_validate_a_plan_file_dry_run(tmp_path, capsys):
    from planner.app.cli import main

    assert main(["estimate", "--model", "qwen2.5-0.5b", "--gpus", "H100", "--method", "lora", "--seq", "256",
                 "--checkpointing", "full", "--json"]) == 0
    plan = tmp_path / "plan.json"
    plan.write_text(capsys.readouterr().out)
    assert main(["validate", "--plan", str(plan), "--dry-run", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "Qwen2.5-0.5B on 1xH100 80GB SXM" in out and "lora r8" in out and "seq 256" in out
    assert main(["validate", "--plan", str(plan), "--model", TINY, "--dry-run", "--out", str(tmp_path / "o")]) == 0
    assert "tiny-qwen2 on 1xH100 80GB SXM" in capsys.readouterr().out


# torch's CUDA out-of-memory message, as c10/cuda/CUDACachingAllocator.cpp (malloc) composes it after the allocator
# has freed its unused cached segments and retried; sizes through format_size (two decimals)
OOM_MESSAGE = (
    "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which 1.06 GiB is "
    "free. Including non-PyTorch memory, this process has 78.12 GiB memory in use. Of the allocated memory 70.25 GiB "
    "is allocated by PyTorch, and 6.48 GiB is reserved by PyTorch but unallocated. If reserved but unallocated memory "
    "is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation "
    "for Memory Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)"
)


def test_the_figures_of_torchs_out_of_memory_message():
    from validation.measurement import cuda_oom_figures

    GiB = 2**30
    f = cuda_oom_figures(OOM_MESSAGE)
    assert f == {"requested_bytes": 2 * GiB, "capacity_bytes": round(79.19 * GiB), "free_bytes": round(1.06 * GiB),
                 "allocated_bytes": round(70.25 * GiB), "reserved_unallocated_bytes": round(6.48 * GiB)}
    assert cuda_oom_figures("CUDA out of memory. Tried to allocate 20.00 MiB.") == {"requested_bytes": 20 * 2**20}
    assert cuda_oom_figures("0 bytes is reserved by PyTorch but unallocated") is None  # not an out-of-memory message
    assert cuda_oom_figures(None) is None


def test_the_report_states_what_the_retry_kept_against_eq_r3c():
    from planner.engine.runtime_memory import STRANDED
    from validation.report import oom_stranded_line

    m = record(status="oom", error=OOM_MESSAGE, setup={"packing": True})
    line = oom_stranded_line(m)
    assert "6.48 GiB reserved but unallocated" in line and f"{6.48 / 79.19:.1%} of the card" in line
    assert f"static class is at most {STRANDED['static']:.1%}" in line
    # two GPUs under FSDP1: parameters gathered on a side stream and freed with record_stream, the sharded class;
    # FSDP2 avoids record_stream, its own class (the engine's own rule)
    two = {"gpu": "H100 80GB SXM", "gpus_per_node": 2, "nodes": 1}
    fsdp1 = record(status="oom", error=OOM_MESSAGE, setup={"fsdp": "full-shard", "fsdp_version": 1, "recipe": "hf-amp"},
                   cluster=two)
    assert f"sharded class is at most {STRANDED['sharded']:.1%}" in oom_stranded_line(fsdp1)
    fsdp2 = record(status="oom", error=OOM_MESSAGE, setup={"fsdp": "full-shard", "recipe": "hf-amp"}, cluster=two)
    assert f"fsdp2 class is at most {STRANDED['fsdp2']:.1%}" in oom_stranded_line(fsdp2)
    assert oom_stranded_line(record(status="ok")) is None
    assert oom_stranded_line(record(status="oom", error="CUDA out of memory. Tried to allocate 2.00 GiB.")) is None
