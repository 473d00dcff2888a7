from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from deepvibe.config import Config, apply_overrides, config_from_dict, load_config
from deepvibe.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _keys(d: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= _keys(v, path + ".")
        else:
            out.add(path)
    return out


def test_default_yaml_documents_every_key_with_its_default() -> None:
    raw = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    assert _keys(raw) == _keys(Config().to_dict())
    assert load_config(ROOT / "configs" / "default.yaml") == Config()


def test_design_defaults() -> None:
    c = Config()
    assert c.data.max_tracks == 10_000
    assert len(c.data.feature_columns) == 12
    assert c.model.latent == 256
    assert c.model.activation == "selu"
    # Departures from the original design (40, 50), chosen by the Last.fm ablation:
    assert c.train.positive_weight == 10.0
    assert c.train.epochs == 100


@pytest.mark.parametrize("name", ["toy.yaml", "lastfm.yaml", "default.yaml"])
def test_shipped_configs_validate(name: str) -> None:
    load_config(ROOT / "configs" / name)


def test_unknown_key_names_dotted_path() -> None:
    with pytest.raises(ConfigError, match=r"train\.kl\.cylces: unknown key"):
        config_from_dict({"train": {"kl": {"cylces": 3}}})


def test_out_of_range_names_key_and_value() -> None:
    with pytest.raises(ConfigError, match=r"train\.kl\.cycles: .*greater than 0.*got 0"):
        config_from_dict({"train": {"kl": {"cycles": 0}}})


def test_wrong_type_names_key() -> None:
    with pytest.raises(ConfigError, match=r"model\.latent: .*integer.*'big'"):
        config_from_dict({"model": {"latent": "big"}})


def test_section_that_is_not_a_mapping() -> None:
    with pytest.raises(ConfigError, match=r"^config: train: "):
        config_from_dict({"train": 5})


def test_set_overrides_are_parsed_as_yaml_and_validated() -> None:
    cfg = load_config(None, ["train.kl.cycles=7", "model.hidden=[64, 32]", "data.features=null"])
    assert cfg.train.kl.cycles == 7
    assert cfg.model.hidden == (64, 32)
    assert cfg.data.features is None
    with pytest.raises(ConfigError, match=r"train\.lr"):
        load_config(None, ["train.lr=-1"])
    with pytest.raises(ConfigError, match="expected section.key=value"):
        apply_overrides({}, ["train.lr"])


def test_config_is_frozen() -> None:
    cfg = Config()
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises ValidationError
        cfg.train.epochs = 3  # type: ignore[misc]


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: YAML syntax error at line \d+"):
        load_config(bad)
