"""The Python API: a router built once from a job config and applied to Ray Datasets.

    import ray, router
    r = router.Router.from_config("jobs/configs/open9.yaml", budget={"total": 250})
    routed = r.plan(ds)                         # the input's columns + model, status, predicted quality and cost
    answered = r.run(ds, output="s3://bucket/answers/")   # + response, tokens, actual cost, finish reason

It is the code `router plan|run` and `jobs/*.py` run (they call it with the config's input files).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

from router.config import JobConfig, job_config_from_dict, read_config_file
from router.errors import ConfigError

DATASET_INPUT = "<ray.data.Dataset>"
"""The `input` of a router built without one: it answers the Datasets it is given."""
NO_OUTPUT = "<no output folder>"
"""The `output` of a router built without one: `plan` needs none; `run` is given one."""


def _raw(config: str | Path | Mapping | JobConfig) -> dict[str, Any]:
    """A config as the mapping a YAML file holds."""
    if isinstance(config, JobConfig):
        raw = dataclasses.asdict(config)
        raw["models"] = list(raw["models"])
        return raw
    if isinstance(config, Mapping):
        return {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in config.items()}
    if isinstance(config, (str, Path)):
        return read_config_file(config)
    raise ConfigError(f"a config is a YAML file's path, a mapping or a JobConfig; got {type(config).__name__}")


class Router:
    """A pool, its profiles and a budget, built once (`from_config`) and applied to any Ray Dataset
    with a text column: `plan` routes it, `run` routes and answers it.

    The budget is global: it needs every row scored before any row is assigned, so both methods
    execute the Dataset's pipeline up to the scores once (read, your own stages, encode, score) and
    keep the scores in Ray's object store (about 0.1 KB a row per model) while the budget is solved;
    `bench/api.py` measures what that barrier costs. Rows keep the Dataset's other columns."""

    def __init__(self, config: JobConfig) -> None:
        self.config = config
        self._last = config
        self.result = None
        """The last `plan` or `run`: its plan, spend, phases and waves (`router.job.result.RunResult`)."""

    @classmethod
    def from_config(cls, config: str | Path | Mapping | JobConfig, /, **changes: Any) -> Router:
        """`config`: a job config's YAML path, a mapping as such a file holds it, or a `JobConfig`.
        `changes`: top-level keys to replace (`output="s3://b/answers/"`, `models=[...]`) or sections
        to update key by key (`budget={"total": 250}`, `generation={"standin": True}`). Checked as
        `router run` checks a config: a mistake raises `ConfigError` with one line. `input` and
        `output` may be left out: the router then answers the Datasets it is given, and `run` takes
        its output folder as an argument."""
        raw = _raw(config)
        for key, value in changes.items():
            if isinstance(value, Mapping) and isinstance(raw.get(key), Mapping):
                raw[key] = {**raw[key], **value}
            else:
                raw[key] = value
        raw.setdefault("input", DATASET_INPUT)
        raw.setdefault("output", NO_OUTPUT)
        return cls(job_config_from_dict(raw))

    def _config(self, ds: Any, output: str | None, need_output: bool) -> JobConfig:
        cfg = self.config
        if ds is None and cfg.input == DATASET_INPUT:
            raise ConfigError("this router has no input file: give plan/run a Dataset, or input=PATH in its config")
        if ds is not None:
            cfg = dataclasses.replace(cfg, input=DATASET_INPUT)
        if output is not None:
            cfg = dataclasses.replace(cfg, output=str(output))
        if need_output and cfg.output == NO_OUTPUT:
            raise ConfigError("run needs an output folder (run(ds, output=PATH or URI), or output= in the config): "
                              "answers are committed there in shards, which is what lets a stopped job resume")  # fmt: skip
        return cfg

    def plan(self, ds: Any = None):
        """Route `ds` (a Ray Dataset; None: the config's input files) under the budget, without
        answering: a Dataset of every row once, with the input's columns, the text column, `id`, and
        `model`, `status`, `error`, `predicted_quality`, `predicted_cost`, `capabilities`, `domains`.
        Materialised (see the class)."""
        from router.job.output import routed_columns
        from router.job.plan import plan_job

        cfg = self._config(ds, None, need_output=False)
        self.result, assigned = plan_job(cfg, ds)
        self._last = cfg
        return assigned.map_batches(routed_columns, fn_kwargs=dict(text_column=cfg.text_column),
                                    batch_format="pyarrow", num_cpus=0.25)  # fmt: skip

    def run(self, ds: Any = None, output: str | None = None):
        """Route and answer `ds` (a Ray Dataset; None: the config's input files) into `output` (a
        folder, local or a URI: None, the config's), in waves re-solved on the actual spend; returns
        the answered rows read back from that folder, every input row once, with the plan's columns
        plus `response`, `input_tokens`, `output_tokens`, `actual_cost`, `finish_reason`. Write the
        Dataset on to any Ray Data sink.

        Resume: run again with the same output folder and the same rows; what is there is kept and
        only the rest is answered, with what is left of the budget. A Dataset input is not checked to
        be the one the folder was started with (a file input is): give it an id column, so that its
        rows keep their ids whatever the order of its blocks."""
        import ray

        from router.job.cluster import log
        from router.job.output import _fs, committed_files
        from router.job.run import run_job
        from router.report import write_report_folder

        cfg = self._config(ds, output, need_output=True)
        self.result = run_job(cfg, ds)
        self._last = cfg
        folder, files = write_report_folder(cfg.output, scan=self.result.scan)
        log(f"report: {folder}/ ({', '.join(files)})")
        fs, _ = _fs(cfg.output)
        return ray.data.read_parquet(committed_files(cfg.output), filesystem=fs)

    def summary(self) -> str:
        """The last plan's or run's summary, as `router plan|run` prints it."""
        from router.report import format_summary

        if self.result is None:
            raise RuntimeError("nothing to summarise yet: call plan or run first")
        return format_summary(self._last, self.result)
