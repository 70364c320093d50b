"""Ray job entry point: route only (assignment and predicted spend, no generation).

    ray job submit --working-dir . -- python jobs/plan.py jobs/configs/open9.yaml \
        input=s3://bucket/prompts.parquet budget.total=250 [--json plan.json]

The same as `router plan CONFIG [key=value ...]`.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from router.cli import run_and_exit  # noqa: E402

if __name__ == "__main__":
    run_and_exit(["plan", *sys.argv[1:]])
