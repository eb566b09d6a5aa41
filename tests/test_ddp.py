"""Training under torchrun (DDP, gloo on CPU): two ranks train one model together."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from retroplan import checkpoint


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["reverse", "optimal+stream"])  # a mixture: parts, no_sync
def test_two_ranks_train_and_checkpoint_one_model(make_suite, tmp_path, variant):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        torchrun = shutil.which("torchrun")
    assert torchrun, "torchrun comes with torch"
    suite = make_suite("pathstar", variant, {"degree": 2, "path_len": 3, "num_nodes": 10})
    run = tmp_path / "run"
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "retroplan.cli", "train",
         str(suite), "--out", str(run), "--preset", "tiny", "--steps", "8", "--batch-size", "8",
         "--checkpoint-every", "4", "--threads", "1"],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("trained") == 1  # only rank 0 reports
    summary = json.loads((run / "final.json").read_text())
    assert summary["steps"] == 8
    weights = load_file(str(checkpoint.latest_dir(run) / "model.safetensors"))
    assert checkpoint.latest_dir(run).name == "step-0000008" and "tok_emb.weight" in weights
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [8]  # logged once (log_every 10), by rank 0 only
