"""Ray's terminal output while the Ray engine runs (``xray-infer classify --engine ray``):
its lines go to the log, the rows and the progress keep the terminal."""
import logging
import os
import re
import sys
import threading

from .distributed import COLOUR

log = logging.getLogger("xray_infer.cli")


class RayLines:
    """Where Ray's terminal output goes while the Ray engine runs: each line to the log
    (``--log``), none to the terminal, where the rows and the progress are; a failed job is
    reported once, in one line."""

    #: Ray's core (C++) log lines: ``[2026-12-02 00:23:29,708 E 29920 29920] file.cc:1: ...``
    CORE = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,.]+ [DIWEF] \d+ \d+\]")

    def __init__(self, forward=None):
        self.pending, self.forward, self.colour = "", forward, COLOUR

    def write(self, text):
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            clean = self.colour.sub("", line).rstrip()
            if self.forward is not None and not self.CORE.match(clean):
                self.forward.write(line + "\n")  # not Ray's: through to the terminal
                self.forward.flush()
            elif clean:
                log.info("ray: %s", clean)
        return len(text)

    def flush(self):
        pass


def quiet_ray():
    """Ray's terminal output off for the Ray engine. Ray Data's notices and errors are
    silenced (the job's failure is reported in one line); the error messages Ray's driver
    prints to ``sys.stdout`` (where rows may go) and the lines its core writes to file
    descriptor 2 go to the log instead (RayLines). Python's own ``sys.stderr`` keeps the
    terminal, and anything else written to descriptor 2 still reaches it."""
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)
    # Ray's own Python log lines (its notices about starting a local cluster among them) go
    # where ours do, to --log, not to the terminal its handler writes to
    ray_log = logging.getLogger("ray")
    for handler in list(ray_log.handlers):
        ray_log.removeHandler(handler)
    ray_log.propagate = True
    sys.stdout = RayLines()
    try:
        terminal = os.dup(2)
    except OSError:  # no descriptor 2 to take over
        return
    sys.stderr.flush()
    sys.stderr = open(terminal, "w", buffering=1, encoding=sys.stderr.encoding,
                      errors=sys.stderr.errors)
    read, write = os.pipe()
    os.dup2(write, 2)
    os.close(write)
    lines = RayLines(forward=sys.stderr)

    def pump():
        with open(read, "r", encoding="utf-8", errors="replace") as f:
            for line in f:
                lines.write(line)
    threading.Thread(target=pump, name="xray-ray-stderr", daemon=True).start()
