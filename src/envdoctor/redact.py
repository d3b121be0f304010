"""Secrets never reach a report: tokens, keys and credentials in URLs are masked."""

from __future__ import annotations

import functools
import re

MASK = "***"
_PATTERNS = [
    re.compile(r"\bhf_[A-Za-z0-9]{20,}\b"),                 # Hugging Face tokens
    re.compile(r"\b(?:ghp|gho|ghu|ghs|ghr|github_pat)_[A-Za-z0-9_]{20,}\b"),  # GitHub tokens
    re.compile(r"\bsk-[A-Za-z0-9_-]{20,}\b"),               # OpenAI-style keys
    re.compile(r"\bwandb_v1_[A-Za-z0-9_]{20,}\b"),                # W&B keys
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),                    # AWS access key ids
]
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?!git@)(?P<userinfo>[^/@\s:]+(?::[^/@\s]*)?)@", re.I)
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL", re.I)


_TOKENS = re.compile("|".join(p.pattern for p in _PATTERNS))
# name=value where the name says secret: URL query parameters (?token=…&sig=…, signed S3/Azure URLs) and
# environment assignments in logs (HF_TOKEN=…). The value goes up to the next separator.
_ASSIGNED = re.compile(r"(?P<name>\b[\w.-]*?(?:token|secret|passwd|password|api_?key|access_?key|private_?key|"
                       r"credentials?|signature|sig|auth))=(?P<value>[^\s&#\"'<>;,]+)", re.I)
# What each regex cannot match without, searched in C on the text as it is at that step, so skipping a regex
# never changes the result: a report holds ~1000 requirement strings with "=" ("numpy>=1.17") and no secret.
_TOKEN_HINT = re.compile(r"hf_|gh[opusr]_|github_pat_|sk-|wandb_v1_|AKIA")
_SECRET_WORDS = ("token", "secret", "passwd", "password", "apikey", "api_key", "accesskey", "access_key",
                 "privatekey", "private_key", "credential", "credentials", "signature", "sig", "auth")


def _may_assign(text: str) -> bool:
    """Whether _ASSIGNED can match: some "=" right after a secret word. Non-ASCII text goes to the regex
    (re.I folds a few non-ASCII letters onto ASCII ones, str.lower does not)."""
    if not text.isascii():
        return True
    low = text.lower()
    i = low.find("=")
    while i != -1:
        if low.endswith(_SECRET_WORDS, 0, i):
            return True
        i = low.find("=", i + 1)
    return False


def redact_text(text: str) -> str:
    if "@" in text and "://" in text:
        text = _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    if "=" in text and _may_assign(text):
        text = _ASSIGNED.sub(lambda m: f"{m['name']}={MASK}", text)
    if _TOKEN_HINT.search(text):
        text = _TOKENS.sub(MASK, text)
    return text


def redact(obj, key: str = ""):
    """A copy of a JSON-like object with secrets masked; values under secret-looking keys go entirely."""
    if isinstance(obj, dict):
        return {k: redact(v, str(k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v, key) for v in obj]
    if isinstance(obj, str):
        if key and obj and _secret_key(key):
            return MASK
        return redact_text(obj)
    return obj


@functools.lru_cache(maxsize=1024)
def _secret_key(key: str) -> bool:  # a report repeats few keys thousands of times
    return SECRET_NAME.search(key) is not None


class RedactedLog:
    """A log file that secrets never reach: every write goes through redact_text (pip freeze lines carry
    direct URLs with tokens; tools echo their environment)."""

    def __init__(self, path, mode: str = "a") -> None:
        self._fh = open(path, mode, encoding="utf-8")

    def write(self, text: str) -> int:
        return self._fh.write(redact_text(text))

    def flush(self) -> None:
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "RedactedLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
