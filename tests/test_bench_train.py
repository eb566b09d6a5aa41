"""benchmarks/bench_train.py and benchmarks/gpu_check.py (`make gpu-check`): the GPU check refuses
without a GPU in one sentence, runs at toy sizes with --allow-cpu, and writes its JSON and
markdown; the peak table and the scaled experiment files are right."""

import json
import sys
import tomllib
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_train  # noqa: E402
import gpu_check  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="refuses only where there is no GPU")
def test_gpu_check_refuses_without_a_gpu(capsys, tmp_path):
    assert gpu_check.main(["--json", str(tmp_path / "a.json"), "--md", str(tmp_path / "a.md")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == gpu_check.REFUSAL and err.count(".") == 1
    assert not (tmp_path / "a.json").exists()


def test_gpu_check_smoke_on_cpu_benchmarks(tmp_path):
    out = tmp_path / "gc.json"
    assert gpu_check.main(["--allow-cpu", "--only", "train-paper,generate", "--out", str(tmp_path / "runs"),
                           "--json", str(out), "--md", str(tmp_path / "gc.md")]) == 0
    report = json.loads(out.read_text())
    train = report["train-paper"]
    assert train["trainer_vs_bare"] > 0 and train["widths"] == [26]
    assert report["generate"]["kv_cache"]["cache_vs_no_cache"] > 0
    assert report["goals"] == ["toy sizes on a CPU: no goal is judged"]
    assert "trainer vs bare loop" in (tmp_path / "gc.md").read_text()


@pytest.mark.slow
def test_gpu_check_smoke_on_cpu_every_stage(tmp_path):
    out = tmp_path / "gc.json"
    assert gpu_check.main(["--allow-cpu", "--out", str(tmp_path / "runs"), "--json", str(out),
                           "--md", str(tmp_path / "gc.md")]) == 0
    report = json.loads(out.read_text())
    assert set(gpu_check.STAGES) <= set(report)
    assert {r["variant"] for r in report["study-countdown"]["results"]} == {"optimal", "stream"}
    assert {r["split"] for r in report["study-countdown"]["results"]} == {"test", "test_target"}


def test_mfu_against_a_given_peak(tmp_path):
    result = bench_train.main(["--preset", "tiny", "--steps", "2", "--warmup", "2", "--log-every", "2",
                               "--repeats", "1", "--skip-generate", "--peak-tflops", "1",
                               "--json", str(tmp_path / "b.json")])
    t = result["training"]
    flops = t["model_tflops_per_step"] * 1e12 * t["timed_steps"]
    seconds = t["step_ms"]["bare"] / 1000 * t["timed_steps"]
    assert t["mfu"]["bare"] == pytest.approx(flops / seconds / 1e12, rel=0.01, abs=1e-4)
    assert json.loads((tmp_path / "b.json").read_text())["training"]["mfu"] == t["mfu"]


def test_peak_table_knows_the_cards():
    assert bench_train.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert bench_train.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert bench_train.peak_tflops("NVIDIA H200") == 989.0
    assert bench_train.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert bench_train.peak_tflops("Tesla T4") is None


@pytest.mark.parametrize("toy", [False, True])
def test_scaled_experiments_are_valid_toml_of_what_was_meant(toy, tmp_path):
    from retroplan.experiment_file import load_experiment

    for exp in (gpu_check.scaled_pathstar(1200, toy), gpu_check.scaled_countdown(toy)):
        text = gpu_check.toml_text(exp)
        assert tomllib.loads(text) == exp
        (tmp_path / "e.toml").write_text(text)
        load_experiment(tmp_path / "e.toml")  # the whole file is checked, as `retroplan run` does
