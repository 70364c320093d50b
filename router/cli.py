"""The `router` command: plan, run, report, profile and eval."""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from typing import Sequence

OVERRIDES_HELP = """\
overrides are key=value pairs applied on top of the config file, e.g.
  input=prompts.parquet output=out/answers budget.total=2.5 budget.mode=hard
  text_column=question encoder.replicas=2 models.NAME.max_tokens=128
Unknown keys are errors. Values are YAML scalars (numbers, true/false, inf)."""


def _add_job_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="job config (YAML), e.g. jobs/configs/local.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (see below)")


def build_parser() -> argparse.ArgumentParser:
    from router.method.evaldata import FORMATS

    parser = argparse.ArgumentParser(
        prog="router",
        description="Budget-bounded batch LLM routing on Ray: score every prompt for every model "
        "(InferenceDynamics profiles), pick one model per prompt so that total predicted quality is "
        "highest with total cost under one budget, and answer with vLLM.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    plan = sub.add_parser(
        "plan",
        help="route only: the assignment and predicted spend, no generation",
        description="Read, encode and route the input under the budget, and print how many rows "
        "go to each model and the predicted spend. Nothing is generated. With --out, the routed "
        "rows (id, model, status, error, predicted quality and cost, capabilities, domains) are written "
        "as parquet to a new or empty folder.",
        epilog=OVERRIDES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_job_args(plan)
    plan.add_argument("--out", help="also write the routed rows to this folder (parquet): a new or empty folder, "
                      "not inside the input")
    plan.add_argument("--json", help="write the plan summary as JSON to this file")

    run = sub.add_parser(
        "run",
        help="route and generate: answers as parquet, one row per input row",
        description="Route the input under the budget and answer every routed row with its "
        "model (generation.backend: vllm, transformers or openai; one engine pool per model). "
        "Commits parquet shards to the output folder as rows finish, then _report.json. The "
        "folder must be new or empty, or hold this same job: then the run resumes after the rows "
        "already written, with what is left of the budget.",
        epilog=OVERRIDES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_job_args(run)

    rep = sub.add_parser(
        "report",
        help="rebuild the report folder (report.json and pictures) of a finished run",
        description="Read a finished output folder (its parquet rows and _report.json) and write "
        "OUTPUT-report/ beside it (a trailing slash is ignored): report.json with rows, predicted "
        "and actual spend, tokens and statuses per model, phase times, the quality-cost frontier "
        "and the capability and domain counts, and PNG pictures of them. `router run` writes it too.",
    )
    rep.add_argument("output", help="the output folder of `router run` (local path or URI)")

    prof = sub.add_parser(
        "profile",
        help="build model profiles from evaluation tables",
        description="Encode the evaluation queries, cluster them into knowledge domains and build "
        "each model's capability and knowledge profile (InferenceDynamics). Writes one profile file "
        "that job configs name under `profiles:`.",
    )
    prof.add_argument("--eval-table", nargs="+", metavar="PATH",
                      help="evaluation tables: long-format parquet, {question, scores} JSON, RouterBench")  # fmt: skip
    prof.add_argument("--out", help="profile file to write (.npz)")
    _add_fit_args(prof)
    prof.add_argument("--models", nargs="+", help="profile only these models (default: all in the tables)")
    prof.add_argument("--prices", help="JSON or YAML: model -> {input_price, output_price} per 1M tokens; with "
                      "RouterBench tables, answer lengths are derived from the costs and profiled")  # fmt: skip
    prof_sub = prof.add_subparsers(dest="action", metavar="ACTION")
    add = prof_sub.add_parser(
        "add-model",
        help="add one model to an existing profile file, leaving the others untouched",
        description="Profile one more model on the existing taxonomy (clusters, capabilities, tasks), "
        "either from its rows of evaluation tables (--eval-table) or by answering an index set with "
        "gold answers with the project's own vLLM stage and grading the answers (--weights: the packaged "
        "index set of about 1,000 queries, or --queries FILE). Its answer lengths are profiled too.",
    )
    add.add_argument("--profiles", required=True, help="the profile file (or packaged name) to extend")
    add.add_argument("--model", required=True, help="the model's name in the tables, or the new name")
    add.add_argument("--eval-table", nargs="+", metavar="PATH", help="evaluation tables holding the model's scores")
    add.add_argument("--format", choices=FORMATS, help="table format")
    add.add_argument("--prices", help="with RouterBench tables: prices to derive answer lengths from the costs")
    add.add_argument("--tasks-from-files", action="store_true", help="each file holds one task named by the file")
    add.add_argument("--scores", choices=["auto", "raw", "binary"], default="auto",
                     help="how scores are read (see `router profile --help`)")  # fmt: skip
    add.add_argument("--weights", help="profile the model by answering an index set with it and grading the "
                     "answers: what the engine loads (Hugging Face id or path)")  # fmt: skip
    add.add_argument("--queries", help="with --weights: the index set (jsonl: query, ground_truth, metric, "
                     "task_name); default: the packaged one, about 1,000 queries over 12 tasks")  # fmt: skip
    add.add_argument("--max-tokens", type=int, default=256, help="with --weights: answer length (256)")
    add.add_argument("--max-model-len", type=int, help="with --weights: the engine's context length")
    add.add_argument("--dtype", default="auto", help="with --weights: vLLM dtype (float32 on CPU)")
    add.add_argument("--backend", default="vllm", choices=("vllm", "transformers"),
                     help="with --weights: the generation stage that answers (transformers: tiny models on CPU)")
    add.add_argument("--limit", type=int, help="with --weights: answer only N of the queries, spread evenly over the file")
    add.add_argument("--out", required=True, help="profile file to write")
    show = prof_sub.add_parser(
        "show",
        help="print a profile file's models side by side, and draw it",
        description="Each model's capability and knowledge profile side by side (a table: a row per "
        "capability and knowledge domain, the winner of each marked), how many elements each model "
        "wins and, with --config, each model's price; --plot draws the same as a heatmap.",
    )
    show.add_argument("profile", help="a profile file (.npz) or a packaged name such as open9")
    show.add_argument("--config", help="a job config: show its pool's models (in its order) with their prices")
    show.add_argument("--plot", metavar="FILE.png", help="also write the heatmap picture here")
    rm = prof_sub.add_parser("remove-model", help="remove one model from a profile file")
    rm.add_argument("--profiles", required=True, help="the profile file (or packaged name)")
    rm.add_argument("--model", required=True, help="the model to remove")
    rm.add_argument("--out", required=True, help="profile file to write")

    ev = sub.add_parser(
        "eval",
        help="held-out routing quality: fit on train tables, route test tables, compare with baselines",
        description="Fit profiles on the training tables only, route the test tables, and report "
        "accuracy and cost of the router against the best single model (highest mean score on "
        "train), the per-query oracle, the cheapest model, random choice at equal cost and a "
        "k-nearest-neighbour router on the same embeddings, plus the accuracy-cost frontier. "
        "Budgets and lambda are chosen from predicted costs only; each plan is charged its actual cost "
        "where the tables have one. With answer lengths in the tables, it also reports predicted "
        "against actual cost and the error of the answer-length predictions. With --folds K instead of "
        "--test, every query is predicted by profiles fitted on the other folds.",
    )
    ev.add_argument("--train", nargs="+", required=True, metavar="PATH", help="training evaluation tables")
    ev.add_argument("--test", nargs="+", metavar="PATH", help="test evaluation tables (or --folds)")
    ev.add_argument("--folds", type=int, metavar="K",
                    help="instead of --test: K-fold cross-validation over the training tables' queries")  # fmt: skip
    _add_fit_args(ev)
    ev.add_argument("--prices", help="JSON or YAML: model -> {input_price, output_price} per 1M tokens. With "
                    "answer lengths in the tables (token counts, or RouterBench costs), cost is predicted from "
                    "each row's predicted answer length and charged at the actual one; without lengths or costs, "
                    "answers are priced at --output-tokens; without prices or costs, costs are equal")  # fmt: skip
    ev.add_argument("--output-tokens", type=float, default=256,
                    help="answer length planned with --prices for a model without length data (256)")  # fmt: skip
    ev.add_argument("--budget-fraction", type=float, help="also route at F x the best single model's test cost")
    ev.add_argument("--json", help="write the full result as JSON here")
    ev.add_argument("--plot", help="write the accuracy-cost picture here (PNG)")
    ev.add_argument("--reliability", metavar="FILE.png",
                    help="write the reliability diagram here: predicted quality against realised score, for the "
                    "router and the strong simple baselines")  # fmt: skip
    return parser


def _add_fit_args(p: argparse.ArgumentParser) -> None:
    from router.method.evaldata import FORMATS
    from router.method.fitting import ProfileSettings

    d = ProfileSettings()
    p.add_argument("--format", choices=FORMATS, help="table format (default: detected from the file)")
    p.add_argument("--tasks-from-files", action="store_true",
                   help="each file holds one task named by the file (mmlu_train.json -> mmlu)")  # fmt: skip
    p.add_argument("--no-tasks", action="store_true", help="ignore the tables' task column")
    p.add_argument("--scores", choices=["auto", "raw", "binary"], default="auto",
                   help="how scores are read. auto (default): as in the table, except a task (or a file "
                   "without tasks) whose scores are choice probabilities (0 when wrong, else the "
                   "probability of the right choice: under 5%% of the positive scores are 1, none is "
                   "below 0.2, most are off the k/20 grid of sample fractions and they take many "
                   "values), which counts > 0 as correct; raw: as in the table; binary: every score "
                   "> 0 counts as correct")  # fmt: skip
    p.add_argument("--encoder", default="minilm", help="encoder: minilm (packaged) or a local folder")
    p.add_argument("--window", choices=["head", "tail"], default=d.window,
                   help=f"what of a long prompt is embedded (default {d.window})")  # fmt: skip
    p.add_argument("--clusters", type=int, default=d.n_clusters, help=f"knowledge clusters (default {d.n_clusters})")
    p.add_argument("--alpha", type=float, default=d.alpha, help=f"rank-weight decay (paper default {d.alpha})")
    p.add_argument("--beta", type=float, default=d.beta, help=f"cost penalty in the profile scores (default {d.beta})")
    p.add_argument("--top", type=int, default=d.r_know, help=f"list length r (default {d.r_know})")
    p.add_argument("--seed", type=int, default=d.seed, help="clustering seed")
    p.add_argument("--no-calibrate", action="store_true",
                   help="keep the profile's raw scores (default: one isotonic map onto the scores the models "
                   "reach, fitted out of fold; it keeps each row's order of models)")  # fmt: skip
    p.add_argument("--no-blend", action="store_true",
                   help="the calibrated profile score alone (default: moved toward ridge heads on the embedding "
                   "and the task by weights, within a row and for its level, chosen out of fold by the routing "
                   "they give)")  # fmt: skip
    p.add_argument("--stack", action="store_true",
                   help="instead of the blend, stack the profile's score with a ridge head on embedding and task, "
                   "per model, before calibrating (see bench/README.md for what it does to accuracy)")  # fmt: skip
    p.add_argument("--annotator", choices=["embedding", "llm", "distilled"], default=d.annotator,
                   help="who ranks each query's capabilities and domains: embedding (default: clusters and "
                   "prototypes), llm (an auxiliary model per query, the paper's way) or distilled (the llm "
                   "labels a sample, linear heads the rest); llm and distilled need --annotator-weights")
    p.add_argument("--annotator-weights", metavar="PATH_OR_ID", help="the auxiliary model vLLM serves to annotate")
    p.add_argument("--annotator-max-tokens", type=int, default=64, help="annotator answer length (64)")
    p.add_argument("--annotator-max-model-len", type=int, help="the annotator engine's context length")
    p.add_argument("--annotator-dtype", default="auto", help="vLLM dtype of the annotator (float32 on CPU)")
    p.add_argument("--distill-sample", type=int, metavar="N",
                   help="with --annotator distilled: the llm labels N index queries (default: all)")  # fmt: skip
    p.add_argument("--length-kappa", type=float, metavar="K",
                   help="shrinkage of answer-length profiles toward each model's mean, in answers "
                   "(default: chosen per model by 5-fold cross-validation)")  # fmt: skip


def _settings(args):
    from router.method.fitting import ProfileSettings

    return ProfileSettings(n_clusters=args.clusters, alpha=args.alpha, beta=args.beta, r_know=args.top,
                           r_cap=args.top, window=args.window, use_tasks=not args.no_tasks, seed=args.seed,
                           annotator=args.annotator, distill_sample=args.distill_sample,
                           length_kappa=args.length_kappa, calibrate=not args.no_calibrate,
                           blend=not args.no_blend, stack=args.stack)  # fmt: skip


def _annotator_error(args) -> str | None:
    if args.annotator != "embedding" and not args.annotator_weights:
        return f"--annotator {args.annotator} needs --annotator-weights PATH_OR_ID (the model vLLM serves to annotate)"
    if args.distill_sample is not None and (args.annotator != "distilled" or args.distill_sample < 1):
        return "--distill-sample N takes a positive N and goes with --annotator distilled"
    if args.length_kappa is not None and not args.length_kappa > 0:
        return f"--length-kappa must be a positive number, got {args.length_kappa}"
    if args.annotator_max_tokens < 1:
        return f"--annotator-max-tokens must be a positive integer, got {args.annotator_max_tokens}"
    return None


@contextmanager
def _annotator(args):
    """The LLM annotator `--annotator llm|distilled` asks for (its engine starts on first use), or
    None; its engine is stopped on leaving the block."""
    if args.annotator == "embedding":
        yield None
        return
    from router.method.annotate import llm_annotator

    annotator = llm_annotator(args.annotator_weights, encoder=args.encoder, r_cap=args.top, r_know=args.top,
                              max_tokens=args.annotator_max_tokens, max_model_len=args.annotator_max_model_len,
                              dtype=args.annotator_dtype)  # fmt: skip
    try:
        yield annotator
    finally:
        annotator.close()


def _annotation_line(meta: dict) -> str:
    a = meta.get("annotation")
    if not a:
        return ""
    llm = a["llm"]
    return (f"\n{a['annotator']} annotator: {a['labelled_by_llm']} index queries labelled by the llm, "
            f"{a['labelled_by_heads']} by its heads; {llm['fallback_rows']} got nothing usable from it "
            f"(embedding lists instead), {llm['other_domains']} domains mapped to `other`")  # fmt: skip


def _first_missing(paths: Sequence[str]) -> str | None:
    import os

    return next((p for p in paths if not os.path.isfile(p)), None)


def _fail(msg: str) -> int:
    print(f"router: error: {msg}", file=sys.stderr)
    return 2


def _plan(args) -> int:
    from router.api import Router
    from router.config import load_config
    from router.job.result import report_dict

    cfg = load_config(args.config, args.overrides)
    if args.out:  # checked before any work, as `run` checks its output
        from router.job.output import check_new_folder

        check_new_folder(args.out, cfg.input)
    r = Router(cfg)
    routed = r.plan()
    result = r.result
    print(r.summary())
    if args.out:
        from router import schema as S
        from router.job.output import PLAN_COLUMNS, create_folder

        create_folder(args.out)
        routed.select_columns([S.ID, *PLAN_COLUMNS]).write_parquet(args.out)
        print(f"routed rows written to {args.out} ({result.n_rows} rows, parquet)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report_dict(cfg, result), f, indent=1, default=float)
    return 0


def _run(args) -> int:
    from router.api import Router
    from router.config import load_config

    cfg = load_config(args.config, args.overrides)
    r = Router(cfg)
    r.run()
    print(r.summary())
    print(f"answers: {cfg.output} (parquet, one row per input row; report: {cfg.output.rstrip('/')}/_report.json)")
    return 0


def _report(args) -> int:
    from router.report import write_report_folder

    folder, files = write_report_folder(args.output)
    print(f"report of {args.output} written to {folder}/: {', '.join(files)}")
    return 0


def _profile(args) -> int:
    from router.method.fitting import profile_from_tables

    if args.action == "add-model":
        return _add_model(args)
    if args.action == "show":
        return _show_profile(args)
    if args.action == "remove-model":
        from router.method.profiles import load_profiles
        from router.method.fitting import remove_model

        remove_model(load_profiles(args.profiles), args.model).save(args.out)
        print(f"removed {args.model}; profiles written to {args.out}")
        return 0
    if not args.eval_table or not args.out:
        return _fail("router profile needs --eval-table PATH [PATH ...] and --out PROFILE")
    if missing := _first_missing(args.eval_table):
        return _fail(f"evaluation table {missing!r} not found")
    if missing := _first_missing([args.prices] if args.prices else []):
        return _fail(f"prices file {missing!r} not found")
    if msg := _annotator_error(args):
        return _fail(msg)
    with _annotator(args) as annotator:
        profiles = profile_from_tables(
            args.eval_table, fmt=args.format, encoder=args.encoder, settings=_settings(args), models=args.models,
            tasks_from_files=args.tasks_from_files, score_reading=args.scores, annotator=annotator,
            prices=_prices(args.prices),
        )  # fmt: skip
    profiles.save(args.out)
    print(f"profiles of {len(profiles.models)} models over {len(profiles.domain_names)} knowledge clusters "
          f"written to {args.out}" + _annotation_line(profiles.meta) + _lengths_line(profiles))  # fmt: skip
    return 0


def _show_profile(args) -> int:
    from router.method.profiles import load_profiles, profile_path
    from router.profile_view import format_profile, plot_profile

    if not profile_path(args.profile).exists():
        return _fail(f"profile {args.profile!r} not found: give a .npz file or a packaged name (open9)")
    profiles = load_profiles(args.profile)
    prices = None
    if args.config:
        from router.config import load_config

        cfg = load_config(args.config, [])
        missing = [m for m in cfg.model_names if m not in profiles.models]
        if missing:
            return _fail(f"the profile has no model {missing[0]!r} of {args.config!r}")
        profiles = profiles.select(cfg.model_names)
        prices = {m.name: (m.input_price, m.output_price) for m in cfg.models}
    print(format_profile(profiles, prices))
    if args.plot:
        plot_profile(profiles, args.plot, prices)
        print(f"picture: {args.plot}")
    return 0


def _prices(path: str | None) -> dict | None:
    from router.method.evaluate import load_prices

    return load_prices(path) if path else None


def _lengths_line(profiles) -> str:
    """Which models got answer-length profiles, and which will be planned at the config's lengths."""
    source = dict(zip(profiles.models, profiles.length_source))
    fitted = [m for m, s in source.items() if s == "profile"]
    if not fitted:
        return "\nno answer lengths in the tables: jobs plan answers at the config's lengths"
    rest = [m for m, s in source.items() if s != "profile"]
    return (f"\nanswer-length profiles for {len(fitted)} models"
            + (f"; none for {', '.join(rest)} (planned at the config's lengths)" if rest else ""))


def _add_model(args) -> int:
    from router.backends.encoder import encode_cached
    from router.method.profiles import load_profiles
    from router.method.fitting import add_model

    profiles = load_profiles(args.profiles)
    window = profiles.meta.get("window", "head")
    if args.eval_table:
        from router.method.evaldata import read_eval_table

        if missing := _first_missing([*args.eval_table, *([args.prices] if args.prices else [])]):
            return _fail(f"file {missing!r} not found")
        table = read_eval_table(args.eval_table, args.format, tasks_from_files=args.tasks_from_files,
                                score_reading=args.scores, prices=_prices(args.prices))  # fmt: skip
        model = args.model
    elif args.weights:
        import time

        import numpy as np

        from router.method.indexset import INDEX_SET, answer_and_grade

        queries = args.queries or str(INDEX_SET)
        if _first_missing([queries]):
            return _fail(f"queries file {queries!r} not found")
        t0 = time.perf_counter()
        table, n = answer_and_grade(
            queries, args.model, args.weights, max_tokens=args.max_tokens, max_model_len=args.max_model_len,
            dtype=args.dtype, limit=args.limit, backend=args.backend,
        )  # fmt: skip
        if not n["graded"]:
            return _fail(f"none of the {n['queries']} queries could be graded ({n['answered']} answered): nothing "
                         "to profile the model on")  # fmt: skip
        print(f"{args.model}: {n['queries']} queries ({'the packaged index set' if not args.queries else queries}), "
              f"{n['answered']} answered, {n['graded']} graded (mean score {float(table.scores.mean()):.3f}), "
              f"{n['skipped']} skipped (a metric not graded here: code; or no answer), in "
              f"{time.perf_counter() - t0:.0f}s; {float(np.mean(table.input_tokens)):.0f} prompt and "
              f"{float(np.mean(table.output_tokens)):.0f} answer tokens per query")  # fmt: skip
        model = args.model
    else:
        return _fail("add-model needs --weights MODEL (answers the packaged index set, or --queries FILE), "
                     "or --eval-table PATH [PATH ...]")
    emb = encode_cached("minilm" if profiles.encoder.endswith("all-MiniLM-L6-v2") else profiles.encoder,
                        table.queries, window=window)  # fmt: skip
    try:
        extended = add_model(profiles, table, model, emb)
    except ValueError as e:
        return _fail(str(e))
    extended.save(args.out)
    lengths = ("profiled from its rows" if extended.length_source[-1] == "profile"
               else "none in the tables (planned at the config's lengths)")  # fmt: skip
    print(f"added {model}: {len(extended.models)} models; profiles written to {args.out}; answer lengths: {lengths}")
    return 0


def _eval(args) -> int:
    from router.method.evaluate import evaluate, format_eval, plot_eval, plot_reliability

    if bool(args.test) == (args.folds is not None):
        return _fail("router eval needs one of --test PATH [PATH ...] and --folds K (cross-validation over --train)")
    if args.folds is not None and args.folds < 2:
        return _fail(f"--folds must be at least 2, got {args.folds}")
    if missing := _first_missing([*args.train, *(args.test or []), *([args.prices] if args.prices else [])]):
        return _fail(f"file {missing!r} not found")
    if msg := _annotator_error(args):
        return _fail(msg)
    with _annotator(args) as annotator:
        r = evaluate(
            args.train, args.test, folds=args.folds, fmt=args.format, prices_path=args.prices,
            budget_fraction=args.budget_fraction,
            output_tokens=args.output_tokens, score_reading=args.scores, tasks_from_files=args.tasks_from_files,
            encoder=args.encoder, settings=_settings(args), annotator=annotator,
        )  # fmt: skip
    print(format_eval(r))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=1)
    if args.plot:
        plot_eval(r, args.plot)
    if args.reliability:
        plot_reliability(r, args.reliability)
        print(f"reliability diagram: {args.reliability}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from router.budget import InfeasibleBudget
    from router.errors import ConfigError, JobFailed

    try:
        commands = {"plan": _plan, "run": _run, "report": _report, "profile": _profile, "eval": _eval}
        return commands[args.command](args)
    except (ConfigError, JobFailed, InfeasibleBudget, FileNotFoundError) as e:
        return _fail(str(e))
    except ImportError as e:
        return _fail(f"missing package: {e}")
    except KeyboardInterrupt:
        return _fail("interrupted")


def run_and_exit(argv: Sequence[str] | None = None) -> None:
    """The command line's entry (`router`, `python -m router.cli`, jobs/*.py): `main`, then Ray's
    orderly shutdown and an exit that skips the interpreter's teardown. Everything a command writes
    is closed by then; the teardown would only free native libraries (torch, Ray's core worker), which
    took 1.7-1.9 s after each job here. An error raised out of `main` exits the usual way."""
    import logging
    import os

    rc = main(argv)
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()  # a local instance's processes end with it; a cluster's driver disconnects
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`router run ... | head`)
            pass
    os._exit(int(rc or 0))


if __name__ == "__main__":
    run_and_exit()
