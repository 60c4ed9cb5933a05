"""The ``divalign`` command line.

Every subcommand takes its options as flags and/or a YAML file (``--config``); flags win. A user's mistake
(missing file, bad field, unknown name) prints one line ``divalign: error: …`` and exits with code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from divalign import __version__
from divalign.commands.common import CONFIG_FILE
from divalign.config import add_arguments, from_args
from divalign.errors import UserError


def _rl(args):
    from divalign.commands import rl
    from divalign.trainers.online import RLConfig

    rl.run(_config(RLConfig, args))


def _sft(args):
    from divalign.commands import sft
    from divalign.trainers.sft import SFTConfig

    sft.run(_config(SFTConfig, args))


def _preference(args):
    from divalign.commands import preference
    from divalign.trainers.preference import PreferenceConfig

    preference.run(_config(PreferenceConfig, args))


def _rm(args):
    from divalign.commands import rm
    from divalign.trainers.reward_model import RMConfig

    rm.run(_config(RMConfig, args))


def _eval(args):
    from divalign.commands import eval as evaluation

    evaluation.run(_config(evaluation.EvalConfig, args))


def _report(args):
    from divalign.report import ReportConfig, write_report

    path = write_report(args.runs, _config(ReportConfig, args))
    print(f"wrote {path}")


def _demo(args):
    from divalign.commands import demo

    demo.run(_config(demo.DemoConfig, args))


def _config(cls, args):
    config_path = args.config
    resume = getattr(args, "resume", False)
    out = getattr(args, "output_dir", None)
    if config_path is None and resume and out and (Path(out) / CONFIG_FILE).exists():
        config_path = str(Path(out) / CONFIG_FILE)  # resume with the run's own settings
    return from_args(cls, args, config_path)


def build_parser() -> argparse.ArgumentParser:
    from divalign.commands.demo import DemoConfig
    from divalign.commands.eval import EvalConfig
    from divalign.report import ReportConfig
    from divalign.trainers.online import RLConfig
    from divalign.trainers.preference import PreferenceConfig
    from divalign.trainers.reward_model import RMConfig
    from divalign.trainers.sft import SFTConfig

    parser = argparse.ArgumentParser(
        prog="divalign",
        description="Align causal language models: SFT, reward models, preference and "
        "divergence-estimation objectives, online RL (GRPO, f-GRPO). `divalign COMMAND --help` lists each command's "
        "options; every option can also come from a YAML file given with --config.",
    )
    parser.add_argument("--version", action="version", version=f"divalign {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name, cls, handler, help_text):
        p = sub.add_parser(name, help=help_text, description=(cls.__doc__ or help_text).strip())
        p.add_argument("--config", default=None, metavar="YAML", help="YAML file of options (flags override it)")
        add_arguments(p, cls)
        p.set_defaults(handler=handler)
        return p

    command("demo", DemoConfig, _demo, "SFT warm-up, then f-GRPO, then evaluation, on a tiny model, on CPU")
    command("sft", SFTConfig, _sft, "supervised fine-tuning on prompt/completion or chat data")
    command("rm", RMConfig, _rm, "Bradley-Terry reward model on preference pairs")
    command(
        "preference",
        PreferenceConfig,
        _preference,
        "offline alignment: DPO, IPO, f-DPO, f-PO on pairs; FDO (KLDO, BCO, HDO), KTO on unpaired data",
    )
    command("rl", RLConfig, _rl, "online RL (GRPO, f-GRPO) on a model folder")
    command("eval", EvalConfig, _eval, "evaluate a model: task accuracy, reward, KL, perplexity, win rate, safety")
    report = command("report", ReportConfig, _report, "one self-contained HTML page comparing run folders")
    report.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders written by divalign")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        args.handler(args)
    except UserError as exc:
        print(f"divalign: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("divalign: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
