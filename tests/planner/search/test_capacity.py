"""Capacity (planner.search.capacity and ``plan capacity``): the answers are consistent with the search they come
from, grow the right way with the hardware and the method, and the command keeps its contracts."""

from __future__ import annotations

import json

import pytest

from planner.search import capacity as C
from tests.helpers import run
from planner.search.rank import SearchRequest, search
from profiles.cluster import make_cluster, parse_cluster
from profiles.registry import all_gpus, get_gpu, get_model

GIB = 2**30




# ---- properties of the answers -----------------------------------------------------------------------------


@pytest.mark.parametrize("model, method, n, host_ram_gib", [
    # full fine-tuning of a 14B model on one H100 reaches its max positions since the search tries activation
    # offload with ZeRO-3 offload (issue 12); a 70B on eight reaches its max positions with torchtitan's context
    # parallelism, so the 70B case is on four; LoRA of a 32B on one H100 reaches them with parameter and activation
    # offload since Liger's kernels save less (eq. A10b), and so do LoRA of a 70B on one H100 and full fine-tuning of
    # a 32B on two since long sequences' large activation tensors fragment less (eq. R3b): those cases are now LoRA of
    # a 405B on two nodes and full fine-tuning of a 72B on four GPUs. The 405B's nodes get 16 TiB of host RAM so that
    # GPU memory decides: at the default host RAM its LoRA stops at the same length on both GPUs since the sharded
    # fragmentation fell to 0.43 (eq. A10c), the offloaded parameters and activations filling the host first (the
    # full fine-tuning cases keep the default: with that much host RAM they offload to max positions)
    ("llama3.1-405b", "lora", 16, 16384), ("llama3.1-70b", "qlora", 1, None), ("qwen2.5-72b", "full", 4, None),
    ("llama3.1-70b", "full", 4, None),
])
def test_longest_seq_grows_with_gpu_memory_h100_to_h200(model, method, n, host_ram_gib):
    m = get_model(model)
    h100, capped = C.longest_seq(C.Prober(m), parse_cluster(f"{n}xh100", host_ram_gib=host_ram_gib), method)
    h200, _ = C.longest_seq(C.Prober(m), parse_cluster(f"{n}xh200", host_ram_gib=host_ram_gib), method)
    assert h100 is not None and not capped
    assert h200 > h100, (h100, h200)


@pytest.mark.parametrize("spec, model, method", [
    ("4090", "qwen2.5-32b", "lora"),
    ("4090", "qwen2.5-7b", "qlora"),
    ("4xH100", "llama3.1-70b", "full"),
    ("h100", "llama3.1-70b", "qlora"),  # its LoRA reaches max positions on one H100 since eq. R3b
])
def test_longest_seq_fits_and_one_step_more_does_not(spec, model, method):
    m, cluster = get_model(model), parse_cluster(spec)
    seq, capped = C.longest_seq(C.Prober(m), cluster, method)
    assert seq is not None and not capped
    # checked with a fresh, unrestricted search (every checkpointing and loss kernel), not the probe
    world = cluster.world_size
    for s, fits in ((seq, True), (seq + C.SEQ_STEP, False)):
        r = search(m, cluster, SearchRequest(fixed={"method": method, "seq_len": s, "micro_batch": 1}, top=1),
                   with_suggestions=False)
        assert bool(r.plans) is fits, (s, world)


def test_longest_seq_capped_by_max_positions():
    m = get_model("llama3.2-1b")
    seq, capped = C.longest_seq(C.Prober(m), parse_cluster("h200"), "lora")
    assert (seq, capped) == (m.max_positions, True)


@pytest.mark.parametrize("model", ["llama3.1-8b", "qwen2.5-32b", "llama3.1-70b"])
@pytest.mark.parametrize("gpu", ["4090", "a100-40g", "h100"])
def test_lora_needs_no_more_gpus_than_full(model, gpu):
    p = C.Prober(get_model(model))
    full = C.fewest_gpus(p, get_gpu(gpu), "full", 2048)
    lora = C.fewest_gpus(p, get_gpu(gpu), "lora", 2048)
    assert lora is not None
    assert full is None or lora.gpus <= full.gpus


def test_lora_needs_fewer_gpus_than_full_for_70b_on_h100():
    p = C.Prober(get_model("llama3.1-70b"))
    full = C.fewest_gpus(p, get_gpu("h100"), "full", 2048)
    lora = C.fewest_gpus(p, get_gpu("h100"), "lora", 2048)
    assert lora.gpus < full.gpus


def test_fewest_gpus_is_the_smallest_size_that_fits():
    p = C.Prober(get_model("llama3.1-70b"))
    gpu = get_gpu("4090")
    need = C.fewest_gpus(p, gpu, "full", 2048)
    assert need is not None and need.plan.memory.peak_bytes <= 0.9 * gpu.memory_bytes
    sizes = C.cluster_sizes(gpu.typical_gpus_per_node)
    i = sizes.index((need.cluster.gpus_per_node, need.cluster.nodes))
    assert i > 0
    smaller = make_cluster(gpu, *sizes[i - 1])
    assert not search(p.model, smaller, SearchRequest(fixed={"method": "full", "seq_len": 2048}, top=1),
                      with_suggestions=False).plans


def test_largest_micro_batch_fits_and_one_more_does_not():
    p = C.Prober(get_model("qwen2.5-7b"))
    cluster = parse_cluster("4090")
    mb, capped = C.largest_micro_batch(p, cluster, "lora", 2048)
    assert mb is not None and not capped and mb >= 1
    assert p.fits(cluster, "lora", 2048, mb) and not p.fits(cluster, "lora", 2048, mb + 1)


@pytest.mark.parametrize("model, spec, method, seq", [
    ("llama3.1-70b", "8xA800", "full", 8192),
    ("qwen2.5-7b", "4090", "qlora", 4096),
    ("mixtral-8x7b", "2xh100", "lora", 2048),
    ("gemma-2-9b", "t4", "lora", 1024),
])
def test_probe_restriction_loses_no_plan(model, spec, method, seq):
    """Fit probes fix checkpointing=full (PROBE_DOMINANT): the smallest peak of the restricted space equals the
    smallest peak of the whole space."""
    m, cluster = get_model(model), parse_cluster(spec)
    ga = 64 // cluster.world_size
    fixed = {"method": method, "seq_len": seq, "micro_batch": 1, "grad_accum": ga}

    def smallest(fx: dict) -> int:
        r = search(m, cluster, SearchRequest(fixed=fx, global_batch=ga * cluster.world_size, objective="memory",
                                             top=1), with_suggestions=False)
        return min([p.memory.peak_bytes for p in r.plans] + [x.peak_bytes for x in r.rejected])

    assert smallest({**fixed, **C.PROBE_DOMINANT}) == smallest(fixed)


def test_memory_curve_is_monotone_and_crosses_capacity_where_longest_seq_says():
    m, cluster = get_model("qwen2.5-32b"), parse_cluster("8xA800")
    p = C.Prober(m)
    curve = C.memory_curve(p, cluster, "lora")
    peaks = [b for _, b in curve.points]
    assert peaks == sorted(peaks)
    seq, _ = C.longest_seq(p, cluster, "lora")
    usable = int(cluster.gpu.memory_bytes * 0.9)
    for s, b in curve.points:
        assert (b <= usable) == (s <= seq), (s, b / GIB, seq)


def test_capacity_for_cluster_cells_and_json():
    models = [get_model("llama3.2-1b"), get_model("llama3.1-70b")]
    res = C.capacity_for_cluster(models, parse_cluster("4090"), ("lora", "qlora"))
    assert [(c.model.name, c.method) for c in res.cells] == [
        ("Llama-3.2-1B", "lora"), ("Llama-3.2-1B", "qlora"), ("Llama-3.1-70B", "lora"), ("Llama-3.1-70B", "qlora")]
    small, big = res.cells[0], res.cells[3]
    assert small.fits and small.needed.gpus == 1 and small.max_micro_batch >= 1
    assert not big.fits and big.note.startswith("closest: ") and big.needed.gpus > 1
    d = json.loads(json.dumps(res.to_json()))
    assert d["schema_version"] == 1 and d["kind"] == "cluster" and len(d["rows"]) == 4


def test_seq_beyond_max_positions_is_a_note_not_an_error():
    res = C.capacity_for_cluster([get_model("llama2-7b")], parse_cluster("h100"), ("lora",), seq=8192)
    cell = res.cells[0]
    assert not cell.fits and cell.note == "--seq 8192 exceeds Llama-2-7B's max positions 4096"
    assert cell.max_seq is not None  # the longest sequence is still answered


def test_catalogue_rows_and_progress():
    seen: list[str] = []
    gpus = [get_gpu("4090"), get_gpu("h100"), get_gpu("b200")]
    res = C.capacity_across_gpus(get_model("llama3.1-8b"), gpus, ("full", "lora"), progress=seen.append)
    assert len(seen) == 6 and len(res.rows) == 6
    ranked = res.ranked("full")
    counts = [r.needed.gpus for r in ranked]
    assert counts == sorted(counts)
    assert {r.gpu.name for r in res.rows} == {g.name for g in gpus}


# ---- the command -------------------------------------------------------------------------------------------


def test_command_json(capsys):
    code, out, err = run(["capacity", "--gpus", "4090", "--models", "llama3.2-1b,qwen2.5-7b", "--method", "lora",
                          "--method", "qlora", "--format", "json"], capsys)
    assert code == 0, err
    d = json.loads(out)
    assert d["schema_version"] == 1 and d["kind"] == "cluster"
    assert d["cluster"] == {"gpu": "RTX 4090", "gpus_per_node": 1, "nodes": 1, "label": "1xRTX 4090"}
    assert d["methods"] == ["lora", "qlora"]
    assert [(r["model"], r["method"]) for r in d["rows"]] == [
        ("Llama-3.2-1B", "lora"), ("Llama-3.2-1B", "qlora"), ("Qwen2.5-7B", "lora"), ("Qwen2.5-7B", "qlora")]
    for r in d["rows"]:
        assert r["fits"] and r["plan"]["peak_bytes"] <= d["usable_bytes"]
        assert sum(r["plan"]["categories"].values()) == r["plan"]["peak_bytes"]
        assert r["max_seq"] % C.SEQ_STEP == 0 and r["fewest_gpus"]["gpus"] == 1


def test_command_catalogue_json(capsys):
    code, out, err = run(["capacity", "--model", "qwen2.5-0.5b", "--method", "lora", "--format", "json"], capsys)
    assert code == 0, err
    d = json.loads(out)
    assert d["kind"] == "catalogue" and d["model"] == "Qwen2.5-0.5B"
    assert sorted(r["gpu"] for r in d["rows"]) == sorted(g.name for g in all_gpus())  # one row per catalogue GPU
    assert all(r["fewest_gpus"]["gpus"] == 1 for r in d["rows"])


def test_command_table(capsys):
    code, out, _ = run(["capacity", "--gpus", "8xA800", "--models", "llama3.1-70b", "--method", "full"], capsys)
    assert code == 0
    assert "Capacity on 8xA800 80GB SXM" in out and "Llama-3.1-70B" in out and "fastest plans" in out


def test_command_out_writes_report_and_figures(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out_dir = tmp_path / "rep"
    code, out, err = run(["capacity", "--gpus", "4090", "--models", "llama3.2-1b,qwen2.5-32b", "--method",
                          "lora,qlora", "--format", "json", "--out", str(out_dir)], capsys)
    assert code == 0, err
    assert json.loads(out)["kind"] == "cluster"
    assert err.startswith("wrote ") and "report.md" in err
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == ["capacity.json", "memory_breakdown.png", "memory_vs_seq.png", "report.md", "tokens_per_s.png"]
    report = (out_dir / "report.md").read_text()
    for png in ("memory_breakdown.png", "memory_vs_seq.png", "tokens_per_s.png"):
        assert f"]({png})" in report
        assert (out_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| Qwen2.5-32B | qlora |" in report
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind

    # an existing non-empty folder is refused without --force, replaced with it
    code, _, err = run(["capacity", "--gpus", "4090", "--models", "llama3.2-1b", "--method", "lora",
                        "--out", str(out_dir), "--format", "html"], capsys)
    assert code == 2 and err == (f"plan capacity: error: --out {out_dir} exists and is not empty; "
                                 "pass --force to replace it, or choose another folder\n")
    code, _, err = run(["capacity", "--gpus", "4090", "--models", "llama3.2-1b", "--method", "lora",
                        "--out", str(out_dir), "--format", "html", "--force"], capsys)
    assert code == 0, err
    names = sorted(p.name for p in out_dir.iterdir())
    assert "report.html" in names and "report.md" not in names
    html = (out_dir / "report.html").read_text()
    assert '<img src="memory_breakdown.png"' in html and '<img src="tokens_per_s.png"' in html


def test_command_out_without_matplotlib(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    code, out, err = run(["capacity", "--gpus", "4090", "--models", "llama3.2-1b", "--out", str(tmp_path / "r")],
                         capsys)
    assert code == 2 and out == ""
    assert err == ("plan capacity: error: figures need matplotlib, which is not installed; "
                   "pip install 'tuneplan[reports]'\n")
    assert not (tmp_path / "r").exists()


BAD = [
    (["capacity", "--gpus", "8xA800", "--format", "xml"],
     "plan capacity: error: unknown --format 'xml' (valid: table, md, html, json)\n"),
    (["capacity", "--gpus", "8xA800", "--format", "jsn"],
     "plan capacity: error: unknown --format 'jsn'; did you mean 'json'? (valid: table, md, html, json)\n"),
    (["capacity", "--gpus", "8xA800", "--models", "llama3-8bb"],
     "plan capacity: error: unknown model 'llama3-8bb'; did you mean 'Llama-3-8B'"),
    (["capacity", "--gpus", "8xA800", "--models", ","],
     "plan capacity: error: empty --models list; give a comma list, e.g. --models llama3.1-8b,qwen2.5-7b\n"),
    (["capacity", "--gpus", "8xA800", "--method", ""],
     "plan capacity: error: empty --method list; give one or more of full, lora, qlora, freeze, "
     "e.g. --method lora,qlora\n"),
    (["capacity", "--gpus", "8xA800", "--method", "qlroa"],
     "plan capacity: error: unknown --method 'qlroa'; did you mean 'qlora'? (valid: full, lora, qlora, freeze)\n"),
    (["capacity", "--gpus", "8xA8000"], "plan capacity: error: unknown GPU 'A8000'; did you mean"),
    (["capacity", "--gpus", "8xA800", "--headroom", "0.95"],
     "plan capacity: error: argument --headroom: 0.95 is outside (0, 0.9); e.g. --headroom 0.1 keeps 10 % free "
     "(see plan capacity --help)\n"),
    (["capacity"], "plan capacity: error: give --gpus SPEC (what fits on it) or --model M without --gpus "
                   "(which GPUs fit it)\n"),
    (["capacity", "--gpus", "h100", "--model", "llama3-8b", "--models", "qwen2.5-7b"],
     "plan capacity: error: give --model M or --models LIST, not both\n"),
    (["capacity", "--gpus", "h100", "--seq", "0"],
     "plan capacity: error: argument --seq: expected a whole number >= 1, got '0'"),
]


@pytest.mark.parametrize("argv, message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_one_line_exit_2(argv, message, capsys):
    code, out, err = run(argv, capsys)
    assert code == 2
    assert err.startswith(message), err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert out == ""


def test_out_refuses_a_file(tmp_path, capsys):
    f = tmp_path / "file.txt"
    f.write_text("x")
    code, out, err = run(["capacity", "--gpus", "h100", "--models", "llama3.2-1b", "--out", str(f)], capsys)
    assert code == 2 and err == f"plan capacity: error: --out {f} exists and is not a folder; choose another path\n"
