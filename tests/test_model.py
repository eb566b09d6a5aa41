"""The GPT: presets have the sizes we advertise; KV-cache generation equals plain greedy."""

import pytest
import torch

from retroplan.errors import UserError
from retroplan.models import GPT, PRESETS, GPTConfig, generate


def test_preset_sizes():
    sizes = {name: GPT(GPTConfig(vocab_size=128, block_size=256, **p)).num_params()
             for name, p in PRESETS.items()}
    assert sizes["tiny"] < 200_000
    assert 10e6 < sizes["paper"] < 11.5e6           # 6 x 384, as in Bachmann & Nagarajan
    assert 24e6 < sizes["medium"] < 26.5e6          # the ~25M ceiling
    assert list(sizes.values()) == sorted(sizes.values())


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_kv_cache_generation_equals_generation_without_cache(preset):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=40, block_size=96, **PRESETS[preset]))
    # a trained-looking model: sharpen the logits so greedy paths are long and varied
    with torch.no_grad():
        model.tok_emb.weight.mul_(20)
    prompts = torch.randint(3, 40, (16, 30))
    with_cache = generate(model, prompts, 60, eos_id=2, use_cache=True)
    without = generate(model, prompts, 60, eos_id=2, use_cache=False)
    assert with_cache.shape[1] > 5
    assert torch.equal(with_cache, without)


def test_generation_stops_at_eos_and_pads_after_it():
    torch.manual_seed(1)
    model = GPT(GPTConfig(vocab_size=10, block_size=32, **PRESETS["tiny"]))

    def force(logits, generated):  # row 0 ends at once, row 1 after three tokens
        logits = torch.full_like(logits, -1e9)
        t = generated.shape[1]
        logits[0, 2] = 0
        logits[1, 2 if t >= 3 else 5] = 0
        return logits

    out = generate(model, torch.zeros(2, 4, dtype=torch.long), 20, eos_id=2, logits_hook=force)
    assert out.tolist() == [[2, 2, 2, 2], [5, 5, 5, 2]]


def test_generation_respects_the_context():
    model = GPT(GPTConfig(vocab_size=10, block_size=12, **PRESETS["tiny"]))
    out = generate(model, torch.zeros(3, 8, dtype=torch.long), 100, eos_id=99)
    assert out.shape == (3, 4)
    with pytest.raises(UserError, match="longer than the model's context"):
        model(torch.zeros(1, 13, dtype=torch.long))


def test_bad_model_shapes_are_refused():
    with pytest.raises(UserError, match="multiple of n_head"):
        GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=3, n_embd=64))
