"""`make render` writes no secret value it finds in its environment: pods and the model server name Secrets instead."""

from __future__ import annotations

from pathlib import Path

import pytest

from .rendering import render

# Values that cannot occur by chance, in every variable that holds a credential where render runs.
PLANTED_SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAPLANTEDRENDER7Q3X",
    "AWS_SECRET_ACCESS_KEY": "planted-render-aws-secret-5f1c9e2b7d",
    "AWS_SESSION_TOKEN": "planted-render-aws-session-8a4e6b1f0c",
    "MLFLOW_TRACKING_TOKEN": "planted-render-mlflow-token-3d7a9c2e51",
    "MLFLOW_TRACKING_PASSWORD": "planted-render-mlflow-password-6b2f8d4a0e",
    "AIRFLOW__CORE__FERNET_KEY": "planted-render-fernet-key-9e5c1a7b3f",
}


def test_render_writes_no_secret_value_from_its_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in PLANTED_SECRETS.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "k8s"

    done = render(out, tmp_path)

    assert done.returncode == 0, done.stderr
    written = sorted(path for path in out.rglob("*") if path.is_file())
    assert any(path.parent.parent.name == "pods" for path in written), "render wrote no pod"
    for name, value in PLANTED_SECRETS.items():
        assert value not in done.stdout + done.stderr, f"render printed {name}"
        leaked = [str(path.relative_to(out)) for path in written if value in path.read_text(errors="replace")]
        assert not leaked, f"{name}'s value is written in {leaked}"
