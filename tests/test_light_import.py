import subprocess
import sys

import pytest


@pytest.mark.timeout(60)
def test_import_router_loads_no_heavy_package():
    code = (
        "import sys, router, router.cli, router.config, router.job.plan, router.job.run, router.report, router.backends.generators, router.backends.encoder;"
        "heavy = [m for m in ('torch', 'vllm', 'sentence_transformers', 'ray', 'transformers') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import router loaded {out.stdout.strip()}"


@pytest.mark.timeout(60)
def test_public_api():
    import numpy as np

    import router

    p = router.load_profiles("open9")
    assert len(p.models) == 9
    emb = np.random.default_rng(0).normal(size=(10, p.dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    q = p.score(emb)
    assert q.shape == (10, 9) and q.dtype == np.float32 and np.isfinite(q).all()
