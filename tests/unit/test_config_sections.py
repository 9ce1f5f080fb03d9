"""TrainConfig checks every value when it is built, naming the setting and the value found."""

import sys

import pytest

from securetrain.cli.app import main
from securetrain.cli.flags import with_flags
from securetrain.errors import ConfigError
from securetrain.train import KeySettings, TrainConfig
from securetrain.train.config import check_runnable

DATA = {"data": "builtin:breast-cancer"}


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("model", "resnet", "Model must be one of auto, logreg, mlp, cnn. Found 'resnet'."),
        ("accountant", "gdp", "Accountant must be one of pld, rdp. Found 'gdp'."),
        ("screen", "maybe", "Screen must be one of drop, warn, off. Found 'maybe'."),
        ("epsilon", float("nan"), "Epsilon must be a positive finite number. Found nan."),
        ("delta", 1.0, "Delta must be in (0, 1). Found 1.0."),
        ("batch_size", 0, "Batch size must be at least 1. Found 0."),
        ("lr", -0.1, "Lr must be > 0. Found -0.1."),
        ("test_fraction", 0.0, "Test fraction must be in (0, 1). Found 0.0."),
        ("checkpoint_every", 0, "Checkpoint interval must be at least 1 step. Found 0."),
        ("classes", ["yes"], "`classes` needs at least two classes. Found ['yes']."),
    ],
)
def test_a_bad_value_is_refused_when_the_config_is_built(setting, value, message) -> None:
    with pytest.raises(ConfigError) as refused:
        TrainConfig(**DATA, **{setting: value})
    assert str(refused.value) == message


def test_a_stored_flat_config_is_checked_too() -> None:
    with pytest.raises(ConfigError, match="Model must be one of .* Found 'vit'"):
        TrainConfig.model_validate({**DATA, "model": "vit", "epsilon": 1.0})


def test_combinations_and_required_settings() -> None:
    with pytest.raises(ConfigError, match="do not also give `epsilon`"):
        TrainConfig(**DATA, no_dp=True, epsilon=1.0)
    TrainConfig(resume="run-1")  # a resumed run takes its data and ε from the ledger
    with pytest.raises(ConfigError, match="An epsilon target is required"):
        check_runnable(TrainConfig(**DATA, out="b"))
    check_runnable(TrainConfig(**DATA, out="b", no_dp=True))


def test_the_sections_are_settings_of_their_own() -> None:
    config = TrainConfig(**DATA, key_dir="k", epsilon=2.0, epochs=3)
    assert isinstance(config, KeySettings)
    assert KeySettings(key_dir="k").key_dir == config.key_dir


def test_library_messages_name_settings_and_the_cli_shows_flags() -> None:
    with pytest.raises(ConfigError) as refused:
        TrainConfig(**DATA, no_dp=True, epsilon=1.0)
    library = str(refused.value)
    assert "--" not in library
    assert with_flags(library) == "--no-dp trains without privacy; do not also give --epsilon."
    assert with_flags("give `key_dir` or `schema_path`; run `securetrain keys new`") == (
        "give --key or --schema; run `securetrain keys new`"
    )


def test_the_cli_names_its_flags_for_the_same_error(tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "b"
    argv = ["securetrain", "train", "--data", DATA["data"], "--no-dp", "--epsilon", "1"]
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(out)])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "error: --no-dp trains without privacy; do not also give --epsilon."
    )
    assert not out.exists()


@pytest.mark.parametrize(
    ("settings", "flagged"),
    [
        ({"secagg": True, "aggregator": "median"}, "--secagg hides each site's update"),
        ({"attack": "sign-flip"}, "--attack sign-flip needs --malicious K with K >= 1."),
        ({"sites": 1}, "Federated training needs at least 2 sites. Found 1."),
    ],
)
def test_a_federated_setting_is_checked_when_built_and_names_its_settings(
    settings, flagged
) -> None:
    from securetrain.federated.config import FederatedConfig

    with pytest.raises(ConfigError) as refused:
        FederatedConfig(data="builtin:breast-cancer", **settings)
    assert "--" not in str(refused.value)
    assert flagged in with_flags(str(refused.value))
    valid = FederatedConfig(data="builtin:breast-cancer")
    with pytest.raises(ConfigError):
        FederatedConfig.model_validate({**valid.model_dump(), **settings})
