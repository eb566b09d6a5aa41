"""`export-model`: a run as a transformers GPTNeoXForCausalLM + word-level tokenizer that computes
the run's logits (max |difference| < 1e-4 in float32) and that `eval-hf` judges exactly as `eval`
judges the run (greedy: the same completions, verdicts and metrics)."""

import json

import pytest
import torch

from retroplan import checkpoint
from retroplan import export_model as em
from retroplan.checkpoint import load_model
from retroplan.cli import main
from retroplan.errors import UserError
from retroplan.eval import EvalConfig, evaluate
from retroplan.eval_hf import HFEvalConfig, evaluate_hf
from retroplan.traces.suite import open_suite
from retroplan.train import TrainConfig, train

transformers = pytest.importorskip("transformers")

PATHSTAR = {"degree": 2, "path_len": 4, "num_nodes": 20}
SIZES = {"train": 300, "val": 20, "test": 40}
JUDGED = ("generated", "generated_tokens", "plan", "parse_error", "correct", "reason", "first_step",
          "optimal", "faithful", "behaviour")


@pytest.fixture(scope="module")
def run(make_suite, tmp_path_factory):
    suite = make_suite("pathstar", "stream", PATHSTAR, sizes=SIZES)
    out = tmp_path_factory.mktemp("run") / "run"
    train(suite, out, TrainConfig(steps=60, preset="tiny", batch_size=16, lr=3e-3, min_lr=3e-4,
                                  warmup_steps=5, log_every=20, checkpoint_every=60, threads=1),
          progress=False)
    return out


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("hf") / "model"
    assert main(["export-model", str(run), "--format", "hf", "--out", str(out)]) == 0
    return out


def test_the_export_computes_the_runs_logits_and_reads_the_suites_text(run, exported):
    torch.manual_seed(0)
    model, meta, _ = load_model(run)
    hf = transformers.AutoModelForCausalLM.from_pretrained(exported, local_files_only=True).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(exported, local_files_only=True)
    assert type(hf).__name__ == "GPTNeoXForCausalLM"
    ids = torch.randint(0, model.cfg.vocab_size, (4, model.cfg.block_size))
    with torch.no_grad():
        difference = (model(ids) - hf(input_ids=ids).logits).abs().max().item()
    assert difference < 1e-4
    suite = open_suite(checkpoint.run_suite(run, meta))
    split = suite.split("test")
    for r in (0, 1, len(split) - 1):
        text = f"{suite.vocab.decode(split.prompt(r))} {suite.vocab.decode(split.completion(r))}"
        assert tokenizer(text)["input_ids"] == suite.vocab.encode(text)  # retroplan's ids, no extra <bos>
        assert tokenizer.decode(suite.vocab.encode(text)) == text
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<bos>", "<eos>", "<pad>")
    description = json.loads((exported / "retroplan.json").read_text())
    assert description["step"] == 60 and description["max_logit_difference"] < 1e-4
    assert description["vocab"] == meta["vocab"]


def test_eval_hf_on_the_export_judges_exactly_as_eval_judges_the_run(run, exported, tmp_path):
    by_eval = evaluate(run, cfg=EvalConfig(batch_size=16), out=tmp_path / "eval", progress=False)
    suite = checkpoint.run_suite(run, checkpoint.read_run(run))
    by_hf = evaluate_hf(exported, suite, HFEvalConfig(batch_size=16), out=tmp_path / "hf", progress=False)
    for key in ("n", "accuracy", "first_step_accuracy", "parse_failures", "behaviour"):
        assert by_hf[key] == by_eval[key], key
    for name, groups in by_eval["by_difficulty"].items():  # all but teacher forcing (eval-hf: none)
        for group, values in groups.items():
            judged = {k: v for k, v in values.items() if not k.startswith("tf_")}
            assert judged == {k: by_hf["by_difficulty"][name][group][k] for k in judged}, (name, group)
    records = [[json.loads(line) for line in (tmp_path / name / "records.jsonl").read_text().splitlines()]
               for name in ("eval", "hf")]
    assert len(records[0]) == len(records[1]) == 40
    for a, b in zip(*records):
        assert {k: a[k] for k in JUDGED} == {k: b[k] for k in JUDGED}
    # not a trivial agreement: the model writes varied text, some of it right at the first step
    assert len({r["generated"] for r in records[0]}) > 5 and by_eval["first_step_accuracy"]["value"] > 0


def test_a_wrong_weight_layout_is_caught_before_anything_is_written(run, tmp_path, monkeypatch):
    real = em.neox_weights

    def unpermuted(model):  # qkv rows as retroplan stores them, not per head as NeoX reads them
        weights = real(model)
        for i, block in enumerate(model.blocks):
            weights[f"gpt_neox.layers.{i}.attention.query_key_value.weight"] = block.attn.qkv.weight.detach()
        return weights

    monkeypatch.setattr(em, "neox_weights", unpermuted)
    with pytest.raises(UserError, match=r"logits differ from the run's by .* nothing was written"):
        em.export_model(run, tmp_path / "bad")
    assert not list(tmp_path.iterdir())


def test_bad_input_gets_one_sentence(run, exported, tmp_path, capsys):
    assert main(["export-model", str(run), "--out", str(exported)]) == 2
    assert "already exists; export-model writes a new folder" in capsys.readouterr().err
    assert main(["export-model", str(run), "--out", str(tmp_path / "m"), "--step", "7"]) == 2
    assert "has no checkpoint at step 7" in capsys.readouterr().err
    with pytest.raises(UserError, match="unknown export-model format 'gguf'"):
        em.export_model(run, tmp_path / "m", fmt="gguf")
    assert not (tmp_path / "m").exists()
