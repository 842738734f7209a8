import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def pytest_collection_modifyitems(config, items):
    for item in items:
        item.add_marker(pytest.mark.live)


@pytest.fixture(autouse=True)
def _needs_root():
    if os.geteuid() != 0:
        pytest.skip("live tests load BPF programs: they need root (CAP_BPF+CAP_PERFMON)")
