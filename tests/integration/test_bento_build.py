"""`bentoml build` packs the ranker with everything it imports and the locked requirements."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.integration.conftest import ROOT, VENV_BIN

pytestmark = pytest.mark.integration


def test_bentoml_build_makes_a_bento_with_the_service_library_and_feature_repo(tmp_path):
    env = {**os.environ, "BENTOML_HOME": str(tmp_path)}
    build = subprocess.run(
        [str(VENV_BIN / "bentoml"), "build", "-f", "services/bentofile.yaml", "."],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    (bento,) = (p for p in (tmp_path / "bentos/ranker").iterdir() if p.is_dir())
    src = bento / "src"
    for path in ("services/ranker.py", "models/registry.py", "feature_repo/feature_services.py"):
        assert (src / path).is_file(), path
    assert "feast==" in (bento / "env/python/requirements.txt").read_text()
