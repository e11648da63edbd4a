"""The one place that keeps every library of the stack off the network (../shared/STACK.md, "Network").

Ray, Prefect, MLflow and albumentations phone home by default. ``offline_env()`` returns the variables that stop
them; ``apply_offline_env()`` sets them in this process (children inherit them). The CLI calls it at start-up and
the test configuration calls it before anything is imported, so no script sets these on its own.
"""

from __future__ import annotations

import os
from pathlib import Path

OFFLINE_ENV: dict[str, str] = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # keeps Ray's node IP on 127.0.0.1, not eth0
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "HF_HUB_OFFLINE": "1",
    "WANDB_MODE": "disabled",
}

# Ray's dashboard probes cloud metadata endpoints unless $HOME of the Ray processes holds this file.
RAY_BOOTSTRAP = "provider: {type: local}\n"


def state_dir() -> Path:
    """The project's local state folder (pid files, logs, Ray's HOME); ``FRANCA_STATE_DIR`` overrides it."""
    return Path(os.environ.get("FRANCA_STATE_DIR", Path.cwd() / ".franca")).resolve()


def ray_home() -> Path:
    """A HOME for Ray processes holding ``ray_bootstrap_config.yaml`` with a local provider."""
    home = state_dir() / "ray-home"
    home.mkdir(parents=True, exist_ok=True)
    bootstrap = home / "ray_bootstrap_config.yaml"
    if not bootstrap.exists():
        bootstrap.write_text(RAY_BOOTSTRAP)
    return home


def offline_env() -> dict[str, str]:
    """The environment variables that keep Ray, Prefect, MLflow and friends on 127.0.0.1."""
    return dict(OFFLINE_ENV)


def apply_offline_env() -> None:
    """Set the offline variables in this process unless the user set them explicitly."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
