"""``plan select``: a ranked, explained table from the catalogue's card facts and the plan search."""

from __future__ import annotations

import json
import time

import pytest

from planner.app.calibration_io import load_calibration_book
from planner.search.rank import SearchRequest, search
from planner.search.select import SelectRequest, select, size_class
from profiles.cluster import parse_cluster
from profiles.registry import all_models, get_model
from tests.helpers import run


def _select_json(argv, capsys):
    code, out, err = run(["select", *argv, "--json"], capsys)
    assert code == 0, err
    return json.loads(out)


def test_4090_chinese_qlora(capsys):
    t0 = time.perf_counter()
    res = _select_json(["--gpus", "1x4090", "--language", "zh", "--method", "qlora"], capsys)
    assert time.perf_counter() - t0 < 30  # the whole catalogue in a few seconds (generous on a shared CPU)
    rows = res["ranked"]
    assert len(rows) + len(res["skipped_no_card"]) == len(all_models())
    eligible = [r for r in rows if r["eligible"]]
    assert eligible and rows[: len(eligible)] == eligible  # requirements met first
    cluster = parse_cluster("1x4090")
    for r in rows:
        m = get_model(r["model"])
        assert r["card"] == m.card.model_dump(mode="json") and r["context"] == m.max_positions
        # the fit is the plan search's own answer
        best = search(m, cluster, SearchRequest(fixed={"method": "qlora", "seq_len": 2048}, top=1,
                                                calibration=load_calibration_book()), False).plans
        assert r["fits"] == bool(best)
        if best:
            assert r["peak_bytes"] == best[0].memory.peak_bytes
            assert r["tokens_per_s"] == pytest.approx(best[0].speed.tokens_per_s)
        if r["eligible"]:
            assert "zh" in m.card.languages and r["fits"]
        else:
            assert r["failed"] and r["reasons"] is not None
        if "zh" not in m.card.languages:
            assert not r["eligible"] and any("'zh' not among" in f for f in r["failed"])
    sizes = [size_class(r["params"]) for r in eligible]
    assert sizes == sorted(sizes, reverse=True)
    # within a size class, a superseded model follows its successor's class-mates
    for a, b in zip(eligible, eligible[1:]):
        if size_class(a["params"]) == size_class(b["params"]):
            assert (a["card"]["superseded_by"] is not None) <= (b["card"]["superseded_by"] is not None)
    names = [r["model"] for r in eligible]
    assert "Llama-3.1-8B" not in names and "Qwen3-8B" in names


def test_table_is_explained(capsys):
    code, out, err = run(["select", "--gpus", "1x4090", "--language", "zh", "--method", "qlora"], capsys)
    assert code == 0, err
    assert "base models for qlora on 1xRTX 4090" in out and "ranked: requirements met first" in out
    assert "supported per its card (https://" in out and "licence" in out


def test_commercial_and_params_filters():
    cluster = parse_cluster("8xA800")
    res = select(list(all_models()), cluster, SelectRequest(method="lora", language="en", commercial=True,
                                                            min_params=5e9, max_params=15e9))
    for c in res.ranked:
        if c.eligible:
            assert c.model.card.commercial in ("open", "conditional") and 5e9 <= c.params <= 15e9
    nc = next(c for c in res.ranked if c.model.name == "Qwen2.5-3B")
    assert not nc.eligible and "licence" in nc.tags and "params" in nc.tags


def test_models_without_a_card_are_skipped():
    models = list(all_models())
    bare = models[0].model_copy(update={"card": None, "name": "No-Card-1B"})
    res = select([*models, bare], parse_cluster("4090"), SelectRequest(method="qlora"))
    # shipped profiles without a card (the issue 13 catalogue additions have none yet) are skipped the same way
    assert res.skipped == [m.name for m in models if m.card is None] + ["No-Card-1B"]
    assert all(c.model.name != "No-Card-1B" for c in res.ranked)


def test_tokens_per_char_with_a_local_tokenizer(tmp_path, capsys):
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from profiles.languages import SAMPLES

    t = Tokenizer(models.BPE(unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    t.train_from_iterator([SAMPLES["zh"], SAMPLES["en"]] * 5, trainers.BpeTrainer(vocab_size=120, special_tokens=["[UNK]"]))
    PreTrainedTokenizerFast(tokenizer_object=t, unk_token="[UNK]").save_pretrained(tmp_path / "tok")
    res = _select_json(["--gpus", "4090", "--language", "zh", "--method", "qlora", "--tokenizer",
                        f"qwen2.5-0.5b={tmp_path / 'tok'}"], capsys)
    row = next(r for r in res["ranked"] if r["model"] == "Qwen2.5-0.5B")
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "tok"), local_files_only=True)
    want = len(tok(SAMPLES["zh"], add_special_tokens=False)["input_ids"]) / len(SAMPLES["zh"])
    assert row["tokens_per_char"] == pytest.approx(want)
    assert res["tokens_per_char_sample"] == "UDHR article 1 (zh)"


@pytest.mark.parametrize("argv, msg", [
    (["--language", "zz"], "unknown language code 'zz'"),
    (["--params", "big"], "parameter band"),
    (["--tokenizer", "qwen2.5-0.5b"], "expected MODEL=PATH"),
    (["--allow-on-request"], "only matters with --commercial"),
    (["--sample-text", "/nonexistent.txt", "--language", "zh"], "no such file"),
])
def test_bad_input_one_line(argv, msg, capsys):
    code, out, err = run(["select", "--gpus", "4090", "--method", "qlora", *argv], capsys)
    assert code == 2 and msg in err and err.count("\n") == 1, err
