"""Every figure drawn at the state of early training (models that wrote empty or short streams,
every metric zero, losses that coincide, one logged point), without a warning, and each one
readable: a search tree of one node sits inside its panel, behaviour panels keep their 0..1
scale and their ticks under their bars, the Clever Hans legend is outside the bars, and curves
drawn on top of one another stay distinguishable."""

import warnings

import pytest
from PIL import Image

from retroplan import plots
from retroplan.eval import judge
from retroplan.traces.suite import open_suite

PATHSTAR = {"degree": 2, "path_len": 4, "num_nodes": 20}
VARIANTS = ("optimal", "reverse", "stream")


@pytest.fixture
def figures(monkeypatch):
    """{file stem: the figure} of everything `plots.save` writes while the test runs."""
    drawn = {}
    real_save = plots.save

    def keep(fig, path):
        drawn[path.name] = fig
        fig.canvas.draw()  # lay it out now, so the test can read positions
        return real_save(fig, path)

    monkeypatch.setattr(plots, "save", keep)
    return drawn


def early_rows():
    """results.csv rows of a study stopped after a few steps: every accuracy 0, the model's
    stream metrics missing (it wrote no move), the teacher's present."""
    rows = []
    for variant in VARIANTS:
        row = {"condition": "degree2", "panel": "degree2", "variant": variant, "seed": 0, "n": 40,
               "accuracy": 0.0, "first_step_accuracy": 0.0, "tf_token_accuracy": 0.03,
               "tf_first_token_accuracy": 0.0, "chance": 0.5}
        if variant == "stream":
            row.update({"trace_validity": None, "wandering": None, "premature_backtracks": None,
                        "xi_ut": None, "backtracks_per_trace": 0.0,
                        "teacher_trace_validity": 1.0, "teacher_wandering": 0.0,
                        "teacher_premature_backtracks": 0.0, "teacher_xi_ut": None,
                        "teacher_backtracks_per_trace": 0.6})
        rows.append(row)
    return rows


def test_every_figure_renders_at_early_training_without_a_warning(make_suite, tmp_path, figures):
    suite = open_suite(make_suite("pathstar", "stream", PATHSTAR))
    split = suite.split("test")
    i = int(split.instance[0])
    teacher = judge(suite, split.instances, i, split.completion(0))["behaviour"]
    empty = judge(suite, split.instances, i, [suite.vocab.eos_id])["behaviour"]
    short = judge(suite, split.instances, i, list(split.completion(0)[:3]))["behaviour"]
    rows = early_rows()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Tight layout not applied", empty-data warnings, ...
        plots.accuracy_by_variant(rows, tmp_path / "accuracy")
        plots.learning_curves({"optimal": [(640, 3.80), (1280, 3.72)], "reverse": [(640, 3.80), (1280, 3.72)],
                               "stream": [(1900, 3.81)], "not-logged-yet": []}, tmp_path / "loss")
        plots.learning_curves({}, tmp_path / "loss-empty")
        plots.accuracy_curves({v: {0: [{"step": 2, "supervised_tokens": 640, "val_accuracy": 0.0}]}
                               for v in VARIANTS}, tmp_path / "accuracy_curves")
        plots.clever_hans(rows, tmp_path / "clever_hans")
        plots.accuracy_vs_difficulty([{"variant": v, "key": "path_len", "x": x, "correct": 0, "n": 20}
                                      for v in VARIANTS for x in (3, 4)], tmp_path / "difficulty")
        plots.behaviour_bars(rows, tmp_path / "behaviour")
        plots.trajectory_vs_stream({"stream": [{"behaviour": {"tokens": 0, "expanded": 0}, "correct": False,
                                                "teacher_tokens": 20, "teacher_expanded": 5,
                                                "teacher_correct": True}] * 3}, tmp_path / "trajectories")
        plots.probe_by_layer({v: [[{"layer": k, "value": 0.5, "ci": [0.4, 0.6], "baseline": 0.5,
                                    "control": 0.5} for k in range(3)]] for v in VARIANTS},
                             tmp_path / "probe", chance=0.5)
        plots.show_trace([("teacher", teacher), ("model: no move", empty)], tmp_path / "trace-empty",
                         suptitle="early", label=suite.task.state_label)
        plots.show_trace([("teacher", teacher), ("model: a long verdict " * 6, short)],
                         tmp_path / "trace-short", suptitle="early", label=suite.task.state_label)
    assert {p.stem for p in tmp_path.glob("*.png")} == set(figures)
    assert all((tmp_path / f"{name}.svg").is_file() for name in figures)

    # a one-node tree (an empty stream) sits inside its panel, and the figure is not mostly blank
    for name in ("trace-empty", "trace-short"):
        fig = figures[name]
        model_ax = fig.axes[1]
        (x0, x1), (y0, y1) = model_ax.get_xlim(), model_ax.get_ylim()
        for text in model_ax.texts:
            x, y = text.get_position()
            assert x0 < x < x1 and y0 < y < y1
        width, height = Image.open(tmp_path / f"{name}.png").size
        assert width <= 1.25 * fig.get_figwidth() * 130 and height <= 1.5 * fig.get_figheight() * 130
    assert "(the stream made no move)" in figures["trace-empty"].axes[1].get_title()

    # behaviour: rates on 0..1 (not 0..0.05), the tick under its bars, "no value yet" where none
    behaviour = figures["behaviour"]
    for ax in behaviour.axes:
        assert ax.get_xlim() == (-0.6, 0.6) and list(ax.get_xticks()) == [0]
        assert ax.get_ylim()[1] >= 1.0
    panels = {ax.get_title().split("\n")[0]: ax for ax in behaviour.axes}
    assert not any("no value yet" in t.get_text() for t in panels["premature backtracks"].texts)
    assert any("no value yet" in t.get_text() for t in panels["underthinking ξ_UT"].texts)

    # Clever Hans: the legend is the figure's, below the panels, not inside over the bars
    hans = figures["clever_hans"]
    assert all(ax.get_legend() is None for ax in hans.axes) and len(hans.legends) == 1
    legend_top = hans.legends[0].get_window_extent().y1
    assert all(legend_top <= ax.get_window_extent().y0 for ax in hans.axes)

    # loss: coinciding curves each with their own line style and marker; one point still drawn
    lines = figures["loss"].axes[0].get_lines()
    assert len(lines) == 3
    assert len({(line.get_linestyle(), line.get_marker()) for line in lines}) == 3
    assert all(line.get_marker() not in (None, "None", "") for line in lines)
    assert any("no training loss logged yet" in t.get_text() for t in figures["loss-empty"].axes[0].texts)
