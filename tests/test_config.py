"""RLMConfig: defaults, FSRLM_* variables, the TOML file, precedence and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
import typing
from pathlib import Path
from types import SimpleNamespace

import pytest
from fsrlm.executors.configs import (
    EXECUTOR_TYPES,
    DockerExecutorConfig,
    ExecutorConfig,
    LocalExecutorConfig,
    RemoteDockerExecutorConfig,
)
from fsrlm.executors.registry import create_executor, executor_names
from pydantic import BaseModel, ValidationError

from fsrlm.config import ModelPrice, RLMConfig, build_config, load_config
from fsrlm.errors import ConfigError

# One valid FSRLM_<FIELD> string per RLMConfig field, and what it must become.
# Every value differs from the default, so "it took effect" is observable.
ENV_VALUES: dict[str, tuple[str, object]] = {
    "max_tokens_per_subcall": ("2000", 2000),
    "max_depth": ("3", 3),
    "max_scripts": ("7", 7),
    "max_subcalls_per_script": ("3", 3),
    "max_total_subcalls": ("42", 42),
    "max_budget_usd": ("1.5", 1.5),
    "subcall_concurrency": ("4", 4),
    "submodel": ("my-submodel", "my-submodel"),
    "root_model": ("my-root-model", "my-root-model"),
    "max_turns": ("9", 9),
    "timeout_seconds": ("12.5", 12.5),
    "use_bedrock": ("true", True),
    "bedrock_model": ("bedrock-root", "bedrock-root"),
    "bedrock_submodel": ("bedrock-sub", "bedrock-sub"),
    "workspace_dir": ("/tmp/fsrlm-runs", Path("/tmp/fsrlm-runs")),
    "preserve_workspace": ("true", True),
    "cache_responses": ("false", False),
    "cache_dir": ("/tmp/fsrlm-cache", Path("/tmp/fsrlm-cache")),
    "max_concurrent_nested": ("5", 5),
    "prices": ('{"my-model": {"input_per_mtok": 0.5, "output_per_mtok": 2}}',
               {"my-model": ModelPrice(input_per_mtok=0.5, output_per_mtok=2)}),
    "unknown_model_price": ('{"input_per_mtok": 30, "output_per_mtok": 150}',
                            ModelPrice(input_per_mtok=30, output_per_mtok=150)),
}
SCALAR_FIELDS = sorted(set(RLMConfig.model_fields) - {"executor", "upstream", "policy"})  # tables: TOML only


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# -- defaults --------------------------------------------------------------------------


def test_defaults() -> None:
    config = load_config(env={})
    assert config == RLMConfig()
    assert config.max_tokens_per_subcall == 1000
    assert config.max_depth == 1
    assert config.max_scripts == 20
    assert config.max_subcalls_per_script == 100
    assert config.max_total_subcalls == 1000
    assert config.max_budget_usd == 25.0  # config.DEFAULT_BUDGET_USD: one pass over a 50 MB log fits
    assert config.subcall_concurrency == 8
    assert config.submodel == "claude-haiku-4-5"
    assert config.root_model == "claude-sonnet-4-5"
    assert config.max_turns == 50
    assert config.timeout_seconds == 1800.0
    assert config.use_bedrock is False
    assert config.bedrock_model is None and config.bedrock_submodel is None
    assert config.workspace_dir is None
    assert config.preserve_workspace is False
    assert config.cache_responses is True
    assert config.cache_dir is None
    assert config.executor == DockerExecutorConfig()  # untrusted input is the default case
    assert config.upstream.type == "anthropic"
    assert config.upstream.base_url is None and config.upstream.api_key is None
    assert config.effective_root_model == "claude-sonnet-4-5"
    assert config.effective_submodel == "claude-haiku-4-5"


def test_default_cache_dir_follows_xdg(isolated_env: Path) -> None:
    # isolated_env points XDG_CACHE_HOME into a temp dir: the user's cache is never touched
    assert RLMConfig().effective_cache_dir == isolated_env / "cache" / "fsrlm"
    assert RLMConfig(cache_dir=Path("/x/y")).effective_cache_dir == Path("/x/y")


# -- FSRLM_* variables -----------------------------------------------------------------


def test_env_table_covers_every_field() -> None:
    assert sorted(ENV_VALUES) == SCALAR_FIELDS, "add the new RLMConfig field to ENV_VALUES"
    defaults = RLMConfig()
    for name, (_, expected) in ENV_VALUES.items():
        assert getattr(defaults, name) != expected, f"{name}: pick a value that differs from the default"


@pytest.mark.parametrize("field", SCALAR_FIELDS)
def test_every_field_settable_from_env(field: str) -> None:
    raw, expected = ENV_VALUES[field]
    config = load_config(env={f"FSRLM_{field.upper()}": raw})
    assert getattr(config, field) == expected
    defaults = RLMConfig()
    changed = [name for name in SCALAR_FIELDS if name != field and getattr(config, name) != getattr(defaults, name)]
    assert changed == []


def test_all_fields_from_env_at_once() -> None:
    env = {f"FSRLM_{name.upper()}": raw for name, (raw, _) in ENV_VALUES.items()}
    config = load_config(env=env)
    for name, (_, expected) in ENV_VALUES.items():
        assert getattr(config, name) == expected, name


def test_issue_examples_from_env() -> None:
    config = load_config(env={
        "FSRLM_MAX_SUBCALLS_PER_SCRIPT": "3",
        "FSRLM_PRESERVE_WORKSPACE": "true",
        "FSRLM_CACHE_RESPONSES": "false",
    })
    assert config.max_subcalls_per_script == 3
    assert config.preserve_workspace is True
    assert config.cache_responses is False


def test_empty_env_value_is_ignored() -> None:
    assert load_config(env={"FSRLM_MAX_TURNS": "", "FSRLM_EXECUTOR": ""}).max_turns == 50


def test_env_read_from_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FSRLM_MAX_TURNS", "11")
    assert load_config().max_turns == 11


def test_executor_from_env_name() -> None:
    config = load_config(env={"FSRLM_EXECUTOR": "docker"})
    assert isinstance(config.executor, DockerExecutorConfig)
    assert config.executor.type == "docker"


def test_executor_from_env_json() -> None:
    raw = json.dumps({"type": "remote-docker", "host": "ssh://me@box", "memory": "4g", "cpus": 2})
    config = load_config(env={"FSRLM_EXECUTOR": raw})
    assert isinstance(config.executor, RemoteDockerExecutorConfig)
    assert (config.executor.host, config.executor.memory, config.executor.cpus) == ("ssh://me@box", "4g", 2.0)


def test_executor_env_invalid_json() -> None:
    with pytest.raises(ConfigError, match="FSRLM_EXECUTOR"):
        load_config(env={"FSRLM_EXECUTOR": "{not json"})


def test_upstream_from_env() -> None:
    config = load_config(env={
        "FSRLM_UPSTREAM": "compatible",
        "FSRLM_UPSTREAM_BASE_URL": "http://127.0.0.1:9999",
        "FSRLM_UPSTREAM_API_KEY": "sk-secret",
        "FSRLM_UPSTREAM_AWS_REGION": "eu-west-1",
    })
    assert config.upstream.type == "compatible"
    assert config.upstream.base_url == "http://127.0.0.1:9999"
    assert config.upstream.api_key is not None
    assert config.upstream.api_key.get_secret_value() == "sk-secret"
    assert "sk-secret" not in repr(config) and "sk-secret" not in str(config.upstream)
    assert config.upstream.aws_region == "eu-west-1"


def test_upstream_from_env_json_and_base_url_alone() -> None:
    config = load_config(env={"FSRLM_UPSTREAM": '{"type": "bedrock", "max_retries": 2}'})
    assert (config.upstream.type, config.upstream.max_retries) == ("bedrock", 2)
    config = load_config(env={"FSRLM_UPSTREAM_BASE_URL": "http://gw"})
    assert (config.upstream.type, config.upstream.base_url) == ("anthropic", "http://gw")


def test_unknown_upstream_type() -> None:
    with pytest.raises(ConfigError, match="upstream.type"):
        load_config(env={"FSRLM_UPSTREAM": "openai"})


# -- the TOML file and precedence ------------------------------------------------------


def test_fsrlm_table_and_flat_file(tmp_path: Path) -> None:
    table = write_toml(tmp_path / "table.toml", "[fsrlm]\nmax_turns = 12\n\n[fsrlm.executor]\ntype = 'docker'\n"
                                                "memory = '3g'\n")
    flat = write_toml(tmp_path / "flat.toml", "max_turns = 12\n[executor]\ntype = 'docker'\nmemory = '3g'\n")
    for path in (table, flat):
        config = load_config(path, env={})
        assert config.max_turns == 12
        assert isinstance(config.executor, DockerExecutorConfig) and config.executor.memory == "3g"


def test_upstream_table_in_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path / "f.toml", "[upstream]\ntype = 'compatible'\nbase_url = 'http://a'\n")
    config = load_config(path, env={"FSRLM_UPSTREAM_API_KEY": "k"})
    assert (config.upstream.type, config.upstream.base_url) == ("compatible", "http://a")
    assert config.upstream.api_key is not None and config.upstream.api_key.get_secret_value() == "k"


def test_precedence_defaults_toml_env_overrides(tmp_path: Path) -> None:
    path = write_toml(tmp_path / "fsrlm.toml", "max_turns = 10\nmax_scripts = 4\nsubmodel = 'from-toml'\n")
    env = {"FSRLM_MAX_TURNS": "20", "FSRLM_MAX_SCRIPTS": "6"}
    assert load_config(env={}).max_turns == 50
    assert load_config(path, env={}).max_turns == 10
    assert load_config(path, env=env).max_turns == 20
    config = load_config(path, env=env, overrides={"max_turns": 30})
    assert config.max_turns == 30  # overrides win
    assert config.max_scripts == 6  # env beats the file
    assert config.submodel == "from-toml"  # the file beats the default
    assert config.root_model == "claude-sonnet-4-5"  # untouched default
    # an override of None (an unset command-line flag) does not erase lower layers
    assert load_config(path, env=env, overrides={"max_turns": None}).max_turns == 20


def test_executor_precedence_replaces_a_table_of_another_type(tmp_path: Path) -> None:
    path = write_toml(tmp_path / "f.toml", "[executor]\ntype = 'docker'\nmemory = '4g'\ncpus = 2\n")
    # same type: fields merge
    config = load_config(path, env={"FSRLM_EXECUTOR": '{"type": "docker", "cpus": 3}'})
    assert isinstance(config.executor, DockerExecutorConfig)
    assert (config.executor.memory, config.executor.cpus) == ("4g", 3.0)
    # another type: the file's docker-only fields do not leak into the local config
    config = load_config(path, env={}, overrides={"executor": {"type": "local"}})
    assert config.executor == LocalExecutorConfig()


def test_default_file_and_fsrlm_config_variable(tmp_path: Path, isolated_env: Path) -> None:
    # isolated_env made a temp dir the working directory
    write_toml(isolated_env / "fsrlm.toml", "max_turns = 13\n")
    assert load_config(env={}).max_turns == 13
    other = write_toml(tmp_path / "other.toml", "max_turns = 14\n")
    assert load_config(env={"FSRLM_CONFIG": str(other)}).max_turns == 14


def test_missing_and_invalid_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", env={})
    bad = write_toml(tmp_path / "bad.toml", "max_turns = = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, env={})


# -- clear errors ----------------------------------------------------------------------


def test_unknown_key_names_it(tmp_path: Path) -> None:
    path = write_toml(tmp_path / "f.toml", "[fsrlm]\nmax_turns = 3\nmax_turnz = 4\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert "max_turnz" in str(info.value)
    with pytest.raises(ConfigError, match="bogus"):
        load_config(env={}, overrides={"bogus": 1})


def test_unknown_executor_field_names_it() -> None:
    with pytest.raises(ConfigError, match="memmory"):
        load_config(env={"FSRLM_EXECUTOR": '{"type": "docker", "memmory": "1g"}'})


def test_negative_limit_names_field_and_env_var() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={"FSRLM_MAX_SCRIPTS": "-1"})
    message = str(info.value)
    assert "max_scripts" in message and "FSRLM_MAX_SCRIPTS" in message
    assert "-1" in message
    assert isinstance(info.value, ValueError)  # ConfigError is a ValueError too


@pytest.mark.parametrize("field", ["max_tokens_per_subcall", "max_scripts", "max_subcalls_per_script",
                                   "max_total_subcalls", "subcall_concurrency", "max_turns", "timeout_seconds",
                                   "max_budget_usd", "max_depth"])
def test_every_limit_rejects_negative(field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        load_config(env={f"FSRLM_{field.upper()}": "-1"})


def test_not_a_number_names_field() -> None:
    with pytest.raises(ConfigError, match="max_turns"):
        load_config(env={"FSRLM_MAX_TURNS": "many"})


def test_several_errors_reported_together() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={"FSRLM_MAX_TURNS": "0", "FSRLM_MAX_DEPTH": "9"})
    assert "max_turns" in str(info.value) and "max_depth" in str(info.value)


def test_unknown_executor_type_lists_valid_ones() -> None:
    for source in ({"env": {"FSRLM_EXECUTOR": "k8s"}}, {"env": {}, "overrides": {"executor": {"type": "k8s"}}}):
        with pytest.raises(ConfigError) as info:
            load_config(**source)
        message = str(info.value)
        assert "k8s" in message
        for name in EXECUTOR_TYPES:
            assert name in message


def test_build_config_wraps_validation_errors() -> None:
    with pytest.raises(ConfigError, match="max_turns"):
        build_config({"max_turns": 0})
    with pytest.raises(ConfigError, match="max_turns"):  # RLMConfig(...) loads like load_config
        RLMConfig(max_turns=0)
    with pytest.raises(ValidationError):  # model_validate is pydantic's own, exact validation
        RLMConfig.model_validate({"max_turns": 0})


# -- Bedrock switch --------------------------------------------------------------------


def test_use_bedrock_switches_upstream_and_models() -> None:
    config = load_config(env={"FSRLM_USE_BEDROCK": "true", "FSRLM_BEDROCK_MODEL": "br-root",
                              "FSRLM_BEDROCK_SUBMODEL": "br-sub"})
    assert config.upstream.type == "bedrock"
    assert config.effective_root_model == "br-root"
    assert config.effective_submodel == "br-sub"


def test_bedrock_models_ignored_without_bedrock() -> None:
    config = RLMConfig(bedrock_model="br-root", bedrock_submodel="br-sub")
    assert config.upstream.type == "anthropic"
    assert (config.effective_root_model, config.effective_submodel) == ("claude-sonnet-4-5", "claude-haiku-4-5")


def test_bedrock_without_bedrock_model_names_keeps_the_plain_ones() -> None:
    config = RLMConfig(use_bedrock=True, root_model="r", submodel="s")
    assert config.upstream.type == "bedrock"
    assert (config.effective_root_model, config.effective_submodel) == ("r", "s")


def test_upstream_type_bedrock_alone_uses_bedrock_models() -> None:
    config = load_config(env={"FSRLM_UPSTREAM": "bedrock", "FSRLM_BEDROCK_MODEL": "br-root"})
    assert config.effective_root_model == "br-root"


def test_use_bedrock_on_assignment() -> None:
    config = RLMConfig()
    config.use_bedrock = True
    assert config.upstream.type == "bedrock"


# -- executor configs and the registry -------------------------------------------------


def executor_config_classes() -> list[type[BaseModel]]:
    union = typing.get_args(ExecutorConfig)[0]  # Annotated[Union[...], Field(discriminator=...)]
    return list(typing.get_args(union))


def test_every_executor_config_is_typed_and_strict() -> None:
    classes = executor_config_classes()
    assert {LocalExecutorConfig, DockerExecutorConfig, RemoteDockerExecutorConfig} <= set(classes)
    literals = []
    for cls in classes:
        field = cls.model_fields["type"]
        assert typing.get_origin(field.annotation) is typing.Literal, cls.__name__
        (value,) = typing.get_args(field.annotation)
        assert field.default == value, cls.__name__
        assert cls.model_config.get("extra") == "forbid", cls.__name__
        with pytest.raises(ValidationError):
            cls(unexpected_field=1)
        literals.append(value)
    assert sorted(literals) == sorted(EXECUTOR_TYPES)


def test_executor_union_is_discriminated_on_type() -> None:
    config = RLMConfig.model_validate({"executor": {"type": "remote-docker", "host": "tcp://h:2376"}})
    assert isinstance(config.executor, RemoteDockerExecutorConfig)
    with pytest.raises(ValidationError):
        RLMConfig.model_validate({"executor": {"type": "local", "memory": "1g"}})  # a docker-only field


def test_registry_names_match_config_types() -> None:
    assert executor_names() == list(EXECUTOR_TYPES)


def test_registry_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ConfigError) as info:
        create_executor(SimpleNamespace(type="k8s"))
    message = str(info.value)
    assert "k8s" in message
    for name in executor_names():
        assert name in message


def test_registry_builds_local_executor() -> None:
    from fsrlm.executors.local import LocalExecutor

    assert isinstance(create_executor(LocalExecutorConfig()), LocalExecutor)


def test_import_fsrlm_does_not_import_docker() -> None:
    code = ("import fsrlm, fsrlm.config, fsrlm.executors.registry, fsrlm.cli.main, sys; "
            "assert 'docker' not in sys.modules, 'docker imported'; "
            "assert 'boto3' not in sys.modules, 'boto3 imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


# -- one rule for every way of making a configuration -----------------------------------


def test_rlmconfig_reads_the_file_and_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The README's case: FSRLM_UPSTREAM=compatible exported, then RLMConfig(...) in Python.
    write_toml(tmp_path / "fsrlm.toml", "max_turns = 7\nsubmodel = 'from-file'\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FSRLM_UPSTREAM", "compatible")
    monkeypatch.setenv("FSRLM_UPSTREAM_BASE_URL", "http://127.0.0.1:9/gw")
    monkeypatch.setenv("FSRLM_SUBMODEL", "from-env")
    config = RLMConfig(executor={"type": "docker"}, max_turns=3)
    assert config.upstream.type == "compatible" and config.upstream.base_url == "http://127.0.0.1:9/gw"
    assert config.submodel == "from-env"  # env beats the file
    assert config.max_turns == 3  # what the caller passed beats both
    assert config == load_config(overrides={"executor": {"type": "docker"}, "max_turns": 3})


def test_rlm_reads_the_same_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    from fsrlm import RLM

    monkeypatch.setenv("FSRLM_MAX_SCRIPTS", "4")
    assert RLM().config.max_scripts == 4
    assert RLM(max_depth=0).config.max_scripts == 4
    assert RLM(RLMConfig(max_scripts=9)).config.max_scripts == 9


def test_model_validate_takes_the_mapping_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FSRLM_MAX_SCRIPTS", "4")
    monkeypatch.setenv("FSRLM_MAX_BUDGET_USD", "3")
    stored = {"max_budget_usd": None, "max_scripts": 20}
    config = RLMConfig.model_validate(stored)
    assert (config.max_scripts, config.max_budget_usd) == (20, None)
    assert RLMConfig.model_validate_json(json.dumps(stored)).max_budget_usd is None


def test_an_explicit_none_keyword_means_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FSRLM_MAX_BUDGET_USD", "3")
    assert RLMConfig().max_budget_usd == 3.0
    assert RLMConfig(max_budget_usd=None).max_budget_usd is None  # no cap, as the README says


def test_rlmconfig_errors_are_config_errors_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FSRLM_MAX_TURNS", "0")
    with pytest.raises(ConfigError, match=r"max_turns.*FSRLM_MAX_TURNS"):
        RLMConfig()


# -- misspelt names ------------------------------------------------------------------------


def test_a_misspelt_variable_is_refused_with_a_suggestion() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={"FSRLM_MAX_SUBCALS_PER_SCRIPT": "3", "FSRLM_MAX_TURNS": "5"})
    message = str(info.value)
    assert "FSRLM_MAX_SUBCALS_PER_SCRIPT: not an fsRLM setting; did you mean FSRLM_MAX_SUBCALLS_PER_SCRIPT?" in message
    with pytest.raises(ConfigError, match="FSRLM_NOTHING_LIKE_IT: not an fsRLM setting$|FSRLM_NOTHING_LIKE_IT: not an"):
        load_config(env={"FSRLM_NOTHING_LIKE_IT": "1"})


@pytest.mark.parametrize(("data", "expected"), [
    ({"max_turnz": 3}, "max_turnz: unknown setting; did you mean max_turns?"),
    ({"executor": {"type": "docker", "memroy": "1g"}},
     "executor.memroy: unknown setting of the docker executor; did you mean executor.memory?"),
    ({"upstream": {"type": "compatible", "base_ur": "x"}}, "upstream.base_ur: unknown setting; did you mean upstream.base_url?"),
    ({"executor": {"type": "dokcer"}}, "Unknown executor type 'dokcer' (did you mean 'docker'?)"),
])
def test_an_unknown_field_gets_a_suggestion(data: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(data)
    assert expected in str(info.value)


def test_every_fsrlm_variable_in_the_repository_is_known() -> None:
    """A variable the code reads must be a setting or listed as another part's, or users get refused."""
    import re

    from fsrlm.config import OTHER_ENV_VARIABLES, setting_env_variables

    root = Path(__file__).resolve().parents[1]
    used: set[str] = set()
    for path in root.rglob("*"):
        if (path.is_file() and path.suffix in {".py", ".sh", ".md", ".yml", ".toml", ""} and ".venv" not in path.parts
                and ".git" not in path.parts and path.stat().st_size < 2_000_000):
            used |= set(re.findall(r"\bFSRLM_[A-Z][A-Z0-9_]*[A-Z0-9]\b", path.read_text(errors="replace")))
    deliberate = {"FSRLM_MAX_SUBCALS_PER_SCRIPT", "FSRLM_NOTHING_LIKE_IT"}  # the misspellings tests and README show
    prefixes = {"FSRLM_MAX", "FSRLM_UPSTREAM", "FSRLM_TEST"}  # prefixes in prose and in a test's filter
    unknown = sorted(n for n in used - deliberate - prefixes
                     if n not in OTHER_ENV_VARIABLES and n not in setting_env_variables())
    assert unknown == [], f"add these to config.OTHER_ENV_VARIABLES or make them settings: {unknown}"
