"""`router profile show`: a profile file as a user reads it before trusting a router: each model's
capability and knowledge profile side by side (and its price, given a job config), which model
wins each capability and domain, as a table in the terminal and a heatmap picture."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from router.method.profiles import Profiles


@dataclass(frozen=True)
class ProfileView:
    """The rows a profile is read by: its capabilities, then its knowledge domains (and tasks)."""

    models: tuple[str, ...]
    groups: tuple[str, ...]
    """Per row: `capability`, `domain` or `task`."""
    names: tuple[str, ...]
    values: np.ndarray
    """float [rows, models]: the model's profile on that element."""

    @classmethod
    def of(cls, profiles: Profiles) -> ProfileView:
        groups = ["capability"] * len(profiles.capability_names) + ["domain"] * len(profiles.domain_names)
        names = [*profiles.capability_names, *profiles.domain_names]
        values = [profiles.cap, profiles.know]
        if profiles.task_profile is not None and len(profiles.tasks):
            groups += ["task"] * len(profiles.tasks)
            names += list(profiles.tasks)
            values.append(profiles.task_profile)
        return cls(profiles.models, tuple(groups), tuple(names), np.vstack(values).astype(np.float64))

    @property
    def winners(self) -> np.ndarray:
        """Per row, the index of the model with the highest profile (the first on a tie)."""
        return np.argmax(self.values, axis=1)

    def wins(self) -> dict[str, Counter]:
        """Per group, how many of its elements each model wins."""
        out: dict[str, Counter] = {}
        for group, w in zip(self.groups, self.winners):
            out.setdefault(group, Counter())[self.models[w]] += 1
        return out


PLURAL = {"capability": "capabilities", "domain": "domains", "task": "tasks"}


def _short(name: str, width: int) -> str:
    return name if len(name) <= width else name[: width - 1] + "~"


def format_profile(profiles: Profiles, prices: Mapping[str, tuple[float, float]] | None = None) -> str:
    """The profile as a table: a row per capability and domain, a column per model (numbered, with
    a key below), the winner of each row marked `*`; then each model's wins and, given prices (USD
    per 1M input and output tokens), its price."""
    view = ProfileView.of(profiles)
    width = 7
    head = f"{'':11} {'element':28}" + "".join(f"{f'm{j + 1}':>{width}}" for j in range(len(view.models)))
    lines = [head]
    if prices:
        for k, label in enumerate(("USD/1M in", "USD/1M out")):
            cells = "".join(
                f"{prices[m][k]:>{width}.3g}" if m in prices else f"{'-':>{width}}" for m in view.models
            )
            lines.append(f"{'price':11} {label:28}" + cells)
    for group, name, row, w in zip(view.groups, view.names, view.values, view.winners):
        cells = "".join(f"{v:>{width - 1}.3f}{'*' if j == w else ' '}" for j, v in enumerate(row))
        lines.append(f"{group:11} {_short(name, 28):28}" + cells)
    lines.append("* the model whose profile is highest on that element: the one routing favours there, all else equal")
    wins = view.wins()
    for j, m in enumerate(view.models):
        won = ", ".join(f"{wins[g][m]} {g if wins[g][m] == 1 else PLURAL[g]}" for g in wins if wins[g][m])
        price = f"; {prices[m][0]:g} / {prices[m][1]:g} USD per 1M tokens in / out" if prices and m in prices else ""
        lines.append(f"  m{j + 1} = {m}: wins {won or 'nothing'}{price}")
    return "\n".join(lines)


def plot_profile(profiles: Profiles, path: str, prices: Mapping[str, tuple[float, float]] | None = None) -> None:
    """A heatmap of the profile (rows: capabilities, then domains; columns: models), each row's
    winner outlined, written as a PNG to `path`; with prices, the models are labelled with them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    view = ProfileView.of(profiles)
    n_rows, n_models = view.values.shape
    fig, ax = plt.subplots(figsize=(2.2 + 0.9 * n_models, 1.6 + 0.26 * n_rows))
    # Each row centred on its own mean: what a profile says is which model is better where, and the
    # spread between elements (hard or easy) would drown it.
    centred = view.values - view.values.mean(axis=1, keepdims=True)
    limit = float(np.abs(centred).max()) or 1.0
    image = ax.imshow(centred, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
    for i, w in enumerate(view.winners):
        ax.add_patch(plt.Rectangle((w - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1.6))
    labels = []
    for m in view.models:
        price = f"\n{prices[m][0]:g}/{prices[m][1]:g} USD" if prices and m in prices else ""
        labels.append(m + price)
    ax.set_xticks(range(n_models), labels, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(n_rows), [f"{g[:3]}: {n}" for g, n in zip(view.groups, view.names)], fontsize=8)
    first_domain = view.groups.index("domain") if "domain" in view.groups else n_rows
    ax.axhline(first_domain - 0.5, color="black", linewidth=1)
    ax.set_title("profile minus the row's mean (outlined: the row's best model)" + ("; prices per 1M tokens in/out" if prices else ""),
                 fontsize=9)  # fmt: skip
    fig.colorbar(image, ax=ax, shrink=0.6, label="profile - row mean")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
