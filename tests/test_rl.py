"""`retroplan rl` (GRPO with the verifier's reward): the advantage, KL and loss against
hand-computed values, log-probabilities consistent with the sampler, RL lifting sampled pass@1
of a path-star SFT run whose pass@k is well above its pass@1, and the RL run folder working as
a run (eval, probe, show-trace, resume)."""

import json
import math

import pytest
import torch

from retroplan import checkpoint
from retroplan.analysis import show_trace
from retroplan.cli import main
from retroplan.errors import UserError
from retroplan.eval import EvalConfig, evaluate
from retroplan.models import GPT, GPTConfig, generate_with_logprobs
from retroplan.probe import ProbeConfig, probe_run
from retroplan.rl import RLConfig, group_advantages, grpo_loss, k3_kl, pack, rl, token_logprobs
from retroplan.train import TrainConfig, train

# --------------------------------------------------------------------------- hand values


def test_group_advantages_hand_values():
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.5, 0.0, 1.0, 0.5]]))
    # group 0: mean 0.25, sample std sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5
    assert adv[0].tolist() == pytest.approx([0.75 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001])
    assert adv[1].tolist() == [0.0, 0.0, 0.0, 0.0]  # a uniform group teaches nothing
    std = math.sqrt(0.5 / 3)  # group 2: mean 0.5, squares 0 + 0.25 + 0.25 + 0
    assert adv[2].tolist() == pytest.approx([0.0, -0.5 / (std + 1e-4), 0.5 / (std + 1e-4), 0.0])


def test_k3_kl_hand_values():
    logp, ref = torch.log(torch.tensor([0.5, 0.25, 0.3])), torch.log(torch.tensor([0.25, 0.5, 0.3]))
    # exp(d) - d - 1 with d = ref - logp: d = -ln 2 -> 0.5 + ln 2 - 1; d = ln 2 -> 2 - ln 2 - 1
    assert k3_kl(logp, ref).tolist() == pytest.approx([math.log(2) - 0.5, 1 - math.log(2), 0.0], abs=1e-6)
    assert (k3_kl(torch.randn(100), torch.randn(100)) >= 0).all()


def test_grpo_loss_hand_values():
    half, quarter = math.log(0.5), math.log(0.25)
    # completion 0: two tokens, A = +1, policy = old = reference; completion 1: one token, A = -1,
    # policy = old = 0.5, reference 0.25 (KL = ln 2 - 0.5); kl_coef 0.1
    logp = torch.tensor([[half, half], [half, 0.0]], requires_grad=True)
    ref = torch.tensor([[half, half], [quarter, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    loss, kl, clipped = grpo_loss(logp, logp.detach(), ref, torch.tensor([1.0, -1.0]), mask, 0.2, 0.1)
    kl1 = math.log(2) - 0.5
    assert loss.item() == pytest.approx((-1.0 + (1.0 + 0.1 * kl1)) / 2, abs=1e-6)
    assert kl.item() == pytest.approx(kl1 / 3, abs=1e-6) and clipped.item() == 0.0
    loss.backward()  # ratio 1: d loss / d logp = -A / |o| / N on completion tokens, none on padding
    assert logp.grad[0].tolist() == pytest.approx([-0.25, -0.25])
    assert logp.grad[1, 1].item() == 0.0
    # a ratio of 1.5 is clipped to 1.2 for a positive advantage, not for a negative one
    old = torch.log(torch.tensor([[1 / 1.5], [1 / 1.5]]))
    loss, _, clipped = grpo_loss(torch.zeros(2, 1), old, torch.zeros(2, 1), torch.tensor([1.0, -1.0]),
                                 torch.ones(2, 1), 0.2, 0.0)
    assert loss.item() == pytest.approx((-1.2 + 1.5) / 2) and clipped.item() == 1.0


def test_token_logprobs_are_those_of_the_distribution_sampled_from():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=12, block_size=16, n_layer=1, n_head=2, n_embd=16))
    prompts = torch.randint(3, 12, (6, 4))
    gen = torch.Generator().manual_seed(1)
    new, summed = generate_with_logprobs(model, prompts, 8, eos_id=2, temperature=0.7, generator=gen)
    completions = [ids[: ids.index(2) + 1] if 2 in ids else ids for ids in new.tolist()]
    x, mask = pack(prompts.tolist(), completions, pad_id=0)
    with torch.no_grad():
        per_token = token_logprobs(model, x, 0.7)
    assert ((per_token * mask).sum(1)).tolist() == pytest.approx(summed.tolist(), abs=1e-4)


# --------------------------------------------------------------------------- RL on path-star

# degree 2, arms of 2 nodes past the centre: an SFT model that has learnt the format but often
# guesses the arm samples the right plan about 0.4 of the time and some right plan among 8
# samples about 0.9 of the time (measured when this test was written)
PATHSTAR = {"degree": 2, "path_len": 3, "num_nodes": 10}
SAMPLED = EvalConfig(temperature=1.0, samples=8, seed=1, device="cpu")


@pytest.fixture(scope="module")
def sft_run(make_suite, tmp_path_factory):
    suite = make_suite("pathstar", "optimal", PATHSTAR, sizes={"train": 3000, "val": 20, "test": 50})
    out = tmp_path_factory.mktemp("rl") / "sft"
    torch.set_num_threads(1)
    train(suite, out, TrainConfig(preset="tiny", steps=1000, batch_size=32, lr=3e-3, warmup_steps=10,
                                  log_every=100, checkpoint_every=1000, device="cpu"), progress=False)
    return out


def test_rl_lifts_sampled_pass_at_1_of_an_sft_run_whose_pass_at_k_is_far_above_it(sft_run, tmp_path):
    before = evaluate(sft_run, cfg=SAMPLED, out=tmp_path / "before", progress=False)["pass_at_k"]
    assert before["value"][-1] > before["value"][0] + 0.3  # pass@8 well above pass@1: room to elicit
    rl(sft_run, tmp_path / "rl", RLConfig(steps=60, lr=3e-4, device="cpu"), progress=False)
    after = evaluate(tmp_path / "rl", cfg=SAMPLED, out=tmp_path / "after", progress=False)["pass_at_k"]
    assert after["value"][0] > before["value"][0] + 0.05
    log = [json.loads(line) for line in (tmp_path / "rl" / "rl_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 61))
    assert {"reward_mean", "pass_rate", "kl", "completion_tokens", "clipped"} <= set(log[0])
    assert log[0]["kl"] == 0.0 and log[-1]["kl"] > 0.0  # the first update starts at the parent


@pytest.fixture(scope="module")
def stream_run(make_suite, tmp_path_factory):
    suite = make_suite("pathstar", "stream", PATHSTAR, sizes={"train": 200, "val": 10, "test": 20})
    out = tmp_path_factory.mktemp("rl") / "stream-sft"
    train(suite, out, TrainConfig(preset="tiny", steps=40, batch_size=16, log_every=10, device="cpu"),
          progress=False)
    return out


def test_the_rl_run_is_a_run_eval_probe_show_trace_and_resume(stream_run, tmp_path):
    cfg = RLConfig(steps=4, prompts_per_step=2, group_size=4, checkpoint_every=2, device="cpu",
                   reward="verified+rlp")
    whole = tmp_path / "whole"
    rl(stream_run, whole, cfg, progress=False)
    run = json.loads((whole / "run.json").read_text())
    assert (whole / run["parent"]).resolve() == stream_run.resolve() and run["parent_step"] == 40
    assert run["rl"]["reward"] == "verified+rlp" and run["model"] == checkpoint.read_run(stream_run)["model"]
    assert "information_gain" in json.loads((whole / "rl_log.jsonl").read_text().splitlines()[0])
    # resumed after 2 of 4 steps: the same weights as the uninterrupted run (prompts, samples and
    # the EMA baseline all restart where they were)
    part = tmp_path / "part"
    rl(stream_run, part, RLConfig(**{**cfg.__dict__, "steps": 2}), progress=False)
    with pytest.raises(UserError, match="already exists; pass --resume"):
        rl(stream_run, part, cfg, progress=False)
    rl(None, part, cfg, resume=True, progress=False)
    a, _, _ = checkpoint.load_model(whole)
    b, _, _ = checkpoint.load_model(part)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    assert (whole / "rl_log.jsonl").read_text().count("\n") == (part / "rl_log.jsonl").read_text().count("\n")
    m = evaluate(whole, cfg=EvalConfig(limit=5, device="cpu"), progress=False)
    assert m["n"] == 5 and m["step"] == 4
    assert show_trace(whole, 0, "test")[0].is_file()
    probe = probe_run(whole, ProbeConfig(target="arm", limit=20, device="cpu"))
    assert probe["target"] == "arm"


def test_rl_refuses_bad_input_in_one_sentence(stream_run, tmp_path, make_suite):
    with pytest.raises(UserError, match="rl group_size must be at least 2"):
        RLConfig(group_size=1).validate()
    with pytest.raises(UserError, match="rl reward must be one of verified, shaped, verified\\+rlp"):
        RLConfig(reward="accuracy").validate()
    with pytest.raises(UserError, match="rl temperature must be positive"):
        RLConfig(temperature=0.0).validate()
    with pytest.raises(UserError, match="run folder .* does not exist"):
        rl(tmp_path / "nothing", tmp_path / "out", RLConfig(steps=1, device="cpu"), progress=False)
    with pytest.raises(UserError, match="cannot resume .* it is not a run"):
        rl(stream_run, tmp_path / "new", RLConfig(steps=1, device="cpu"), resume=True, progress=False)
    rl(stream_run, tmp_path / "rl", RLConfig(steps=1, prompts_per_step=2, group_size=2, device="cpu"),
       progress=False)
    with pytest.raises(UserError, match="it is an RL run; continue it with retroplan rl"):
        train(checkpoint.run_suite(stream_run, checkpoint.read_run(stream_run)), tmp_path / "rl",
              TrainConfig(preset="tiny", steps=41, batch_size=16, log_every=10, device="cpu"), resume=True)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(UserError, match="exists and is not empty"):
        rl(stream_run, tmp_path / "full", RLConfig(steps=1, device="cpu"), progress=False)


def test_the_rl_command(stream_run, tmp_path, capsys):
    out = tmp_path / "cli-rl"
    assert main(["rl", str(stream_run), "--out", str(out), "--steps", "2", "--prompts-per-step", "2",
                 "--group-size", "2", "--device", "cpu", "--reward", "shaped"]) == 0
    assert "rl " in capsys.readouterr().out
    assert json.loads((out / "run.json").read_text())["rl"]["reward"] == "shaped"
    assert main(["rl", "--out", str(out), "--resume", "--steps", "3"]) == 0  # settings from run.json
    assert json.loads((out / "final.json").read_text())["steps"] == 3
    assert json.loads((out / "run.json").read_text())["rl"]["steps"] == 3
    assert main(["rl", str(stream_run), "--out", str(tmp_path / "x"), "--reward", "nope"]) == 2
    assert "rl reward must be one of" in capsys.readouterr().err


# --------------------------------------------------------------------------- [rl] in a study


def test_the_elicit_study_gives_every_run_an_rl_stage_at_smoke_size(tmp_path):
    """experiments/elicit_pathstar.toml, shrunk with --set overrides to seconds: every SFT run
    gets a RUN-rl folder, the report a before/after table, the stream behaviour and a verdict per
    variant against the baseline; a second run reuses everything."""
    from pathlib import Path

    from retroplan.experiment import run_experiment

    toml = Path(__file__).parent.parent / "retroplan" / "experiments" / "elicit_pathstar.toml"
    small = ["seeds=[0]", "train.steps=20", "sizes.train=120", "sizes.val=8", "sizes.test=10",
             "rl.steps=2", "rl.prompts_per_step=2", "rl.group_size=2", "rl.samples=2"]
    out = tmp_path / "study"
    report = run_experiment(toml, out, progress=False, overrides=small).read_text()
    for variant in ("optimal", "stream", "optimal+reverse"):
        rl_dir = out / "runs" / f"degree2-{variant}-s0-rl"
        assert json.loads((rl_dir / "final.json").read_text())["steps"] == 2
        assert (rl_dir / "eval-rl-sampled" / "metrics.json").is_file()
        assert f"| {variant} | 1 | " in report
    assert "## RL: what GRPO with the verified reward elicits" in report
    assert "| pass@2 SFT | pass@2 SFT+RL | Δpass@2" in report
    assert "backtracks per trace" in report and "Does a variant's SFT leave more" in report
    assert (out / "rl_passk.png").is_file()
    log = (out / "runs" / "degree2-stream-s0-rl" / "rl_log.jsonl").read_bytes()
    again = run_experiment(toml, out, progress=False, overrides=small).read_text()

    def rl_section(text):
        return text[text.index("## RL"): text.index("## Figures")]
    assert rl_section(again) == rl_section(report)
    assert (out / "runs" / "degree2-stream-s0-rl" / "rl_log.jsonl").read_bytes() == log


def test_a_bad_rl_table_is_one_sentence(tmp_path):
    from pathlib import Path

    from retroplan.experiment_file import load_experiment

    toml = Path(__file__).parent.parent / "retroplan" / "experiments" / "elicit_pathstar.toml"
    with pytest.raises(UserError, match="unknown rl setting 'stepz'"):
        load_experiment(toml, ["rl.stepz=3"])
    with pytest.raises(UserError, match="samples must be an integer of at least 2"):
        load_experiment(toml, ["rl.samples=1"])
    with pytest.raises(UserError, match="rl reward must be one of"):
        load_experiment(toml, ['rl.reward="x"'])


def test_the_rl_tables_rates_keep_their_intervals_inside_0_1():
    from retroplan.rl_study import _fmt

    # three seeds this far apart give a t-interval of about [-0.4, 1.1]
    assert _fmt([0.0, 0.35, 0.7]) == "0.350 [0.000, 1.000]"
    assert _fmt([0.2, 0.2, 0.2]) == "0.200"
