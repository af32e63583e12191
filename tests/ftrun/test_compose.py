"""ftrun.compose.compose: the one way every entry point composes a config."""

from __future__ import annotations

import pytest

from ftrun.compose import CONF_PATH, compose, conf_dir
from ftrun.config import ConfigError


def test_composes_from_the_package_with_or_without_hydras_node():
    assert CONF_PATH == "pkg://ftrun.conf" and (conf_dir() / "config.yaml").is_file()
    cfg = compose(["method=qlora", "lr=1e-4"])
    assert cfg.method.name == "qlora" and cfg.optimizer.lr == 1e-4 and "hydra" not in cfg
    with_hydra = compose(["lr=1e-4"], return_hydra_config=True)
    assert with_hydra.hydra.sweeper._target_.endswith("FtrunSweeper")
    assert "optimizer.lr=1e-4" in with_hydra.hydra.overrides.task  # the short spelling reached its home


@pytest.mark.parametrize(("override", "named"), [
    ("method=qlorra", "method/qlorra"),
    ("epochs=abc", "epochs=abc"),
    ("nosuchkey=1", "nosuchkey"),
    ("optimizer.name=lion", "optimizer.name=lion"),
])
def test_a_mistake_is_a_config_error_naming_the_override(override, named):
    with pytest.raises(ConfigError) as err:
        compose([override])
    assert named in str(err.value) and "HYDRA_FULL_ERROR" not in str(err.value)


def test_works_inside_a_running_hydra_app_and_leaves_it_as_it_was(tmp_path):
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    (tmp_path / "app.yaml").write_text("x: 1\n")
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        before = GlobalHydra.instance().hydra
        assert compose(["rank=8"]).method.rank == 8
        assert GlobalHydra.instance().hydra is before


def test_another_config_folder(tmp_path):
    import shutil

    shutil.copytree(conf_dir(), tmp_path / "conf", ignore=shutil.ignore_patterns("__pycache__", "__init__.py"))
    (tmp_path / "conf" / "method" / "mine.yaml").write_text("name: lora\nrank: 4\n")
    assert compose(["method=mine"], config_dir=tmp_path / "conf").method.rank == 4
