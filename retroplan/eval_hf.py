"""`retroplan eval-hf`: evaluate a local Hugging Face causal LM on a suite, as text.

The model reads each instance's prompt as text (the suite's words separated by spaces, what
`retroplan inspect` prints), optionally after K solved examples of the train split, one per
line, and writes a continuation. The continuation is cut at the first newline and after the
first end-of-sequence word (`<eos>`), split into words (on whitespace; Countdown's grammar also
reads numbers written the usual way, `2494` for the suite's `2 _ 494`, and `99-96=3` without
spaces: `traces.countdown.text_words`) and mapped word by word through the suite's vocabulary;
the ids are then judged by `eval.judge` and counted by `eval.judge_completions`, so every
number means what it means for `retroplan eval`. A word outside the vocabulary makes the
completion a parse failure (judged as far as the words before it go, like a completion cut at
the context). Teacher-forced accuracies are `null` (n = 0): the model's tokens need not be the
suite's words.

`transformers` is an optional extra (`pip install 'retroplan[hf]'`), imported only here, and
nothing is ever downloaded: the model is a folder, or a name already in the local cache.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .device import DEVICE_HELP, resolve_device
from .errors import UserError, require, require_field_types, setting
from .eval import (
    NO_RESULT_SETTINGS,
    folder_word,
    judge,
    judge_completions,
    refuse_another_evaluation,
    setting_parts,
    write_evaluation,
)
from .fsutil import path_for, sha256_file
from .rng import SplitMixPy
from .traces import chance_for, writes
from .traces.suite import Suite, open_suite
from .traces.vocab import EOS
from .version import __version__

MISSING_EXTRA = "eval-hf needs the optional extra: pip install 'retroplan[hf]'"
SHOT_STREAM = 4  # rng stream of the few-shot example choice (rng.py's streams are 1-3)
SHOT_SEPARATOR = "\n"  # between solved examples, and before the prompt

# files of a saved model / tokenizer whose digests go into the identity
MODEL_FILE = re.compile(r"^(config\.json|generation_config\.json|.*\.(safetensors|bin|pt|pth|gguf)"
                        r"|.*\.index\.json)$")
TOKENIZER_FILE = re.compile(r"^(tokenizer.*|special_tokens_map\.json|added_tokens\.json|vocab\..*"
                            r"|merges\.txt|.*\.model|chat_template.*)$")


@dataclass
class HFEvalConfig:
    split: str = setting("test", "the split to evaluate (`retroplan inspect SUITE` lists a suite's)")
    limit: int = setting(0, "evaluate the first N instances of the split (0: every instance)")
    shots: int = setting(0, "solved train-split examples before each prompt, one per line (0: none)")
    seed: int = setting(0, "chooses the examples (and seeds sampling)")
    max_new_tokens: int = setting(0, "model tokens to generate at most (0: the room eval gives a "
                                     "model trained at the suite's context, counted in this "
                                     "tokenizer's tokens)")
    batch_size: int = setting(16, "prompts generated side by side (changes no number)")
    device: str = setting("auto", DEVICE_HELP)
    temperature: float = setting(0.0, "sampling temperature (0: greedy)")
    top_k: int = setting(0, "sample among the k most likely tokens (0: all)")

    def validate(self) -> None:
        require_field_types(self, "eval-hf")
        require(self.device in ("auto", "cpu") or self.device.startswith("cuda"),
                f"eval-hf device must be auto, cpu, cuda or cuda:N, got {self.device!r}.")
        for name in ("limit", "shots", "seed", "max_new_tokens", "top_k"):
            value = getattr(self, name)
            require(value >= 0, f"eval-hf {name} must be a non-negative integer, got {value!r}.")
        require(self.batch_size >= 1,
                f"eval-hf batch_size must be a positive integer, got {self.batch_size!r}.")
        require(math.isfinite(self.temperature) and self.temperature >= 0,
                f"eval-hf temperature must be a finite non-negative number, got {self.temperature!r}.")


def import_transformers():
    """The `transformers` module, or one sentence saying how to install it."""
    try:
        import transformers
    except ImportError:
        raise UserError(MISSING_EXTRA + ".") from None
    return transformers


def resolve_local_model(name: str | os.PathLike) -> Path:
    """A folder, or a name already in the local Hugging Face cache (its snapshot folder);
    never downloads."""
    path = Path(name)
    if path.is_dir():
        return path
    import_transformers()
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(name), local_files_only=True))
    except (OSError, ValueError):
        raise UserError(f"model {str(name)!r} is neither a folder nor a model in the local Hugging "
                        "Face cache, and eval-hf never downloads: save the model to a folder (or "
                        "download it into the cache) first.") from None


def file_digests(folder: Path, pattern: re.Pattern) -> dict[str, str]:
    """{file name: sha256} of the files directly in `folder` whose names match `pattern`."""
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir())
            if p.is_file() and pattern.match(p.name)}


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].rstrip(".") if text else type(exc).__name__


def load_model_and_tokenizer(model_dir: Path, tokenizer_dir: Path, device: torch.device):
    """The causal LM (in eval mode, on `device`) and its tokenizer, from local files only."""
    transformers = import_transformers()
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise UserError(f"{model_dir} holds no causal language model that transformers can load "
                        f"({_first_line(exc)}).") from None
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise UserError(f"{tokenizer_dir} holds no tokenizer that transformers can load "
                        f"({_first_line(exc)}).") from None
    model.to(device)
    model.eval()
    return model, tokenizer


# --------------------------------------------------------------------------- text in and out


def prompt_text(suite: Suite, split, row: int) -> str:
    """A row's prompt as text: the suite's words separated by spaces."""
    return suite.vocab.decode(split.prompt(row))


def solved_example_text(suite: Suite, split, row: int) -> str:
    """A row's prompt and its completion (which ends with `<eos>`) as one line of text."""
    return f"{prompt_text(suite, split, row)} {suite.vocab.decode(split.completion(row))}"


def choose_shots(count: int, shots: int, seed: int, index: int) -> list[int]:
    """`shots` distinct positions in range(count) for the instance of index `index`: a pure
    function of (seed, index), so an instance gets the same examples whatever the limit or
    batch (a partial Fisher-Yates shuffle drawn from `rng.SplitMixPy`)."""
    rng = SplitMixPy(seed, SHOT_STREAM, index, 0)
    moved: dict[int, int] = {}
    chosen = []
    for j in range(shots):
        pick = j + rng.randbelow(count - j)
        chosen.append(moved.get(pick, pick))
        moved[pick] = moved.get(j, j)
    return chosen


def completion_words(text: str, eos_word: str = EOS, split=str.split) -> list[str]:
    """The words of a generated text that are judged: up to the first newline, split into words
    (`split`: on whitespace, or the grammar's `text_words`), and cut after the first `eos_word`
    (which stays: the grammar needs it)."""
    words = split(text.split(SHOT_SEPARATOR, 1)[0])
    return words[: words.index(eos_word) + 1] if eos_word in words else words


def text_splitter(suite: Suite):
    """How the suite's grammar reads text into its words: its `text_words` where it has one
    (Countdown: plain numbers of any size, words without spaces between them), else whitespace."""
    return getattr(suite.grammar, "text_words", str.split)


def judge_text(suite: Suite, instances: dict, i: int, text: str) -> dict:
    """`eval.judge` of a generated text: its words (`completion_words`, read by the grammar's
    `text_splitter`) mapped through the suite's vocabulary. A word outside it makes the
    completion a parse failure, judged as far as the words before it go (they hold no `<eos>`,
    so no plan is read)."""
    ids, unknown = [], None
    for word in completion_words(text, split=text_splitter(suite)):
        if word not in suite.vocab.ids:
            unknown = word
            break
        ids.append(suite.vocab.ids[word])
    verdict = judge(suite, instances, i, ids)
    if unknown is not None:
        reason = f"the word {unknown!r} is not in the suite's vocabulary"
        verdict.update(parse_error=reason, reason=reason)
    return verdict


def record_fields(text: str, model_tokens: int = 0, shots: list[int] | tuple = (), split=str.split) -> dict:
    """A generated text's fields of its record, in `eval`'s layout: `generated` holds the judged
    words (read by `split`, the suite's `text_splitter`), `generated_tokens` counts them
    (`<eos>` included, as eval counts suite tokens); no teacher forcing (null); `output` is the
    text as decoded, `model_tokens` the model's tokens and `shots` the train rows of the
    examples before the prompt."""
    words = completion_words(text, split=split)
    return {"generated": " ".join(words), "lookahead": "plain", "forced": "",
            "generated_tokens": len(words), "logprob": None,
            "tf_token_acc": None, "tf_first_token": None, "tf_exact": None, "tf_deciding_token": None,
            "output": text, "model_tokens": model_tokens, "shots": list(shots)}


def _encode(tokenizer, texts: list[str], add_special_tokens: bool = True) -> list[list[int]]:
    """Token ids of each text; one sentence when the tokenizer cannot encode the suite's words."""
    try:
        ids = tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]
    except Exception as exc:  # tokenizers raise plain Exceptions (a word-level vocab without <unk>)
        raise UserError(f"the tokenizer cannot encode the suite's text ({str(exc).strip()}); "
                        "it must cover the suite's vocabulary.") from None
    unk = tokenizer.unk_token_id  # (GPT-2's is its end token: a real token, no sign of an unknown word)
    if unk is not None and unk not in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        require(not any(unk in row for row in ids),
                f"the tokenizer maps words of the suite's text to its unknown token "
                f"{tokenizer.unk_token!r}; it must cover the suite's vocabulary.")
    return ids


def stop_tokens(model, tokenizer) -> tuple[list[int], list[int], list[str]]:
    """What ends generation: (ids of the `<eos>` word and of a newline where the tokenizer
    writes each as one token: kept in the text; the model's own end-of-sequence ids: dropped
    from it; stop strings for `<eos>` or a newline written as several tokens)."""
    kept, strings = [], []
    for text in (EOS, SHOT_SEPARATOR):
        ids = _encode(tokenizer, [text], add_special_tokens=False)[0]
        if len(ids) == 1:
            kept.append(ids[0])
        elif ids:  # several tokens (none: a tokenizer that drops newlines, which cannot write one)
            strings.append(text)
    own = model.generation_config.eos_token_id
    own = [own] if isinstance(own, int) else list(own or [])
    dropped = [int(t) for t in own + [tokenizer.eos_token_id] if t is not None and t not in kept]
    return kept, sorted(set(dropped)), strings


# --------------------------------------------------------------------------- generation


def default_max_new_tokens(suite: Suite, split, rows, tokenizer) -> int:
    """The room `eval` gives a model trained at the suite's context: the suite's longest row
    minus the shortest evaluated prompt, in suite words, times the most model tokens per word
    of the evaluated rows' reference completions (1 for a word-level tokenizer)."""
    room_words = suite.max_len() - min(int(split.prompt_len[r]) for r in rows)
    references = [suite.vocab.decode(split.completion(r)) for r in rows]
    encoded = _encode(tokenizer, [" " + text for text in references], add_special_tokens=False)
    tokens_per_word = max(len(ids) / max(1, len(text.split())) for ids, text in zip(encoded, references))
    return max(1, math.ceil(room_words * max(1.0, tokens_per_word)))


def generate_texts(model, tokenizer, prompts: list[str], cfg: HFEvalConfig, max_new_tokens: int,
                   device: torch.device, progress: bool = True) -> list[tuple[str, int]]:
    """Per prompt: (the decoded continuation up to its first stop: the `<eos>` word or a newline
    included, the model's own end token left out; model tokens generated, the stop included).
    Prompts are batched by token length, left-padded."""
    transformers = import_transformers()
    kept_ids, dropped_ids, stop_strings = stop_tokens(model, tokenizer)
    if tokenizer.pad_token is None:
        require(tokenizer.eos_token is not None or kept_ids,
                "the tokenizer has no padding token and no end-of-sequence token to pad with.")
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.convert_ids_to_tokens(kept_ids[0])
    tokenizer.padding_side = "left"
    lengths = [len(ids) for ids in _encode(tokenizer, prompts)]
    context = getattr(model.config, "max_position_embeddings", None)
    sampling = cfg.temperature > 0
    decoding = transformers.GenerationConfig(
        do_sample=sampling, temperature=cfg.temperature if sampling else 1.0,
        top_k=cfg.top_k if sampling else None, top_p=1.0, num_beams=1,
        eos_token_id=(kept_ids + dropped_ids) or None, pad_token_id=tokenizer.pad_token_id,
        stop_strings=stop_strings or None)
    if sampling:
        torch.manual_seed(cfg.seed)
    order = sorted(range(len(prompts)), key=lambda k: (lengths[k], k))
    out: list[tuple[str, int]] = [("", 0)] * len(prompts)
    bar = tqdm(total=len(prompts), desc="eval-hf", unit="ex", disable=None if progress else True, leave=False)
    for lo in range(0, len(order), cfg.batch_size):
        chunk = order[lo: lo + cfg.batch_size]
        longest = max(lengths[k] for k in chunk)
        new_tokens = max_new_tokens if context is None else min(max_new_tokens, context - longest)
        require(new_tokens > 0,
                f"prompts of {longest} model tokens{' (examples included)' if cfg.shots else ''} leave "
                f"the model (a context of {context} tokens) no room to write its answer; use fewer "
                "--shots or a model with a longer context.")
        batch = tokenizer([prompts[k] for k in chunk], return_tensors="pt", padding=True,
                          add_special_tokens=True)
        decoding.max_new_tokens = new_tokens
        with torch.no_grad():
            generated = model.generate(input_ids=batch["input_ids"].to(device),
                                       attention_mask=batch["attention_mask"].to(device),
                                       generation_config=decoding,
                                       tokenizer=tokenizer if stop_strings else None)
        for k, row in zip(chunk, generated[:, batch["input_ids"].shape[1]:].tolist()):
            text_end = model_tokens = len(row)
            for j, token in enumerate(row):
                if token in kept_ids or token in dropped_ids:
                    text_end, model_tokens = (j + 1 if token in kept_ids else j), j + 1
                    break
            out[k] = (tokenizer.decode(row[:text_end], skip_special_tokens=False,
                                       clean_up_tokenization_spaces=False), model_tokens)
        bar.update(len(chunk))
    bar.close()
    return out


# --------------------------------------------------------------------------- the evaluation


def identity(model_dir: Path, tokenizer_dir: Path, suite: Suite, cfg: HFEvalConfig) -> dict:
    """Everything the numbers depend on: the model's config and weight files and the
    tokenizer's files (sha256 each), the suite (its meta.json digest), every setting but those
    of `eval.NO_RESULT_SETTINGS`, and the retroplan and transformers versions."""
    return {"model": str(model_dir.resolve()), "model_files": file_digests(model_dir, MODEL_FILE),
            "tokenizer": str(tokenizer_dir.resolve()),
            "tokenizer_files": file_digests(tokenizer_dir, TOKENIZER_FILE),
            "suite_meta_sha256": sha256_file(suite.path / "meta.json"),
            "decoding": {k: v for k, v in asdict(cfg).items() if k not in NO_RESULT_SETTINGS},
            "retroplan_version": __version__,
            "transformers_version": import_transformers().__version__}


def default_out(model_dir: Path, suite: Suite, cfg: HFEvalConfig) -> Path:
    """`eval-hf-MODEL-SUITE-SPLIT` in the working folder, plus a part for every setting that is
    not the default (`-shots2-seed1`, `-limit7`, ...), as `eval` names its hand evaluations."""
    parts = ["eval-hf", folder_word(model_dir.resolve().name), folder_word(suite.path.resolve().name),
             cfg.split]
    return Path("-".join(parts + setting_parts(cfg, HFEvalConfig())))


def evaluate_hf(model: str | os.PathLike, suite_path: str | os.PathLike, cfg: HFEvalConfig | None = None,
                out: str | os.PathLike | None = None, tokenizer: str | os.PathLike | None = None,
                progress: bool = True) -> dict:
    """Generate with a local `transformers` causal LM on the suite's text prompts, judge every
    completion as `retroplan eval` does, and write metrics.json + records.jsonl into `out`
    (default: `default_out`); returns the metrics with `eval_dir`."""
    cfg = cfg or HFEvalConfig()
    cfg.validate()
    import_transformers()
    suite = open_suite(suite_path)
    split = suite.split(cfg.split)
    rows = np.flatnonzero(split.kind == 0)  # revthink: forward questions; a mixture: its first component
    if cfg.limit:
        rows = rows[: cfg.limit]
    require(len(rows) > 0, f"split {cfg.split} of {suite.path} has no rows to evaluate.")
    train, shot_rows = None, np.zeros(0, dtype=np.int64)
    if cfg.shots:
        require("train" in suite.splits, f"--shots needs a train split, and suite {suite.path} has none.")
        train = suite.split("train")
        shot_rows = np.flatnonzero(train.kind == 0)
        require(cfg.shots <= len(shot_rows),
                f"--shots {cfg.shots} asks for more examples than the train split of {suite.path} "
                f"holds ({len(shot_rows)}).")
    model_dir = resolve_local_model(model)
    tokenizer_dir = resolve_local_model(tokenizer) if tokenizer is not None else model_dir
    expected = identity(model_dir, tokenizer_dir, suite, cfg)
    out = Path(out) if out is not None else default_out(model_dir, suite, cfg)
    refuse_another_evaluation(out, expected, "eval-hf")

    device = resolve_device(cfg.device)
    lm, tok = load_model_and_tokenizer(model_dir, tokenizer_dir, device)
    prompts, shots_of = [], {}
    for r in rows:
        index = int(split.index[int(split.instance[r])])
        chosen = [int(shot_rows[j]) for j in choose_shots(len(shot_rows), cfg.shots, cfg.seed, index)]
        examples = [solved_example_text(suite, train, s) for s in chosen]
        prompts.append(SHOT_SEPARATOR.join(examples + [prompt_text(suite, split, int(r))]))
        shots_of[int(r)] = chosen
    max_new_tokens = cfg.max_new_tokens or default_max_new_tokens(suite, split, rows, tok)
    outputs = generate_texts(lm, tok, prompts, cfg, max_new_tokens, device, progress)

    words_of = text_splitter(suite)
    completions = {(int(r), 0): (record_fields(text, model_tokens, shots_of[int(r)], words_of), text)
                   for r, (text, model_tokens) in zip(rows, outputs)}
    records, metrics = judge_completions(suite, split, rows, completions, judge_one=judge_text)
    metrics.update({"split": cfg.split, "suite": path_for(out, suite.path),
                    "model": path_for(out, model_dir), "tokenizer": path_for(out, tokenizer_dir),
                    "task": suite.meta["task"], "variant": suite.name,
                    "task_config": suite.meta["config"], "decoding": asdict(cfg),
                    "max_new_tokens": max_new_tokens, "identity": expected})
    metrics["suite_digest"] = suite.meta.get("meta_sha256")  # the join key of run.json and export cards
    metrics["writes"] = writes(suite.name)
    metrics["chance"] = chance_for(suite.task, suite.config, suite.variant)
    write_evaluation(out, records, metrics)
    return dict(metrics, eval_dir=str(out))
