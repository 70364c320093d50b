"""Ray job entry point: route and generate.

    ray job submit --working-dir . -- python jobs/run.py jobs/configs/open9.yaml \
        input=s3://bucket/prompts.parquet output=s3://bucket/answers/ budget.total=250

The same as `router run CONFIG [key=value ...]`, for clusters where the package is not installed
as a command: the working directory carries it.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from router.cli import run_and_exit  # noqa: E402

if __name__ == "__main__":
    run_and_exit(["run", *sys.argv[1:]])
