"""Round trip: the generated files, parsed back (JSON / YAML), say the same setup the plan had: micro-batch,
accumulation, ZeRO stage / FSDP, offload, LoRA rank, quantisation, checkpointing. Also the YAML renderer's
own round trip."""

from __future__ import annotations

import json

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planner.emit import TRAINERS, NotExpressible, build_files, emit_trainer
from planner.emit.yamltext import dump
from tests.planner.emit.data.emit_cases import CASES, random_targets, target


def read_back(files: dict[str, str]) -> list[dict]:
    """What each generated file says about the setup, one observation dict per file."""
    obs: list[dict] = []
    if "ds_config.json" in files:
        d = json.loads(files["ds_config.json"])
        z = d["zero_optimization"]
        obs.append({
            "micro_batch": d["train_micro_batch_size_per_gpu"], "grad_accum": d["gradient_accumulation_steps"],
            "zero": z["stage"],
            "offload": "optimizer+params" if "offload_param" in z else "optimizer" if "offload_optimizer" in z else "none",
        })
    if "ds_config_hf.json" in files:
        z = json.loads(files["ds_config_hf.json"])["zero_optimization"]
        obs.append({"zero": z["stage"],
                    "offload": "optimizer+params" if "offload_param" in z else "optimizer" if "offload_optimizer" in z else "none"})
    if "training_args.yaml" in files:
        a = yaml.safe_load(files["training_args.yaml"])
        obs.append({"micro_batch": a["per_device_train_batch_size"], "grad_accum": a["gradient_accumulation_steps"]})
    if "accelerate_config.yaml" in files:
        c = yaml.safe_load(files["accelerate_config.yaml"])
        if c["distributed_type"] == "FSDP":
            f = c["fsdp_config"]
            obs.append({"fsdp": "full-shard" if f["fsdp_reshard_after_forward"] else "shard-grad-op", "zero": 0})
        elif c["distributed_type"] in ("MULTI_GPU", "NO"):
            obs.append({"fsdp": None, "zero": 0, "offload": "none"})
    if "hf_model.yaml" in files:
        m = yaml.safe_load(files["hf_model.yaml"])
        q = m["from_pretrained"].get("quantization_config")
        o = {"qlora": q is not None}
        if q:
            o["double_quant"] = q["bnb_4bit_use_double_quant"]
        if "lora" in m:
            o["lora_rank"] = m["lora"]["r"]
            o["lora_alpha"] = m["lora"]["lora_alpha"]
        obs.append(o)
    if "llamafactory.yaml" in files:
        c = yaml.safe_load(files["llamafactory.yaml"])
        o = {"micro_batch": c["per_device_train_batch_size"], "grad_accum": c["gradient_accumulation_steps"],
             "qlora": c.get("quantization_bit") == 4, "checkpointing_off": c.get("disable_gradient_checkpointing", False),
             "seq_len": c["cutoff_len"], "packing": c["packing"]}
        if c["finetuning_type"] == "lora":
            o["lora_rank"] = c["lora_rank"]
            o["lora_alpha"] = c["lora_alpha"]
        if c.get("quantization_bit"):
            o["double_quant"] = c["double_quantization"]
        if "deepspeed" in c:
            o["zero"] = json.loads(files[c["deepspeed"]])["zero_optimization"]["stage"]
        obs.append(o)
    if "torchtitan.toml" in files:
        import tomllib

        c = tomllib.loads(files["torchtitan.toml"])
        tr, par = c["training"], c["parallelism"]
        o = {"micro_batch": tr["local_batch_size"], "seq_len": tr["seq_len"],
             "checkpointing_off": c["activation_checkpoint"]["mode"] == "none",
             "optimizer_in_backward": c["optimizer"]["early_step_in_backward"],
             "offload": "optimizer+params" if tr["enable_cpu_offload"] else "none"}
        if par["data_parallel_shard_degree"] == -1:
            o["fsdp"] = "shard-grad-op" if par["fsdp_reshard_after_forward"] == "never" else "full-shard"
        obs.append(o)
    if "torchtune.yaml" in files:
        c = yaml.safe_load(files["torchtune.yaml"])
        o = {"micro_batch": c["batch_size"], "grad_accum": c["gradient_accumulation_steps"],
             "qlora": c["model"]["_component_"].rpartition(".")[2].startswith("qlora_"),
             "checkpointing_off": not c["enable_activation_checkpointing"], "seq_len": c["tokenizer"]["max_seq_len"],
             "packing": c["dataset"]["packed"], "optimizer_in_backward": c.get("optimizer_in_bwd", False)}
        if "lora_rank" in c["model"]:
            o["lora_rank"] = c["model"]["lora_rank"]
            o["lora_alpha"] = c["model"]["lora_alpha"]
        if "fsdp_reshard_after_forward" in c:
            o["fsdp"] = "full-shard" if c["fsdp_reshard_after_forward"] else "shard-grad-op"
        obs.append(o)
    return obs


def expected(t) -> dict:
    s = t.setup
    return {
        "micro_batch": s.micro_batch, "grad_accum": s.grad_accum, "zero": s.zero, "fsdp": s.fsdp, "offload": s.offload,
        "qlora": s.method == "qlora", "double_quant": s.double_quant, "lora_rank": s.lora_rank, "lora_alpha": s.lora_alpha,
        "checkpointing_off": s.checkpointing == "none", "seq_len": s.seq_len, "packing": s.packing,
        "optimizer_in_backward": s.optimizer_in_backward,
    }


def check_round_trip(t, files) -> None:
    want = expected(t)
    obs = read_back(files)
    assert obs, "nothing to read back"
    for o in obs:
        for k, v in o.items():
            assert v == want[k], (k, v, want[k])


def test_round_trip_of_the_cases():
    for case in CASES:
        t = target(case)
        b = build_files(t, list(TRAINERS))
        check_round_trip(t, b.files)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(random_targets())
def test_round_trip_random_plans(t):
    for trainer in TRAINERS:
        try:
            e = emit_trainer(t, trainer)
        except NotExpressible:
            continue
        check_round_trip(t, e.files)


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**12, 10**12),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=20),
)
keys = st.text(st.characters(whitelist_categories=("Ll", "Lu", "Nd"), whitelist_characters="_-."), min_size=1, max_size=12)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(keys, values, max_size=6), st.booleans())
def test_yaml_renderer_round_trips(data, with_comments):
    comments = {k: "a note: with # and 'quotes'" for k in data} if with_comments else None
    sections = {k: "section" for k in list(data)[:1]} if with_comments else None
    text = dump(data, comments=comments, sections=sections, header=["header line", "second: line"])
    assert yaml.safe_load(text) == (data or None)
