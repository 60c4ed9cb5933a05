"""The ``divalign`` command line.

Every subcommand takes its options as flags and/or a YAML file (``--config``); flags win. A user's mistake
(missing file, bad field, unknown name) prints one line ``divalign: error: …`` and exits with code 2, a run that
cannot go on (it diverged, its reward keeps failing) one line and exit code 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from divalign import __version__, parallel
from divalign.commands import constitutional, demo, label, preference, rl, rm, sft
from divalign.commands import eval as evaluation
from divalign.commands.common import CONFIG_FILE
from divalign.config import add_arguments, from_args
from divalign.errors import RunFailed, UserError
from divalign.report import ReportConfig, write_report
from divalign.trainers.online import RLConfig
from divalign.trainers.preference import PreferenceConfig
from divalign.trainers.reward_model import RMConfig
from divalign.trainers.sft import SFTConfig


def _report(config: ReportConfig, runs: list[str]) -> None:
    print(f"wrote {write_report(runs, config)}")


@dataclass(frozen=True)
class Command:
    config: type
    run: Callable
    help: str


COMMANDS = {
    "demo": Command(demo.DemoConfig, demo.run, "SFT warm-up, then f-GRPO, then evaluation, on a tiny model, on CPU"),
    "sft": Command(SFTConfig, sft.run, "supervised fine-tuning on prompt/completion or chat data"),
    "rm": Command(RMConfig, rm.run, "Bradley-Terry reward model on preference pairs"),
    "preference": Command(PreferenceConfig, preference.run, "offline alignment: DPO, IPO, f-DPO, f-PO on pairs; FDO "
                          "(KLDO, BCO, HDO), KTO on unpaired data"),
    "rl": Command(RLConfig, rl.run, "online RL (GRPO family, PPO, RLOO, DaGRPO, f-GRPO, f-HAL) on a model folder"),
    "eval": Command(evaluation.EvalConfig, evaluation.run, "evaluate a model: task accuracy, reward, KL, perplexity, "
                    "win rate, safety"),
    "label": Command(label.LabelConfig, label.run, "collect preferences on a local web page, or from a judge model "
                     "(RLAIF)"),
    "constitutional": Command(constitutional.ConstitutionalConfig, constitutional.run, "Constitutional AI data: "
                              "responses, critiques and revisions against principles (SFT data and pairs)"),
    "report": Command(ReportConfig, _report, "one self-contained HTML page comparing run folders"),
}
#: Arguments that are not options of a config.
_NOT_OPTIONS = ("config", "command", "runs")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="divalign",
        description="Align causal language models: SFT, reward models, preference and "
        "divergence-estimation objectives, online RL (GRPO, f-GRPO). `divalign COMMAND --help` lists each command's "
        "options; every option can also come from a YAML file given with --config.",
    )
    parser.add_argument("--version", action="version", version=f"divalign {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=(command.config.__doc__ or command.help).strip())
        p.add_argument("--config", default=None, metavar="YAML", help="YAML file of options (flags override it)")
        add_arguments(p, command.config)
        if name == "report":
            p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders written by divalign")
    return parser


def _config(cls, args: argparse.Namespace):
    config_path = args.config
    out = getattr(args, "output_dir", None)
    if config_path is None and getattr(args, "resume", False) and out and (Path(out) / CONFIG_FILE).exists():
        config_path = str(Path(out) / CONFIG_FILE)  # resume with the run's own settings
    return from_args(cls, args, config_path, skip=_NOT_OPTIONS)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    command = COMMANDS[args.command]
    # under torchrun every process meets the same mistake; the main one says it
    say = parallel.launched_rank() == 0
    together = False  # whether every process reaches the end in step (then they wait for each other to leave)
    try:
        config = _config(command.config, args)
        command.run(config, args.runs) if args.command == "report" else command.run(config)
        together = True
    except UserError as exc:
        together = True  # every process meets the same mistake
        if say:
            print(f"divalign: error: {exc}", file=sys.stderr)
        return 2
    except RunFailed as exc:
        if say:
            print(f"divalign: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("divalign: interrupted", file=sys.stderr)
        return 130
    finally:
        parallel.finish(together)
    return 0


if __name__ == "__main__":
    sys.exit(main())
