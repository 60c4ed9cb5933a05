"""A real `divalign label` server process for the tests: started, killed, restarted, stopped."""

import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, pairs: Path, output: Path, port: int, log: Path):
        self.args = [sys.executable, "-m", "divalign", "label", "--pairs", str(pairs), "--output", str(output),
                     "--port", str(port), "--no-browser", "--seed", "3"]
        self.url = f"http://127.0.0.1:{port}/"
        self.log = log
        self.process = None

    def start(self):
        with open(self.log, "a") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while time.time() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            try:
                urllib.request.urlopen(self.url + "api/summary", timeout=1).read()
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("the labelling server did not start:\n" + self.log.read_text())

    def kill(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            self.process.wait(20)
