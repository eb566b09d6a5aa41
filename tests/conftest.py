import os
from pathlib import Path

import pytest

os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".numba_cache"))


@pytest.fixture(scope="session")
def make_suite(tmp_path_factory):
    """Generate (once per session) a small suite for a task/variant/config."""
    from retroplan.traces.suite import SuiteSpec, generate_suite

    made = {}

    def make(task="pathstar", variant="optimal", config=None, sizes=None, seed=0, options=None):
        config = config or {}
        sizes = sizes or {"train": 300, "val": 40, "test": 60}
        key = (task, variant, tuple(sorted(config.items())), tuple(sorted(sizes.items())), seed,
               tuple(sorted((options or {}).items())))
        if key not in made:
            out = tmp_path_factory.mktemp("suite") / f"{task}-{variant}"
            spec = SuiteSpec(task=task, variant=variant, config=config, sizes=sizes, seed=seed,
                             options=options or {})
            made[key] = generate_suite(spec, out, progress=False)
        return made[key]

    return make
