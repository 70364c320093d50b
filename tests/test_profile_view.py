"""`router profile show`: a profile's models side by side, the winner of each element, prices
from a job config, and the heatmap picture."""

import pytest

from conftest import run_cli
from router.config import load_config
from router.method.profiles import load_profiles

pytestmark = pytest.mark.timeout(120)

CONFIG = "jobs/configs/local.yaml"


def test_show_prints_every_model_and_one_winner_per_element_and_draws_it(tmp_path):
    picture = tmp_path / "open9.png"
    r = run_cli("profile", "show", "open9", "--config", CONFIG, "--plot", str(picture))
    assert r.returncode == 0, r.stderr
    cfg = load_config(CONFIG, ["input=x", "output=y"])
    profiles = load_profiles("open9").select(cfg.model_names)
    rows = [line for line in r.stdout.splitlines() if line.startswith(("capability ", "domain "))]
    assert len(rows) == len(profiles.capability_names) + len(profiles.domain_names)
    assert all(line.count("*") == 1 for line in rows)
    # Each element's mark sits on the model with the highest profile there.
    values = [*profiles.cap, *profiles.know]
    for line, row in zip(rows, values):
        cells = line.split()[-len(cfg.models):]
        assert cells[int(row.argmax())].endswith("*")
    for j, m in enumerate(cfg.models):
        assert f"m{j + 1} = {m.name}: wins" in r.stdout and f"{m.input_price:g} / {m.output_price:g} USD" in r.stdout
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_show_of_a_missing_profile_is_one_line():
    r = run_cli("profile", "show", "no-such-profile.npz")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "not found" in r.stderr
