"""Credentials never reach MLflow, Prefect, lineage output or error texts.

``redact`` masks them in any string, ``redact_tree`` in a JSON-like tree, ``credential_kinds`` says which kinds a
string carries (without the values) and ``refuse_credentials`` turns a config that carries any into one
``CredentialError``. URLs are PARSED, not matched by key names: the userinfo of ``scheme://user:pass@host`` (also
``https://TOKEN@host`` and a secret containing ``/``) is dropped whole, and the values of signed or secret query
parameters (AWS SigV2/SigV4, Azure SAS, Google signed URLs, ``token=``, ``api_key=`` ...) are masked by name. Free
text adds ``key=value`` / ``"key": "value"`` assignments under secret-ish names, ``Bearer`` tokens and AWS access
key ids (``AKIA...``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from franca_core.config import ConfigError

MASK = "***"

# Query parameters whose value is a secret (compared lower-case).
SECRET_PARAMS = frozenset({
    "x-amz-signature", "x-amz-credential", "x-amz-security-token", "awsaccesskeyid", "signature", "sig",
    "x-goog-signature", "x-goog-credential", "googleaccessid", "token", "access_token", "id_token", "refresh_token",
    "auth_token", "sas_token", "api_key", "apikey", "key", "password", "passwd", "secret", "client_secret",
    "x-api-key",
})
# Parameters that are part of a signature when one is present (Azure SAS fields, SigV2 Expires, SigV4 fields).
SIGNED_FAMILY = frozenset({
    "se", "sp", "sv", "st", "sr", "srt", "ss", "spr", "si", "sip", "skoid", "sktid", "skt", "ske", "sks", "skv",
    "sdd", "expires", "x-amz-date", "x-amz-expires", "x-amz-signedheaders", "x-amz-algorithm", "x-goog-date",
    "x-goog-expires", "x-goog-signedheaders", "x-goog-algorithm",
})
_SIGNATURES = frozenset({"x-amz-signature", "signature", "sig", "x-goog-signature"})

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>`]+")
_PORT_THEN_PATH = re.compile(r"[^:/]*:\d+(?:/|$)")  # host:8080/... is a port, not user:password
_SECRET_WORD = (r"(?:secret|passw(?:or)?d|pwd|token|api[_-]?key|access[_-]?key(?:[_-]?id)?|private[_-]?key|"
                r"account[_-]?key|credentials?|signature|sig|sas)")
_ASSIGNMENT = re.compile(rf"""(?ix)
    (?P<q>["']?)(?P<key>[A-Za-z0-9_.-]*{_SECRET_WORD}[A-Za-z0-9_.-]*)(?P=q)   # a secret-ish key, maybe quoted
    (?P<sep>\s*[:=]\s*)
    (?:"(?P<v1>[^"]*)"|'(?P<v2>[^']*)'|(?P<v3>[^\s"'&,;}}\]]+))""")
_KEY_THEN_SECRET = re.compile(rf"(?i)(?P<key>[A-Za-z0-9_.-]*{_SECRET_WORD}[A-Za-z0-9_.-]*)(?P<sep>\s+)"
                              r"(?P<value>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])")  # `--secret-key <40 chars>`
_BEARER = re.compile(r"(?i)\b(authorization\s*[:=]\s*[\"']?(?:[A-Za-z]+\s+)?|bearer\s+)([A-Za-z0-9._~+/=-]{8,})")
# An access key id, and what follows it after a colon (``KEY:SECRET`` echoed without its URL).
_AWS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b(?::[^\s\"'@]*)?")
_SECRET_PARTS = frozenset({"secret", "secrets", "password", "passwd", "pwd", "credential", "credentials",
                           "apikey", "signature", "sig", "passphrase"})
_SECRET_PAIRS = frozenset({("api", "key"), ("access", "key"), ("private", "key"), ("secret", "key"),
                           ("account", "key"), ("sas", "token"), ("session", "token"), ("security", "token")})


class CredentialError(ConfigError):
    """A config value carries a credential; the message names the key and the kind, never the value."""


def is_secret_key(name: str) -> bool:
    """True for key names that hold secrets (``aws_secret_access_key``, ``auth_token``), not ``max_tokens``."""
    parts = [p for p in re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()) if p]
    if not parts:
        return False
    if any(p in _SECRET_PARTS for p in parts) or any(pair in _SECRET_PAIRS for pair in zip(parts, parts[1:])):
        return True
    # `token` last names a secret (auth_token, hf_token); `user_agent_token` is the opt-out UA token, not one.
    return parts[-1] == "token" and (len(parts) == 1 or parts[-2] != "agent")


class _Found:
    """What one scan masked: the kinds (for messages) and the raw values (to scrub their echoes elsewhere)."""

    def __init__(self) -> None:
        self.kinds: set[str] = set()
        self.values: list[str] = []

    def add(self, kind: str, value: str) -> str:
        self.kinds.add(kind)
        self.values.append(value)
        return MASK


def _mask_query(query: str, found: _Found) -> str:
    """Mask the values of secret (and, when signed, signature-family) parameters; the rest stays byte for byte."""
    pairs = [item.partition("=") for item in re.split(r"([&;])", query)]
    names = {name.lower() for name, eq, _ in pairs if eq}
    signed = bool(names & _SIGNATURES)
    out = []
    for name, eq, value in pairs:
        low = name.lower()
        if eq and value and (low in SECRET_PARAMS or is_secret_key(name) or (signed and (
                low in SIGNED_FAMILY or low.startswith(("x-amz-", "x-goog-"))))):
            value = found.add("a signed URL" if signed else f"a secret query parameter ({name})", value)
        out.append(f"{name}{eq}{value}")
    return "".join(out)


def _userinfo_end(rest: str) -> int:
    """Index of the ``@`` ending the userinfo in ``rest`` (the URL after ``://``), or -1 when there is none.

    ``urlsplit`` ends the authority at the first ``/``, so a secret containing ``/`` (``s3://KEY:ab/cd@bucket``)
    would read as a path: an ``@`` before the query whose left side holds ``user:...`` (not ``host:port/``) counts.
    """
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if "@" in authority:
        return authority.rfind("@")
    head = re.split(r"[?#]", rest, maxsplit=1)[0]
    at = head.rfind("@")
    if at > 0 and ":" in head[:at] and not _PORT_THEN_PATH.match(head[:at]):
        return at
    return -1


def _redact_url(url: str, found: _Found) -> str:
    scheme, _, rest = url.partition("://")
    at = _userinfo_end(rest)
    if at >= 0:  # dropped whole: a user name alone (https://TOKEN@host) is often the token
        rest = f"{found.add('userinfo (user:password@ or token@) in a URL', rest[:at])}@{rest[at + 1:]}"
    body, hash_, fragment = rest.partition("#")
    path, q, query = body.partition("?")
    if q:
        query = _mask_query(query, found)
    if hash_ and "=" in fragment:  # OAuth implicit flows put access_token= in the fragment
        fragment = _mask_query(fragment, found)
    return f"{scheme}://{path}{q}{query}{hash_}{fragment}"


def _assignment(m: re.Match[str], found: _Found) -> str:
    quote = '"' if m.group("v1") is not None else "'" if m.group("v2") is not None else ""
    value = m.group("v1") if quote == '"' else m.group("v2") if quote else m.group("v3")
    if not value or value == MASK or not is_secret_key(m.group("key")):
        return m.group(0)
    masked = found.add(f"a secret assignment ({m.group('key')})", value)
    return f"{m.group('q')}{m.group('key')}{m.group('q')}{m.group('sep')}{quote}{masked}{quote}"


def _scan(text: str) -> tuple[str, _Found]:
    """The masked text and what was masked."""
    found = _Found()
    text = _URL.sub(lambda m: _redact_url(m.group(0), found), text)
    text = _ASSIGNMENT.sub(lambda m: _assignment(m, found), text)
    text = _KEY_THEN_SECRET.sub(lambda m: m.group(0) if not is_secret_key(m.group("key")) else
                                m.group("key") + m.group("sep") + found.add(f"a secret assignment ({m.group('key')})",
                                                                            m.group("value")), text)
    text = _BEARER.sub(lambda m: m.group(1) + found.add("an authorization header", m.group(2)), text)
    return _AWS_KEY_ID.sub(lambda m: found.add("an AWS access key id", m.group(0)), text), found


def _scrub(text: str, secrets: Iterable[str]) -> str:
    """Mask known secrets and their pieces: a library may echo part of one (botocore: a bucket name ``KEY:abc``
    cut at the secret's first ``/``)."""
    pieces = {p for s in secrets for p in [s, *re.split(r"[:/@]", s)] if len(p) >= 4 and p != MASK}
    for piece in sorted(pieces, key=len, reverse=True):
        text = text.replace(piece, MASK)
    return text


def redact(value: Any, known: str = "") -> str:
    """``str(value)`` safe for params, tags, logs and error texts: every credential in it masked as ``***``.

    ``known``: a text the value may echo pieces of (e.g. the URI an exception is about); the credentials found in
    it, and their ``:``/``/``-separated pieces, are masked in ``value`` wherever they appear.
    """
    text = _scan(str(value))[0]
    return _scrub(text, _scan(known)[1].values) if known else text


def credential_kinds(value: Any) -> list[str]:
    """The kinds of credentials ``value`` carries (e.g. ``["a signed URL"]``), never the values; empty when none."""
    return sorted(_scan(str(value))[1].kinds)


def redact_tree(data: Any, key: str = "") -> Any:
    """``redact`` every string of a JSON-like tree; string values under secret-named keys are masked whole."""
    if isinstance(data, Mapping):
        return {k: redact_tree(v, str(k)) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [redact_tree(v, key) for v in data]
    if isinstance(data, str):
        return MASK if data and is_secret_key(key) else redact(data)
    return data


def refuse_credentials(data: Any, where: str = "config") -> None:
    """Raise one ``CredentialError`` naming every key of ``data`` whose value carries a credential.

    Credentials stored in a config would travel into Prefect parameters, ``last-run.json``, MLflow and error texts;
    they belong in the environment (``AWS_*``, ``MLFLOW_TRACKING_USERNAME/PASSWORD``) or a Prefect secret block.
    """
    bad: dict[str, list[str]] = {}

    def walk(node: Any, path: str) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(v, f"{path}.{k}" if path else str(k))
        elif isinstance(node, list | tuple):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")
        elif isinstance(node, str) and (kinds := credential_kinds(node)):
            bad[path or "<value>"] = kinds

    walk(data, "")
    if bad:
        keys = "; ".join(f"'{k}' ({', '.join(v)})" for k, v in bad.items())
        raise CredentialError(
            f"{where} carries credentials at {keys}: refused, so that they never reach Prefect parameters, "
            "last-run.json, MLflow or logs. Give them through the environment (AWS_ACCESS_KEY_ID / "
            "AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN or an IAM role for S3; MLFLOW_TRACKING_USERNAME / "
            "MLFLOW_TRACKING_PASSWORD, MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_URI for MLflow) or a Prefect secret "
            "block, and put the plain URI (no user:password@ or token@, no signed query) in the config")
