"""Every shipped model and GPU profile loads, validates, has unique aliases and resolves by the names people type.

Exact parameter totals are golden numbers from ``shared/reference/models.md`` ("computed" column: the exact weight
count from each model's config.json), so a change to a profile or to ``profiles.params`` that moves a count fails
here with the citation next to the number. ``test_params_meta.py`` checks the same counts against transformers.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from profiles import registry
from profiles.errors import ProfileError
from profiles.params import param_counts
from profiles.registry import all_gpus, all_models, fold, get_gpu, get_model
from profiles.schema import GpuProfile, ModelProfile

MODEL_FILES = sorted(registry.MODELS_DIR.glob("*.yaml"))
GPU_FILES = sorted(registry.GPUS_DIR.glob("*.yaml"))


def test_enough_profiles_ship():
    assert len(MODEL_FILES) >= 35
    assert len(GPU_FILES) >= 22
    derived = sorted(registry.DERIVED_DIR.glob("*.yaml"))  # shipped derived profiles (benchmarks/derive_catalogue.py)
    assert len(all_models()) == len(MODEL_FILES) + len(derived)
    assert len(all_gpus()) == len(GPU_FILES)


@pytest.mark.parametrize("path", MODEL_FILES, ids=lambda p: p.stem)
def test_model_file_validates(path: Path):
    text = path.read_text(encoding="utf-8")
    first = text.splitlines()[0]
    assert first.startswith("# ") and "http" in first, "the file opens with a comment naming its source"
    m = ModelProfile.model_validate(yaml.safe_load(text))
    assert m.source.startswith("https://")
    assert m.hf_id and "/" in m.hf_id
    for field in m.unverified:
        assert field in ModelProfile.model_fields, f"unverified names an unknown field {field!r}"
    c = param_counts(m)
    assert c.total == sum(c.as_dict()[g] for g in ("embedding", "attention", "mlp", "moe", "norms", "lm_head"))
    assert 0 < c.active <= c.total


@pytest.mark.parametrize("path", GPU_FILES, ids=lambda p: p.stem)
def test_gpu_file_validates(path: Path):
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# ")
    g = GpuProfile.model_validate(yaml.safe_load(text))
    fields = set(GpuProfile.model_fields)
    assert set(g.sources) <= fields, f"sources names unknown fields {set(g.sources) - fields}"
    assert set(g.unverified) <= fields
    numeric = {k for k, v in g.model_dump().items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert numeric <= set(g.sources), f"no source for {numeric - set(g.sources)}"
    # one direction: PCIe 5.0 x16 moves 63 GB/s, NVLink-C2C 450 (shared/reference/hardware.md)
    host_link_max = 63 if g.host_link == "pcie" else 450
    assert g.intra_node_bandwidth_gb_s > 0 and g.pcie_bandwidth_gb_s <= host_link_max, "host links are one direction"


def test_big_numbers_are_written_with_separators():
    for path in MODEL_FILES:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("#") or ":" not in line:
                continue
            value = line.split(":", 1)[1].strip()
            if value.isdigit():
                assert int(value) < 10_000, f"{path.name}: write {value} with underscores"


# ---------------------------------------------------------------------------------------------------------------
# names and aliases


def _keys(item) -> list[str]:
    keys = [item.name, *item.aliases]
    if getattr(item, "hf_id", None):
        keys += [item.hf_id, item.hf_id.split("/")[-1]]
    return keys


@pytest.mark.parametrize("items", [all_models, all_gpus], ids=["models", "gpus"])
def test_no_alias_names_two_things(items):
    owner: dict[str, str] = {}
    for it in items():
        for k in _keys(it):
            f = fold(k)
            assert owner.setdefault(f, it.name) == it.name, f"{k!r} names both {owner[f]} and {it.name}"


@pytest.mark.parametrize("items", [all_models, all_gpus], ids=["models", "gpus"])
def test_no_alias_is_redundant(items):
    """An alias that folds to the name, the hub id or another alias adds nothing (lookup folds separators)."""
    for it in items():
        hub = getattr(it, "hf_id", None)
        auto = {fold(it.name)} | ({fold(hub), fold(hub.split("/")[-1])} if hub else set())
        seen: set[str] = set()
        for a in it.aliases:
            f = fold(a)
            assert f not in auto and f not in seen, f"{it.name}: alias {a!r} is redundant"
            seen.add(f)


# What people type (issue 2), and the profile each must reach.
MODEL_LOOKUPS = {
    "llama3-8b": "Llama-3-8B",
    "llama-3-8b": "Llama-3-8B",
    "Meta-Llama-3-8B": "Llama-3-8B",
    "meta-llama/Meta-Llama-3-8B-Instruct": "Llama-3-8B",
    "llama3.1-8b": "Llama-3.1-8B",
    "Llama_3.1 8B": "Llama-3.1-8B",
    "meta-llama/Llama-3.1-8B-Instruct": "Llama-3.1-8B",
    "llama2-7b": "Llama-2-7B",
    "llama3.1-405b": "Llama-3.1-405B",
    "llama3.2-1b": "Llama-3.2-1B",
    "qwen2.5-7b": "Qwen2.5-7B",
    "qwen2.5-7b-instruct": "Qwen2.5-7B",
    "Qwen/Qwen2.5-0.5B": "Qwen2.5-0.5B",
    "qwen3-8b": "Qwen3-8B",
    "qwen3-30b-a3b": "Qwen3-30B-A3B",
    "gemma2-9b": "Gemma-2-9B",
    "google/gemma-2-9b-it": "Gemma-2-9B",
    "mistral-7b": "Mistral-7B-v0.1",
    "mistral-7b-v0.3": "Mistral-7B-v0.3",
    "mixtral-8x7b": "Mixtral-8x7B",
    "deepseek-v2-lite": "DeepSeek-V2-Lite",
    "glm4-9b": "GLM-4-9B",
    "THUDM/glm-4-9b-chat": "GLM-4-9B",
    "internlm2.5-7b": "InternLM2.5-7B",
    "internlm/internlm2_5-7b-chat": "InternLM2.5-7B",
    "yi-1.5-9b": "Yi-1.5-9B",
    "olmo-1b": "OLMo-1B",
    "allenai/OLMo-1B-hf": "OLMo-1B",
}


@pytest.mark.parametrize("typed,name", MODEL_LOOKUPS.items())
def test_model_lookup(typed: str, name: str):
    assert get_model(typed).name == name


@pytest.mark.parametrize("m", all_models(), ids=lambda m: m.name)
def test_every_model_resolves_by_hf_id_and_name(m: ModelProfile):
    assert get_model(m.hf_id) is m
    assert get_model(m.name.upper()) is m
    for a in m.aliases:
        assert get_model(a) is m


GPU_LOOKUPS = {
    "A800": "A800 80GB SXM",
    "a800-80g": "A800 80GB SXM",
    "h100": "H100 80GB SXM",
    "H100-80G": "H100 80GB SXM",
    "h100-sxm": "H100 80GB SXM",
    "h100-pcie": "H100 80GB PCIe",
    "a100": "A100 80GB SXM",
    "a100-40g": "A100 40GB SXM",
    "4090": "RTX 4090",
    "rtx4090": "RTX 4090",
    "RTX 4090": "RTX 4090",
    "NVIDIA GeForce RTX 4090": "RTX 4090",
    "3090": "RTX 3090",
    "5090": "RTX 5090",
    "v100": "V100 SXM2 32GB",
    "t4": "T4 16GB",
    "mi300x": "MI300X 192GB",
    "910b": "Ascend 910B",
    "h20": "H20 96GB",
    "h800": "H800 80GB SXM",
    "h200": "H200 141GB SXM",
    "b200": "B200 180GB",
    "l40s": "L40S 48GB",
    "l20": "L20 48GB",
    "l4": "L4 24GB",
    "a6000": "RTX A6000",
    "rtx-6000-ada": "RTX 6000 Ada",
}


@pytest.mark.parametrize("typed,name", GPU_LOOKUPS.items())
def test_gpu_lookup(typed: str, name: str):
    assert get_gpu(typed).name == name


def test_unknown_gpu_suggests_close_names():
    with pytest.raises(ProfileError) as e:
        get_gpu("A900")
    assert str(e.value) == "unknown GPU 'A900'; did you mean 'a800', 'a100', 'a6000'? (list all: plan profiles gpus)"


def test_unknown_model_suggests_close_names():
    with pytest.raises(ProfileError) as e:
        get_model("llama3-7b")
    msg = str(e.value)
    assert msg.startswith("unknown model 'llama3-7b'; did you mean ")
    assert msg.endswith(
        "(list all: plan profiles models); or pass a config.json path, a folder holding one, or a hub id in the "
        "local HF cache"
    )
    assert "\n" not in msg


# ---------------------------------------------------------------------------------------------------------------
# golden parameter counts


def test_llama_3_1_8b_exact_total():
    # issue 2 and shared/reference/models.md (Llama-3.1-8B, "computed" 8.030B): exact count
    assert param_counts(get_model("llama3.1-8b")).total == 8_030_261_248


def test_qwen2_5_0_5b_exact_total():
    # issue 2 and shared/reference/models.md (Qwen2.5-0.5B, "computed" 0.494B; tied embeddings, QKV bias)
    assert param_counts(get_model("qwen2.5-0.5b")).total == 494_032_768


# shared/reference/models.md, "computed" column (billions, 3 decimals); MoE rows also give the active count.
MODELS_MD_COMPUTED = {
    "Llama-2-7B": 6.738,
    "Llama-2-13B": 13.016,
    "Llama-2-70B": 68.977,
    "Llama-3-8B": 8.030,
    "Llama-3.1-8B": 8.030,
    "Llama-3-70B": 70.554,
    "Llama-3.1-70B": 70.554,
    "Llama-3.2-1B": 1.236,
    "Llama-3.2-3B": 3.213,
    "Qwen2.5-0.5B": 0.494,
    "Qwen2.5-1.5B": 1.544,
    "Qwen2.5-3B": 3.086,
    "Qwen2.5-7B": 7.616,
    "Qwen2.5-14B": 14.770,
    "Qwen2.5-32B": 32.764,
    "Qwen2.5-72B": 72.706,
    "Qwen3-0.6B": 0.596,
    "Qwen3-1.7B": 1.721,
    "Qwen3-4B": 4.022,
    "Qwen3-8B": 8.191,
    "Qwen3-14B": 14.768,
    "Qwen3-32B": 32.762,
    "Qwen3-30B-A3B": 30.532,
    "Gemma-2-2B": 2.614,
    "Gemma-2-9B": 9.242,
    "Gemma-2-27B": 27.227,
    "Mistral-7B-v0.1": 7.242,
    "Mixtral-8x7B": 46.703,
    "DeepSeek-V2-Lite": 15.706,
    "GLM-4-9B": 9.400,
    "InternLM2.5-7B": 7.738,
    "Yi-1.5-9B": 8.829,
    "OLMo-1B": 1.177,
}
MODELS_MD_ACTIVE = {"Qwen3-30B-A3B": 3.353, "Mixtral-8x7B": 12.880, "DeepSeek-V2-Lite": 2.661}


@pytest.mark.parametrize("name,billions", MODELS_MD_COMPUTED.items())
def test_total_matches_models_md(name: str, billions: float):
    assert round(param_counts(get_model(name)).total / 1e9, 3) == billions


@pytest.mark.parametrize("name,billions", MODELS_MD_ACTIVE.items())
def test_active_matches_models_md(name: str, billions: float):
    assert round(param_counts(get_model(name)).active / 1e9, 3) == billions


# Issue 13's catalogue: the distilled models are their base models' architectures (exact), the others checked
# against totals published with them.
DISTILLED_FROM = {
    "DS-R1-Qwen-7B": "Qwen2.5-7B", "DS-R1-Qwen-14B": "Qwen2.5-14B",
    "DS-R1-Qwen-32B": "Qwen2.5-32B", "DS-R1-Llama-8B": "Llama-3.1-8B",
    "DS-R1-Llama-70B": "Llama-3.3-70B",
}
PUBLISHED_TOTALS = {
    # a public VRAM estimator's table for mistralai/Mistral-Small-3.2-24B-Instruct-2506 (same text model):
    # "Text 23,572,403,200 + vision 438,958,080"
    "Mistral-Small-3": (23_572_403_200, 0.0),
    # model cards: Phi-4 14.7B (14.66B in a public catalogue citing microsoft/phi-4 config.json), Qwen3-235B-A22B
    # 235B, DeepSeek-V3 / R1 671B (without the 14B multi-token-prediction module)
    "Phi-4": (14.66e9, 0.001), "Qwen3-235B-A22B": (235e9, 0.001), "DeepSeek-V3": (671e9, 0.001),
    "DeepSeek-R1": (671e9, 0.001),
}


def test_every_shipped_model_has_a_golden_total_or_says_why():
    # Not in models.md: Mistral-7B-v0.3 (vocab 32768 instead of 32000), Llama-3.1-405B and Llama-3.3-70B; issue 13's
    # additions are checked below; derived profiles count what transformers builds (test_derived_profiles.py).
    extra = {m.name for m in all_models() if m.derived is None} - set(MODELS_MD_COMPUTED)
    assert extra == {"Mistral-7B-v0.3", "Llama-3.1-405B", "Llama-3.3-70B"} | set(DISTILLED_FROM) | set(PUBLISHED_TOTALS)
    for name, base in DISTILLED_FROM.items():
        assert param_counts(get_model(name)) == param_counts(get_model(base))
    for name, (total, rel) in PUBLISHED_TOTALS.items():
        assert param_counts(get_model(name)).total == pytest.approx(total, rel=rel), name
    v01, v03 = get_model("Mistral-7B-v0.1"), get_model("Mistral-7B-v0.3")
    assert param_counts(v03).total - param_counts(v01).total == 2 * (32_768 - 32_000) * 4096
    assert param_counts(get_model("Llama-3.3-70B")) == param_counts(get_model("Llama-3.1-70B"))
    assert "max_positions" in get_model("Llama-3.1-405B").unverified


# ---------------------------------------------------------------------------------------------------------------
# GPU defaults derived from stated rules (issue 2)


MAMF_RATIO = {  # MLE "Maximum Achievable Matmul FLOPS", BF16 share of peak (shared/reference/hardware.md notes)
    "A100 40GB SXM": 0.869,
    "A100 80GB SXM": 0.869,
    "A800 80GB SXM": 0.869,
    "H100 80GB SXM": 0.803,
    "H800 80GB SXM": 0.803,
    "H200 141GB SXM": 0.803,
    "B200 180GB": 0.776,
    "GH200 96GB": 0.838,  # 828.6 of 989, measured on the 900 W HBM3e module
    "GB200 186GB": 0.729,  # 1822.0 of 2500 (stas00/ml-engineering compute/accelerator/README.md at 744d01e1)
    "MI300X 192GB": 0.514,
}


@pytest.mark.parametrize("g", all_gpus(), ids=lambda g: g.name)
def test_default_mfu_follows_the_rule(g: GpuProfile):
    expected = round(MAMF_RATIO[g.name] * 0.55, 3) if g.name in MAMF_RATIO else 0.40
    assert g.default_mfu == pytest.approx(expected)
    assert "assumption" in g.sources["default_mfu"]


@pytest.mark.parametrize("g", all_gpus(), ids=lambda g: g.name)
def test_gpu_defaults_are_consistent(g: GpuProfile):
    if g.host_link == "pcie":
        assert g.pcie_bandwidth_gb_s == {3: 12, 4: 25, 5: 50}[g.pcie_gen]
        assert (g.host_ram_gib_per_node, g.typical_gpus_per_node) in {(1024, 8), (512, 8), (128, 4)}
    else:  # a Grace superchip: NVLink-C2C 450 GB/s per direction, four GPUs per node (gh200-96g.yaml's and
        # gb200-186g.yaml's sources): GH200 one 120 GB Grace per GPU, GB200 one 480 GB Grace per two GPUs
        grace_gib = {"GH200 96GB": 480, "GB200 186GB": 960}[g.name]
        assert (g.pcie_bandwidth_gb_s, g.host_ram_gib_per_node, g.typical_gpus_per_node) == (450, grace_gib, 4)
    if g.interconnect == "pcie":
        assert g.intra_node_bandwidth_gb_s == g.pcie_bandwidth_gb_s
    if g.bf16_tflops is None:
        assert g.name.startswith(("V100", "T4"))


def test_bandwidths_are_one_direction():
    # NVLink4 900 GB/s both directions -> 450; A800's 400 -> 200; H800's 400 -> 200; NVLink5 1800 -> 900
    assert get_gpu("h100").intra_node_bandwidth_gb_s == 450
    assert get_gpu("a800").intra_node_bandwidth_gb_s == 200
    assert get_gpu("h800").intra_node_bandwidth_gb_s == 200
    assert get_gpu("b200").intra_node_bandwidth_gb_s == 900
    assert get_gpu("gb200").intra_node_bandwidth_gb_s == 900
    assert get_gpu("a100").intra_node_bandwidth_gb_s == 300


def test_memory_as_the_driver_reports_it():
    assert get_gpu("h100").memory_mib == 81_559
    assert get_gpu("mi300x").memory_mib == 205_822_885_888 // 2**20
    assert get_gpu("910b").memory_mib == 62_432
    assert "memory_mib" in get_gpu("a800").unverified


# ---- a model profile YAML file as --model (get_model, so every command takes it) -----------------------------


def test_model_profile_yaml_resolves_everywhere(tmp_path):
    import yaml as _yaml

    from profiles.registry import get_model as _get

    src = Path(__file__).resolve().parents[2] / "validation" / "data" / "tiny-qwen2.yaml"
    m = _get(str(src))
    assert m.name == "tiny-qwen2" and m == ModelProfile.model_validate(_yaml.safe_load(src.read_text()))
    (tmp_path / "bad.yaml").write_text("x: [\n")
    (tmp_path / "list.yaml").write_text("- 1\n")
    (tmp_path / "partial.yaml").write_text("name: x\n")
    cases = {"bad.yaml": "is not valid YAML", "list.yaml": "expected a mapping of ModelProfile fields",
             "partial.yaml": "invalid model profile", "missing.yaml": "no such model profile file"}
    for name, msg in cases.items():
        with pytest.raises(ProfileError) as e:
            _get(str(tmp_path / name))
        assert msg in str(e.value) and "\n" not in str(e.value), str(e.value)
    with pytest.raises(ProfileError, match=r"partial.yaml: source: Field required \(and \d+ more\)"):
        _get(str(tmp_path / "partial.yaml"))


@pytest.mark.parametrize("argv", [
    ["--gpus", "1xH100", "--top", "1"],
    ["estimate", "--gpus", "1xH100"],
    ["capacity", "--gpus", "1xH100", "--method", "lora"],
    ["profiles", "show"],
])
def test_model_profile_yaml_on_the_command_line(argv, capsys, tmp_path):
    from tests.helpers import run

    src = str(Path(__file__).resolve().parents[2] / "validation" / "data" / "tiny-qwen2.yaml")
    if argv[0] == "profiles":
        full = [*argv, src]
    elif argv[0] == "capacity":
        full = [*argv, "--models", src]
    else:
        full = [*argv, "--model", src]
    code, out, err = run(full, capsys)
    assert code in (0, 1) and "tiny-qwen2" in out, err
    (tmp_path / "bad.yaml").write_text("name: x\n")
    code, out, err = run([x if x != src else str(tmp_path / "bad.yaml") for x in full], capsys)
    assert code == 2 and err.count("\n") == 1 and "invalid model profile" in err, err
