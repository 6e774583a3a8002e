"""Inputs from a DICOMweb server: instances found by QIDO-RS (paged, with caps on pages and
instances, a repeated page ending the listing) and read by WADO-RS, one at a time."""
import io
from dataclasses import dataclass
from urllib.parse import quote

from ..errors import InputError
from .access import TooLarge, check_url

#: QIDO-RS page size: studies and instances are listed a page at a time.
PAGE = 100
#: Pages of one listing; a server that pages without end (the same page whatever the offset)
#: is caught sooner, by a page that adds nothing new.
MAX_PAGES = 1000
#: Instances one input URL or query may list.
MAX_INSTANCES = 100_000
_IMAGE_CLASS_SUFFIXES = ("Image Storage", "Image Storage - For Presentation",
                         "Image Storage - For Processing")


@dataclass(frozen=True)
class Address:
    """A DICOMweb resource: the service's ``base`` URL and the UIDs below it."""
    base: str
    study: str = None
    series: str = None
    instance: str = None

    @classmethod
    def parse(cls, url):
        url = check_url(url)
        base, sep, rest = url.partition("/studies/")
        if not sep:
            return cls(base)
        names = rest.split("/")
        uids = dict(zip(names[1::2], names[2::2]))
        if len(names) % 2 != 1 or set(uids) - {"series", "instances"} \
                or ("instances" in uids and "series" not in uids) or not names[0]:
            raise ValueError(f"{url}: not a study, series or instance URL "
                             "(.../studies/UID[/series/UID[/instances/UID]])")
        return cls(base, names[0], uids.get("series"), uids.get("instances"))

    def url(self):
        out = self.base
        for name, uid in (("studies", self.study), ("series", self.series),
                          ("instances", self.instance)):
            if uid:
                out += f"/{name}/{quote(uid, safe='.')}"
        return out


def _value(item, tag):
    values = (item.get(tag) or {}).get("Value") or [None]
    return values[0]


def is_image_class(uid):
    from pydicom.uid import UID
    return UID(uid).name.endswith(_IMAGE_CLASS_SUFFIXES)


def list_instances(client, address, query=None, skipped=None):
    """Instance URLs under ``address`` (a study or series), or of every study matching
    ``query`` (QIDO-RS search filters) at the base; studies a page at a time. Instances that
    are not images (reports, presentation states) are left out, each added to ``skipped`` as
    (url, reason), as are the heatmaps this program stored there."""
    from ..dicom import SC_SERIES_DESCRIPTION
    if address.study:
        studies = iter([address.study])
    else:
        studies = _matching_studies(client, query or {})
    listed = 0
    for study in studies:
        found = _paged(lambda limit, offset: client.search_for_instances(
            study_instance_uid=study, series_instance_uid=address.series, limit=limit,
            offset=offset, fields=["SOPClassUID", "SeriesInstanceUID", "SeriesDescription"]),
            lambda i: _value(i, "00080018"))
        rows = []
        for i in found:
            listed += 1
            if listed > MAX_INSTANCES:
                raise TooLarge(f"a listing of more than {MAX_INSTANCES:,} instances")
            rows.append((_value(i, "0020000E") or "", _value(i, "00080018") or "",
                         _value(i, "00080016") or "", _value(i, "0008103E") or ""))
        for series, instance, sop_class, description in sorted(rows):
            if address.instance and instance != address.instance:
                continue
            url = Address(address.base, study, series, instance).url()
            why = None
            if sop_class and not is_image_class(sop_class):
                why = "not an image (a DICOM object of another kind)"
            elif description == SC_SERIES_DESCRIPTION:
                why = "not an image (a heatmap this program stored)"
            if why is None:
                yield url
            elif skipped is not None:
                skipped.append((url, why))


def _matching_studies(client, query):
    found = _paged(lambda limit, offset: client.search_for_studies(
        search_filters=dict(query), limit=limit, offset=offset, fields=["StudyInstanceUID"]),
        lambda s: _value(s, "0020000D"))
    for study in found:
        yield _value(study, "0020000D")


def _paged(search, key):
    """The rows of a QIDO-RS search, a page at a time (``search(limit, offset)``), until a
    short page. TooLarge after MAX_PAGES pages, or as soon as a page brings no row not seen
    before (a server that ignores the offset, or a redirect that drops the query, would
    otherwise page for ever)."""
    seen, offset = set(), 0
    for _ in range(MAX_PAGES):
        page = search(PAGE, offset)
        new = [row for row in page if key(row) not in seen]
        if page and not new:
            raise TooLarge("a listing whose pages repeat (the server ignores the offset)")
        seen.update(key(row) for row in new)
        yield from new
        if len(page) < PAGE:
            return
        offset += len(page)
    raise TooLarge(f"a listing of more than {MAX_PAGES} pages")


def retrieve(client, url):
    """The encoded bytes of the instance at ``url`` (WADO-RS). Raises InputError naming it."""
    import requests
    a = Address.parse(url)
    try:
        ds = client.retrieve_instance(a.study, a.series, a.instance)
    except requests.HTTPError as e:
        raise InputError(url, f"not retrieved: HTTP {e.response.status_code}") from None
    except TooLarge as e:
        raise InputError(url, f"not retrieved: {e}") from None
    except Exception as e:  # unreachable, or an answer that is no DICOM (pydicom's errors)
        raise InputError(url, f"not retrieved: {type(e).__name__}") from None
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
