"""The scope gate: no label for an input the model was not made for.

Three checks, all read from the model's metadata (``ModelSpec.population``, ``ModelSpec.scope``
and ``ModelSpec.adult_head``), so nothing here is a constant of its own:

- the metadata gate, for DICOM inputs, first and cheapest: Modality, BodyPartExamined,
  ViewPosition and the patient's age (PatientAge, else PatientBirthDate and the study date)
  against the population the model declares; an attribute that is absent is not held against
  an input (the image gate still applies);
- the image gate, for every input: the distance of the image's features from the training
  radiographs', an output of the graph, against the threshold fitted with it (and, before
  that, an image of one value throughout holds no radiograph, nor does a colour image);
- the adult head, for every input whose header states no age: how much the image's features
  look like an adult's film, an output of the graph, against its threshold. Where the header
  states an age, the metadata gate has judged it; where the accepted ages reach ADULT_AGE, the
  caller has asked for adults, and the head refuses none.

Two rules belong to no model: a DICOM object whose Contributing Equipment names a processing
algorithm (IHE AI Results) is an algorithm's result, this program's heatmaps included, not an
acquired radiograph; and an image with more than COLOUR_SHARE of its pixels in colour
(``colour.colour_share``) is no radiograph (burned-in coloured marks cover less).
"""
import re
from dataclasses import dataclass
from datetime import date

from .errors import ModelError, OutOfScope

_AGE = re.compile(r"(\d{3})([DWMY])")
_AGE_UNIT_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}
#: Where the age is computed to when PatientAge is absent: the first of these dates present.
_STUDY_DATES = ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate")
#: The DICOM attributes the metadata gate reads (``dicom.decode_dicom`` returns them).
ATTRIBUTES = ("Modality", "BodyPartExamined", "ViewPosition", "PatientAge", "PatientBirthDate",
              *_STUDY_DATES)
#: The largest share of pixels in colour an image the gate admits may have; fixed before any
#: image was measured against it (docs/scope.md).
COLOUR_SHARE = 0.05
#: The age from which a patient is an adult, for the adult head (``--ages`` reaching it turns the
#: head off: adults are then asked for).
ADULT_AGE = 18


def parse_ages(text):
    """``"LOW-HIGH"`` (whole years, inclusive) -> (low, high); ValueError otherwise."""
    m = re.fullmatch(r"\s*(\d{1,3})\s*-\s*(\d{1,3})\s*", str(text))
    if not m or int(m[1]) > int(m[2]):
        raise ValueError(f"{text!r} is not an age range LOW-HIGH in years (e.g. 0-17)")
    return int(m[1]), int(m[2])


def _date(text):
    m = re.fullmatch(r"(\d{4})(\d{2})(\d{2})", text or "")
    try:
        return date(int(m[1]), int(m[2]), int(m[3])) if m else None
    except ValueError:
        return None


def age_years(attributes):
    """The patient's age in years from PatientAge, else from the birth and study dates; None
    when neither is there or parses."""
    m = _AGE.fullmatch(attributes.get("PatientAge", ""))
    if m:
        return int(m[1]) * _AGE_UNIT_YEARS[m[2]]
    born = _date(attributes.get("PatientBirthDate"))
    seen = next((d for d in map(_date, (attributes.get(k) for k in _STUDY_DATES)) if d), None)
    if born and seen and seen >= born:
        return (seen - born).days / 365.25
    return None


@dataclass(frozen=True)
class Scope:
    """What the classifier refuses: ``enabled`` (every gate) and ``ages``, the accepted age
    range in whole years (None: the model's ``accepted_ages``)."""
    enabled: bool = True
    ages: tuple = None

    @classmethod
    def of(cls, value, ages=None):
        """From ``Classifier(scope=...)``: a Scope, True/False, or "on"/"off"."""
        if isinstance(value, Scope):
            return value
        if value in (True, "on"):
            return cls(True, tuple(ages) if ages is not None else None)
        if value in (False, "off"):
            return cls(False)
        raise ValueError(f"scope must be True/'on' or False/'off', got {value!r}")

    def label(self):
        """How each output row records the setting."""
        if not self.enabled:
            return "off"
        return "on" if self.ages is None else f"on, ages {self.ages[0]}-{self.ages[1]}"


def require_gate(spec, scope, source):
    """ModelError when ``scope`` is on but the model ``spec`` has no gate to apply."""
    if scope.enabled and not spec.scope_output:
        raise ModelError(f"{source}: this model has no scope gate, so it cannot refuse inputs "
                         f"it was not made for; export it again (`python -m trainer scope`), "
                         f"or classify with scope off")


class Gate:
    """The checks for one model (``spec``) and one ``Scope``."""

    def __init__(self, spec, scope):
        self.scope, self.population = scope, spec.population or {}
        self.threshold = spec.scope.get("threshold") if spec.scope_output else None
        self.ages = scope.ages or tuple(self.population.get("accepted_ages") or ()) or None
        adults_asked = bool(self.ages) and self.ages[1] >= ADULT_AGE
        self.adult_threshold = (spec.adult_head.get("threshold")
                                if spec.adult_output and not adults_asked else None)

    def check_metadata(self, attributes, source):
        """Raise OutOfScope when a DICOM attribute places the input outside the population."""
        if not self.scope.enabled or not attributes:
            return
        if attributes.get("ProcessingAlgorithm"):
            raise OutOfScope(source, "out of scope: a processing algorithm's result (its "
                                     "Contributing Equipment says so), not an acquired "
                                     "radiograph", "ContributingEquipment")
        if not self.population:
            return
        pop = self.population
        modality = attributes.get("Modality", "").upper()
        if modality and modality not in pop.get("modalities", ()) + pop.get("image_modalities",
                                                                               ()):
            raise OutOfScope(source, f"out of scope: Modality {modality} (the model reads "
                                     f"{', '.join(pop['modalities'])} radiographs)", "Modality")
        part = attributes.get("BodyPartExamined", "").upper()
        if part and part not in pop.get("body_parts", ()):
            raise OutOfScope(source, f"out of scope: BodyPartExamined {part} (the model reads "
                                     f"chest radiographs)", "BodyPartExamined")
        view = attributes.get("ViewPosition", "").upper()
        if view and view not in pop.get("views", ()):
            raise OutOfScope(source, f"out of scope: ViewPosition {view} (the model reads "
                                     f"frontal {'/'.join(pop['views'])} views)", "ViewPosition")
        age = age_years(attributes)
        if age is not None and self.ages and not self.ages[0] <= age < self.ages[1] + 1:
            trained = pop.get("training_ages") or self.ages
            raise OutOfScope(source, f"out of scope: patient age {age:.1f} years is outside "
                                     f"{self.ages[0]}-{self.ages[1]} (trained on "
                                     f"{trained[0]}-{trained[1]} years; the ages option, "
                                     f"--ages, widens the range)",
                             "PatientAge")

    def check_image(self, pixels, source, colour=None):
        """Raise OutOfScope for an image of one value throughout: no radiograph in it (and
        features of a constant image are not informative about anything); nor for one with
        ``colour`` (its share of pixels in colour) over COLOUR_SHARE."""
        if not self.scope.enabled:
            return
        if colour is not None and colour > COLOUR_SHARE:
            raise OutOfScope(source, f"out of scope: a colour image ({colour:.0%} of its pixels "
                                     f"in colour; radiographs are grey)", "image")
        if pixels.size and pixels.min() == pixels.max():
            raise OutOfScope(source, "out of scope: the image is uniform (one value throughout)",
                             "image")

    def check_distance(self, distance, source):
        """Raise OutOfScope when the image gate's distance exceeds the model's threshold."""
        if not self.scope.enabled or self.threshold is None:
            return
        if not distance <= self.threshold:  # NaN is out of scope too
            raise OutOfScope(source, f"out of scope: the image is unlike the training "
                                     f"radiographs (feature distance {distance:.0f} > "
                                     f"{self.threshold:.0f})", "image")

    def check_adult(self, score, source, header_age=None):
        """Raise OutOfScope when the adult head's score exceeds its threshold, unless the DICOM
        header stated the patient's age (``header_age``, years: the metadata gate's to judge)."""
        if not self.scope.enabled or self.adult_threshold is None or header_age is not None:
            return
        if not score <= self.adult_threshold:  # NaN is out of scope too
            raise OutOfScope(source, f"out of scope: looks like an adult's film (adult score "
                                     f"{score:.2f} > {self.adult_threshold:.2f}; the model was "
                                     f"made for children)", "adult_head")
