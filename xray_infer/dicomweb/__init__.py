"""DICOMweb (the ``dicomweb`` extra, dicomweb-client): results stored by STOW-RS, inputs
retrieved by WADO-RS and found by QIDO-RS.

Credentials come from a file or the ``XRAY_INFER_DICOMWEB_AUTH`` environment variable, never
from the command line, and are never logged: a URL carrying a user or password is refused.
A STOW-RS answer is read per instance (``store``): stored, refused (the server will not take
it: a 4xx, or the instance in the Failed SOP Sequence) or to be retried (an instance the
answer does not confirm). What says nothing about one instance (a 5xx without a Failed SOP
Sequence, a timeout, a connection dropped mid-upload, a garbled answer) is the server's state:
``Unavailable``, charged to no instance.

Every answer is bounded: in bytes, in multipart parts (counted before anything parses them), in
time from its first byte, and a listing in pages; redirects are followed only for GET within
the same origin.
"""
from .access import (ANSWER_DEADLINE, AUTH_ENV, MAX_ANSWER_BYTES, MAX_JSON_BYTES, MAX_PARTS,
                     Access, Redirected, TooLarge, authorization, check_url, connects,
                     is_dicomweb, stop_all)
from .reading import (MAX_INSTANCES, MAX_PAGES, PAGE, Address, is_image_class, list_instances,
                      retrieve)
from .stow import (MAX_RETRY_AFTER, NOT_ALLOWED, SERVER_BUSY, Outcome, Unavailable,
                   retry_after, store, store_results)

__all__ = ["ANSWER_DEADLINE", "AUTH_ENV", "MAX_ANSWER_BYTES", "MAX_INSTANCES", "MAX_JSON_BYTES",
           "MAX_PAGES", "MAX_PARTS", "MAX_RETRY_AFTER", "NOT_ALLOWED", "PAGE", "SERVER_BUSY",
           "Access", "Address", "Outcome", "Redirected", "TooLarge", "Unavailable",
           "authorization", "check_url", "connects", "is_dicomweb", "is_image_class",
           "list_instances", "retrieve", "retry_after", "stop_all", "store", "store_results"]
