"""Credential redaction and refusal (tasks/common/redact.py): every common secret shape, and what must stay intact.

The secrets below are AWS's documented example keys and made-up values; the S3 endpoint of the storage test is a
closed port on 127.0.0.1 and the bucket name fails botocore's client-side check first, so nothing is sent anywhere.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import s3fs

from franca_cli.main import main
from franca_core.config import PROFILES, load_config
from tasks.common.redact import CredentialError, credential_kinds, redact, redact_tree, refuse_credentials
from tasks.common.store import StorageError, open_store

KEY_ID = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"  # 40 characters, with `/` like real AWS secrets

# (text, fragments that must be gone, a word of the kind reported)
SHAPES = [
    (f"s3://{KEY_ID}:{SECRET}@bucket/runs/x", [KEY_ID, "wJalrXUtnFEMI", "bPxRfiCYEXAMPLEKEY"], "userinfo"),
    ("https://ghp_T0kenOnly123@github.com/o/r.git", ["ghp_T0kenOnly123"], "userinfo"),
    ("postgresql://franca:hunter2pw@127.0.0.2:5432/mlflow", ["hunter2pw", "franca:"], "userinfo"),
    ("see https://b.s3.amazonaws.com/k.parquet?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential="
     f"{KEY_ID}%2F20250101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20250101T000000Z&X-Amz-Expires=3600"
     "&X-Amz-Security-Token=FwoGZXIvYXdzEJr&X-Amz-SignedHeaders=host&X-Amz-Signature=0a1b2c3d4e5f for the file",
     [KEY_ID, "FwoGZXIvYXdzEJr", "0a1b2c3d4e5f"], "signed"),
    (f"https://b.s3.amazonaws.com/k?AWSAccessKeyId={KEY_ID}&Expires=1700000000&Signature=vjbyPxybd%2FZ9",
     [KEY_ID, "vjbyPxybd", "1700000000"], "signed"),
    ("https://acct.blob.core.windows.net/c/x.parquet?sv=2022-11-02&ss=b&sp=r&se=2025-01-01T00:00:00Z&spr=https"
     "&sig=AbC%2Bdef%3DsAsSig", ["AbC%2Bdef%3DsAsSig", "2025-01-01T00"], "signed"),
    ("https://storage.googleapis.com/b/o?GoogleAccessId=sa@p.iam.gserviceaccount.com&Expires=1700000000"
     "&Signature=gSig%2Fabc", ["sa@p.iam", "gSig"], "signed"),
    ("https://storage.googleapis.com/b/o?X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Credential=sa%40p%2F20250101"
     "&X-Goog-Signature=9f8e7d6c", ["sa%40p", "9f8e7d6c"], "signed"),
    ("https://h/x?token=tok3nValue&a=1", ["tok3nValue"], "token"),
    ("https://h/x?access_token=acc3ss&page=2", ["acc3ss"], "access_token"),
    ("https://maps.example/api?key=AIzaSyExample&q=cat", ["AIzaSyExample"], "key"),
    ("https://h/x?api_key=ap1k3y&password=pw0rd&secret=s3cr3t", ["ap1k3y", "pw0rd", "s3cr3t"], "secret"),
    ("https://app.example/cb#access_token=fr4gT0k&state=1", ["fr4gT0k"], "access_token"),
    (f"botocore: aws_secret_access_key={SECRET} aws_access_key_id={KEY_ID}", [SECRET[:13], KEY_ID], "assignment"),
    ('{"user": "franca", "password": "hunter 2 with spaces"}', ["hunter 2"], "password"),
    ("{'aws_session_token': 'IQoJb3JpZ2luX2VjE/xyz'}", ["IQoJb3JpZ2luX2VjE"], "session_token"),
    ("db:\n  password: yamlPassw0rd\n", ["yamlPassw0rd"], "password"),
    (f"aws configure set --aws-secret-access-key {SECRET}", [SECRET[:13]], "secret"),
    (f"Invalid bucket name \"{KEY_ID}:wJalrXUtnFEMI\"", [KEY_ID, "wJalrXUtnFEMI"], "access key id"),
    ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig", ["eyJhbGciOiJIUzI1NiJ9"], "authorization"),
]


@pytest.mark.parametrize(("text", "gone", "kind"), SHAPES, ids=[s[2] + f"-{i}" for i, s in enumerate(SHAPES)])
def test_redact__masks_every_secret_shape(text: str, gone: list[str], kind: str) -> None:
    out = redact(text)
    assert "***" in out
    for fragment in gone:
        assert fragment not in out, (fragment, out)
    kinds = credential_kinds(text)
    assert any(kind in k for k in kinds), kinds
    assert not any(fragment in k for k in kinds for fragment in gone), "a kind echoed the secret"


def test_redact__keeps_what_is_not_a_secret() -> None:
    plain = ["0123456789abcdef0123456789abcdef01234567",  # a git commit (40 hex)
             "sha256 " + "ab" * 32, "run 5f2c7e9a1b3d4c6e8f0a1b2c3d4e5f60",
             "http://127.0.0.1:8080/images/a@2x.jpg", "http://host:8080/users/@me",
             "https://h/x.parquet?q=cat&page=2&Expires=1700000000",  # Expires alone signs nothing
             "kmeans_max_tokens=5 user_agent_token=franca-pipeline", "s3://bucket/runs/x", "file:///data/urls.parquet",
             "design=plain; signal=ok"]
    for text in plain:
        assert redact(text) == text and credential_kinds(text) == [], text


def test_redact__signed_query_keeps_unrelated_parameters_and_the_path() -> None:
    out = redact("https://acct.blob.core.windows.net/c/x.parquet?comp=list&sv=2022&sig=abc")
    assert out == "https://acct.blob.core.windows.net/c/x.parquet?comp=list&sv=***&sig=***"
    assert redact(f"s3://{KEY_ID}:{SECRET}@bucket/a/b?versionId=3") == "s3://***@bucket/a/b?versionId=3"


def test_redact__known_text_scrubs_echoed_pieces() -> None:
    root = "s3://minio:my/secret-part@bucket/x"  # botocore echoes the 'bucket' minio:my, cut at the first /
    assert redact('Invalid bucket name "minio:my"', known=root) == 'Invalid bucket name "***:my"'
    assert "secret-part" not in redact("... secret-part ...", known=root)


def test_redact_tree__masks_secret_keys_and_strings_keeps_numbers() -> None:
    tree = redact_tree({"aws_secret_access_key": "hunter2", "storage_options": {"token": "t0k", "key_count": 3},
                        "kmeans_max_tokens": 5, "user_agent_token": "franca-pipeline",
                        "uris": ["http://u:hunter2@127.0.0.2/x", "s3://b/k?X-Amz-Signature=ff&X-Amz-Date=1"]})
    assert "hunter2" not in json.dumps(tree) and "t0k" not in json.dumps(tree) and "ff&" not in json.dumps(tree)
    assert tree["kmeans_max_tokens"] == 5 and tree["storage_options"]["key_count"] == 3
    assert tree["user_agent_token"] == "franca-pipeline"


def test_flat_params__mlflow_params_carry_no_secret() -> None:
    from tasks.common.tracking import flat_params

    params = flat_params({"eval": {"datasets": [f"s3://{KEY_ID}:{SECRET}@bucket/eval.parquet"]},
                          "storage": {"root": "https://ghp_T0kenOnly123@127.0.0.2/x"},
                          "tracking": {"mlflow_token": "t0k3n"}, "train": {"seed": 3}})
    text = json.dumps(params)
    assert not any(s in text for s in (KEY_ID, "wJalrXUtnFEMI", "ghp_T0kenOnly123", "t0k3n")), text
    assert params["train.seed"] == "3" and "bucket/eval.parquet" in params["eval.datasets"]


def test_refuse_credentials__names_keys_never_values() -> None:
    for profile in PROFILES:  # the shipped configs carry none
        refuse_credentials(load_config(profile).model_dump(mode="json"))
    cfg = load_config("tiny", [f"storage.root=s3://{KEY_ID}:{SECRET}@bucket/x",
                               "tracking.tracking_uri=https://franca:hunter2pw@127.0.0.2/"])
    with pytest.raises(CredentialError) as err:
        refuse_credentials(cfg.model_dump(mode="json"))
    text = str(err.value)
    assert "'storage.root'" in text and "'tracking.tracking_uri'" in text and "environment" in text
    assert not any(s in text for s in (KEY_ID, "wJalrXUtnFEMI", "hunter2pw")), text


def test_franca_run__refuses_credentials_before_anything_is_stored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FRANCA_STATE_DIR", str(tmp_path))
    code = main(["run", "--profile", "tiny", f"storage.root=s3://{KEY_ID}:{SECRET}@bucket/x"])
    err = capsys.readouterr().err
    assert code == 2 and "storage.root" in err and "environment" in err
    assert KEY_ID not in err and "wJalrXUtnFEMI" not in err
    assert not (tmp_path / "last-run.json").exists(), "the parameters were stored"


def test_franca_config_error__is_redacted(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                          tmp_path: Path) -> None:
    monkeypatch.setenv("FRANCA_STATE_DIR", str(tmp_path))
    code = main(["run", "--profile", "tiny", "train.seed=https://franca:hunter2pw@127.0.0.2/"])  # echoed as (got ...)
    err = capsys.readouterr().err
    assert code == 2 and "train.seed" in err and "hunter2pw" not in err, err


def test_open_store__error_text_carries_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")  # closed: nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "dummy")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "dummy")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        with pytest.raises(StorageError) as err:
            open_store(f"s3://{KEY_ID}:{SECRET}@bucket/runs")
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
    text = str(err.value)
    assert "unreachable or unusable" in text and err.value.__cause__ is None and err.value.__suppress_context__
    for piece in (KEY_ID, *SECRET.split("/")):
        assert piece not in text, text
