import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pytest


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Unit tests never read or write the machine's /var/cache/netpath."""
    monkeypatch.setenv("NETPATH_CACHE", str(tmp_path / "cache"))
    # as root an untrusted NETPATH_CACHE falls back to the system cache: never the machine's here
    from netpath.kernel import cache

    monkeypatch.setattr(cache, "SYSTEM_CACHE", tmp_path / "system-cache")
