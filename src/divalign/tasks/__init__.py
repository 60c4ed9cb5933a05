"""Built-in tasks: a prompt generator, a held-out evaluation split and a verifiable reward in one place."""

from divalign.tasks.arithmetic import ArithmeticConfig, ArithmeticTask

__all__ = ["ArithmeticConfig", "ArithmeticTask"]
