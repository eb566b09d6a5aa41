"""A task's vocabulary: token strings <-> ids. One vocabulary per task config covers every
trace variant, so checkpoints of different variants share an embedding table layout."""

from __future__ import annotations

import numpy as np

from ..errors import UserError, require
from ..variants import REGISTRY, VARIANT

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"

# Mixtures (traces/suite.py): one model trained on rows of several variants of the same
# instances. The first component's rows are written exactly as its own suite writes them; a row
# of any other component starts `<bos> [component]`, so the model knows which task it is on and
# is evaluated on exactly the first component's prompt. Every task's vocabulary holds these
# tokens, so a mixture and its baseline share one vocabulary (and one model initialisation).
MIX_TOKENS = [f"[{v.name}]" for v in REGISTRY if v.mixable]

# TRELAWNEY's inference modes (`eval --lookahead`); each grammar's `eval_prefix` says which
# tokens a mode forces after the prompt.
EVAL_MODES = ("plain", "model-goal", "given-goal")


def forced_open(variant: str, mode: str) -> bool:
    """Whether eval forces `<T>` after the prompt: False for `plain`; refuses a bad mode, and a
    non-plain mode on a model that never saw <T> spans."""
    require(mode in EVAL_MODES, f"eval lookahead must be plain, model-goal or given-goal, got {mode!r}.")
    if mode == "plain":
        return False
    require(VARIANT[variant].lookahead_spans,
            f"eval lookahead {mode} needs a lookahead suite; {variant} is trained without <T> spans.")
    return True


class Vocab:
    def __init__(self, tokens: list[str]):
        require(len(set(tokens)) == len(tokens), "a vocabulary must not repeat a token.")
        self.tokens = list(tokens)
        self.ids = {t: i for i, t in enumerate(self.tokens)}
        self.pad_id = self.ids[PAD]
        self.bos_id = self.ids[BOS]
        self.eos_id = self.ids[EOS]

    def __len__(self) -> int:
        return len(self.tokens)

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocab) and self.tokens == other.tokens

    def __getitem__(self, token: str) -> int:
        return self.ids[token]

    @property
    def dtype(self):
        return np.uint16 if len(self.tokens) <= 65535 else np.int32

    def decode(self, ids) -> str:
        """Readable text; ids outside the vocabulary show as `<?id>` (never raises)."""
        out = []
        for i in ids:
            i = int(i)
            out.append(self.tokens[i] if 0 <= i < len(self.tokens) else f"<?{i}>")
        return " ".join(out)

    def encode(self, text: str) -> list[int]:
        words = text.split()
        unknown = [w for w in words if w not in self.ids]
        if unknown:
            raise UserError(f"token {unknown[0]!r} is not in the vocabulary.")
        return [self.ids[w] for w in words]

    def to_json(self) -> list[str]:
        return list(self.tokens)
