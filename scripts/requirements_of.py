"""Print the requirements of pyproject.toml's project with the given extras, one per line, for ``pip install -r``.

The image installs these before copying the code, so that a change to the code does not install every dependency
again. Extras that name the project itself (``vdcompress[data]``) are expanded in place.
"""

import sys
import tomllib
from collections.abc import Iterator


def requirements(project: dict, extras: list[str]) -> Iterator[str]:
    yield from project["dependencies"]
    yield from _expand(project, extras)


def _expand(project: dict, extras: list[str]) -> Iterator[str]:
    own = f"{project['name']}["
    for extra in extras:
        for requirement in project["optional-dependencies"][extra]:
            if requirement.startswith(own):
                yield from _expand(project, requirement[len(own):].rstrip("]").split(","))
            else:
                yield requirement


if __name__ == "__main__":
    pyproject, *wanted = sys.argv[1:]
    with open(pyproject, "rb") as file:
        print("\n".join(dict.fromkeys(requirements(tomllib.load(file)["project"], wanted))))
