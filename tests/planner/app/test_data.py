"""``plan data`` and ``--dataset``: a dataset and a tokenizer built here (no download), counts checked against the
tokenizer itself, padding and packing against brute force, and the plan's time and speed moving with the data."""

from __future__ import annotations

import itertools
import json
import math
import random
from pathlib import Path

import pytest

from planner.engine import datastats as ds
from tests.helpers import run

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

WORDS = ("the a an is of to and in that it for on with as was at by be this from or have not are but what all "
         "were when we there can 人 人 生 而 自 由").split()
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} "
    "{% if m['role'] == 'assistant' %}{{ eos_token }} {% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    """A WordLevel tokenizer with a chat template, built and saved here."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = ["[UNK]", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>", "<pad>"]
    t.train_from_iterator([" ".join(WORDS)], trainers.WordLevelTrainer(special_tokens=specials))
    fast = PreTrainedTokenizerFast(tokenizer_object=t, unk_token="[UNK]", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")
    fast.chat_template = TEMPLATE
    d = tmp_path_factory.mktemp("tok")
    fast.save_pretrained(d)
    return d


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEPLAN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _words(rng, lo, hi):
    return " ".join(rng.choices(WORDS, k=rng.randint(lo, hi)))


def alpaca_rows(n, seed=0, hi=120):
    rng = random.Random(seed)
    return [{"instruction": _words(rng, 2, 30), "input": _words(rng, 0, 5) if i % 3 else "",
             "output": _words(rng, 1, hi), **({"system": _words(rng, 1, 4)} if i % 4 == 0 else {})}
            for i in range(n)]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def load_tok(tok_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)


def chat_len(tok, msgs, gen=False) -> int:
    return len(tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=gen)["input_ids"])


def alpaca_messages(r):
    m = [{"role": "system", "content": r["system"]}] if r.get("system") else []
    q = r["instruction"] + ("\n" + r["input"] if r["input"] else "")
    return m + [{"role": "user", "content": q}, {"role": "assistant", "content": r["output"]}]


# ---- exact token counts against the tokenizer itself ---------------------------------------------------------


def test_alpaca_counts_equal_apply_chat_template(tmp_path, tok_dir, capsys):
    rows = alpaca_rows(40)
    f = write_jsonl(tmp_path / "a.jsonl", rows)
    code, out, err = run(["data", str(f), "--model", "qwen2.5-0.5b", "--tokenizer", str(tok_dir), "--seq", "64",
                          "--json"], capsys)
    assert code == 0, err
    rep = json.loads(out)
    tok = load_tok(tok_dir)
    full = [chat_len(tok, alpaca_messages(r)) for r in rows]
    prompt = [chat_len(tok, alpaca_messages(r)[:-1], gen=True) for r in rows]
    assert rep["format"] == "alpaca" and rep["format_detected"]
    assert rep["rows"] == 40
    assert rep["tokens"] == {"total": sum(full), "prompt": sum(prompt), "response": sum(full) - sum(prompt)}
    # labels: the kept response tokens (train_on_prompt false), every kept token but the first (true)
    kept = [min(x, 64) for x in full]
    assert rep["labels"]["train_on_prompt_true"] == sum(k - 1 for k in kept)
    assert rep["labels"]["train_on_prompt_false"] == sum(max(0, min(f - p, 64 - min(p, 64))) for f, p in zip(full, prompt))
    assert rep["truncation"]["rows"] == sum(x > 64 for x in full)
    assert rep["lengths"]["max"] == max(full)


def test_multiturn_sharegpt_and_openai_and_text(tmp_path, tok_dir):
    from planner.app.data_io import load_counts
    from profiles.registry import get_model

    tok = load_tok(tok_dir)
    model = get_model("qwen2.5-0.5b")
    conv = [{"from": "system", "value": "be a"}, {"from": "human", "value": "the a is"}, {"from": "gpt", "value": "of to and"},
            {"from": "human", "value": "in that"}, {"from": "gpt", "value": "it for on with"}]
    msgs = [{"role": {"human": "user", "gpt": "assistant"}.get(t["from"], t["from"]), "content": t["value"]} for t in conv]
    sg = load_counts(write_jsonl(tmp_path / "s.jsonl", [{"conversations": conv}]), model, str(tok_dir))
    oa = load_counts(write_jsonl(tmp_path / "o.jsonl", [{"messages": msgs}]), model, str(tok_dir))
    assert sg.format == "sharegpt" and oa.format == "openai"
    # responses = each assistant turn: render including it minus render before it (with the generation prompt)
    r1 = chat_len(tok, msgs[:3]) - chat_len(tok, msgs[:2], gen=True)
    r2 = chat_len(tok, msgs) - chat_len(tok, msgs[:4], gen=True)
    for c in (sg, oa):
        assert c.prompt[0] + c.response[0] == chat_len(tok, msgs)
        assert c.response[0] == r1 + r2
    # plain text: the tokenizer's own special tokens plus EOS, every token a response token
    tx = load_counts(write_jsonl(tmp_path / "t.jsonl", [{"text": "the a of"}, {"text": "人 生"}]), model, str(tok_dir))
    assert tx.format == "text" and tx.prompt == [0, 0]
    assert tx.response == [len(tok("the a of")["input_ids"]) + 1, len(tok("人 生")["input_ids"]) + 1]


def test_json_and_parquet_read_the_same(tmp_path, tok_dir):
    from planner.app.data_io import load_counts
    from profiles.registry import get_model

    rows = alpaca_rows(25, seed=5)
    model = get_model("qwen2.5-0.5b")
    a = load_counts(write_jsonl(tmp_path / "a.jsonl", rows), model, str(tok_dir))
    j = tmp_path / "a.json"
    j.write_text(json.dumps(rows), encoding="utf-8")
    b = load_counts(j, model, str(tok_dir))
    assert (a.prompt, a.response) == (b.prompt, b.response)
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    keys = ["instruction", "input", "output", "system"]
    table = pa.table({k: [r.get(k) for r in rows] for k in keys})
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=7)
    c = load_counts(tmp_path / "a.parquet", model, str(tok_dir))
    assert (a.prompt, a.response) == (c.prompt, c.response)


# ---- padding and packing in the report, by brute force ------------------------------------------------------


def test_report_padding_and_packing_by_brute_force(tmp_path, tok_dir, capsys):
    rows = alpaca_rows(7, seed=2, hi=40)
    f = write_jsonl(tmp_path / "small.jsonl", rows)
    code, out, err = run(["data", str(f), "--model", "qwen2.5-0.5b", "--tokenizer", str(tok_dir), "--seq", "48",
                          "--micro-batch", "2,3", "--json"], capsys)
    assert code == 0, err
    rep = json.loads(out)
    tok = load_tok(tok_dir)
    kept = [min(chat_len(tok, alpaca_messages(r)), 48) for r in rows]
    for b in (2, 3):
        perms = list(itertools.permutations(kept))
        padded = sum(ds.padded_tokens_in_order(p, b) for p in perms) / len(perms)
        row = next(x for x in rep["padding"] if x["micro_batch"] == b and x["ordering"] == "random")
        assert row["efficiency"] == pytest.approx(sum(kept) / padded, rel=1e-12)
        assert row["longest_batch_tokens"] == b * max(kept)
    full = [chat_len(tok, alpaca_messages(r)) for r in rows]
    lf = next(x for x in rep["packing"] if x["packer"] == "llamafactory")
    fits = sorted(x for x in full if x <= 48)
    packs = 0  # LLaMA-Factory's knapsack, as its source reads
    while fits:
        space = 48
        while True:
            i = max((k for k, x in enumerate(fits) if x <= space), default=None, key=lambda k: fits[k])
            if i is None:
                break
            space -= fits.pop(i)
        packs += 1
    assert lf["packs"] == packs and lf["dropped_rows"] == sum(x > 48 for x in full)
    assert lf["efficiency"] == pytest.approx(sum(x for x in full if x <= 48) / (packs * 48))


def test_cache_is_used_and_keyed_by_content(tmp_path, tok_dir, cache, capsys):
    f = write_jsonl(tmp_path / "a.jsonl", alpaca_rows(10))
    argv = ["data", str(f), "--model", "qwen2.5-0.5b", "--tokenizer", str(tok_dir), "--json"]
    first = json.loads(run(argv, capsys)[1])
    second = json.loads(run(argv, capsys)[1])
    assert not first["cached"] and second["cached"]
    assert first["tokens"] == second["tokens"]
    assert len(list((cache / "data").glob("*.json"))) == 1
    write_jsonl(f, alpaca_rows(10, seed=9))  # new content, same name: recounted
    third = json.loads(run(argv, capsys)[1])
    assert not third["cached"] and third["tokens"] != first["tokens"]
    assert not json.loads(run([*argv, "--no-cache"], capsys)[1])["cached"]


def test_plot_and_out_write_files(tmp_path, tok_dir, capsys):
    f = write_jsonl(tmp_path / "a.jsonl", alpaca_rows(20))
    base = ["data", str(f), "--model", "qwen2.5-0.5b", "--tokenizer", str(tok_dir)]
    code, out, err = run([*base, "--plot", str(tmp_path / "l.png")], capsys)
    assert code == 0, err
    assert (tmp_path / "l.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, out, err = run([*base, "--out", str(tmp_path / "rep")], capsys)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "rep").iterdir()) == ["lengths.png", "report.json", "report.md"]
    assert json.loads((tmp_path / "rep" / "report.json").read_text())["rows"] == 20


# ---- bad input: one line, exit 2 ------------------------------------------------------------------------------


def _err(argv, capsys):
    code, out, err = run(argv, capsys)
    assert code == 2, (out, err)
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_bad_input_is_one_line(tmp_path, tok_dir, capsys):
    good = write_jsonl(tmp_path / "a.jsonl", alpaca_rows(3))
    tok = ["--model", "qwen2.5-0.5b", "--tokenizer", str(tok_dir)]
    assert "no such file" in _err(["data", str(tmp_path / "missing.jsonl"), *tok], capsys)
    assert "did you mean 'alpaca'" in _err(["data", str(good), *tok, "--format", "alpca"], capsys)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(alpaca_rows(1)[0]) + "\n{not json\n", encoding="utf-8")
    assert "bad.jsonl:2: not a JSON object" in _err(["data", str(bad), *tok], capsys)
    odd = write_jsonl(tmp_path / "odd.jsonl", [{"prompt": "x", "completion": "y"}])
    assert "cannot tell the format" in _err(["data", str(odd), *tok], capsys)
    assert "no tokenizer in" in _err(["data", str(good), "--model", "qwen2.5-0.5b", "--tokenizer", str(tmp_path)], capsys)
    err = _err(["data", str(good), "--model", "qwen2.5-0.5b"], capsys)  # the hub id is not in the cache here
    assert "Qwen/Qwen2.5-0.5B" in err and "--tokenizer PATH" in err
    txt = tmp_path / "a.csv"
    txt.write_text("a,b\n")
    assert "unknown file type" in _err(["data", str(txt), *tok], capsys)
    assert "needs --dataset" in _err(["--model", "qwen2.5-0.5b", "--gpus", "4090", "--tokenizer", str(tok_dir)], capsys)


# ---- planning with the data ----------------------------------------------------------------------------------


def _shape(prompt, response, name="d"):
    from planner.engine.dataset import DatasetShape

    return DatasetShape(name, tuple(prompt), tuple(response))


def test_full_rows_change_nothing():
    """Rows exactly --seq long: no padding and full packs, so evaluate(data=...) gives the plain estimates."""
    from planner.engine.evaluate import evaluate
    from planner.engine.setup import Setup
    from profiles.cluster import parse_cluster
    from profiles.registry import get_model

    m, c = get_model("qwen2.5-0.5b"), parse_cluster("4090")
    data = _shape([100] * 16, [412] * 16)
    for packing in (True, False):
        s = Setup(method="lora", recipe="hf-amp", seq_len=512, micro_batch=4, grad_accum=2, packing=packing)
        with_data, plain = evaluate(m, c, s, data=data), evaluate(m, c, s)
        assert with_data.speed.tokens_per_s == pytest.approx(plain.speed.tokens_per_s)
        assert with_data.memory.peak_bytes == plain.memory.peak_bytes


def test_short_rows_speed_memory_and_time():
    from planner.engine.dataset import data_train_time, steps_per_epoch
    from planner.engine.evaluate import evaluate
    from planner.engine.setup import Setup
    from profiles.cluster import parse_cluster
    from profiles.registry import get_model

    m, c = get_model("qwen2.5-0.5b"), parse_cluster("2x4090")
    rng = random.Random(4)
    prompt = [rng.randint(5, 50) for _ in range(1000)]
    response = [rng.randint(10, 300) for _ in range(1000)]
    data = _shape(prompt, response)
    s = Setup(method="lora", recipe="hf-amp", seq_len=1024, micro_batch=4, grad_accum=2, packing=False)
    plan = evaluate(m, c, s, data=data)
    sp = plan.speed
    pad = data.padding(1024, 4)
    # the GPU processes 4 rows at the mean padded length, not 4 x 1024; useful tokens are the real ones
    at_mean = evaluate(m, c, s.model_copy(update={"seq_len": round(pad.mean_padded_length)})).speed
    assert sp.step_s == pytest.approx(at_mean.step_s)
    assert sp.tokens_per_step == round(4 * 2 * 2 * round(pad.mean_padded_length) * pad.efficiency)
    assert sp.tokens_per_s < at_mean.tokens_per_s
    # memory: the longest micro-batch, 4 rows of the longest row, far below --seq 1024
    longest = max(p + r for p, r in zip(prompt, response))
    mem = plan.memory
    assert mem.peak_bytes == evaluate(m, c, s.model_copy(update={"seq_len": longest})).memory.peak_bytes
    assert mem.peak_bytes < evaluate(m, c, s).memory.peak_bytes and mem.setup == s and plan.setup == s
    # time: real tokens at the real-token rate; steps from the rows
    tt = data_train_time(sp, s, 2, data, epochs=3)
    real = sum(p + r for p, r in zip(prompt, response))
    assert tt.seconds == pytest.approx(3 * real / sp.tokens_per_s)
    assert steps_per_epoch(s, 2, data) == math.ceil(1000 / 16) and tt.optimizer_steps == 3 * 63
    # packing: packs of 1024 at the LLaMA-Factory knapsack's efficiency
    packed = s.model_copy(update={"packing": True})
    sp_p = evaluate(m, c, packed, data=data).speed
    pk = ds.pack_greedy_knapsack([p + r for p, r in zip(prompt, response)], 1024)
    full = evaluate(m, c, packed).speed
    assert sp_p.tokens_per_s == pytest.approx(full.tokens_per_s * pk.efficiency, rel=1e-3)


def test_plan_dataset_changes_speed_and_time(tmp_path, tok_dir, capsys):
    rows = alpaca_rows(200, seed=3, hi=200)
    f = write_jsonl(tmp_path / "a.jsonl", rows)
    base = ["--model", "qwen2.5-0.5b", "--gpus", "4090", "--method", "lora", "--seq", "512", "--no-packing",
            "--micro-batch", "4", "--recipe", "hf-amp", "--loss", "plain", "--checkpointing", "none",
            "--optimizer", "adamw", "--json", "--top", "1"]  # one family, so the two searches compare like with like
    tok = load_tok(tok_dir)
    real = sum(min(chat_len(tok, alpaca_messages(r)), 512) for r in rows)
    code, out, err = run([*base, "--dataset-tokens", str(real)], capsys)
    assert code == 0, err
    plain = json.loads(out)["plans"][0]
    code, out, err = run([*base, "--dataset", str(f), "--tokenizer", str(tok_dir)], capsys)
    assert code == 0, err
    res = json.loads(out)
    withdata = res["plans"][0]
    assert res["dataset"]["rows"] == 200 and res["dataset"]["tokens_after_cutoff"] == real
    assert withdata["speed"]["tokens_per_s"] != plain["speed"]["tokens_per_s"]
    assert withdata["memory"]["per_gpu"]["peak_bytes"] < plain["memory"]["per_gpu"]["peak_bytes"]
    assert withdata["train_time"]["tokens"] == real
    assert withdata["train_time"]["seconds"] == pytest.approx(real / withdata["speed"]["tokens_per_s"])
    ga = withdata["setup"]["grad_accum"]
    assert withdata["train_time"]["optimizer_steps"] == math.ceil(200 / (4 * ga))
    assert any("dynamic padding" in a for a in withdata["speed"]["assumptions"])
    # estimate takes it too
    code, out, err = run(["estimate", "--model", "qwen2.5-0.5b", "--gpus", "4090", "--method", "lora", "--seq", "512",
                          "--no-packing", "--micro-batch", "4", "--json", "--dataset", str(f), "--tokenizer",
                          str(tok_dir)], capsys)
    assert code == 0, err
    est = json.loads(out)
    assert est["dataset"]["rows"] == 200 and est["dataset"]["one_epoch"]["tokens"] == real


def test_configs_with_dataset_size_the_hyper_parameters(tmp_path, tok_dir, capsys):
    import yaml

    rows = alpaca_rows(300, seed=8, hi=150)
    f = write_jsonl(tmp_path / "a.jsonl", rows)
    out = tmp_path / "cfg"
    code, _, err = run(["configs", "--model", "qwen2.5-0.5b", "--gpus", "4090", "--method", "lora", "--seq", "256",
                        "--no-packing", "--micro-batch", "2", "--grad-accum", "4", "--loss", "plain",  # torchtune-able
                        "--dataset", str(f), "--tokenizer",
                        str(tok_dir), "--out", str(out)], capsys)
    assert code == 0, err
    lf = yaml.safe_load((out / "llamafactory.yaml").read_text())
    steps = math.ceil(300 / (2 * 4))  # rows / (micro-batch x accumulation x 1 GPU)
    assert lf["val_size"] == pytest.approx(0.1) and lf["num_train_epochs"] == 3.0
    assert lf["eval_steps"] == math.ceil(steps * 3 / 10)
    tt = yaml.safe_load((out / "torchtune.yaml").read_text())
    assert tt["lr_scheduler"]["num_warmup_steps"] == round(0.03 * steps * 3)
    md = (out / "PLAN.md").read_text()
    assert f"The run: {steps * 3:,} optimizer steps" in md
    assert "dynamic padding" in md and "rows assumed full" not in md and "padded to --seq (worst case)" not in md
