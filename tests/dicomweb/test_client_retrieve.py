"""QIDO-RS paging and WADO-RS retrieval against the embedded store and Orthanc.

Each test runs against both real servers (``server_base``) unless it needs a fault only a
test double can produce.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pydicom
import pytest
from dicomweb_helpers import client_for, multipart_body
from PIL import Image
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from imagingkit.dicomweb.client import Part
from imagingkit.errors import DICOMwebError, InvalidQueryError, InvalidUIDError


def _uid(item: dict, tag: str) -> str:
    return str(item[tag]["Value"][0])


# --------------------------------------------------------------------------- QIDO-RS


def test_search_pages_through_every_result(server_base: str, ct_data) -> None:
    """Small pages still return every instance once (PS3.18 §8.3.4.4 limit/offset)."""
    _, plain, _ = ct_data
    client = client_for(server_base)
    found = client.search_instances(study_uid=plain.study, series_uid=plain.series, page_size=5)
    uids = [_uid(item, "00080018") for item in found]
    assert sorted(uids) == sorted(plain.sop_uids)
    assert len(set(uids)) == len(uids)


def test_search_honours_the_callers_limit(server_base: str, ct_data) -> None:
    _, plain, _ = ct_data
    found = client_for(server_base).search_instances(
        study_uid=plain.study, series_uid=plain.series, limit=7, page_size=3
    )
    assert len(found) == 7


def test_search_filters_by_keyword(server_base: str, ct_data) -> None:
    _, plain, mixed = ct_data
    found = client_for(server_base).search_series(
        {"SeriesInstanceUID": mixed.series}, fields=["NumberOfSeriesRelatedInstances"]
    )
    assert [_uid(item, "0020000E") for item in found] == [mixed.series]
    assert client_for(server_base).instance_count(plain.study, plain.series) == len(plain.files)


def test_paging_terminates_on_a_server_that_ignores_offset(double_server) -> None:
    """A server repeating its first page for every offset must not loop the client."""
    page = [{"0020000D": {"vr": "UI", "Value": [f"1.2.3.{i}"]}} for i in range(10)]

    def respond(handler, seen):
        handler.set_header("Content-Type", "application/dicom+json")
        handler.write(json.dumps(page))  # offset ignored, limit ignored

    base, double = double_server(respond)
    found = client_for(base).search_studies(page_size=10)
    assert len(found) == 10
    assert len(double.seen("/studies")) == 2  # the page, then its repetition


def test_paging_treats_every_empty_answer_as_no_results(double_server) -> None:
    """204, an empty body, [] and an HTML page on 200 all mean "nothing" (notes §2)."""
    answers = iter([(204, b"", None), (200, b"", None), (200, b"[]", "application/dicom+json")])
    answers_list = [*answers, (200, b"<html>no results</html>", "text/html")]
    state = {"i": 0}

    def respond(handler, seen):
        status, body, kind = answers_list[state["i"]]
        state["i"] += 1
        handler.set_status(status)
        if kind:
            handler.set_header("Content-Type", kind)
        if body:
            handler.write(body)

    base, _ = double_server(respond)
    client = client_for(base)
    assert [client.search_studies() for _ in range(4)] == [[], [], [], []]


def test_bad_query_names_and_uids_are_refused_before_any_request(double_server) -> None:
    base, double = double_server(lambda handler, seen: handler.set_status(204))
    client = client_for(base)
    with pytest.raises(InvalidQueryError, match="PatientIdentifier"):
        client.search_studies({"PatientIdentifier": "x"})
    with pytest.raises(InvalidUIDError):
        client.search_series(study_uid="1.2.abc")
    assert double.seen() == []


# --------------------------------------------------------------------------- WADO-RS


def test_iter_series_streams_every_instance_with_its_headers(server_base: str, ct_data) -> None:
    _, _, mixed = ct_data
    parts = list(client_for(server_base).iter_series(mixed.study, mixed.series))
    assert len(parts) == len(mixed.files)
    syntaxes = set()
    for part in parts:
        assert part.content_type == "application/dicom"
        ds = pydicom.dcmread(io.BytesIO(part.payload))
        assert ds.SeriesInstanceUID == mixed.series
        # the syntax each part was sent in: its label, or its own File Meta Information
        assert part.transfer_syntax == ds.file_meta.TransferSyntaxUID
        syntaxes.add(part.transfer_syntax)
    assert syntaxes == {ExplicitVRLittleEndian, RLELossless}  # transfer-syntax=* keeps both


def test_per_part_transfer_syntax_labels_are_kept(double_server, ct_data) -> None:
    """PS3.18 §8.7.3.5.2: each part's Content-Type names the syntax it was sent in."""
    _, plain, _ = ct_data
    body, content_type = multipart_body(
        [
            (
                {"Content-Type": f"application/dicom; transfer-syntax={ExplicitVRLittleEndian}"},
                plain.payloads[0],
            ),
            (
                {
                    "Content-Type": "application/dicom; transfer-syntax=1.2.840.10008.1.2.4.50",
                    "Content-Location": "/x/1",
                },
                b"jpeg-ish",
            ),
        ],
        "application/dicom",
    )

    def respond(handler, seen):
        handler.set_header("Content-Type", content_type)
        handler.write(body)

    base, double = double_server(respond)
    parts = list(client_for(base).iter_series("1.2.3", "1.2.3.4"))
    assert [p.transfer_syntax for p in parts] == [ExplicitVRLittleEndian, "1.2.840.10008.1.2.4.50"]
    assert parts[1].content_location == "/x/1"
    assert parts[0].payload == plain.payloads[0]
    assert "transfer-syntax=*" in double.seen()[0].headers["accept"]


def test_a_single_part_answer_is_accepted(double_server, ct_data) -> None:
    """Some servers answer application/dicom without multipart (dicomweb-client#41)."""
    _, plain, _ = ct_data

    def respond(handler, seen):
        handler.set_header("Content-Type", "application/dicom")
        handler.write(plain.payloads[0])

    base, _ = double_server(respond)
    payload = client_for(base).retrieve_instance("1.2.3", "1.2.3.4", "1.2.3.4.5")
    assert payload == plain.payloads[0]


def test_a_truncated_stream_is_an_error_not_a_short_series(double_server, ct_data) -> None:
    _, plain, _ = ct_data
    body, content_type = multipart_body(
        [({"Content-Type": "application/dicom"}, p) for p in plain.payloads[:3]],
        "application/dicom",
    )

    def respond(handler, seen):
        handler.set_header("Content-Type", content_type)
        handler.write(body[: len(body) - 200])  # the closing boundary never comes

    base, _ = double_server(respond)
    received: list[Part] = []
    with pytest.raises(DICOMwebError, match="truncated"):
        for part in client_for(base).iter_series("1.2.3", "1.2.3.4"):
            received.append(part)
    assert [p.payload for p in received] == plain.payloads[:2]  # whole parts only


def test_retrieve_instance_and_metadata(server_base: str, ct_data, cache) -> None:
    _, plain, _ = ct_data
    client = client_for(server_base, cache=cache)
    sop = plain.sop_uids[4]
    payload = client.retrieve_instance(plain.study, plain.series, sop)
    assert pydicom.dcmread(io.BytesIO(payload)).SOPInstanceUID == sop
    metadata = client.retrieve_metadata(plain.study, plain.series)
    assert sorted(_uid(m, "00080018") for m in metadata) == sorted(plain.sop_uids)
    # both are now served from the cache
    assert client.retrieve_instance(plain.study, plain.series, sop) == payload
    assert client.cache_key([plain.study, plain.series], "metadata") in cache


def test_retrieve_frames_gives_native_pixels(server_base: str, ct_data) -> None:
    _, plain, _ = ct_data
    parts = client_for(server_base).retrieve_frames(
        plain.study, plain.series, plain.sop_uids[2], [1]
    )
    assert len(parts) == 1
    stored = np.frombuffer(parts[0].payload, "<u2").reshape(plain.hu.shape[1:])
    np.testing.assert_array_equal(stored.astype(np.int32) - 1024, plain.hu[2])


def test_thumbnail_of_a_series(server_base: str, ct_data) -> None:
    """Sup 203 thumbnails; Orthanc's plugin predates them, so /rendered stands in."""
    _, plain, _ = ct_data
    data = client_for(server_base).thumbnail(plain.study, plain.series, size=64)
    image = Image.open(io.BytesIO(data))
    assert max(image.size) <= 64
    assert image.format in ("JPEG", "PNG")


def test_rendered_with_a_window(server_base: str, ct_data) -> None:
    _, plain, _ = ct_data
    data = client_for(server_base).rendered(
        plain.study, plain.series, plain.sop_uids[0], window=(40, 400)
    )
    image = np.asarray(Image.open(io.BytesIO(data)).convert("L"))
    assert image.shape == plain.hu.shape[1:]
