"""What a job checks before Ray starts: the profiles know the pool and the encoder, the input's
files and columns exist. Each error says in one line what to change."""

from __future__ import annotations

from router.config import JobConfig
from router.errors import ConfigError
from router.method.profiles import Profiles, load_profiles
from router.stages.read import plan_read


def check_profiles(cfg: JobConfig) -> Profiles:
    try:
        profiles = load_profiles(cfg.profiles)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(str(e)) from None
    unknown = [m for m in cfg.model_names if m not in profiles.models]
    if unknown:
        raise ConfigError(
            f"unknown model {unknown[0]!r}: the profiles ({cfg.profiles}) know {', '.join(profiles.models)}; "
            "profile it with `router profile` or remove it from the pool"
        )
    from router.backends.encoder import encoder_name

    if encoder_name(cfg.encoder.model) != profiles.encoder:
        raise ConfigError(
            f"the profiles were built with encoder {profiles.encoder!r} but encoder.model is "
            f"{cfg.encoder.model!r}; use the same encoder for both"
        )
    return profiles


def validate_job(cfg: JobConfig, dataset: bool = False) -> Profiles:
    """Everything that can be checked before Ray starts: files, columns, profiles. `dataset`: the
    input is a Ray Dataset (`router.Router`), whose columns are checked as it is read."""
    profiles = check_profiles(cfg)
    if not dataset:
        check_group_column(cfg, plan_read(cfg.input, cfg.text_column, cfg.id_column)[1])
    return profiles


def check_group_column(cfg: JobConfig, columns: list[str]) -> None:
    """`budget.group_column`, if set, is a column of the input."""
    group = cfg.budget.group_column
    if group is not None and group not in (*columns, cfg.text_column, cfg.id_column):
        raise ConfigError(
            f"budget.group_column {group!r} is not a column of the input (columns: {', '.join(columns)}); "
            "name one of them, or leave it unset to route every row on its own"
        )
