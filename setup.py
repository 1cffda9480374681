"""Ship the top-level templates/, targets/ and firmware/ folders inside the wheel.

They stay at the top of the checkout (where people look for them); at wheel build time they are
copied to edgecomp/_data/ so an installed edgecomp finds them too (see edgecomp/resources.py).
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

DATA_DIRS = ("templates", "targets", "firmware")


class BuildPyWithData(build_py):
    def run(self) -> None:
        super().run()
        root = Path(__file__).parent
        for name in DATA_DIRS:
            dest = Path(self.build_lib) / "edgecomp" / "_data" / name
            if dest.exists():
                shutil.rmtree(dest)
            shutil.copytree(root / name, dest)


setup(cmdclass={"build_py": BuildPyWithData})
