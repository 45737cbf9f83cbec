"""success_detector settings: environment variables -> SuccessDetectorConfig, errors that name the
variable to fix, and ``python -m mtopt.success_detector --help-config``."""

from __future__ import annotations

import pytest

from mtopt.serving.config import ConfigError
from mtopt.success_detector import load_config
from mtopt.success_detector.__main__ import main

P = "MTOPT_SUCCESS_DETECTOR_"


def test_defaults_and_overrides_from_environment():
    config = load_config({})
    assert (config.port, config.image_size, config.channels, config.backend, config.device) == (50052, 64, 32, "local", "cpu")
    config = load_config({P + "PORT": "6000", P + "REGISTRY_ADDRESS": "dns:///mtopt-model-registry:50055", P + "DEVICE": "auto",
                          P + "TRAIN_STEPS": "200", P + "BACKEND": "s3", P + "S3_ENDPOINT": "minio:9000",
                          "MTOPT_S3_ACCESS_KEY": "a", "MTOPT_S3_SECRET_KEY": "b"})
    assert (config.port, config.train_steps, config.s3_access_key) == (6000, 200, "a")
    assert config.torch_device() in ("cpu", "cuda")


@pytest.mark.parametrize("env, variable", [
    ({P + "PORT": "x"}, P + "PORT"),
    ({P + "IMAGE_SIZE": "30"}, P + "IMAGE_SIZE"),
    ({P + "DEVICE": "tpu"}, P + "DEVICE"),
    ({P + "EVAL_FRACTION": "1.0"}, P + "EVAL_FRACTION"),
    ({P + "TRAIN_STEPS": "0"}, P + "TRAIN_STEPS"),
    ({P + "TOWER_STEM": "patch8"}, P + "TOWER_STEM"),
    ({P + "BACKEND": "s3"}, P + "S3_ENDPOINT"),
    ({P + "BACKEND": "s3", P + "S3_ENDPOINT": "minio:9000"}, "MTOPT_S3_ACCESS_KEY"),
    ({P + "REGISTRY_ADDRESS": ""}, P + "REGISTRY_ADDRESS"),
])
def test_errors_name_the_variable(env, variable):
    with pytest.raises(ConfigError, match=variable):
        load_config(env)


def test_help_config_lists_every_variable(capsys):
    assert main(["--help-config"]) == 0
    out = capsys.readouterr().out
    for name in ("PORT", "REGISTRY_ADDRESS", "BACKEND", "IMAGE_SIZE", "TRAIN_STEPS", "DEVICE", "MAX_LOADED_VERSIONS"):
        assert P + name in out
    assert "MTOPT_TASKS" in out and "MTOPT_S3_ACCESS_KEY" in out


def test_configuration_error_exits_2(monkeypatch, capsys):
    monkeypatch.setenv(P + "DEVICE", "tpu")
    assert main([]) == 2
    assert P + "DEVICE" in capsys.readouterr().err
