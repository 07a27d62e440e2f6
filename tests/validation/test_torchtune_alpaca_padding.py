"""benchmarks/evidence_scripts/torchtune_alpaca_padding.py: torchtune's row layout and label count, the padding
expectation against brute force, and the git blob id against git itself.

The Llama 3 tokenizer file and the Alpaca data are not in the repository; a character-level stand-in encoder
exercises the layout (the script checks the real tokenizer against Meta's test vectors when it runs)."""

from __future__ import annotations

import itertools
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import load_script

ROOT = Path(__file__).resolve().parents[2]
tap = load_script("benchmarks/evidence_scripts/torchtune_alpaca_padding.py")  # registered: dataclasses look it up


def chars(text: str) -> list[int]:
    """One token per character (ids below the special range)."""
    return [ord(c) for c in text]


def header(role: str) -> int:
    return 1 + len(role) + 1 + len("\n\n")  # <|start_header_id|> role <|end_header_id|> "\n\n"


def test_layout_and_count_follow_torchtune_tokenize_messages():
    """Llama3Tokenizer.tokenize_messages at torchtune 1814feb17 (_tokenizer.py:297-327): BOS, each message as
    header + body.strip() + EOT, EOS; BOS and EOS masked, everything else trains when train_on_input is True."""
    s = {"instruction": "Add 2 and 3.", "input": "", "output": "  5  "}
    prompt = tap.PROMPT_NO_INPUT.format(instruction=s["instruction"]).strip()
    r = tap.torchtune_row(s, chars, max_seq_len=None)
    assert r.prompt == 1 + header("user") + len(prompt) + 1 + header("assistant")
    assert r.response == len("5") + 1 + 1
    assert r.counted == r.length - 2


def test_input_selects_the_input_template():
    s = {"instruction": "Sum.", "input": "2, 3", "output": "5"}
    prompt = tap.PROMPT_INPUT.format(instruction="Sum.", input="2, 3").strip()
    r = tap.torchtune_row(s, chars, max_seq_len=None)
    assert r.prompt == 1 + header("user") + len(prompt) + 1 + header("assistant")


def test_truncation_keeps_max_seq_len_with_eos_masked():
    """truncate() (torchtune/data/_utils.py) cuts to max_seq_len and forces the last token to EOS, its mask to
    True: a cut row counts max_seq_len - 2 tokens."""
    s = {"instruction": "x" * 50, "input": "", "output": "y" * 500}
    full = tap.torchtune_row(s, chars, max_seq_len=None)
    cut = tap.torchtune_row(s, chars, max_seq_len=300)
    assert full.length > 300 and cut.length == 300 and cut.counted == 298
    assert cut.prompt == full.prompt  # the cut falls in the response


def test_a_prompt_past_the_cut_stops_before_the_assistant_message():
    """tokenize_messages breaks out of the message loop once the tokens reach max_seq_len."""
    s = {"instruction": "x" * 400, "input": "", "output": "y"}
    r = tap.torchtune_row(s, chars, max_seq_len=100)
    assert (r.length, r.prompt, r.response, r.counted) == (100, 100, 0, 98)


def test_train_on_input_false_counts_the_assistant_message_only():
    s = {"instruction": "Add 2 and 3.", "input": "", "output": "5"}
    r = tap.torchtune_row(s, chars, max_seq_len=None, train_on_input=False)
    assert r.counted == header("assistant") + 1 + 1  # header, "5", EOT; the final EOS is masked


def test_record_fields_match_brute_force_over_every_order():
    """padding_efficiency = counted / E[processed] over a uniformly random order, batches of 2 padded to their
    longer row; checked over every permutation of a small dataset."""
    rows = [tap.Row(prompt=p, response=q, counted=p + q - 2) for p, q in [(30, 10), (12, 3), (50, 41), (20, 20)]]
    out = tap.summarise(rows, seq=4096, micro_batch=2)
    lengths = [r.length for r in rows]
    perms = list(itertools.permutations(lengths))
    processed = sum(sum(2 * max(p[i:i + 2]) for i in range(0, 4, 2)) for p in perms) / len(perms)
    counted = sum(r.counted for r in rows)
    assert out["d5_processed_positions"] == pytest.approx(processed)
    assert out["record"]["padding_efficiency"] == round(counted / processed, 4)
    assert out["record"]["avg_tokens"] == round(counted / 4, 1)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_blob_id_is_gits_own(tmp_path: Path):
    f = tmp_path / "rows.json"
    f.write_bytes(b'[{"instruction": "a", "input": "", "output": "b"}]\n')
    want = subprocess.run(["git", "hash-object", str(f)], capture_output=True, text=True, check=True).stdout.strip()
    assert tap.git_blob_id(f.read_bytes()) == want


def test_sampler_replay_is_the_batches_of_torch_randperm_seed_0():
    torch = pytest.importorskip("torch")
    lengths = [5, 9, 2, 7, 7, 1, 4]
    counted = [x - 1 for x in lengths]
    g = torch.Generator()
    g.manual_seed(0)
    order = torch.randperm(len(lengths), generator=g).tolist()
    batches = [order[i:i + 2] for i in range(0, 6, 2)]  # the seventh row is the dropped partial batch
    rep = tap.sampler_replay(lengths, counted, micro_batch=2)
    assert rep["batches"] == 3
    assert rep["processed_positions"] == sum(2 * max(lengths[j] for j in b) for b in batches)
    assert rep["counted_tokens"] == sum(counted[j] for b in batches for j in b)


@pytest.mark.parametrize("content,args,message", [
    (None, [], "--data"),  # no such file
    (b"[]", [], "git blob"),  # not tatsu-lab/alpaca's file
    (b"{not json", ["--expect-blob", ""], "not JSON"),
    (b'{"rows": []}', ["--expect-blob", ""], "a JSON array of rows is expected"),
    (b'[{"instruction": "a"}]', ["--expect-blob", ""], "row 0 lacks"),
    (b"[]", ["--expect-blob", "", "--seq", "0"], "must be positive"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys, content, args, message):
    data = tmp_path / "alpaca_data.json"
    if content is not None:
        data.write_bytes(content)
    out = tmp_path / "summary.json"
    code = tap.main(["--data", str(data), "--tokenizer", str(tmp_path / "tokenizer.model"), "--out", str(out), *args])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("torchtune_alpaca_padding: error: ") and message in err
    assert err.count("\n") == 1 and not out.exists()


def test_a_missing_tokenizer_backend_or_file_is_one_line(tmp_path: Path, capsys):
    data = tmp_path / "alpaca_data.json"
    data.write_bytes(b'[{"instruction": "a", "input": "", "output": "b"}]')
    code = tap.main(["--data", str(data), "--tokenizer", str(tmp_path / "missing.model"), "--expect-blob", ""])
    err = capsys.readouterr().err
    try:
        import tiktoken  # noqa: F401
    except ImportError:
        assert "needs tiktoken" in err
    else:
        assert "--tokenizer" in err and "missing.model" in err
    assert code == 2 and err.count("\n") == 1
