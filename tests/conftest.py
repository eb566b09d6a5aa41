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


def save_tiny_gpt2(suite_path, folder):
    """A random 1-layer GPT-2 and a word-level tokenizer over the suite's words (plus <unk>),
    saved with save_pretrained into `folder` (for `eval-hf`; needs the `hf` extra)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from retroplan.traces.suite import open_suite

    torch.set_num_threads(1)
    vocab = open_suite(suite_path).vocab
    words = vocab.tokens + ["<unk>"]
    word_level = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=word_level, pad_token="<pad>", bos_token="<bos>",
                                        eos_token="<eos>", unk_token="<unk>")
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(words), n_positions=256, n_embd=32, n_layer=1, n_head=2,
                        initializer_range=0.5,  # varied outputs, not one repeated token
                        bos_token_id=vocab.bos_id, eos_token_id=vocab.eos_id, pad_token_id=vocab.pad_id)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return Path(folder)
