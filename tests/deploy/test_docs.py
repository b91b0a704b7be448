"""docs/deployment.md describes every deployment file and the one object the operator creates."""

from __future__ import annotations

from tests.deploy.helpers import DEPLOY, EXTERNAL_SECRETS, REPO

DOCS = REPO / "docs" / "deployment.md"


def test_every_deployment_file_is_described() -> None:
    docs = DOCS.read_text()
    files = [REPO / "Dockerfile", REPO / ".dockerignore", REPO / ".hadolint.yaml",
             *(p for p in DEPLOY.rglob("*") if p.is_file())]
    for path in files:
        folder = path.parent.relative_to(REPO).as_posix()
        named = path.relative_to(REPO).as_posix() in docs or (path.name in docs and folder in docs)
        assert named, f"docs/deployment.md does not say what {path.relative_to(REPO)} is for"


def test_docs_say_how_to_create_the_expected_secret() -> None:
    docs = DOCS.read_text()
    for secret in EXTERNAL_SECRETS:
        assert f"create secret generic {secret}" in docs
