"""The trajectory-vs-stream figure compares model and teacher at a glance (colour by who, fill by
outcome, equal points dodged apart, integer ticks, a readable legend), `retroplan plot
trajectories` draws it for evaluated runs, and `show-trace --pick` finds a row worth drawing.
Records here are written by hand, so every expected value is known."""

import json

import numpy as np
import pytest
from matplotlib.colors import to_rgba

from retroplan import plots
from retroplan.analysis import pick_row
from retroplan.cli import main


def record(row, model, teacher, correct=True, teacher_correct=True, backtracks=0):
    """A stream record: (tokens, states expanded) of the model's stream and of the teacher's."""
    return {"row": row, "sample": 0, "correct": correct, "teacher_correct": teacher_correct,
            "behaviour": {"tokens": model[0], "expanded": model[1], "backtracks": backtracks},
            "teacher_tokens": teacher[0], "teacher_expanded": teacher[1]}


# path-star degree 2 in miniature: both sides at the same two points, as the issue saw it
RECORDS = [record(0, (9, 4), (9, 4)), record(1, (13, 6), (13, 6), correct=False),
           record(2, (9, 4), (13, 6), backtracks=1), record(3, (9, 4), (9, 4)),
           record(4, (17, 7), (13, 6), correct=False, backtracks=2)]


def eval_dir(tmp_path, name="run-a", records=RECORDS, variant="stream"):
    folder = tmp_path / name / "eval-test"
    folder.mkdir(parents=True)
    (folder / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (folder / "metrics.json").write_text(json.dumps({"variant": variant, "split": "test"}))
    return folder


def test_equal_points_of_model_and_teacher_are_drawn_apart():
    rng = np.random.default_rng(0)
    values = [9, 9, 9, 13, 13]
    teacher, model = plots._dodged(values, -0.25, rng), plots._dodged(values, 0.25, rng)
    for v in (9, 13):
        at = np.asarray(values) == v
        assert teacher[at].max() < model[at].min()          # the teacher always left of the model
        assert np.all(np.abs(np.r_[teacher[at], model[at]] - v) < 0.5)  # nearest its own integer
    assert len(set(teacher[np.asarray(values) == 9])) == 3  # jitter: no two points on one spot
    again = plots._dodged(values, -0.25, np.random.default_rng(0))
    assert np.array_equal(teacher, again)                   # seeded: the same figure each time


def test_the_figure_colours_by_who_fills_by_outcome_with_integer_ticks(monkeypatch, tmp_path):
    drawn = {}
    monkeypatch.setattr(plots, "save", lambda fig, path: drawn.setdefault("fig", fig) and [path])
    plots.trajectory_vs_stream({"stream": RECORDS}, tmp_path / "t")
    scatter_ax, diff_ax = drawn["fig"].axes[:2]
    legend = scatter_ax.get_legend()
    assert legend.get_texts()[0].get_fontsize() >= 8
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels == ["teacher, solved (5)", "model, solved (3)", "model, unsolved (2)"]  # no empty entry
    by_label = dict(zip(labels, legend.legend_handles))
    model_solved, model_unsolved = by_label["model, solved (3)"], by_label["model, unsolved (2)"]
    assert np.allclose(model_solved.get_edgecolor()[0], to_rgba(plots.WHO_COLOUR["model"], 0.75))
    assert np.allclose(model_solved.get_facecolor()[0], to_rgba(plots.WHO_COLOUR["model"], 0.75))
    assert len(model_unsolved.get_facecolor()) == 0 or model_unsolved.get_facecolor()[0][3] == 0  # hollow
    assert np.allclose(by_label["teacher, solved (5)"].get_edgecolor()[0],
                       to_rgba(plots.WHO_COLOUR["teacher"], 0.75))
    for ax in (scatter_ax, diff_ax):
        for ticks in (ax.get_xticks(), ax.get_yticks()):
            assert np.all(ticks == np.round(ticks))
    # the per-instance differences model - teacher in states: 0, 0, -2, 0, +1
    assert diff_ax.get_title() == "model more: 1, equal: 3, fewer: 1"


def test_plot_trajectories_draws_one_panel_per_evaluated_run(tmp_path, capsys):
    a = eval_dir(tmp_path, "run-a")
    b = eval_dir(tmp_path, "run-b", RECORDS[:3], variant="backward-stream")
    out = tmp_path / "fig" / "traj.png"
    (tmp_path / "fig").mkdir()
    assert main(["plot", "trajectories", str(a), str(b.parent), "--out", str(out)]) == 0
    assert out.stat().st_size > 10000 and out.with_suffix(".svg").exists()
    assert "wrote" in capsys.readouterr().out
    optimal = eval_dir(tmp_path, "run-c", [{"row": 0, "sample": 0, "correct": True}], variant="optimal")
    assert main(["plot", "trajectories", str(optimal), "--out", str(out)]) == 2
    assert "holds no model and teacher streams" in capsys.readouterr().err
    assert main(["plot", "trajectories", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("pick,row", [("first-failure", 1), ("first-backtrack", 2),
                                      ("first-difference", 2), ("most-states", 4)])
def test_show_trace_pick_names_the_row_its_rule_describes(tmp_path, pick, row):
    assert pick_row(eval_dir(tmp_path), pick) == row


def test_a_pick_that_matches_nothing_or_is_unknown_is_one_sentence(tmp_path, capsys):
    folder = eval_dir(tmp_path, records=[record(0, (9, 4), (9, 4))])
    assert main(["show-trace", str(folder), "--pick", "first-failure"]) == 2
    assert "no row of" in capsys.readouterr().err
    assert main(["show-trace", str(folder), "--pick", "worst"]) == 2
    assert "--pick must be one of first-failure, first-backtrack" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # --index or --pick, one of them
        main(["show-trace", str(folder)])
    assert exit_info.value.code == 2
    assert "one of the arguments --index --pick is required" in capsys.readouterr().err


def test_pick_on_a_suite_reads_the_teachers_streams(make_suite):
    from retroplan.eval import judge
    from retroplan.traces.suite import open_suite

    path = make_suite("graph", "stream", {"num_nodes": 12, "out_degree": 2},
                      sizes={"train": 20, "val": 4, "test": 20})
    row = pick_row(path, "first-backtrack")
    suite = open_suite(path)
    data = suite.split("test")
    backtracks = [judge(suite, data.instances, int(data.instance[r]), data.completion(r))["behaviour"]
                  .backtracks for r in range(row + 1)]
    assert backtracks[-1] > 0 and not any(backtracks[:-1])
    with pytest.raises(Exception, match="needs a model's evaluation"):
        pick_row(path, "first-failure")
