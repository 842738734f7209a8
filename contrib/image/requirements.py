"""The image's PyPI requirements: pyproject's runtime dependencies minus those Debian's packages satisfy.

contrib/image/packages installs python3-bcrypt and python3-yaml; everything else pyproject names comes
from PyPI (Debian bookworm's click, rich, pyroute2 and prometheus-client are older than its pins).
"""

import sys
import tomllib

FROM_DEBIAN = {"bcrypt", "pyyaml"}


def main(path: str) -> None:
    with open(path, "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    for dep in deps:
        name = dep.split(">")[0].split("<")[0].split("=")[0].strip().lower()
        if name not in FROM_DEBIAN:
            print(dep)


if __name__ == "__main__":
    main(sys.argv[1])
