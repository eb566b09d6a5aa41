"""One line on stderr when Numba starts compiling retroplan's kernels, so a first run does not
look hung.

retroplan's kernels are `@njit(cache=True)`: the first call of each compiles it (on a loaded
2-core machine a Countdown stream suite's first `generate` spent most of its 20 minutes there)
and writes it to Numba's cache, from which later runs load it in a fraction of the time.
`install()` registers a listener for Numba's documented `numba:compile` event, which Numba
triggers only when it really compiles (a kernel loaded from the cache triggers none). At the
first compilation of a retroplan kernel in the process it prints, once:

    retroplan: compiling Numba kernels (first run only; minutes on a slow or busy machine),
    cached in DIR for later runs

So nothing is printed, and nothing is checked, when the cache is warm; and `retroplan
--version`, which never imports Numba, never installs it.
"""

from __future__ import annotations

import os
import sys

_state = {"installed": False, "printed": False, "stream": None}
PREFIX = "retroplan: compiling Numba kernels"  # how the notice starts (tests tell it from an error)


def _notice(dispatcher) -> str:
    cache = os.environ.get("NUMBA_CACHE_DIR") or getattr(getattr(dispatcher, "_cache", None),
                                                         "_cache_path", None)
    where = f"cached in {cache}" if cache else "cached by Numba"
    return f"{PREFIX} (first run only; minutes on a slow or busy machine), {where} for later runs"


def install(stream=None) -> None:
    """Print the notice (to `stream`, default stderr) at the first real compilation of a
    retroplan kernel in this process. Idempotent."""
    _state["stream"] = stream
    if _state["installed"]:
        return
    from numba.core import event

    class CompileNotice(event.Listener):
        def on_start(self, ev):
            dispatcher = (ev.data or {}).get("dispatcher")
            module = getattr(getattr(dispatcher, "py_func", None), "__module__", "") or ""
            if _state["printed"] or not module.startswith("retroplan."):
                return
            _state["printed"] = True
            print(_notice(dispatcher), file=_state["stream"] or sys.stderr, flush=True)

        def on_end(self, ev):
            pass

    event.register("numba:compile", CompileNotice())
    _state["installed"] = True
