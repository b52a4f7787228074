"""docs/configuration.md names every environment variable the settings read."""

import re
from pathlib import Path

from django.conf import settings

BASE = Path(settings.BASE_DIR)
READER = re.compile(r"\benv_(?:str|bool|int|float|list|choice|networks)\(\s*\"([A-Z][A-Z0-9_]*)\"")


def test_every_variable_the_settings_read_is_documented():
    read = set(READER.findall((BASE / "orchestrator/settings.py").read_text()))
    assert {"DATABASE_URL", "METRICS_TOKEN", "LOG_FORMAT"} <= read  # the pattern finds the readers
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]*)`", (BASE / "docs/configuration.md").read_text()))
    missing = sorted(read - documented)
    assert not missing, f"add to docs/configuration.md: {', '.join(missing)}"
