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


def resolved(path):
    """What a row and an input are matched on: the path with the links in its folders
    followed, so a folder named through a link and through its target hold the same inputs;
    the file's own name is kept, so two links to one scan stay two inputs (``input_key``)."""
    if is_uri(path):
        return path
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(os.path.realpath(folder), name)


def resume_plan(files, existing, retry_failed):
    if existing is None:
        return ResumePlan(files)
    rows = {resolved(k): failed for k, failed in existing.rows.items()}
    keys = [resolved(input_key(f)) for f in files]
    retried = {k for k in keys if rows.get(k)} if retry_failed else set()
    done = {k for k in rows if k not in retried}
    return ResumePlan([f for f, k in zip(files, keys) if k not in done],
                      skipped=sum(k in done for k in keys),
                      skipped_failed=sum(k in done and rows[k] for k in keys),
                      retried=retried)


def check_resume_names(existing, files):
    """UsageError where the earlier output names this run's inputs relative to another folder:
    its relative paths resolve from here to other files, and resuming would score every input
    again and write it twice. A stored path is compared without its leading ``..`` parts, so
    ``../data/x`` written from a sibling folder is recognised as ``data/x`` from their parent."""
    keys = {resolved(input_key(f)) for f in files}
    tails = {}
    for k in keys:
        tails.setdefault(os.path.basename(k), []).append(k)
    for path in existing.paths:
        if is_uri(path) or os.path.isabs(path) or resolved(path) in keys:
            continue
        parts = os.path.normpath(path).split(os.sep)
        while parts and parts[0] == os.pardir:
            parts.pop(0)
        rel = os.sep.join(parts)
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
