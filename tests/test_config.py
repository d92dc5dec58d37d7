import json

import pytest

from interlock.cli import main
from interlock.config import load_config
from interlock.engine import Guard
from interlock.errors import ConfigError
from tests.support.fixtures import discrete_agent, loaded


def write(tmp_path, text):
    p = tmp_path / "interlock.yaml"
    p.write_text(text)
    return p


def test_typo_in_key_names_file_and_key_path(tmp_path):
    p = write(
        tmp_path,
        """
agents:
  - id: a
    observation: {shape: [2]}
    action: {type: discrete, n: 2}
    polcy: {}
""",
    )
    with pytest.raises(ConfigError) as err:
        load_config(p)
    assert str(p) in err.value.message
    assert "agents[0].polcy: Extra inputs are not permitted" in err.value.message


def test_wrong_type_deep_in_the_tree(tmp_path):
    p = write(
        tmp_path,
        """
agents:
  - id: a
    observation: {shape: [2]}
    action: {type: discrete, n: 0}
""",
    )
    with pytest.raises(
        ConfigError, match=r"agents\[0\]\.action\.discrete\.n: Input should be greater than 0"
    ):
        load_config(p)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "agents: [\n"))


def test_rule_naming_unknown_fallback_is_rejected():
    agent = discrete_agent(fallbacks={})
    with pytest.raises(ConfigError, match=r"policy.rules\[0\].fallback names fallback 'noop', which is not"):
        loaded([agent])


def test_cel_syntax_error_points_at_rule():
    agent = discrete_agent()
    agent["policy"]["rules"][0]["when"] = "tripped.action_space.invalid &&"
    with pytest.raises(ConfigError, match=r"policy.rules\[0\].when: CEL expression does not compile"):
        Guard(loaded([agent]))


def test_cel_type_error_and_non_bool_result():
    agent = discrete_agent()
    agent["monitors"][1]["constraints"] = {"x": "obs[0] > 1"}  # int literal against double
    with pytest.raises(ConfigError, match="no matching overload"):
        Guard(loaded([agent]))
    agent = discrete_agent()
    agent["policy"]["rules"][0]["when"] = "obs[0] + 1.0"
    with pytest.raises(ConfigError, match="must be a condition"):
        Guard(loaded([agent]))


def test_rule_reading_unknown_signal_is_rejected_at_load():
    agent = discrete_agent()
    agent["policy"]["rules"][1]["when"] = "tripped.limits.pole_uprigt"
    with pytest.raises(ConfigError, match="reads a signal no monitor produces.*limits.pole_upright"):
        Guard(loaded([agent]))


def test_missing_model_file_is_a_config_error(tmp_path):
    agent = discrete_agent(fallbacks={"noop": {"kind": "onnx_policy", "model": "missing.onnx"}})
    guard = Guard(loaded([agent], base_dir=tmp_path))
    with pytest.raises(ConfigError, match="missing.onnx does not exist"):
        guard.load()


def test_escalate_rule_needs_a_fail_safe():
    agent = discrete_agent()
    agent["policy"]["rules"].append({"name": "ask", "when": "obs[0] > 0.5", "verdict": "escalate"})
    with pytest.raises(ConfigError, match="escalates but no fail-safe action exists"):
        Guard(loaded([agent]))


def test_cli_config_check_and_schema(tmp_path, capsys):
    good = write(
        tmp_path,
        """
agents:
  - id: a
    observation: {shape: [2]}
    action: {type: discrete, n: 2}
""",
    )
    assert main(["config", "check", str(good)]) == 0
    assert "OK" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("agents: []\n")
    assert main(["config", "check", str(bad)]) == 2
    assert "agents: List should have at least 1 item" in capsys.readouterr().err
    assert main(["config", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "InterlockConfig" and "agents" in schema["properties"]


def test_example_config_is_valid():
    loaded_cfg = load_config("examples/cartpole/interlock.yaml")
    assert [a.id for a in loaded_cfg.config.agents] == ["cartpole"]
    Guard(loaded_cfg)  # compiles every rule


def test_rules_may_read_labels_and_signal_typos_behind_short_circuits_are_caught():
    agent = discrete_agent()
    agent["policy"]["rules"][1]["when"] = "'zone' in labels && labels['zone'] == 'red'"
    Guard(loaded([agent]))  # labels are free-form: not a signal error
    agent["policy"]["rules"][1]["when"] = "false && tripped.limits.pole_uprigt"
    with pytest.raises(ConfigError, match=r"reads a signal no monitor produces \(limits.pole_uprigt\)"):
        Guard(loaded([agent]))
    agent["policy"]["rules"][1]["when"] = "labels['zone'] == 'red'"
    Guard(loaded([agent]))
