"""Ground truth carried by file names, as in the published dataset (Kermany et al. 2018):

- ``PNEUMONIA/personN_bacteria_K.jpeg`` -> bacterial, patient ``personN``
- ``PNEUMONIA/personN_virus_K[_J].jpeg`` -> viral, patient ``personN``
- ``NORMAL/[NORMAL2-]IM-NNNN-KKKK[-JJJJ].jpeg`` -> normal, patient ``[NORMAL2-]IM-NNNN``

The trainer indexes the dataset with it; the results page uses it to compare labels with the
truth where every input is named so. A name matching none of these carries no truth.
"""
import re
from pathlib import PurePath

_NORMAL = re.compile(r"^((?:NORMAL2-)?IM-\d+)-\d+(?:-\d+)?\.jpe?g$", re.IGNORECASE)
_PNEUMONIA = re.compile(r"^(person\d+)_(bacteria|virus)_\d+(?:_\d+)?\.jpe?g$", re.IGNORECASE)
_KIND = {"bacteria": "bacterial", "virus": "viral"}


def parse(folder, name):
    """(class name, patient) for a file ``name`` in class folder ``folder`` (NORMAL or
    PNEUMONIA), or None where the name does not follow the dataset's scheme."""
    if folder == "NORMAL":
        m = _NORMAL.match(name)
        return ("normal", m.group(1)) if m else None
    if folder == "PNEUMONIA":
        m = _PNEUMONIA.match(name)
        return (_KIND[m.group(2).lower()], m.group(1)) if m else None
    return None


def truth(path):
    """The class a path's name says, or None. The folder is not required: the sample scans
    shipped with the package keep the dataset's file names without its folders."""
    p = PurePath(path)
    for folder in ((p.parent.name,) if p.parent.name in ("NORMAL", "PNEUMONIA") else
                   ("NORMAL", "PNEUMONIA")):
        found = parse(folder, p.name)
        if found:
            return found[0]
    return None
