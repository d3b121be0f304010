"""Secrets never reach a report: tokens, keys and credentials in URLs are masked."""

from __future__ import annotations

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
# Every secret above contains one of these; most strings contain none and skip the regexes.
_HINTS = ("@", "hf_", "gh", "sk-", "wandb_", "AKIA", "github_pat", "=")


def redact_text(text: str) -> str:
    if not any(h in text for h in _HINTS):
        return text
    text = _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    if "=" in text:
        text = _ASSIGNED.sub(lambda m: f"{m['name']}={MASK}", text)
    return _TOKENS.sub(MASK, text)


def redact(obj, key: str = ""):
    """A copy of a JSON-like object with secrets masked; values under secret-looking keys go entirely."""
    if isinstance(obj, dict):
        return {k: redact(v, str(k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v, key) for v in obj]
    if isinstance(obj, str):
        if key and SECRET_NAME.search(key) and obj:
            return MASK
        return redact_text(obj)
    return obj


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
