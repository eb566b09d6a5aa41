"""`retroplan export-model RUN --format hf --out DIR`: a trained run as a Hugging Face model folder.

retroplan's GPT (models/gpt.py) is, layer for layer, a GPT-NeoX with a few switches set, so the
export is an existing transformers architecture (`GPTNeoXForCausalLM`), loadable by anything that
reads one (`AutoModelForCausalLM`, `generate`, vLLM, lm-eval-harness, TRL) with no custom code:

    retroplan GPT                         GPTNeoXConfig
    pre-norm blocks, x + attn(ln1(x)),    use_parallel_residual=False
      then x + mlp(ln2(x))
    LayerNorm without bias (eps 1e-5)     LayerNorm with bias: bias written as zeros
    MLP up 4x, exact GELU, down, no bias  intermediate_size=4*n_embd, hidden_act="gelu", zero biases
    qkv/proj without bias                 attention_bias=False
    RoPE on the whole head, base 10^4,    rotary_pct=1.0, rotary_emb_base=10000 (NeoX rotates the
      halves (x[:d/2], x[d/2:]) rotated     same halves: no permutation of q/k needed)
    qkv rows: all q, all k, all v         query_key_value rows per head: q_h, k_h, v_h (permuted)
    tied embedding / output head          tie_word_embeddings=True
    final LayerNorm                       final_layer_norm

The tokenizer is word-level over the run's vocabulary (token id = retroplan's id), splitting on
whitespace, so the text `retroplan inspect` prints is what the model reads; `<bos>`, `<eos>` and
`<pad>` are its special tokens. It adds no `<bos>` of its own (the prompts' text starts with it)
and has no unknown token (the vocabulary has none; a word outside it is an error, as in
retroplan). Before anything is written the exported model's logits are compared with the run's
on a sequence of every token id; a difference above `TOLERANCE` (float32) refuses the export.
The folder is built under a temporary name and renamed when complete.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .checkpoint import load_model
from .errors import UserError, require
from .fsutil import atomic_dir, json_text, write_text
from .traces.vocab import BOS, EOS, PAD
from .version import __version__

FORMATS = ("hf",)
TOLERANCE = 1e-4  # max |logit difference| allowed in float32 between the run and its export


def neox_config(model_cfg, vocab):
    """The `GPTNeoXConfig` that computes exactly retroplan's GPT of config `model_cfg`."""
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(
        vocab_size=model_cfg.vocab_size, hidden_size=model_cfg.n_embd,
        num_hidden_layers=model_cfg.n_layer, num_attention_heads=model_cfg.n_head,
        intermediate_size=4 * model_cfg.n_embd, hidden_act="gelu",
        rotary_pct=1.0, rotary_emb_base=10000, max_position_embeddings=model_cfg.block_size,
        layer_norm_eps=1e-5, use_parallel_residual=False, attention_bias=False,
        tie_word_embeddings=True, attention_dropout=0.0, hidden_dropout=0.0,
        bos_token_id=vocab.bos_id, eos_token_id=vocab.eos_id, pad_token_id=vocab.pad_id)


def neox_weights(model) -> dict[str, torch.Tensor]:
    """retroplan's weights under GPT-NeoX's names (`GPTNeoXForCausalLM.state_dict()` keys), with
    zeros for the biases retroplan does not have."""
    cfg = model.cfg
    head = cfg.n_embd // cfg.n_head

    def zeros(n):
        return torch.zeros(n, dtype=model.tok_emb.weight.dtype)

    out = {"gpt_neox.embed_in.weight": model.tok_emb.weight,
           "gpt_neox.final_layer_norm.weight": model.ln_f.weight,
           "gpt_neox.final_layer_norm.bias": zeros(cfg.n_embd),
           "embed_out.weight": model.head.weight}  # tied: the same tensor as embed_in
    for i, block in enumerate(model.blocks):
        p = f"gpt_neox.layers.{i}."
        # retroplan's qkv rows are [q heads | k heads | v heads]; NeoX reads them per head
        qkv = block.attn.qkv.weight.view(3, cfg.n_head, head, cfg.n_embd).transpose(0, 1)
        out.update({
            p + "input_layernorm.weight": block.ln1.weight, p + "input_layernorm.bias": zeros(cfg.n_embd),
            p + "post_attention_layernorm.weight": block.ln2.weight,
            p + "post_attention_layernorm.bias": zeros(cfg.n_embd),
            p + "attention.query_key_value.weight": qkv.reshape(3 * cfg.n_embd, cfg.n_embd),
            p + "attention.dense.weight": block.attn.proj.weight,
            p + "mlp.dense_h_to_4h.weight": block.mlp.up.weight,
            p + "mlp.dense_h_to_4h.bias": zeros(4 * cfg.n_embd),
            p + "mlp.dense_4h_to_h.weight": block.mlp.down.weight,
            p + "mlp.dense_4h_to_h.bias": zeros(cfg.n_embd),
        })
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def word_level_tokenizer(vocab):
    """A `PreTrainedTokenizerFast` over the vocabulary's words (id = retroplan's id)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab.tokens)}))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=words, bos_token=BOS, eos_token=EOS,
                                   pad_token=PAD, clean_up_tokenization_spaces=False)


def build_hf_model(model, vocab):
    """The `GPTNeoXForCausalLM` (float32, eval mode) computing `model`'s logits."""
    from transformers import GPTNeoXForCausalLM

    torch.manual_seed(0)  # the random init is overwritten; seeded so nothing depends on it
    hf = GPTNeoXForCausalLM(neox_config(model.cfg, vocab))
    weights = neox_weights(model.float())
    own = hf.state_dict()
    # the installed transformers names the head `embed_out` (4.x) or `lm_head` (5.x)
    head_name = next(k for k in ("embed_out.weight", "lm_head.weight") if k in own)
    weights[head_name] = weights.pop("embed_out.weight")
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    require(not missing and not unexpected,
            f"this transformers' GPTNeoX has other parameter names than export-model knows "
            f"(missing {missing[:3]}, unknown {unexpected[:3]}).")
    hf.load_state_dict(weights, strict=True)
    hf.tie_weights()
    return hf.eval()


def max_logit_difference(model, hf, ids: torch.Tensor) -> float:
    """max |logits(run) - logits(export)| over every position of `ids` (B, T), in float32."""
    with torch.no_grad():
        return float((model.float()(ids) - hf(input_ids=ids).logits).abs().max())


def check_ids(model, vocab) -> torch.Tensor:
    """A (1, T) sequence for the export check: `<bos>` then every token id in turn, up to the
    model's context."""
    length = min(model.cfg.block_size, len(vocab) + 1)
    ids = [vocab.bos_id] + [(k % len(vocab)) for k in range(length - 1)]
    return torch.tensor([ids], dtype=torch.long)


def model_card(run_dir: Path, run: dict, step: int, difference: float) -> str:
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(library_name="transformers", license="mit",
                         tags=["retroplan", "planning", "gpt_neox"], pipeline_tag="text-generation")
    task, variant = run.get("task"), run.get("variant")
    body = [
        f"# retroplan {task} / {variant} (step {step})",
        "",
        f"A retroplan run (`{run_dir.name}`) exported by retroplan {__version__} as a GPT-NeoX "
        "causal LM with a word-level tokenizer over the run's vocabulary. Its logits equal the "
        f"run's (max |difference| {difference:.1e} in float32 on a check sequence).",
        "",
        "Prompts are the suite's text as `retroplan inspect` prints it (words separated by "
        "spaces, starting with `<bos>`); the model writes its answer and `<eos>`.",
        "",
        "```",
        "retroplan eval-hf THIS_FOLDER SUITE   # judged as `retroplan eval` judges the run",
        "```",
        "",
        "`retroplan.json` holds the run's description (task, variant, suite digest, model and "
        "training settings, vocabulary).",
        "",
    ]
    return str(ModelCard("---\n" + data.to_yaml() + "\n---\n\n" + "\n".join(body)))


def export_model(run_dir: str | os.PathLike, out: str | os.PathLike, fmt: str = "hf",
                 step: int | None = None) -> dict:
    """Write the run's latest checkpoint (or its kept checkpoint at `step`) as the new folder
    `out`: config.json, model.safetensors, generation_config.json, the tokenizer files,
    README.md (a model card) and retroplan.json. Returns {out, step, max_logit_difference}."""
    require(fmt in FORMATS, f"unknown export-model format {fmt!r}; allowed: {', '.join(FORMATS)}.")
    out = Path(out)
    require(not (out.exists() or out.is_symlink()),
            f"{out} already exists; export-model writes a new folder there, so choose another --out.")
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise UserError("export-model needs the optional extra: pip install 'retroplan[hf]'.") from None
    from .traces.vocab import Vocab

    run_dir = Path(run_dir)
    model, run, step = load_model(run_dir, "cpu", step=step)
    vocab = Vocab(run["vocab"])
    hf = build_hf_model(model, vocab)
    difference = max_logit_difference(model, hf, check_ids(model, vocab))
    require(difference <= TOLERANCE,
            f"the exported model's logits differ from the run's by {difference:.2e} (allowed "
            f"{TOLERANCE:.0e}); this transformers version computes GPT-NeoX differently, so nothing "
            "was written.")
    hf.generation_config.eos_token_id = vocab.eos_id
    hf.generation_config.bos_token_id = vocab.bos_id
    hf.generation_config.pad_token_id = vocab.pad_id
    with atomic_dir(out) as tmp:
        hf.save_pretrained(tmp)
        word_level_tokenizer(vocab).save_pretrained(tmp)
        description = {"run": str(run_dir.resolve()), "step": step, "exported_by": f"retroplan {__version__}",
                       "max_logit_difference": difference, "tolerance": TOLERANCE,
                       **{k: run.get(k) for k in ("task", "variant", "suite_meta_sha256", "model", "vocab")}}
        write_text(tmp / "retroplan.json", json_text(description) + "\n")
        write_text(tmp / "README.md", model_card(run_dir, run, step, difference))
    return {"out": str(out), "step": step, "max_logit_difference": difference}
