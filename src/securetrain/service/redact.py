"""What the service's responses and job records say of the server: no directory of its own (the
data directory, the key set, the results, ``$SECURETRAIN_HOME``), no other absolute path and no
store password. A dataset appears by its path relative to the data directory, as it was
registered; any other file by its name alone."""

from __future__ import annotations

import re
from typing import Any

from securetrain.service.settings import ServiceSettings
from securetrain.store.engine import redact_url, securetrain_home

PART = r"[\w.@+=%~-]"
ABSOLUTE = re.compile(rf"(?<![\w.~:/$-])/(?:{PART}+/)+({PART}*)")


def redact(text: str, settings: ServiceSettings) -> str:
    """``text`` with the server's paths and any store password taken out."""
    roots = {settings.data_dir: "", settings.data_dir.resolve(): ""}
    for path, label in (
        (settings.key_dir, "$KEYS"),
        (settings.results_dir or securetrain_home() / "service-results", "$RESULTS"),
        (securetrain_home(), "$SECURETRAIN_HOME"),
    ):
        roots[path] = roots[path.resolve()] = label
    for root in sorted(roots, key=lambda p: len(str(p)), reverse=True):
        label = roots[root]
        text = text.replace(f"{root}/", f"{label}/" if label else "").replace(
            str(root), label or "$DATA"
        )
    return ABSOLUTE.sub(r"\1", redact_url(text))


def redact_doc(doc: Any, settings: ServiceSettings) -> Any:
    """Every string in a JSON document, redacted."""
    if isinstance(doc, str):
        return redact(doc, settings)
    if isinstance(doc, dict):
        return {k: redact_doc(v, settings) for k, v in doc.items()}
    if isinstance(doc, list):
        return [redact_doc(v, settings) for v in doc]
    return doc
