"""The deciding token (issue 20, 2d): the first completion token the prompt and the grammar do
not fix, per task and variant (`deciding_index`), and its teacher-forced accuracy in eval."""

import numpy as np
import pytest
import torch

from retroplan.eval import deciding_positions, summarize, teacher_forced
from retroplan.models import GPTConfig
from retroplan.traces import countdown as cd_grammar
from retroplan.traces import digraphs
from retroplan.traces.suite import open_suite

PATHSTAR = {"degree": 3, "path_len": 4, "num_nodes": 30}
SIZES = {"train": 20, "val": 4, "test": 12}


def node(t: int) -> int:
    return int(t) - digraphs.NODE0


@pytest.mark.parametrize("variant", ["optimal", "revthink", "reverse", "revfwd", "stream",
                                     "backward-stream", "corrupted", "lookahead"])
def test_pathstar_deciding_token_is_the_first_token_the_prompt_does_not_fix(make_suite, variant):
    options = {"lookahead_p": 1.0} if variant == "lookahead" else None
    suite = open_suite(make_suite("pathstar", variant, PATHSTAR, SIZES, options=options))
    split = suite.split("test")
    for r in range(len(split)):
        completion = split.completion(r).tolist()
        i = int(split.instance[r])
        plan = split.instances["plan"][i].tolist()
        j = digraphs.deciding_index(variant, completion, suite.vocab)
        if variant in ("optimal", "revthink"):
            assert j == 1 and node(completion[j]) == plan[1]        # the first move
        elif variant == "lookahead":                                # p1, outside the <T> span
            assert node(completion[j]) == plan[1]
            assert completion[:j].count(digraphs.T_OPEN) == completion[:j].count(digraphs.T_CLOSE)
        elif variant in ("reverse", "revfwd"):
            assert j == 1 and node(completion[0]) == plan[-1] and node(completion[j]) == plan[-2]
        elif variant == "stream":   # `at s x`: the search's first move, a successor of the start
            assert j == 2 and completion[0] == digraphs.AT and node(completion[1]) == plan[0]
            edges = split.instances["edges"][i]
            assert node(completion[j]) in edges[edges[:, 0] == plan[0], 1].tolist()
        elif variant == "backward-stream":   # `at g x`: the goal's predecessor
            assert j == 2 and node(completion[1]) == plan[-1] and node(completion[j]) == plan[-2]
        elif variant == "corrupted":   # the plan's first move after the last `;`
            semi = len(completion) - 1 - completion[::-1].index(digraphs.SEMI)
            assert j == semi + 2 and node(completion[j]) == plan[1]


def test_a_plan_without_a_move_has_no_deciding_token(make_suite):
    vocab = open_suite(make_suite("pathstar", "optimal", PATHSTAR, SIZES)).vocab
    start = digraphs.NODE0 + 5
    assert digraphs.deciding_index("optimal", [start, vocab.eos_id], vocab) is None
    assert digraphs.deciding_index("stream", [digraphs.AT, start, vocab.eos_id], vocab) is None
    assert digraphs.deciding_index("corrupted", [digraphs.AT, start, vocab.eos_id], vocab) is None


@pytest.mark.parametrize("variant,text,word", [
    ("optimal", "99 - 96 = 3 , 63 / 3 = 21 , 12 + 21 = 33 <eos>", "99"),
    ("lookahead", "<T> 12 + 21 = 33 </T> 99 - 96 = 3 , 63 / 3 = 21 , 12 + 21 = 33 <eos>", "99"),
    ("reverse", "33 = 12 + 21 , 21 = 63 / 3 , 3 = 99 - 96 <eos>", "12"),
    ("stream", "at 12 63 96 99 try 99 - 96 = 3 : 12 63 3 go 12 63 3 <eos>", "99"),
    ("backward-stream", "at 12 63 96 99 -> 33 try 33 = 12 + 21 : 63 96 99 -> 21 <eos>", "12"),
    ("corrupted", "at 1 2 3 4 try 4 - 3 = 1 : 1 1 2 ; 99 - 96 = 3 , 63 / 3 = 21 , 12 + 21 = 33 <eos>", "99"),
])
def test_countdown_deciding_token_by_hand(make_suite, variant, text, word):
    vocab = open_suite(make_suite("countdown", "optimal", {}, SIZES)).vocab
    ids = vocab.encode(text)
    j = cd_grammar.deciding_index(variant, ids, vocab)
    assert vocab.tokens[ids[j]] == word
    if variant == "corrupted":   # the 99 after `;`, not the 4 tries before it
        assert vocab.tokens[ids[j - 1]] == ";"


class CopiesButTheDecision(torch.nn.Module):
    """A fake model for teacher forcing: at every position it predicts the row's true next token
    (it reads ahead, which no causal model can) except at the position right after `=`, the
    start node, where it predicts `<pad>`: right on the first token, wrong on the deciding one."""

    def __init__(self, vocab, block_size: int):
        super().__init__()
        self.cfg = GPTConfig(vocab_size=len(vocab), block_size=block_size)
        self.vocab_size, self.pad_id, self.eos_id = len(vocab), vocab.pad_id, vocab.eos_id

    def forward(self, x):
        nxt = torch.cat([x[:, 1:], torch.full_like(x[:, :1], self.pad_id)], dim=1)
        nxt = torch.where((nxt == self.pad_id) & (x != self.pad_id), self.eos_id, nxt)  # the row's end
        after_eq = torch.zeros_like(x, dtype=torch.bool)
        after_eq[:, 1:] = x[:, :-1] == digraphs.EQ
        nxt = torch.where(after_eq, torch.full_like(nxt, self.pad_id), nxt)
        return torch.nn.functional.one_hot(nxt, self.vocab_size).float()


def test_teacher_forced_deciding_token_tells_the_copy_from_the_choice(make_suite):
    suite = open_suite(make_suite("pathstar", "optimal", PATHSTAR, SIZES))
    split = suite.split("test")
    rows = np.arange(len(split))
    positions = deciding_positions(suite, split, rows)
    assert positions.tolist() == split.prompt_len[rows].tolist()   # the start node after `=`
    model = CopiesButTheDecision(suite.vocab, suite.max_len())
    tf = teacher_forced(model, suite, split, rows, 5, torch.device("cpu"))
    assert tf[:, 2].tolist() == [1] * len(rows)      # the first token (a copy of the start): right
    assert tf[:, 4].tolist() == [0] * len(rows)      # the first move: wrong
    assert (tf[:, 1] - tf[:, 0]).tolist() == [1] * len(rows)   # and nothing else wrong
    records = [{"correct": False, "first_step": False, "optimal": False, "faithful": None,
                "stream_first_step": None, "parse_error": None, "optimal_moves": 3, "plan": [0],
                "tf_token_acc": 0.5, "tf_first_token": True, "tf_exact": False,
                "tf_deciding_token": d, "generated_tokens": 4} for d in (False, True, None)]
    block = summarize(records, [])
    assert block["tf_first_token_accuracy"] == {"value": 1.0, "n": 3}
    assert block["tf_deciding_token_accuracy"] == {"value": 0.5, "n": 2}   # None: no such token
