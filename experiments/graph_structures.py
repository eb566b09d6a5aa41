"""What each `graph` structure gives: dead ends, the start's choice, the teacher DFS's
backtracks as the metrics judge them, distances and lookahead (docs/ARCHITECTURE.md quotes it).

    python experiments/graph_structures.py [N]      # N instances per structure (default 2000)
"""

import sys

import numpy as np

from retroplan.envs import digraph, graph, make_config
from retroplan.events import Event
from retroplan.metrics import analyse_stream
from retroplan.searchers.digraph_search import run_search


def measure(structure: str, n_inst: int) -> None:
    cfg = make_config("graph", {"structure": structure})
    batch = graph.sample_instances(cfg, 0, "train", np.arange(n_inst))
    n = cfg.num_nodes
    dead = succ = succ_dead = two_way = live_lower_in = 0
    for i in range(n_inst):
        e = batch["edges"][i]
        dist = digraph.distances_to_goal(e, batch["goal"][i], n)
        dead += int((dist < 0).sum())
        ss = e[e[:, 0] == batch["start"][i], 1]
        succ += len(ss)
        succ_dead += int((dist[ss] < 0).sum())
        live = [u for u in ss if dist[u] >= 0]
        dead_s = [u for u in ss if dist[u] < 0]
        if live and dead_s:  # one live and one dead successor: does in-degree give it away?
            indeg = np.bincount(e[:, 1], minlength=n)
            two_way += 1
            live_lower_in += int(max(indeg[u] for u in live) < min(indeg[u] for u in dead_s))
    found = run_search(batch, n, cfg.max_distance, "dfs", "random", 0, np.arange(n_inst))
    assert (found["path_len"] > 0).all(), "the teacher DFS missed a goal"
    premature = necessary = 0
    for i in range(n_inst):
        events = [(Event(int(k)), int(p)) for k, p in found["events"][i, : found["n_events"][i]]]
        st = analyse_stream(events, [], digraph.Walk(cfg, batch, i))
        premature += st.premature
        necessary += st.necessary
    backs = premature + necessary
    d = graph.difficulty(cfg, batch)
    print(f"## {structure} ({n_inst} instances, {cfg.to_dict()})")
    print(f"  nodes with R = 0: {dead / (n_inst * n):.3f}; "
          f"start successors with R = 0: {succ_dead / succ:.3f}")
    print(f"  teacher DFS backtracks per instance {backs / n_inst:.2f}, "
          f"premature {premature / max(1, backs):.3f}")
    if two_way:
        print(f"  start with a live and a dead successor: {two_way / n_inst:.3f}; the live one has the "
              f"strictly lower in-degree in {live_lower_in / two_way:.3f} of those")
    print(f"  distance histogram {np.bincount(d['distance']).tolist()}")
    print(f"  lookahead histogram {np.bincount(d['lookahead_depth']).tolist()}")


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    for name in graph.STRUCTURES:
        measure(name, count)
