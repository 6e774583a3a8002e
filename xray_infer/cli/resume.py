"""What ``classify --resume`` scores again, and the checks that keep it from writing a row
twice."""
import os
from dataclasses import dataclass, field

from ..errors import UsageError
from ..inputs import input_key, is_uri


@dataclass
class ResumePlan:
    """What a run scores given the earlier output: ``files`` left to score, how many were
    ``skipped`` (of them ``skipped_failed`` with an error row), and the keys of the failed rows
    ``retried``."""
    files: list
    skipped: int = 0
    skipped_failed: int = 0
    retried: set = field(default_factory=set)


def resume_plan(files, existing, retry_failed):
    if existing is None:
        return ResumePlan(files)
    keys = [input_key(f) for f in files]
    retried = {k for k in keys if existing.rows.get(k)} if retry_failed else set()
    done = {k for k in existing.rows if k not in retried}
    return ResumePlan([f for f, k in zip(files, keys) if k not in done],
                      skipped=sum(k in done for k in keys),
                      skipped_failed=sum(k in done and existing.rows[k] for k in keys),
                      retried=retried)


def check_resume_names(existing, files):
    """UsageError where the earlier output names this run's inputs relative to another folder:
    its relative paths resolve from here to other files, and resuming would score every input
    again and write it twice."""
    keys = {input_key(f) for f in files}
    tails = {}
    for k in keys:
        tails.setdefault(os.path.basename(k), []).append(k)
    for path in existing.paths:
        if is_uri(path) or os.path.isabs(path) or input_key(path) in keys:
            continue
        rel = os.path.normpath(path)
        for k in tails.get(os.path.basename(rel), ()):
            if k.endswith(os.sep + rel):
                raise UsageError(
                    f"--resume: {existing.path} names its inputs relative to the folder the "
                    f"earlier run started in ({path} there is {k}; from here it would be "
                    f"{input_key(path)}): run from that folder, or write a new output")


def resume_hint(args):
    """What carries on after a run that stopped early."""
    if not args.output:
        return "write to a file with -o to be able to resume"
    if is_uri(args.output):
        return "an object in a store is written whole: rerun with --overwrite"
    return "rerun with --resume"
