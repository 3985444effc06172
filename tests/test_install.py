"""splml as an installed tool: the wheel carries its configs and commands and runs outside the repository.

The wheel is built from a copy of the sources and installed into a fresh virtual environment; the
libraries it depends on are this environment's (a ``.pth`` file points at them: nothing is
downloaded), so the test sees exactly what an install brings: the package, ``splml/conf`` and the
console scripts. Then, from an empty folder outside the repository: ``splml-train debug=fast``
(whose run folder must stay under 20 MB, and whose synthetic cache must hold only the patches it
used), every command's ``--help``, and Hydra's tab completion of ``splml-train``.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from .image_support import REPO

COMMANDS = ("splml-train", "splml-eval", "splml-report", "splml-annotate", "splml-predict", "splml-export")
#: What debug=fast may write into its run folder.
MAX_RUN_FOLDER_BYTES = 20 * 1024 * 1024


def _run(args: list, *, cwd: Path, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, f"{args}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A fresh venv with the built wheel installed (dependencies borrowed), and an environment without the repository."""
    base = tmp_path_factory.mktemp("install")
    source = base / "source"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "conf", source / "conf")
    shutil.copytree(REPO / "src" / "splml", source / "src" / "splml", ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",) and not k.startswith("SPLML_")}
    _run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-q", "-w", base / "dist"],
         cwd=source, env=env)  # fmt: skip
    (wheel,) = (base / "dist").glob("splml-*.whl")
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=base, env=env)
    python = venv / "bin" / "python"
    venv_site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=base,
                          env=env).stdout.strip())  # fmt: skip
    # torch & co. from this environment, after the venv's own site-packages (where splml goes).
    (venv_site / "borrowed_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "--ignore-installed",
          "-q", wheel], cwd=base, env=env)  # fmt: skip
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["WANDB_MODE"] = "offline"
    return venv, env


@pytest.mark.slow
def test_the_installed_package_has_its_configs_and_no_repository_on_its_path(installed, tmp_path):
    venv, env = installed
    probe = (
        "import json, splml, splml.config as c; "
        "print(json.dumps([splml.__file__, str(c.config_dir()), c.is_source_checkout(), str(c.default_root_dir())]))"
    )
    where, conf, checkout, root = json.loads(_run([venv / "bin" / "python", "-c", probe], cwd=tmp_path, env=env).stdout)
    assert Path(where).is_relative_to(venv) and not Path(where).is_relative_to(REPO)
    assert Path(conf) == Path(where).parent / "conf" and (Path(conf) / "train.yaml").is_file()
    assert not checkout and Path(root) == tmp_path  # outputs default to the working directory


def test_environment_variables_move_the_outputs(monkeypatch, tmp_path):
    """``SPLML_ROOT_DIR`` moves logs, data and cache together; ``SPLML_<LOG|DATA|CACHE>_DIR`` each one of them."""
    from hydra import compose, initialize_config_dir

    from splml.config import config_dir, register_resolvers

    def paths(**env: str) -> dict[str, str]:
        for name in ("SPLML_ROOT_DIR", "SPLML_LOG_DIR", "SPLML_DATA_DIR", "SPLML_CACHE_DIR"):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        register_resolvers()
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose("train", return_hydra_config=True)
        return {key: cfg.paths[key] for key in ("root_dir", "log_dir", "data_dir", "cache_dir")} | {
            "run_dir": cfg.hydra.run.dir
        }

    root = tmp_path / "root"
    moved = paths(SPLML_ROOT_DIR=str(root))
    assert moved["root_dir"] == str(root) and moved["log_dir"] == str(root / "logs")
    assert moved["data_dir"] == str(root / "data") and moved["cache_dir"] == str(root / ".cache")
    assert moved["run_dir"].startswith(str(root / "logs" / "train" / "runs"))
    one = paths(SPLML_ROOT_DIR=str(root), SPLML_CACHE_DIR=str(tmp_path / "cache"))
    assert one["cache_dir"] == str(tmp_path / "cache") and one["log_dir"] == str(root / "logs")


@pytest.mark.slow
def test_every_command_answers_help(installed, tmp_path):
    venv, env = installed
    for command in COMMANDS:
        proc = _run([venv / "bin" / command, "--help"], cwd=tmp_path, env=env, timeout=120)
        assert command in proc.stdout or "usage" in proc.stdout.lower(), command
    assert "dataset: aid, ben" in _run([venv / "bin" / "splml-train", "--help"], cwd=tmp_path, env=env).stdout


@pytest.mark.slow
def test_hydra_tab_completion_of_the_console_scripts(installed, tmp_path):
    venv, env = installed
    script = _run([venv / "bin" / "splml-train", "-sc", "install=bash"], cwd=tmp_path, env=env).stdout
    assert "splml-train" in script and "COMP_LINE" in script
    options = _run([venv / "bin" / "splml-train", "-sc", "query=bash"], cwd=tmp_path,
                   env={**env, "COMP_LINE": "splml-train data"}).stdout.split()  # fmt: skip
    assert "dataset=" in options
    options = _run([venv / "bin" / "splml-train", "-sc", "query=bash"], cwd=tmp_path,
                   env={**env, "COMP_LINE": "splml-train dataset=sy"}).stdout.split()  # fmt: skip
    assert options == ["dataset=synthetic"]
    for command, typed, expected in (("splml-predict", "on_e", "on_error="), ("splml-export", "form", "format=")):
        options = _run([venv / "bin" / command, "-sc", "query=bash"], cwd=tmp_path,
                       env={**env, "COMP_LINE": f"{command} {typed}"}).stdout.split()  # fmt: skip
        assert options == [expected], command


@pytest.mark.slow
def test_debug_fast_trains_outside_the_repository_writing_under_20_mb(installed, tmp_path):
    venv, env = installed
    _run([venv / "bin" / "splml-train", "debug=fast", "trainer.enable_progress_bar=false", "~callbacks.progress_bar"],
         cwd=tmp_path, env=env, timeout=900)  # fmt: skip
    (results,) = (tmp_path / "logs" / "train" / "runs").glob("*/results.json")
    assert json.loads(results.read_text())["status"] == "completed"
    assert json.loads(results.read_text())["provenance"]["git"] is None  # an installed copy: no checkout
    size = folder_bytes(results.parent)
    assert size < MAX_RUN_FOLDER_BYTES, f"debug=fast wrote {size / 2**20:.1f} MB into {results.parent}"
    # Only the 64 + 32 + 32 patches the run reads were generated, in the working directory's cache.
    (dataset,) = (tmp_path / ".cache" / "synthetic").glob("reben-synthetic-*")
    assert dataset.name.endswith("-first-64-32-32")
    import pyarrow.parquet as pq

    assert pq.read_table(dataset / "metadata.parquet").num_rows == 128
    assert not any(p.name in ("logs", ".cache") for p in (venv / "lib").rglob("*") if p.is_dir())
