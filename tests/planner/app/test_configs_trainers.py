"""``plan configs --trainer X`` searches only what X can run (each emitter's own ``check``, used by the search as
a filter through :func:`planner.emit.refusal`): over a grid of models x clusters x trainers, every combination
either writes X's files or fails with one line saying that nothing X can run fits (or nothing fits at all)."""

from __future__ import annotations

import itertools
import json

import pytest

from planner.emit import TRAINERS, check_trainer, refusal
from planner.emit.common import Candidate
from planner.search.rank import SearchRequest, search
from profiles.cluster import parse_cluster
from profiles.registry import get_model
from tests.helpers import run

MODELS = ("llama3-8b", "qwen2.5-0.5b", "mixtral-8x7b", "llama3-70b")
CLUSTERS = ("8xA800", "4090", "1xH100", "8xV100", "2x8xH100")
MAIN_FILE = {"hf-deepspeed": "ds_config_hf.json", "hf-fsdp": "accelerate_config.yaml",
             "hf-ddp": "training_args.yaml", "llamafactory": "llamafactory.yaml", "torchtune": "torchtune.yaml",
             "torchtitan": "torchtitan.toml"}


@pytest.mark.parametrize("model, gpus", list(itertools.product(MODELS, CLUSTERS)))
def test_every_trainer_writes_or_says_nothing_fits(model, gpus, tmp_path, capsys):
    outcomes = {}
    for trainer in TRAINERS:
        out = tmp_path / trainer
        code, stdout, err = run(["configs", "--model", model, "--gpus", gpus, "--trainer", trainer,
                                 "--out", str(out), "--json"], capsys)
        if code == 0:
            d = json.loads(stdout)
            assert d["trainers"] == [trainer] and not d["not_expressible"]
            assert (out / MAIN_FILE[trainer]).is_file() and (out / "plan.json").is_file()
        else:
            assert code == 2 and not out.exists(), err
            assert err.count("\n") == 1 and err.startswith("plan configs: error: "), err
            assert ("no plan fits" in err or f"no searched setup passes --trainer {trainer}" in err), err
        outcomes[trainer] = code
    # the grid is not vacuous: something is written wherever the model fits at all
    if model in ("llama3-8b", "qwen2.5-0.5b"):
        assert 0 in outcomes.values()


def test_documented_pick_2_hf_deepspeed_example(tmp_path, capsys):
    """docs and --help: ``plan configs --model llama3-70b --gpus 2x8xH100 --pick 2 --trainer hf-deepspeed``."""
    out = tmp_path / "70b"
    code, stdout, err = run(["configs", "--model", "llama3-70b", "--gpus", "2x8xH100", "--pick", "2", "--trainer",
                             "hf-deepspeed", "--out", str(out), "--json"], capsys)
    assert code == 0, err
    d = json.loads(stdout)
    assert d["plan"]["rank"] == 2 and d["plan"]["setup"]["zero"] > 0 and d["trainers"] == ["hf-deepspeed"]


@pytest.mark.parametrize("trainer", list(TRAINERS))
def test_search_with_a_trainer_ranks_only_what_it_runs(trainer):
    """The filter is the emitters' own check: every ranked plan passes it, and the search says how many
    candidate families it left out."""
    model, cluster = get_model("llama3-8b"), parse_cluster("8xA800")
    req = SearchRequest(admit=lambda s: refusal(trainer, model, cluster, s), admit_label=f"--trainer {trainer}")
    result = search(model, cluster, req)
    assert result.plans
    for p in result.plans:
        check_trainer(trainer, Candidate(model, cluster, p.setup))  # raises if not
    said = any(f"--trainer {trainer} cannot run them" in n for n in result.notes)
    assert said == (result.excluded > 0)
    # the recipe book holds families only some trainers run (torchtune's optimizer in backward, torchtitan's TP and
    # FP8, LLaMA-Factory's BAdam / GaLore): every single trainer leaves some out
    assert result.excluded > 0
    # the filter only removes: the plans it keeps rank as in the unfiltered search (for the HF trainers, whose
    # filter is the sharding alone, one of the keys the search keeps one plan per)
    if not trainer.startswith("hf-"):
        return
    everything = search(model, cluster, SearchRequest(top=100))
    kept = [p.setup for p in everything.plans if refusal(trainer, model, cluster, p.setup) is None]
    assert [p.setup for p in result.plans][:3] == kept[:3]
