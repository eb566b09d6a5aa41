"""`retroplan eval-hf`: a local Hugging Face causal LM is judged on a suite's text prompts by the
same grammar, replay and behaviour metrics as `eval`.

The text round trip is checked on the teacher's own completions (known answer: every one is
correct and judged exactly as its token ids are); the whole path runs on a tiny random GPT-2
with a word-level tokenizer over the suite's vocabulary, built and saved here."""

import json
import sys

import pytest
import torch
from conftest import save_tiny_gpt2

from retroplan.cli import main
from retroplan.errors import UserError
from retroplan.eval import judge, judge_completions, metrics_current
from retroplan.eval_hf import (
    MISSING_EXTRA,
    HFEvalConfig,
    choose_shots,
    completion_words,
    evaluate_hf,
    generate_texts,
    judge_text,
    record_fields,
)
from retroplan.fsutil import sha256_file
from retroplan.traces.suite import open_suite

PATHSTAR = {"degree": 2, "path_len": 4, "num_nodes": 20}
SIZES = {"train": 30, "val": 4, "test": 10}
EVAL_FIELDS = {"row", "sample", "index", "prompt", "reference", "generated", "lookahead", "forced",
               "generated_tokens", "logprob", "tf_token_acc", "tf_first_token", "tf_exact", "plan",
               "parse_error", "correct", "reason", "first_step", "optimal", "faithful", "stream_first_step",
               "tf_deciding_token", "optimal_moves", "teacher_tokens", "teacher_expanded", "behaviour",
               "degree", "path_len"}


@pytest.fixture(scope="module")
def stream_suite(make_suite):
    return make_suite("pathstar", "stream", PATHSTAR, sizes=SIZES)


def teacher_texts(suite, split):
    """{(row, 0): (its record fields, the teacher's completion as text)} for every kind-0 row."""
    rows = [r for r in range(len(split)) if split.kind[r] == 0]
    texts = {(r, 0): suite.vocab.decode(split.completion(r)) for r in rows}
    return rows, {key: (record_fields(text), text) for key, text in texts.items()}


@pytest.mark.parametrize("variant", ["stream", "optimal", "reverse"])
def test_the_teachers_completions_as_text_are_judged_exactly_as_their_token_ids(make_suite, variant):
    suite = open_suite(make_suite("pathstar", variant, PATHSTAR, sizes=SIZES))
    split = suite.split("test")
    rows, texts = teacher_texts(suite, split)
    records, metrics = judge_completions(suite, split, rows, texts, judge_one=judge_text)
    assert metrics["n"] == len(rows) and metrics["accuracy"] == {"value": 1.0, "n": len(rows)}
    assert metrics["parse_failures"]["value"] == 0.0
    ids = {key: (fields, split.completion(key[0])) for key, (fields, _) in texts.items()}
    _, from_ids = judge_completions(suite, split, rows, ids)
    assert metrics == from_ids  # same numbers, behaviour blocks included
    if variant == "stream":
        assert metrics["behaviour"]["trace_validity"]["value"] == 1.0


def test_the_text_is_cut_at_the_first_eos_word_or_newline(stream_suite):
    suite = open_suite(stream_suite)
    split = suite.split("test")
    text = suite.vocab.decode(split.completion(0))
    assert completion_words(text + " 3 7 <eos>") == text.split()
    assert completion_words(text + "\n<bos> 1 2") == text.split()
    assert completion_words("at 1 2\n<eos>") == ["at", "1", "2"]  # a newline first: unfinished
    assert judge_text(suite, split.instances, int(split.instance[0]), text + "\n" + text)["correct"]
    unfinished = judge_text(suite, split.instances, int(split.instance[0]), text.replace(" <eos>", "\n<eos>"))
    assert not unfinished["correct"] and unfinished["parse_error"].startswith("no <eos>")


def test_a_word_outside_the_vocabulary_is_a_parse_failure_judged_as_far_as_it_goes(stream_suite):
    suite = open_suite(stream_suite)
    split = suite.split("test")
    i = int(split.instance[0])
    words = suite.vocab.decode(split.completion(0)).split()
    cut = 3
    verdict = judge_text(suite, split.instances, i, " ".join(words[:cut] + ["banana"] + words[cut + 1:]))
    assert verdict["plan"] is None and not verdict["correct"]
    assert verdict["parse_error"] == verdict["reason"] == "the word 'banana' is not in the suite's vocabulary"
    as_far_as_it_goes = judge(suite, split.instances, i, suite.vocab.encode(" ".join(words[:cut])))
    assert verdict["behaviour"] == as_far_as_it_goes["behaviour"] and not verdict["behaviour"].finished
    assert verdict["behaviour"].tokens > 0


def test_the_examples_are_distinct_and_a_function_of_seed_and_instance():
    assert sorted(choose_shots(10, 10, 0, 3)) == list(range(10))
    assert choose_shots(1000, 5, 7, 42) == choose_shots(1000, 5, 7, 42)
    assert len(set(choose_shots(1000, 5, 7, 42))) == 5
    assert choose_shots(1000, 5, 7, 42) != choose_shots(1000, 5, 8, 42)
    assert choose_shots(1000, 5, 7, 42) != choose_shots(1000, 5, 7, 43)


def test_without_transformers_eval_hf_says_how_to_install_it(stream_suite, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` raises ImportError
    with pytest.raises(UserError, match=r"pip install 'retroplan\[hf\]'"):
        evaluate_hf(tmp_path, stream_suite)
    assert main(["eval-hf", str(tmp_path), str(stream_suite)]) == 2
    assert capsys.readouterr().err == f"retroplan: error: {MISSING_EXTRA}.\n"


# --------------------------------------------------------------------------- with transformers


@pytest.fixture(scope="module")
def tiny_gpt2(stream_suite, tmp_path_factory):
    pytest.importorskip("transformers")
    return save_tiny_gpt2(stream_suite, tmp_path_factory.mktemp("hf") / "tiny-gpt2")


def test_eval_hf_runs_the_whole_path_and_writes_evals_layout(stream_suite, tiny_gpt2, tmp_path, capsys):
    out = tmp_path / "ev"
    argv = ["eval-hf", str(tiny_gpt2), str(stream_suite), "--out", str(out), "--shots", "2",
            "--batch-size", "4"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "pathstar/stream on test (n=10)" in printed and "teacher-forced tokens n/a" in printed
    assert "  model streams: validity" in printed and "  teacher streams: validity 1.000" in printed
    metrics = metrics_current(out)  # records.jsonl is the one metrics.json names
    assert metrics is not None and metrics["n"] == SIZES["test"] == metrics["accuracy"]["n"]
    assert metrics["accuracy"]["value"] <= 0.2  # a random model
    assert metrics["tf_token_accuracy"] == {"value": None, "n": 0}
    assert metrics["teacher_behaviour"]["trace_validity"]["value"] == 1.0
    identity = metrics["identity"]
    assert identity["model_files"]["model.safetensors"] == sha256_file(tiny_gpt2 / "model.safetensors")
    assert set(identity["model_files"]) >= {"config.json", "model.safetensors"}
    assert "tokenizer.json" in identity["tokenizer_files"]
    assert identity["suite_meta_sha256"] == sha256_file(stream_suite / "meta.json")
    assert identity["decoding"]["shots"] == 2 and identity["decoding"]["temperature"] == 0.0
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(records) == metrics["n"]
    for rec in records:
        assert EVAL_FIELDS <= set(rec) and len(rec["shots"]) == 2
        assert rec["generated_tokens"] == len(rec["generated"].split())
    # the same evaluation again may replace itself; another one may not take its folder
    assert main(argv) == 0 and metrics_current(out)["records_sha256"] == metrics["records_sha256"]
    capsys.readouterr()
    assert main(argv[:-4] + ["--shots", "1"]) == 2
    assert "already holds" in capsys.readouterr().err


def test_greedy_generation_is_the_models_own_argmax_continuation(stream_suite, tiny_gpt2):
    """Left-padded batches of prompts of different lengths give exactly what a plain argmax loop
    over each prompt alone gives, cut after <eos>."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2, local_files_only=True)
    suite = open_suite(stream_suite)
    split, train = suite.split("test"), suite.split("train")
    prompts = [suite.vocab.decode(split.prompt(0)),
               suite.vocab.decode(train.row(0)) + "\n" + suite.vocab.decode(split.prompt(1))]
    got = generate_texts(model, tokenizer, prompts, HFEvalConfig(batch_size=2), 12, torch.device("cpu"),
                         progress=False)
    for prompt, (text, model_tokens) in zip(prompts, got):
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        written = []
        with torch.no_grad():
            while len(written) < 12 and (not written or written[-1] != suite.vocab.eos_id):
                written.append(int(model(ids).logits[0, -1].argmax()))
                ids = torch.cat([ids, torch.tensor([[written[-1]]])], dim=1)
        assert text == " ".join(tokenizer.convert_ids_to_tokens(written)) and model_tokens == len(written)


def test_a_model_that_is_not_local_is_one_sentence(stream_suite, tmp_path, capsys):
    pytest.importorskip("transformers")
    with pytest.raises(UserError, match="never downloads"):
        evaluate_hf("nobody-here/no-such-model-xyz", stream_suite, out=tmp_path / "ev")
    assert main(["eval-hf", "nobody-here/no-such-model-xyz", str(stream_suite)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "never downloads" in err
