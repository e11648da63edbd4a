"""Credentials never reach MLflow, Prefect or logs: ``redact`` masks them in any string, ``redact_tree`` in JSON."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_URI_CREDENTIALS = re.compile(r"(://[^/@\s:]+:)[^/@\s]+@")  # scheme://user:password@host
_SECRET_ASSIGNMENT = re.compile(r"(?i)((?:secret|password|passwd|token|access_key|api_key)\w*=)[^&\s,;]+")
_SECRET_KEY = re.compile(r"(?i)secret|password|passwd|credential|token$|access_key|api_key")


def redact(value: Any) -> str:
    """A string safe for params/tags/logs: ``user:password@`` in URIs and ``secret=...`` assignments are masked."""
    text = _URI_CREDENTIALS.sub(lambda m: f"{m.group(1)}***@", str(value))
    return _SECRET_ASSIGNMENT.sub(lambda m: f"{m.group(1)}***", text)


def redact_tree(data: Any, key: str = "") -> Any:
    """``redact`` every string of a JSON-like tree; string values under secret-looking keys are masked whole."""
    if isinstance(data, Mapping):
        return {k: redact_tree(v, str(k)) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [redact_tree(v, key) for v in data]
    if isinstance(data, str):
        return "***" if _SECRET_KEY.search(key) and data else redact(data)
    return data
