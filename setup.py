"""Adds the ``.pth`` bootstrap to the wheel root (pyproject.toml holds everything else)."""

import os

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = "sglang_sm120.pth"


class BuildPyWithPth(build_py):
    def run(self) -> None:
        super().run()
        self.copy_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), PTH),
                       os.path.join(self.build_lib, PTH))


setup(cmdclass={"build_py": BuildPyWithPth})
