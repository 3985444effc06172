"""The wheel carries the Hydra configs: ``conf/`` (their one copy, at the repository's top) becomes ``splml/conf``.

Everything else is declared in pyproject.toml. An installed splml finds its configs there
(:func:`splml.config.config_dir`) and runs outside the repository; an editable install keeps
reading the repository's ``conf/``, so nothing is copied for it.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

CONF = Path(__file__).resolve().parent / "conf"


class BuildPyWithConfigs(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        if not (CONF / "train.yaml").is_file():
            raise FileNotFoundError(f"{CONF} holds no train.yaml: the wheel would have no configs")
        target = Path(self.build_lib) / "splml" / "conf"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(CONF, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildPyWithConfigs})
