"""The variant registry (retroplan/variants.py) is the one place a variant's facts live: the
tables that used to hold them derive from it, unchanged, and no module compares names."""

import ast
from pathlib import Path

from retroplan import variants
from retroplan.traces import common, countdown, digraphs, vocab
from retroplan.variants import NAMES, REGISTRY, VARIANT, names

PACKAGE = Path(variants.__file__).parent


def test_the_derived_tables_are_the_ones_they_replace():
    # the values of the six former tables (traces/common.py, traces/vocab.py, traces/__init__.py,
    # probe.py, rl.py), pinned: the names' order is the Numba codes and the vocabulary's order
    assert NAMES == common.VARIANTS == ("optimal", "reverse", "revfwd", "stream", "backward-stream",
                                        "revthink", "lookahead", "corrupted")
    assert (common.OPTIMAL, common.REVERSE, common.REVFWD, common.STREAM, common.BACKWARD_STREAM,
            common.REVTHINK, common.LOOKAHEAD, common.CORRUPTED) == tuple(range(8))
    assert common.STREAM_VARIANTS == ("stream", "backward-stream", "corrupted")
    assert countdown.VARIANTS == digraphs.VARIANTS == NAMES
    assert countdown.STREAM_VARIANTS == digraphs.STREAM_VARIANTS == common.STREAM_VARIANTS
    assert vocab.MIX_TOKENS == ["[optimal]", "[reverse]", "[revfwd]", "[stream]", "[backward-stream]",
                                "[lookahead]", "[corrupted]"]
    assert names("mixable") == tuple(NAMES[i] for i in (0, 1, 2, 3, 4, 6, 7))
    assert set(names("forward_first")) == {"optimal", "stream", "revthink", "lookahead", "corrupted"}
    assert names("own_stream") == ("stream", "backward-stream")              # the probe's `live`
    assert set(names("thought")) == {"stream", "backward-stream", "revfwd", "corrupted"}  # RLP
    assert names("backward_search") == ("backward-stream",)
    assert names("foreign_stream") == ("corrupted",)
    assert names("reversed_plan") == ("reverse", "revfwd")
    assert [v.name for v in REGISTRY if not v.forward_plan] == ["reverse"]
    assert names("lookahead_spans") == ("lookahead",) and names("backward_objectives") == ("revthink",)
    assert VARIANT["reverse"].writes == "backward plan (goal to start)"
    assert VARIANT["stream"].cites.startswith("Stream of Search (Gandhi et al. 2024)")


# Comparisons that name a variant on purpose (their source text, so a move between modules
# keeps them), with why: the optimal variant is the baseline, not a fact of the others.
NAMED_ON_PURPOSE = {
    "'optimal' in variants": "a study's default baseline is the optimal variant when it has one",
    "'optimal' not in grammar.VARIANTS": "every grammar writes the baseline, optimal (tasks.Grammar)",
}


def _variant_comparisons(path: Path, root: Path = PACKAGE):
    """(file, line, source) for every comparison with a variant's name in `path`:
    `v == "stream"`, `v in ("stream", ...)`, `"lookahead" in parts`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        consts = [c for side in [node.left, *node.comparators]
                  for c in (side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side])]
        if any(isinstance(c, ast.Constant) and c.value in VARIANT for c in consts):
            yield path.relative_to(root).as_posix(), node.lineno, ast.unparse(node)


def test_no_module_compares_variant_names():
    found = [hit for path in sorted(PACKAGE.rglob("*.py")) if path.name != "variants.py"
             for hit in _variant_comparisons(path) if hit[2] not in NAMED_ON_PURPOSE]
    assert found == [], "ask retroplan/variants.py's facts instead of comparing names: " + repr(found)


def test_the_scan_finds_a_name_comparison(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text('a = variant == "stream"\nb = v in ("reverse", "x")\nc = "optimal" if 1 else 2\n')
    assert list(_variant_comparisons(probe, tmp_path)) == [
        ("probe.py", 1, "variant == 'stream'"), ("probe.py", 2, "v in ('reverse', 'x')")]



def test_a_mixture_has_no_variant_note_of_its_own():
    """Reports ask every study variant for its note, mixtures included: a mixture gets none (its
    components have theirs), as before the registry."""
    assert countdown.variant_note("countdown", "optimal+stream") is None
    assert digraphs.variant_note("pathstar", "optimal+reverse") is None
    assert digraphs.variant_note("pathstar", "reverse") is not None
