"""Every shipped evidence file loads, and every record in it is traceable, mappable and physically possible.

The checks (``docs/evidence.md``, "checks"): ids unique; file stem == source id; clusters parse and models
resolve for mappable records; setup keys are :class:`planner.engine.setup.Setup` fields or documented reserved keys;
setups made only of Setup fields validate as a Setup and pass ``validate_setup`` for their model and
cluster; the implied model FLOPs of a throughput record stay below 80 % of the GPU's dense peak
(``shared/reference/evidence.md``: 6 x params x tokens/s for full fine-tuning, about 4 x for adapters);
memory stays below the GPU's capacity unless the record is an OOM; a record that fails a physics check on
purpose says why in ``anomaly``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from planner.engine.rules import validate_setup
from planner.engine.setup import Setup, SetupError
from profiles import evidence as ev
from profiles.cluster import parse_cluster
from profiles.errors import ProfileError
from profiles.params import param_counts
from profiles.registry import get_model

FILES = sorted(ev.EVIDENCE_DIR.glob("*.yaml"))
RECORDS = ev.corpus_records()
MAPPABLE = [r for r in RECORDS if r.record.unmappable is None]
SETUP_FIELDS = set(Setup.model_fields)
PEAK_SHARE = 0.80
"""Implied model FLOPs above this share of the dense peak mean the reading is wrong
(``shared/reference/evidence.md``, "Which throughput?")."""


def _ids(r: ev.EvidenceRecord) -> str:
    return r.id


def test_corpus_is_broad():
    sources = ev.load_corpus()
    assert len(sources) >= 15, "issue 10 asks for at least 10-15 sources"
    assert len(RECORDS) >= 100
    assert len(MAPPABLE) >= 100


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_file_loads_and_is_named_after_its_source(path: Path):
    sf = ev.load_source_file(path)
    assert sf.source.id == path.stem
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# "), "the file opens with a comment saying what it holds"


def _duplicate_keys(node, where: list[str]) -> None:
    import yaml

    if isinstance(node, yaml.MappingNode):
        keys = [k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode) and k.value != "<<"]
        where += [f"{k!r} at line {node.start_mark.line + 1}" for k in sorted({k for k in keys if keys.count(k) > 1})]
        for _, v in node.value:
            _duplicate_keys(v, where)
    elif isinstance(node, yaml.SequenceNode):
        for v in node.value:
            _duplicate_keys(v, where)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_no_key_is_given_twice(path: Path):
    """PyYAML keeps the last of two equal keys without a word, so a second ``anomaly:`` or ``seq_len:`` added to a
    record would silently replace the first: every mapping's keys are unique (YAML merge keys ``<<`` aside)."""
    import yaml

    dups: list[str] = []
    _duplicate_keys(yaml.compose(path.read_text(encoding="utf-8")), dups)
    assert not dups, f"{path.name}: keys given twice: {dups}"


def test_duplicate_key_check_sees_a_duplicate():
    import yaml

    dups: list[str] = []
    _duplicate_keys(yaml.compose("records:\n- id: a\n  anomaly: x\n  anomaly: y\n"), dups)
    assert dups == ["'anomaly' at line 2"]


def test_global_ids_are_unique():
    dup = [k for k, n in Counter(r.id for r in RECORDS).items() if n > 1]
    assert not dup


def test_load_corpus_from_a_directory_matches_the_shipped_one():
    assert [s.source.id for s in ev.load_corpus(ev.EVIDENCE_DIR)] == [s.source.id for s in ev.load_corpus()]


@pytest.mark.parametrize("rec", RECORDS, ids=_ids)
def test_record_is_traceable(rec: ev.EvidenceRecord):
    r = rec.record
    assert r.quote.strip(), "quote the published row verbatim"
    assert rec.source.url or rec.source.commit
    for a in r.assumptions:
        assert a.strip()
    unknown = set(r.setup) - SETUP_FIELDS - set(ev.RESERVED_SETUP_KEYS)
    assert not unknown, f"setup keys {sorted(unknown)} are neither Setup fields nor reserved keys"
    if r.measured.throughput and r.measured.throughput.unit == "s/run":
        assert "run_tokens" in r.setup or "run_steps" in r.setup, "an s/run throughput says what the run covered"


@pytest.mark.parametrize("rec", MAPPABLE, ids=_ids)
def test_mappable_record_resolves_and_validates(rec: ev.EvidenceRecord):
    r = rec.record
    model = get_model(r.model)
    cluster = parse_cluster(r.gpus)
    plain = {k: v for k, v in rec.setup.items() if k in SETUP_FIELDS}
    reserved_values = {
        k for k, v in plain.items() if isinstance(v, str) and v in ev.RESERVED_SETUP_VALUES.get(k, {})
    }
    if reserved_values:
        return  # a documented value tuneplan cannot express yet (e.g. 32-bit paged AdamW)
    from validation.corpus import FRAMEWORK_OF  # the trainer decides what it can run (--checkpointing op)

    setup = Setup(**{"framework": FRAMEWORK_OF.get(rec.framework, "other"), **plain})
    try:
        validate_setup(setup, model, cluster)
    except SetupError as e:  # pragma: no cover - the message is the point
        pytest.fail(f"{rec.id}: {e}")


@pytest.mark.parametrize("rec", [r for r in RECORDS if r.record.unmappable is not None], ids=_ids)
def test_unmappable_record_says_why_and_keeps_a_cluster_shape(rec: ev.EvidenceRecord):
    r = rec.record
    assert len(r.unmappable.strip()) > 10
    assert any(c.isdigit() for c in r.gpus) or r.gpus.isalpha()


def _world_and_gpu(rec: ev.EvidenceRecord):
    try:
        c = parse_cluster(rec.record.gpus)
    except ProfileError:
        return None, None
    return c.world_size, c.gpu


def _flops_per_token(rec: ev.EvidenceRecord) -> float | None:
    try:
        m = get_model(rec.record.model)
    except ProfileError:
        return None
    params = param_counts(m).active
    method = rec.setup.get("method", "full")
    return (6.0 if method in ("full",) else 4.0) * params


def _peak_tflops(gpu, setup) -> float:
    if setup.get("fp8") and gpu.fp8_tflops:
        return gpu.fp8_tflops
    if setup.get("recipe") == "fp16-amp":
        return gpu.fp16_tflops or gpu.bf16_tflops
    return gpu.bf16_tflops or gpu.fp16_tflops


@pytest.mark.parametrize("rec", [r for r in RECORDS if r.record.measured.throughput], ids=_ids)
def test_throughput_is_physically_possible(rec: ev.EvidenceRecord):
    world, gpu = _world_and_gpu(rec)
    fpt = _flops_per_token(rec)
    if world is None or fpt is None:
        pytest.skip("GPU or model not in the catalogue")
    tps = ev.throughput_tokens_per_s(rec.record.measured.throughput, rec.setup, world)
    if tps is None:
        pytest.skip("tokens per unit not stated (no seq_len / avg_tokens / run_tokens)")
    share = fpt * tps / world / (_peak_tflops(gpu, rec.setup) * 1e12)
    if share > PEAK_SHARE:
        assert rec.record.anomaly, f"{rec.id}: implies {share:.0%} of the dense peak; wrong reading or an anomaly"
    assert share > 0.002, f"{rec.id}: implies {share:.2%} of peak; a unit or scope is probably wrong"


@pytest.mark.parametrize("rec", [r for r in RECORDS if r.record.measured.memory], ids=_ids)
def test_memory_below_capacity_unless_oom(rec: ev.EvidenceRecord):
    _, gpu = _world_and_gpu(rec)
    if gpu is None:
        pytest.skip("GPU not in the catalogue")
    for m in (rec.record.measured.memory, *rec.record.measured.memory_other):
        b = ev.memory_bytes(m)
        if m.scope == "sum-over-gpus":
            b /= parse_cluster(rec.record.gpus).world_size
        if not rec.record.measured.oom:
            assert b <= gpu.memory_bytes * 1.001 or rec.record.anomaly, (
                f"{rec.id}: {m.value} {m.unit} exceeds the {gpu.name}'s {gpu.memory_mib} MiB"
            )
        assert b > 0.1 * 2**30


def test_ooms_and_speedups_the_issues_name_are_present():
    """Issue 10 / 11 name these records; the corpus must carry them."""
    ids = {r.id for r in RECORDS}
    # LitGPT's published OOM (issue 11): Llama 2 7B LoRA, micro-batch 4, A100 40GB
    assert any(r.record.measured.oom and r.record.model == "llama-2-7b" and r.record.gpus == "a100-40g"
               and r.record.setup.get("micro_batch") == 4 for r in RECORDS)
    # the seed table (issue 10): 8xA800 Llama-2 7B ZeRO-2 vs ZeRO-3 vs offload
    seed = [r for r in RECORDS if r.source.id == "zhang2023-dissecting"]
    assert {r.record.setup.get("zero") for r in seed} >= {0, 2, 3}
    assert any(i.startswith("torchtune-readme-2024-11/") for i in ids)


def test_source_setup_defaults_are_setup_fields_that_records_can_override():
    sources = {r.source.id: r.source for r in RECORDS}
    with_defaults = [s for s in sources.values() if s.setup_defaults]
    assert with_defaults, "the transformers < 4.49 sources carry loss_shift_copy (docs/memory.md eq. L1b)"
    for s in with_defaults:
        assert set(s.setup_defaults) <= SETUP_FIELDS, s.id
    rec = next(r for r in RECORDS if r.source.setup_defaults)
    assert rec.setup == {**rec.source.setup_defaults, **rec.record.setup}
    key = next(iter(rec.source.setup_defaults))
    own = rec.model_copy(update={"record": rec.record.model_copy(update={"setup": {**rec.record.setup, key: "x"}})})
    assert own.setup[key] == "x"  # the record's own value wins


def test_loader_errors_are_one_line(tmp_path: Path):
    bad = tmp_path / "x.yaml"
    bad.write_text("source: {id: y}\nrecords: []\n", encoding="utf-8")
    with pytest.raises(ev.EvidenceError) as e:
        ev.load_source_file(bad)
    assert "\n" not in str(e.value) and "x.yaml" in str(e.value)
    bad.write_text("source: [\n", encoding="utf-8")
    with pytest.raises(ev.EvidenceError) as e:
        ev.load_source_file(bad)
    assert "\n" not in str(e.value) and "YAML" in str(e.value)


def test_loader_rejects_a_stem_mismatch(tmp_path: Path):
    good = FILES[0]
    (tmp_path / "renamed.yaml").write_text(good.read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(ev.EvidenceError, match="differs from the file stem"):
        ev.load_corpus(tmp_path)


def test_unit_helpers():
    t = ev.Throughput(value=2.0, unit="s/step", scope="job")
    assert ev.throughput_tokens_per_s(t, {"micro_batch": 1, "grad_accum": 2, "seq_len": 1024}, 8) == 8192.0
    t = ev.Throughput(value=100.0, unit="tokens/s", scope="per-gpu")
    assert ev.throughput_tokens_per_s(t, {}, 8) == 800.0
    t = ev.Throughput(value=1.0, unit="min/1000 micro-steps", scope="job")
    assert ev.throughput_tokens_per_s(t, {"seq_len": 600, "micro_batch": 1, "grad_accum": 4}, 1) == pytest.approx(10_000.0)
    # a step time without a stated batch, or unpacked rows of unknown length, cannot be converted
    assert ev.throughput_tokens_per_s(ev.Throughput(value=2.0, unit="s/step", scope="job"), {"seq_len": 1024}, 8) is None
    t = ev.Throughput(value=3.0, unit="samples/s", scope="job")
    assert ev.throughput_tokens_per_s(t, {"seq_len": 1024, "packing": False}, 1) is None
    assert ev.throughput_tokens_per_s(t, {"seq_len": 1024, "packing": False, "avg_tokens": 300}, 1) == 900.0
    assert ev.memory_bytes(ev.Memory(value=1.0, unit="GB", kind="device")) == 1e9


def test_tflops_throughput_reads_through_the_sources_flops_per_token():
    """A TFLOP/s figure is kept as published and read as tokens/s through the source's own FLOPs per token: the
    SemiAnalysis BF16 row, 410.42 TFLOP/s per GPU at 54,624,018,432 FLOPs per token (its llama.py formula,
    profiles/evidence/semianalysis-rocm-te-issue79-2024-10.yaml), is 7,513.5 tokens/s per GPU, 60,108 on 8."""
    t = ev.Throughput(value=410.42, unit="TFLOP/s", scope="per-gpu", flops_per_token=54_624_018_432)
    assert ev.throughput_tokens_per_s(t, {}, 8) == pytest.approx(8 * 410.42e12 / 54_624_018_432)
    assert ev.throughput_tokens_per_s(t, {}, 1) == pytest.approx(7513.5, abs=0.1)
    with pytest.raises(ValueError, match="flops_per_token"):
        ev.Throughput(value=410.42, unit="TFLOP/s", scope="per-gpu")  # the rate alone cannot be read as tokens
    with pytest.raises(ValueError, match="flops_per_token"):
        ev.Throughput(value=100.0, unit="tokens/s", scope="per-gpu", flops_per_token=1e9)


def test_docs_name_every_source_and_reserved_key():
    """docs/evidence.md is the corpus's reference: every source id and every reserved setup key appears in it."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "evidence.md").read_text(encoding="utf-8")
    missing = [s.source.id for s in ev.load_corpus() if f"`{s.source.id}`" not in doc]
    assert not missing, f"sources missing from docs/evidence.md: {missing}"
    keys = [k for k in ev.RESERVED_SETUP_KEYS if f"`{k}`" not in doc]
    assert not keys, f"reserved setup keys missing from docs/evidence.md: {keys}"
    values = [v for vs in ev.RESERVED_SETUP_VALUES.values() for v in vs if v not in doc]
    assert not values, f"reserved setup values missing from docs/evidence.md: {values}"
