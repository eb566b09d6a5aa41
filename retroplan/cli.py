"""`retroplan` command line. Every user mistake ends in one sentence and a non-zero exit."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from .errors import UserError
from .version import __version__

EXIT_USER_ERROR = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one sentence, no usage dump
        self.exit(EXIT_USER_ERROR, f"retroplan: error: {message}.\n")


def _add_dataclass_flags(parser, cls, prefix: str = "", skip=()) -> None:
    """A --flag per dataclass field (defaults None: only what the user gives is passed on); its
    help is the field's own documentation (`errors.setting`) and its default."""
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = f.type if isinstance(f.type, type) else {"int": int, "float": float, "str": str,
                                                         "bool": bool}.get(str(f.type), str)
        text = f"{f.metadata['help']} (default {f.default})".replace("%", "%%")  # argparse's escape
        if kind is bool:
            parser.add_argument(flag, dest=prefix + f.name, action=argparse.BooleanOptionalAction,
                                default=None, help=text)
        else:
            parser.add_argument(flag, dest=prefix + f.name, type=kind, default=None,
                                metavar=f.name.upper(), help=text)


def _given(args, cls, prefix: str = "", skip=()) -> dict:
    return {f.name: getattr(args, prefix + f.name) for f in dataclasses.fields(cls)
            if f.name not in skip and getattr(args, prefix + f.name, None) is not None}


def step_list(text: str) -> list[int]:
    """A comma-separated list of step numbers (`--keep-steps 100,500`)."""
    return [int(part) for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    from .envs import TASKS
    from .errors import help_of
    from .eval import EvalConfig
    from .eval_hf import HFEvalConfig
    from .probe import ProbeConfig
    from .traces import GRAMMARS
    from .train import TrainConfig

    p = _Parser(prog="retroplan", description=__doc__)
    p.add_argument("--version", action="version", version=f"retroplan {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    g = sub.add_parser("generate", help="generate a suite (one task config, one trace variant)")
    gsub = g.add_subparsers(dest="task", required=True, metavar="TASK", parser_class=_Parser)
    for name, task in TASKS.items():
        t = gsub.add_parser(name, help=(task.__doc__ or "").strip().splitlines()[0])
        t.add_argument("--variant", required=True,
                       help="the trace format: " + ", ".join(GRAMMARS[name].VARIANTS) + ", or a "
                            "mixture a+b+... (`retroplan list`); `retroplan inspect` says what it writes")
        t.add_argument("--out", required=True, help="new folder for the suite")
        t.add_argument("--seed", type=int, default=0,
                       help="seeds every instance and trace (instance i of a split is a function of "
                            "the seed, the split and i alone) (default 0)")
        for split in task.SPLITS:
            t.add_argument(f"--{split.replace('_', '-')}", dest=f"size_{split}", type=int,
                           default=None, metavar="N",
                           help=f"instances in the {split} split (default {task.DEFAULT_SIZES[split]})")
        t.add_argument("--shard", default=None, metavar="I/N", help="generate piece I of N only")
        _add_dataclass_flags(t, task.Config, prefix="task_")
        _add_dataclass_flags(t, GRAMMARS[name].Options, prefix="opt_")

    i = sub.add_parser("inspect", help="print a suite's summary and some rows as text")
    i.add_argument("suite", help="a suite folder (made by `retroplan generate`)")
    i.add_argument("--split", default=None, help="only this split (default: every split)")
    i.add_argument("--rows", type=int, default=3, help="rows to show per split (default 3)")
    i.add_argument("--context", type=int, default=0, metavar="N",
                   help="report how many rows a context of N tokens would truncate (default: longest row)")

    e = sub.add_parser(
        "export", help="write a suite's splits as a dataset folder (Parquet, JSONL or SoS files)",
        description="Write a suite as a new dataset folder: one file per split (data/train-00000-of-"
                    "00001.parquet, data/validation-..., ...; `val` is named `validation`), vocab.json "
                    "and a dataset card README.md whose YAML header holds the provenance, so "
                    "datasets.load_dataset('parquet', data_dir=OUT) returns the splits. --format sos: "
                    "one Stream-of-Search data file per split (train.json, val.json, val_target.json, ...).")
    e.add_argument("suite", help="a suite folder (made by `retroplan generate`)")
    e.add_argument("--format", choices=("jsonl", "parquet", "sos"), default="jsonl",
                   help="jsonl or parquet: one row per example; sos: the fields and text of the "
                        "Stream-of-Search data files (countdown) (default jsonl)")
    e.add_argument("--out", required=True, help="new folder for the dataset (must not exist, or be empty)")
    e.add_argument("--split", default=None, help="only this split (default: all)")
    e.add_argument("--limit", type=int, default=0, help="at most N rows per split (0: every row)")

    em = sub.add_parser(
        "export-model", help="write a run's model as a Hugging Face transformers folder",
        description="Write a run's latest checkpoint (or --step N) as a new folder that transformers "
                    "loads with AutoModelForCausalLM / AutoTokenizer: a GPTNeoXForCausalLM computing "
                    "exactly the run's logits (checked before writing) and a word-level tokenizer over "
                    "the suite's vocabulary, saved with save_pretrained, plus a model card. "
                    "Needs pip install 'retroplan[hf]'.")
    em.add_argument("run", help="a run folder (made by `retroplan train` or `retroplan rl`)")
    em.add_argument("--format", choices=("hf",), default="hf",
                    help="hf: a transformers model folder (the only format)")
    em.add_argument("--out", required=True, help="new folder for the model (must not exist)")
    em.add_argument("--step", type=int, default=None, metavar="N",
                    help="export the checkpoint kept at step N (default: the latest)")

    tr = sub.add_parser(
        "train", help="train a model on a suite",
        description="Train a model on a suite. `--resume` continues the run in --out with the "
                    "settings it was started with (the suite and every flag; a flag given now "
                    "overrides it where allowed); `--resume --steps N` continues it to N steps, a "
                    "finished run too (the cosine schedule becomes an N-step one from there; "
                    "run.json records the change).")
    tr.add_argument("suite", nargs="?", default=None, help="the suite (with --resume: the run's own)")
    tr.add_argument("--out", required=True, help="run folder")
    tr.add_argument("--resume", action="store_true", help="continue the run in --out")
    tr.add_argument("--keep-steps", dest="keep_steps", type=step_list, default=None, metavar="N,N,...",
                    help="keep the checkpoints of these steps (comma-separated)")
    _add_dataclass_flags(tr, TrainConfig, skip=("keep_steps",))

    ev = sub.add_parser(
        "eval", help="evaluate a run: generate, parse, replay, count",
        description="Evaluate a run. Without --out it writes RUN/eval-SPLIT only for the standard "
                    "evaluation (latest step, the run's own suite, default decoding: what `retroplan "
                    "run` reads, and reuses only when everything its numbers depend on matches); "
                    "otherwise a folder whose name says what differs: RUN/eval-SPLIT-step500, "
                    "RUN/eval-SPLIT-limit7, RUN/eval-SPLIT-suite-NAME, "
                    "RUN/eval-SPLIT-temperature1-samples4. --batch-size and --device change no number "
                    "and no name.")
    ev.add_argument("run", help="a run folder (made by `retroplan train` or `retroplan rl`)")
    ev.add_argument("--suite", default=None,
                    help="suite to evaluate on (default: the training suite); its task and evaluated "
                         "variant must be the run's, and its prompts shorter than the model's context")
    ev.add_argument("--out", default=None,
                    help="folder for metrics.json and records.jsonl (default: see above)")
    ev.add_argument("--step", type=int, default=None, metavar="N",
                    help="evaluate the checkpoint kept at step N (default: the latest; "
                         "writes RUN/eval-SPLIT-stepN, plus any other difference)")
    _add_dataclass_flags(ev, EvalConfig)

    hf = sub.add_parser(
        "eval-hf", help="evaluate a local Hugging Face causal LM on a suite's text prompts",
        description="Prompt a local transformers causal LM with the suite's prompts as text (optionally "
                    "after --shots solved train examples, one per line), cut what it writes at the first "
                    "<eos> word or newline, map its words through the suite's vocabulary and judge them "
                    "as `eval` does (docs/METRICS.md). Never downloads. Needs pip install "
                    "'retroplan[hf]'. Default --out: ./eval-hf-MODEL-SUITE-SPLIT plus every non-default "
                    "setting.")
    hf.add_argument("model", help="a folder saved with save_pretrained, or a model name already in the "
                                  "local Hugging Face cache")
    hf.add_argument("suite", help="a suite folder: its prompts, vocabulary and verifier")
    hf.add_argument("--tokenizer", default=None,
                    help="tokenizer folder or cached name (default: the model's)")
    hf.add_argument("--out", default=None,
                    help="folder for metrics.json and records.jsonl (default: see above)")
    _add_dataclass_flags(hf, HFEvalConfig)

    from .rl import RLConfig

    rlp = sub.add_parser(
        "rl", help="reinforcement learning of a trained run with the verifier's reward (GRPO)",
        description="GRPO fine-tuning of a run's latest checkpoint on its suite's train prompts: groups "
                    "of sampled completions, each rewarded by the task's own verifier (parse, replay), "
                    "group-relative advantages, the clipped ratio and a KL penalty to the run itself. "
                    "--out is a new run folder (run.json names its parent); eval, probe and show-trace "
                    "work on it. --resume continues it with the settings it was started with.")
    rlp.add_argument("run", nargs="?", default=None, help="the trained run to start from (with --resume: "
                                                           "optional, read from --out's run.json)")
    rlp.add_argument("--out", required=True, help="new run folder for the RL run")
    rlp.add_argument("--resume", action="store_true", help="continue the RL run in --out")
    _add_dataclass_flags(rlp, RLConfig)

    r = sub.add_parser("run", help="run a TOML experiment end to end (resumable)")
    r.add_argument("experiment", help="a TOML experiment file, or the name of a shipped one "
                                      "(quick, answer, ...: `retroplan list`)")
    r.add_argument("--out", required=True, help="folder for suites, runs, results and report")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting of the file: a dotted key and a TOML value, e.g. "
                        "--set train.steps=3000 --set seeds=[0,1,2] (part of the study's identity)")
    r.add_argument("--workers", type=int, default=1, metavar="N",
                   help="run N pieces side by side in local processes, each with an equal share of "
                        "the CPU cores or its own GPU when several are visible (default 1)")
    r.add_argument("--reuse-from", default=None, metavar="STUDY",
                   help="first copy in the finished runs of another study folder (an earlier --out) "
                        "that this study would make exactly alike (same suite, same training "
                        "settings), e.g. a forward-examples twin reusing its baselines (default: none)")
    r.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="ray: send the pieces to a Ray cluster as tasks (pip install 'retroplan[ray]')")
    r.add_argument("--address", default=None,
                   help="Ray cluster address (e.g. auto, or host:6379); default: start a local Ray")

    m = sub.add_parser("merge-shards", help="put the pieces of a --shard generation together")
    m.add_argument("pieces", nargs="+", metavar="PIECE", help="suite folders made with --shard i/N")
    m.add_argument("--out", required=True, help="new folder for the whole suite")

    st = sub.add_parser("show-trace", help="draw one stream as a search tree (teacher vs model)")
    st.add_argument("source", help="a suite (the teacher's stream) or an eval folder / run (both)")
    which = st.add_mutually_exclusive_group(required=True)
    which.add_argument("--index", type=int, help="row of the split")
    which.add_argument("--pick", metavar="WHICH",
                       help="a row worth drawing: first-failure, first-backtrack, first-difference "
                            "(model and teacher search differently), most-states")
    st.add_argument("--split", default="test", help="the split the row is in (default test)")
    st.add_argument("--out", default=None, help="PNG path (an SVG is written beside it)")

    pl = sub.add_parser("plot", help="draw a figure from evaluated runs")
    plsub = pl.add_subparsers(dest="figure", required=True, metavar="FIGURE", parser_class=_Parser)
    tj = plsub.add_parser("trajectories", help="model vs teacher streams per test instance (tokens, "
                                               "states), one panel per evaluated stream run")
    tj.add_argument("sources", nargs="+", metavar="EVAL", help="eval folders or runs (their eval-SPLIT)")
    tj.add_argument("--split", default="test", help="the evaluated split (default test)")
    tj.add_argument("--out", default="trajectories.png", help="PNG path (an SVG is written beside it)")

    tip = sub.add_parser("sweep-tip", help="evaluate a stream run under the thought-switch penalty grid")
    tip.add_argument("run", help="a run trained on a stream variant")
    tip.add_argument("--alphas", default="0,1,2,3,5,10",
                     help="comma-separated penalties (tip_alpha) (default 0,1,2,3,5,10)")
    tip.add_argument("--betas", default="1,2,4,8",
                     help="comma-separated thought lengths in moves (tip_beta) (default 1,2,4,8)")
    tip.add_argument("--oracle", action="store_true", help="also the oracle-gated upper bound")
    tip.add_argument("--split", default="test", help=help_of(EvalConfig, "split") + " (default test)")
    tip.add_argument("--limit", type=int, default=0, help=help_of(EvalConfig, "limit") + " (default 0)")
    tip.add_argument("--out", default=None, help="folder for the sweep (default RUN/tip-sweep)")

    pr = sub.add_parser(
        "probe", help="linear probes of the residual stream, layer by layer (arm, distance, live)",
        description="Fit a linear probe per layer (0: after the embedding, k: after block k) on the "
                    "activations of a run's latest checkpoint at held-out rows (teacher-forced), on half "
                    "of the split's instances, and score it on the other half, next to the majority "
                    "baseline and the same probe fitted on shuffled labels. Writes "
                    "RUN/probe-TARGET-SPLIT/probe.json (docs/METRICS.md, Probes).")
    pr.add_argument("run", help="a run folder (made by `retroplan train` or `retroplan rl`)")
    pr.add_argument("--target", required=True, help=help_of(ProbeConfig, "target"))
    pr.add_argument("--out", default=None, help="folder for probe.json (default RUN/probe-TARGET-SPLIT)")
    _add_dataclass_flags(pr, ProbeConfig, skip=("target",))

    ex = sub.add_parser("example", help="print a shipped experiment file (to copy and edit: "
                                        "retroplan example quick > my.toml)")
    ex.add_argument("name", help="quick, answer, ...: `retroplan list`")

    sub.add_parser("list", help="list tasks, variants, model presets and shipped experiments")
    return p


def _generate(args) -> None:
    from .envs import get_task
    from .fsutil import interrupt_noted, terminate_as_exit
    from .traces import GRAMMARS
    from .traces.suite import SuiteSpec, generate_suite, parse_shard

    task = get_task(args.task)
    sizes = {s: getattr(args, f"size_{s}") for s in task.SPLITS}
    sizes = {s: (v if v is not None else task.DEFAULT_SIZES[s]) for s, v in sizes.items()}
    spec = SuiteSpec(task=args.task, variant=args.variant,
                     config=_given(args, task.Config, "task_"),
                     options=_given(args, GRAMMARS[args.task].Options, "opt_"),
                     seed=args.seed, sizes=sizes)
    # a `kill` removes the unfinished suite's temporaries too; a Ctrl-C that a compiled-code
    # callback swallows still stops the command (exit code 130)
    with terminate_as_exit(), interrupt_noted():
        out = generate_suite(spec, args.out, shard=parse_shard(args.shard))
    meta = json.loads((out / "meta.json").read_text())
    counts = ", ".join(f"{s} {v['examples']} rows" for s, v in meta["splits"].items())
    print(f"wrote {out}: {args.task}/{args.variant}, {counts}")


def _inspect(args) -> None:
    import numpy as np

    from .traces import components, is_data_control, writes
    from .traces.suite import open_suite
    from .variants import VARIANT

    if args.rows < 0:
        raise UserError(f"--rows must be a non-negative integer, got {args.rows}.")
    if args.context < 0:
        raise UserError(f"--context must be a non-negative integer (0: the longest row), got {args.context}.")
    suite = open_suite(args.suite)
    meta = suite.meta
    print(f"suite {suite.path}")
    print(f"  task {meta['task']}  variant {meta['variant']}  seed {meta['seed']}  "
          f"vocabulary {len(meta['vocab'])} tokens  retroplan {meta['retroplan_version']}")
    print(f"  config  {json.dumps(meta['config'], sort_keys=True)}")
    print(f"  options {json.dumps(meta['options'], sort_keys=True)}")
    for line in suite.task.describe(suite.config):
        print(f"  {line}")
    for j, part in enumerate(components(suite.name)):
        if is_data_control(suite.name, j):
            print(f"  [{part}]: {part}'s own rows again behind [{part}] (a data control: as many "
                  "extra rows and tokens as another component, no other content)")
            continue
        print(f"  {part}: writes the {writes(part)}; after {VARIANT[part].cites}")
        note = suite.grammar.variant_note(meta["task"], part)
        if note:
            print(f"    note: {note}")
    splits = [args.split] if args.split else suite.splits
    context = args.context or suite.max_len()
    for name in splits:
        data = suite.split(name)
        st = meta["splits"][name]
        lengths = data.lengths
        n = len(lengths)
        mean = float(lengths.mean()) if n else 0.0
        median = float(np.median(lengths)) if n else 0.0
        over = int((lengths > context).sum())
        print(f"  {name}: {st['instances']} instances, {st['examples']} rows, {st['tokens']} tokens, "
              f"length mean {mean:.1f} median {median:.0f} max {st['max_len']}; "
              f"{over} rows ({over / max(n, 1):.2%}) longer than a context of {context}")
        summary = suite.task.split_summary(suite.config, data.instances)
        if summary is not None:
            print(f"    {summary}")
    if "train" in suite.splits and len(suite.split("train")):
        # one readable example of each kind of training row (revthink's three objectives, a
        # mixture's components) and, for lookahead, one with a <T> span: checkable by hand
        data = suite.split("train")
        firsts = [int(np.flatnonzero(data.kind == k)[0]) for k in np.unique(data.kind)]
        spans = any(VARIANT[part].lookahead_spans for part in components(suite.name))
        if spans and "<T>" in suite.vocab.ids:
            span = next((r for r in range(min(len(data), 1000))
                         if suite.vocab["<T>"] in data.completion(r).tolist()), None)
            firsts += [span] if span is not None and span not in firsts else []
        for r in firsts:
            row = suite.describe_row("train", r)
            print(f"\n[example: train row {r}, kind {row['kind']}]")
            print(f"  prompt     {row['prompt']}")
            print(f"  completion {row['completion']}")
    for name in splits:
        data = suite.split(name)
        for r in range(min(args.rows, len(data))):
            row = suite.describe_row(name, r)
            print(f"\n[{name} row {r}]")
            print(f"  prompt     {row['prompt']}")
            print(f"  completion {row['completion']}")


def _export(args) -> None:
    from .traces.export import export_suite

    counts = export_suite(args.suite, args.out, args.format, split=args.split, limit=args.limit)
    per_split = ", ".join(f"{split} {n}" for split, n in counts.items())
    print(f"wrote {sum(counts.values())} rows to {args.out} ({per_split}; retroplan's split names) "
          f"with its dataset card {os.path.join(args.out, 'README.md')}")


def _export_model(args) -> None:
    from .export_model import export_model

    done = export_model(args.run, args.out, args.format, step=args.step)
    print(f"wrote {args.out}: the model of {args.run} at step {done['step']} as a transformers "
          f"GPTNeoXForCausalLM with its tokenizer (logits equal the run's: max |difference| "
          f"{done['max_logit_difference']:.1e})")


def _train(args) -> None:
    from .fsutil import terminate_as_exit
    from .train import TrainConfig, train

    given, suite = _given(args, TrainConfig), args.suite
    run_json = Path(args.out) / "run.json"
    if args.resume and run_json.is_file():  # the run's own settings, then what was given now
        from . import checkpoint

        run = checkpoint.read_run(Path(args.out))
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        given = {**{k: v for k, v in run.get("train", {}).items() if k in known}, **given}
        suite = suite or checkpoint.run_suite(Path(args.out), run)
    if suite is None:
        raise UserError("train needs a suite (retroplan train SUITE --out RUN); only --resume of an "
                        "existing run reads it from the run.")
    cfg = TrainConfig.from_dict(given)
    with terminate_as_exit():  # a `kill` removes the temporaries of a checkpoint being written
        summary = train(suite, args.out, cfg, resume=args.resume)
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return
    loss = summary.get("final_loss")
    print(f"trained {args.out}: {summary['steps']} steps ({summary.get('examples_seen')} examples, "
          f"{summary.get('supervised_tokens')} supervised tokens), final loss "
          f"{'n/a' if loss is None else format(loss, '.4f')}, "
          + (f"peak lr {summary['peak_lr']:.2e}, " if "peak_lr" in summary else "")
          + f"{summary['train_seconds']:.1f}s on {summary['device']}")


def _eval(args) -> None:
    from .eval import EvalConfig, evaluate

    cfg = EvalConfig(**_given(args, EvalConfig))
    m = evaluate(args.run, args.suite, cfg, args.out, step=args.step, name_by_settings=True)
    _print_eval_summary(m)


def _eval_hf(args) -> None:
    from .eval_hf import HFEvalConfig, evaluate_hf

    cfg = HFEvalConfig(**_given(args, HFEvalConfig))
    _print_eval_summary(evaluate_hf(args.model, args.suite, cfg, args.out, tokenizer=args.tokenizer))


def _print_eval_summary(m: dict) -> None:
    """The lines `eval` and `eval-hf` print: accuracy block, model and teacher streams, sampling."""
    def fmt(key):
        v = m[key]["value"]
        return "n/a" if v is None else f"{v:.3f}"
    samples = int((m.get("decoding") or {}).get("samples") or 1)
    # with several samples per instance, n counts completions: say so, in the instances' terms too
    count = (f"n={m['n']}" if samples == 1 else
             f"n={m['n']} completions: {m['n'] // samples} instances x {samples} samples")
    print(f"{m['task']}/{m['variant']} on {m['split']} ({count}): writes the {m.get('writes')}; "
          f"accuracy {fmt('accuracy')}, "
          f"first step {fmt('first_step_accuracy')}, teacher-forced tokens {fmt('tf_token_accuracy')}, "
          f"parse failures {fmt('parse_failures')}")
    for who, key in (("model", "behaviour"), ("teacher", "teacher_behaviour")):
        b = m.get(key)
        if b:
            def val(name, sub="value", b=b):
                v = b[name][sub]
                return "n/a" if v is None else f"{v:.3f}"
            print(f"  {who} streams: validity {val('trace_validity')}, wandering {val('wandering')}, "
                  f"premature backtracks {val('premature_backtracks')}, xi_UT {val('xi_ut')}, "
                  f"backtracks/trace {val('backtracks_per_trace', 'mean')}, "
                  f"states {val('states_expanded', 'mean')}")
    for name, v in m.get("sampling", {}).items():
        print(f"  {name}: {v['value']:.3f} (n={v['n']} instances)")
    if "pass_at_k" in m:
        curve = m["pass_at_k"]
        print(f"  pass@k, k = 1..{curve['samples']}: " + " ".join(f"{v:.3f}" for v in curve["value"])
              + f" (n={curve['n']} instances)")
    print(f"  wrote {m['eval_dir']}")


def _rl(args) -> None:
    from .fsutil import terminate_as_exit
    from .rl import RLConfig, rl, rl_settings_from

    given = _given(args, RLConfig)
    if args.resume and (Path(args.out) / "run.json").is_file():  # the run's own settings first
        given = {**rl_settings_from(Path(args.out)), **given}
    cfg = RLConfig.from_dict(given)
    with terminate_as_exit():  # a `kill` removes the temporaries of a checkpoint being written
        summary = rl(args.run, args.out, cfg, resume=args.resume)
    last = summary.get("last") or {}
    print(f"rl {args.out}: {summary['steps']} steps, last step reward {last.get('reward_mean', 'n/a')}, "
          f"pass rate {last.get('pass_rate', 'n/a')}, KL {last.get('kl', 'n/a')}, "
          f"{summary['rl_seconds']:.1f}s on {summary['device']}")


def _run(args) -> None:
    from .experiment import run_experiment
    from .fsutil import terminate_as_exit

    with terminate_as_exit():  # a `kill` of a serial run removes its unfinished temporaries too
        report = run_experiment(args.experiment, args.out, workers=args.workers, backend=args.backend,
                                address=args.address, overrides=args.overrides,
                                reuse_from=args.reuse_from)
    print(f"report: {report}")


def _merge_shards(args) -> None:
    from .traces.suite import merge_shards

    out = merge_shards(args.pieces, args.out)
    print(f"wrote {out}: {len(args.pieces)} pieces merged")


def _list(args) -> None:
    from .envs import TASKS
    from .experiment_file import shipped_experiments
    from .models import PRESETS
    from .traces import GRAMMARS
    from .variants import names

    for name, task in TASKS.items():
        fields = ", ".join(f"{f.name}={f.default}" for f in dataclasses.fields(task.Config))
        print(f"{name} ({task.ENV_ID}): {fields}")
        print(f"  variants: {', '.join(GRAMMARS[name].VARIANTS)}")
    print(f"mixtures: a+b+... of {', '.join(names('mixable'))} (the first is evaluated); a+a is the data "
          "control (a's rows again behind [a]), e.g. optimal+optimal")
    print("model presets: " + ", ".join(f"{k} ({v['n_layer']}x{v['n_embd']})" for k, v in PRESETS.items()))
    print("shipped experiments (retroplan run NAME, retroplan example NAME): "
          + ", ".join(shipped_experiments()))


def _example(args) -> None:
    from .experiment_file import SHIPPED_DIR, shipped_experiments

    if args.name not in shipped_experiments():
        raise UserError(f"no shipped experiment named {args.name!r}; shipped: "
                        f"{', '.join(shipped_experiments())}.")
    print((SHIPPED_DIR / f"{args.name}.toml").read_text(), end="")


def _show_trace(args) -> None:
    from .analysis import pick_row, show_trace

    index = args.index
    if args.pick is not None:
        index = pick_row(args.source, args.pick, args.split)
        print(f"--pick {args.pick}: row {index}")
    written = show_trace(args.source, index, args.split, args.out)
    print("wrote " + ", ".join(str(p) for p in written))


def _plot(args) -> None:
    from .analysis import plot_trajectories

    written = plot_trajectories(args.sources, args.out, args.split)
    print("wrote " + ", ".join(str(p) for p in written))


def _probe(args) -> None:
    from .probe import ProbeConfig, format_table, probe_run

    cfg = ProbeConfig(target=args.target, **_given(args, ProbeConfig, skip=("target",)))
    result = probe_run(args.run, cfg, args.out)
    print(format_table(result), end="")
    print(f"  wrote {result['probe_dir']}/probe.json")


def _numbers(text: str, kind, flag: str) -> list:
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{flag} must be comma-separated numbers, got {text!r}.") from None


def _sweep_tip(args) -> None:
    from .analysis import sweep_tip
    from .eval import EvalConfig

    table = sweep_tip(args.run, _numbers(args.alphas, float, "--alphas"),
                      _numbers(args.betas, int, "--betas"), oracle=args.oracle,
                      base=EvalConfig(split=args.split, limit=args.limit), out=args.out)
    print(table.read_text(), end="")
    print(f"wrote {table} and {table.with_name('results.csv')} (one evaluation folder per setting "
          f"beside them)")


COMMANDS = {"generate": _generate, "inspect": _inspect, "export": _export,
            "export-model": _export_model, "train": _train,
            "eval": _eval, "eval-hf": _eval_hf, "run": _run, "merge-shards": _merge_shards,
            "show-trace": _show_trace, "rl": _rl, "sweep-tip": _sweep_tip, "probe": _probe, "list": _list,
            "example": _example, "plot": _plot}


def main(argv: list[str] | None = None) -> int:
    if (sys.argv[1:] if argv is None else argv) == ["--version"]:  # instant: no torch, no Numba
        print(f"retroplan {__version__}")
        raise SystemExit(0)
    parser = build_parser()
    args = parser.parse_args(argv)
    from . import compile_notice

    compile_notice.install()  # one line when Numba compiles kernels (a first run), else nothing
    try:
        COMMANDS[args.command](args)
    except UserError as exc:
        print(f"retroplan: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:  # `retroplan inspect SUITE | head`: the reader has all it wanted
        # nothing more can reach the closed pipe; point stdout at /dev/null so the final flush
        # at exit does not complain either, and exit quietly, as other unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # the file system said no: disk full, read-only, no permission
        where = f" on {exc.filename}" if exc.filename else ""
        print(f"retroplan: error: a file operation failed{where}: {exc.strerror or exc}.", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("retroplan: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
