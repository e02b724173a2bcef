from pathlib import Path

import pytest

from kbot.errors import ConfigError
from kbot.settings import load_settings


def test_defaults_are_embedded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings()
    assert s.database_url is None and s.qdrant_url is None
    assert s.sql_url == f"sqlite+aiosqlite:///{tmp_path / '.kbot' / 'kbot.db'}"
    assert s.edge_path == Path(".kbot") / "qdrant"


def test_env_overrides_config_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "kbot.toml"
    config.write_text('chunk_tokens = 300\ndata_dir = "/srv/kbot"\n')
    s = load_settings(config)
    assert (s.chunk_tokens, s.data_dir) == (300, Path("/srv/kbot"))
    monkeypatch.setenv("KBOT_CHUNK_TOKENS", "500")
    assert load_settings(config).chunk_tokens == 500
    monkeypatch.setenv("KBOT_CONFIG", str(config))
    assert load_settings().data_dir == Path("/srv/kbot")


def test_bad_values_are_one_readable_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KBOT_CHUNK_TOKENS", "ten")
    with pytest.raises(ConfigError, match="chunk_tokens"):
        load_settings()


def test_overlap_must_be_smaller_than_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KBOT_CHUNK_TOKENS", "64")
    monkeypatch.setenv("KBOT_CHUNK_OVERLAP_TOKENS", "64")
    with pytest.raises(ConfigError, match="overlap"):
        load_settings()


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_unknown_keys_are_rejected(tmp_path: Path) -> None:
    config = tmp_path / "kbot.toml"
    config.write_text("chunk_tokns = 300\n")
    with pytest.raises(ConfigError, match="chunk_tokns"):
        load_settings(config)
