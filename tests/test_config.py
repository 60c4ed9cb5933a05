import argparse

import pytest

from divalign.config import OBJECTIVE_OPTIONS, add_arguments, build, dump_yaml, field_docs, from_args, read_yaml
from divalign.errors import UserError
from divalign.trainers.online import RLConfig


def parse(argv, yaml_text=None, tmp_path=None):
    parser = argparse.ArgumentParser()
    add_arguments(parser, RLConfig)
    args = parser.parse_args(argv)
    path = None
    if yaml_text is not None:
        path = tmp_path / "c.yaml"
        path.write_text(yaml_text)
    return from_args(RLConfig, args, path)


def test_defaults_yaml_and_flags_in_order_of_precedence(tmp_path):
    cfg = parse(
        ["--steps", "7", "--fgrpo.divergence", "js"],
        "steps: 3\nlearning_rate: 0.001\nfgrpo:\n  divergence: kl\n  beta: 0.5\n",
        tmp_path,
    )
    assert cfg.steps == 7 and cfg.learning_rate == 0.001
    assert cfg.objective == "fgrpo" and cfg.objective_options.divergence == "js" and cfg.objective_options.beta == 0.5
    assert parse(["--objective", "grpo"]).objective_options.beta == 0.04  # untouched default
    assert parse(["--no-fast-path"]).fast_path is False


def test_only_the_chosen_objectives_options_may_be_given_and_they_round_trip(tmp_path):
    with pytest.raises(UserError, match=r"config.grpo: options of objective 'grpo' given, but the objective is"):
        parse(["--grpo.beta", "0.1"])
    with pytest.raises(UserError, match=r"config.objective: objective 'dpo' \(pairs family\) is not accepted here"):
        parse(["--objective", "dpo"])
    with pytest.raises(UserError, match=r"config: advantage: objective 'ppo' works with its own estimator 'gae'"):
        parse(["--objective", "ppo", "--advantage", "group"])
    with pytest.raises(UserError, match=r"config: num_generations: the advantage estimator 'rloo' .* needs "
                                        r"num-generations >= 2"):
        parse(["--advantage", "rloo", "--num-generations", "1"])
    cfg = parse(["--objective", "dapo", "--dapo.overlong-buffer", "3", "--steps", "9"])
    path = tmp_path / "dump.yaml"
    path.write_text(dump_yaml(cfg))
    assert read_yaml(path)["dapo"]["overlong_buffer"] == 3 and "grpo" not in read_yaml(path)
    again = build(RLConfig, read_yaml(path), str(path))
    assert again == cfg


def test_config_errors_name_file_and_key(tmp_path):
    with pytest.raises(UserError, match=r"c.yaml: unknown option 'stepz'"):
        parse([], "stepz: 3\n", tmp_path)
    with pytest.raises(UserError, match=r"c.yaml.fgrpo: unknown option 'divergense'"):
        parse([], "fgrpo:\n  divergense: kl\n", tmp_path)
    with pytest.raises(UserError, match=r"c.yaml.steps: expected int, got str"):
        parse([], "steps: many\n", tmp_path)
    with pytest.raises(UserError, match=r"c.yaml:2: invalid YAML"):
        parse([], "steps: 3\n  bad: [\n", tmp_path)
    with pytest.raises(UserError, match="unknown divergence 'nope'"):
        build(RLConfig, {"fgrpo": {"divergence": "nope"}})
    with pytest.raises(SystemExit):
        parse(["--steps", "x"])


def test_every_option_has_a_docstring():
    import dataclasses
    import typing

    from divalign import objectives
    from divalign.commands.demo import DemoConfig
    from divalign.commands.eval import EvalConfig
    from divalign.report import ReportConfig
    from divalign.tasks.arithmetic import ArithmeticConfig
    from divalign.trainers.preference import PreferenceConfig
    from divalign.trainers.reward_model import RMConfig
    from divalign.trainers.sft import SFTConfig

    classes = [RLConfig, SFTConfig, RMConfig, PreferenceConfig, EvalConfig, DemoConfig, ReportConfig, ArithmeticConfig]
    classes += [objectives.get(name).options for name in objectives.names()]
    for cls in classes:
        docs, hints = field_docs(cls), typing.get_type_hints(cls)
        missing = [f.name for f in dataclasses.fields(cls) if f.init and not f.metadata.get(OBJECTIVE_OPTIONS)
                   and not dataclasses.is_dataclass(hints[f.name]) and f.name not in docs]
        assert not missing, (cls.__name__, missing)


def test_yaml_corner_cases(tmp_path):
    assert parse([], "learning_rate: 1e-5\n", tmp_path).learning_rate == 1e-5  # YAML 1.1 reads this as a string
    with pytest.raises(UserError, match=r"c.yaml.fgrpo: expected a mapping of options, got str"):
        parse(["--fgrpo.beta", "0.2"], "fgrpo: js\n", tmp_path)
    with pytest.raises(UserError, match=r"c.yaml.fgrpo: fgrpo.level"):
        parse([], "fgrpo:\n  level: paragraph\n", tmp_path)


def test_every_example_config_builds_for_its_command():
    """examples/README.md names the command of each YAML file; each must build with that command's options."""
    import re
    from pathlib import Path

    from divalign.cli import COMMANDS

    root = Path(__file__).resolve().parents[1] / "examples"
    listed = re.findall(r"`divalign (\w+) --config examples/([\w.]+)", (root / "README.md").read_text())
    assert {name for _, name in listed} == {p.name for p in root.glob("*.yaml")}
    for command, name in listed:
        build(COMMANDS[command].config, read_yaml(root / name), name)
