import pytest

from tunelab.config import load_settings
from tunelab.errors import ConfigError


def test_file_then_env_then_config_dict(isolated_env, monkeypatch, tmp_path):
    isolated_env.write_text("backend: transformers\ndevice: cpu\naliases:\n  a/b: gemma-3-270m\n")
    settings = load_settings()
    assert settings.backend == "transformers" and settings.aliases == {"a/b": "gemma-3-270m"}
    monkeypatch.setenv("TUNELAB_BACKEND", "llama_cpp")
    assert load_settings().backend == "llama_cpp"
    assert load_settings({"backend": "auto"}).backend == "auto"
    assert load_settings({"aliases": {"c/d": "x"}}).aliases == {"a/b": "gemma-3-270m", "c/d": "x"}


def test_tunelab_home_and_config_env_vars(isolated_env, monkeypatch, tmp_path):
    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path / "home"))
    settings = load_settings()
    assert settings.home == tmp_path / "home" and settings.config_file == isolated_env


def test_lamini_keys_dotted_and_nested(monkeypatch):
    s = load_settings({"production.key": "k1", "production.url": "http://h:1"})
    assert (s.production_key, s.production_url) == ("k1", "http://h:1")
    s = load_settings({"production": {"key": "k2"}})
    assert s.production_key == "k2" and s.production_url is None
    monkeypatch.setenv("TUNELAB_API_KEY", "from-env")
    assert load_settings().production_key == "from-env"
    assert load_settings({"production.key": "given"}).production_key == "given"


def test_bad_yaml_names_the_file_and_line(isolated_env):
    isolated_env.write_text("aliases:\n  a: b\n  bad: [unclosed\n")
    with pytest.raises(ConfigError, match=rf"{isolated_env}:\d+: not valid YAML"):
        load_settings()


def test_unknown_or_wrong_fields_are_named(isolated_env):
    isolated_env.write_text("backnd: transformers\n")
    with pytest.raises(ConfigError, match="backnd"):
        load_settings()
    isolated_env.write_text("backend: tensorflow\n")
    with pytest.raises(ConfigError, match="backend"):
        load_settings()
    isolated_env.write_text("remote:\n  chat-gpt:\n    model: gpt-3.5-turbo\n")
    with pytest.raises(ConfigError, match=r"remote\.chat-gpt\.base_url"):
        load_settings()
    with pytest.raises(ConfigError, match="production.secret"):
        load_settings({"production": {"secret": 1}})


def test_dtype_from_file_env_and_config_and_a_bad_one_is_named(isolated_env, monkeypatch):
    assert load_settings().dtype == "auto"
    isolated_env.write_text("dtype: float32\n")
    assert load_settings().dtype == "float32"
    monkeypatch.setenv("TUNELAB_DTYPE", "bfloat16")
    assert load_settings().dtype == "bfloat16"
    assert load_settings({"dtype": "float16"}).dtype == "float16"
    with pytest.raises(ConfigError, match="dtype"):
        load_settings({"dtype": "fp8"})
