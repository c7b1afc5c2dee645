"""Bad input and attacks on the IID facade: every one is refused safely and clearly.

A redirect may only go where a configured viewer lives; nothing a client sends may reach
a response header unencoded or an error page unescaped.
"""

from __future__ import annotations

import http.client
import random
from collections.abc import Callable
from urllib.parse import quote, urljoin, urlsplit

import pytest
import requests
from iid_support import AppServer

from imagingkit.iid.facade import IidFacade
from imagingkit.iid.viewers import (
    BuiltinAdapter,
    IIDAdapter,
    OHIFAdapter,
    TemplateAdapter,
    ViewerRegistry,
)

TEMPLATE = "https://pacs.example/view?s={{studyUID}}&p={{patientID}}&n={{patientName}}"
#: where redirects may go; every other target is an open redirect
ALLOWED_HOSTS = {"127.0.0.1", "pacs.example", "ohif.example", "display.example"}

REDIRECT_PAYLOADS = {
    "absolute": ["http://evil.example/", "https://evil.example/x", "HTTP://EVIL.EXAMPLE"],
    "protocol-relative": ["//evil.example", "///evil.example", "//evil.example/%2F.."],
    "script": ["javascript:alert(1)", "JaVaScRiPt:alert(document.domain)", "data:text/html,x"],
    "backslash": ["\\\\evil.example", "/\\evil.example", "\\/evil.example", "http:\\\\evil"],
    "percent-encoded": ["%2F%2Fevil.example", "http%3A%2F%2Fevil.example", "%5C%5Cevil.example"],
    "double-encoded": ["%252F%252Fevil.example", "http%253A%252F%252Fevil.example", "%255Cevil"],
}
#: the parameters a client could hope would steer the redirect
STEERING_PARAMETERS = ["studyUID", "accessionNumber", "viewerType", "redirect", "url", "next"]


@pytest.fixture
def facade(serve_app: Callable[..., AppServer]) -> AppServer:
    registry = ViewerRegistry(
        {
            "builtin": BuiltinAdapter(),
            "ohif": OHIFAdapter("https://ohif.example"),
            "pacs": TemplateAdapter(TEMPLATE),
            "forward": IIDAdapter("https://display.example/iid"),
        },
        "builtin",
    )
    # lookups would go nowhere: these tests never need a study to be found
    return serve_app([IidFacade(registry, fhir_base="http://127.0.0.1:9/fhir", timeout=5)])


def get(server: AppServer, query: str) -> requests.Response:
    return requests.get(
        f"{server.url}/iid/IHEInvokeImageDisplay?{query}", allow_redirects=False, timeout=30
    )


def assert_safe(server: AppServer, response: requests.Response) -> None:
    """Either a refusal without Location, or a redirect to a configured viewer only."""
    if 300 <= response.status_code < 400:
        location = response.headers["Location"]
        assert "\\" not in location and not location.startswith("//"), location
        assert all(32 < ord(c) < 127 for c in location), location
        target = urlsplit(urljoin(server.url + "/", location))
        assert target.scheme in ("http", "https"), location
        assert target.hostname in ALLOWED_HOSTS, location
        assert "evil" not in target.netloc.lower(), location
    else:
        # refused (4xx), or a valid value the archive could not look up (502 here)
        assert response.status_code >= 400, response.status_code
        assert "Location" not in response.headers


def attempts(category: str) -> list[tuple[str, str]]:
    return [(p, v) for p in STEERING_PARAMETERS for v in REDIRECT_PAYLOADS[category]]


def attempt(server: AppServer, parameter: str, payload: str) -> requests.Response:
    base = {
        "studyUID": "requestType=STUDY",
        "accessionNumber": "requestType=STUDY",
    }.get(parameter, "requestType=STUDY&studyUID=1.2.3")
    # payloads are sent as written; '%' sequences in them stay encodings
    return get(server, f"{base}&{parameter}={quote(payload, safe='%/:')}")


@pytest.mark.parametrize(("parameter", "payload"), attempts("absolute"))
def test_open_redirect_with_absolute_urls_is_refused(
    facade: AppServer, parameter: str, payload: str
) -> None:
    response = attempt(facade, parameter, payload)
    assert_safe(facade, response)
    if parameter in ("studyUID", "viewerType", "redirect", "url", "next"):
        assert response.status_code == 400


@pytest.mark.parametrize(("parameter", "payload"), attempts("protocol-relative"))
def test_open_redirect_with_protocol_relative_urls_is_refused(
    facade: AppServer, parameter: str, payload: str
) -> None:
    assert_safe(facade, attempt(facade, parameter, payload))


@pytest.mark.parametrize(("parameter", "payload"), attempts("script"))
def test_javascript_and_data_urls_are_refused(
    facade: AppServer, parameter: str, payload: str
) -> None:
    assert_safe(facade, attempt(facade, parameter, payload))


@pytest.mark.parametrize(("parameter", "payload"), attempts("backslash"))
def test_backslash_redirect_tricks_are_refused(
    facade: AppServer, parameter: str, payload: str
) -> None:
    response = attempt(facade, parameter, payload)
    assert_safe(facade, response)
    assert response.status_code == 400  # a backslash is never valid in an IID value


@pytest.mark.parametrize(("parameter", "payload"), attempts("percent-encoded"))
def test_percent_encoded_redirects_are_refused(
    facade: AppServer, parameter: str, payload: str
) -> None:
    assert_safe(facade, attempt(facade, parameter, payload))


@pytest.mark.parametrize(("parameter", "payload"), attempts("double-encoded"))
def test_double_encoded_redirects_are_refused(
    facade: AppServer, parameter: str, payload: str
) -> None:
    assert_safe(facade, attempt(facade, parameter, payload))


@pytest.mark.parametrize(
    "payload", [v for values in REDIRECT_PAYLOADS.values() for v in values], ids=str
)
def test_values_that_reach_a_template_stay_inside_its_query(
    facade: AppServer, payload: str
) -> None:
    # patientName/patientID are substituted into the pacs template's query: encoded, so
    # they can never become the host, the path or a new parameter
    query = (
        f"requestType=PATIENT&viewerType=forward&patientID=1&patientName={quote(payload, safe='%')}"
    )
    response = get(facade, query)
    assert_safe(facade, response)
    if response.status_code == 302:
        assert response.headers["Location"].startswith(
            "https://display.example/iid/IHEInvokeImageDisplay?requestType=PATIENT&patientID=1"
        )


def test_random_values_never_escape_the_configured_prefix(facade: AppServer) -> None:
    rng = random.Random(7)
    alphabet = "abcXYZ019:/\\.?#&=%@!$'\"()*+,;<>[]^`{|}~ \t\u2028\u560a"
    for _ in range(150):
        value = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 24)))
        query = f"requestType=PATIENT&viewerType=forward&patientID=X&patientName={quote(value)}"
        response = get(facade, query)
        assert_safe(facade, response)
        if response.status_code == 302:
            assert response.headers["Location"].startswith("https://display.example/iid/")


XSS = [
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "'><svg/onload=alert(document.cookie)>",
    "</p><iframe src=javascript:alert(1)>",
]


def assert_escaped(response: requests.Response, payload: str) -> None:
    assert response.status_code == 400
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "script-src" not in response.headers["Content-Security-Policy"]
    body = response.text
    assert payload not in body
    for dangerous in ("<script", "<img", "<svg", "<iframe"):
        assert dangerous not in body
    assert "&lt;" in body  # the payload is shown, escaped


@pytest.mark.parametrize("payload", XSS)
def test_xss_in_patient_id_is_escaped_on_the_error_page(facade: AppServer, payload: str) -> None:
    # an unsupported check digit (CX.2) makes the ID invalid, so it is echoed back
    response = get(facade, f"requestType=PATIENT&patientID={quote(payload + '^1')}")
    assert "CX component(s) [2]" in response.text
    assert_escaped(response, payload)


@pytest.mark.parametrize("payload", XSS)
def test_xss_in_patient_name_is_escaped_on_the_error_page(facade: AppServer, payload: str) -> None:
    # six components make the name invalid, so it is echoed back
    name = payload + "^a^b^c^d^e"
    response = get(facade, f"requestType=PATIENT&patientID=1&patientName={quote(name)}")
    assert "more than 5 components" in response.text
    assert_escaped(response, payload)


@pytest.mark.parametrize("payload", XSS)
def test_xss_in_other_parameters_is_escaped(facade: AppServer, payload: str) -> None:
    for query in (
        f"requestType={quote(payload)}",
        f"requestType=STUDY&studyUID={quote(payload)}",
        f"requestType=STUDY&studyUID=1.2&{quote(payload)}=1",
        f"requestType=STUDY&studyUID=1.2&viewerType={quote(payload)}",
    ):
        assert_escaped(get(facade, query), payload)


CRLF = ["%0D%0ASet-Cookie:%20injected=1", "%0ALocation:%20http://evil.example", "%0D%0A%0D%0A<h1>x"]


@pytest.mark.parametrize("payload", CRLF)
@pytest.mark.parametrize(
    "prefix",
    [
        "requestType=STUDY&studyUID=1.2.3",
        "requestType=STUDY&accessionNumber=A1",
        "requestType=STUDY&studyUID=1.2.3&viewerType=ohif",
        "requestType=PATIENT&viewerType=forward&patientID=1",
        "requestType=PATIENT&viewerType=forward&patientID=1&patientName=Doe",
        "requestType=STUDY&studyUID=1.2.3&x",
    ],
)
def test_crlf_never_reaches_a_header(facade: AppServer, prefix: str, payload: str) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", facade.port, timeout=30)
    try:
        connection.request("GET", f"/iid/IHEInvokeImageDisplay?{prefix}{payload}")
        response = connection.getresponse()
        headers = {k.lower(): v for k, v in response.getheaders()}
        body = response.read().decode()
    finally:
        connection.close()
    assert response.status == 400
    assert "set-cookie" not in headers
    assert "location" not in headers
    assert "control character" in body


def test_unicode_line_separators_are_encoded_in_redirects(facade: AppServer) -> None:
    # U+560A/U+560D end in 0A/0D bytes that naive servers turn into CR/LF
    response = get(
        facade,
        "requestType=PATIENT&viewerType=forward&patientID=1"
        "&patientName=%E5%98%8A%E5%98%8DSet-Cookie:x%E2%80%A8",
    )
    assert response.status_code == 302
    assert "Set-Cookie" not in response.headers
    assert "%E5%98%8A%E5%98%8DSet-Cookie:x%E2%80%A8" in response.headers["Location"]


def test_an_oversized_url_is_414(facade: AppServer) -> None:
    uids = ",".join(f"1.2.840.10008.{i}" for i in range(600))
    response = get(facade, f"requestType=STUDY&studyUID={uids}")
    assert response.status_code == 414
    assert "at most 8192" in response.text


def test_an_oversized_parameter_is_400(facade: AppServer) -> None:
    response = get(facade, "requestType=PATIENT&patientID=1&patientName=" + "A" * 5000)
    assert response.status_code == 400
    assert "patientName is 5000 characters long; at most 4096" in response.text


def test_too_many_parameters_or_studies_are_400(facade: AppServer) -> None:
    many = "&".join(f"p{i}=1" for i in range(70))
    assert get(facade, f"requestType=STUDY&studyUID=1.2&{many}").status_code == 400
    uids = ",".join(f"1.2.{i}" for i in range(101))
    response = get(facade, f"requestType=STUDY&studyUID={uids}")
    assert response.status_code == 400
    assert "at most 100" in response.text


def test_a_huge_request_line_is_refused_by_the_server(facade: AppServer) -> None:
    # beyond tornado's header limit the connection is refused before the facade runs
    try:
        response = get(facade, "requestType=STUDY&studyUID=" + "1" * 100_000)
    except requests.ConnectionError:
        return
    assert response.status_code in (400, 414, 431)
    assert "Location" not in response.headers


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("requestType=SERIES&studyUID=1.2.3", "requestType &#x27;SERIES&#x27; is not supported"),
        ("requestType=STUDYBASE64&studyUID=MS4y", "requestType &#x27;STUDYBASE64&#x27;"),
        ("requestType=&studyUID=1.2.3", "requestType &#x27;&#x27; is not supported"),
        ("studyUID=1.2.3", "requestType is missing"),
    ],
)
def test_unknown_request_type_is_refused(facade: AppServer, query: str, message: str) -> None:
    response = get(facade, query)
    assert response.status_code == 400
    assert message in response.text
    assert "Location" not in response.headers


def test_study_uid_and_accession_number_together_are_refused(facade: AppServer) -> None:
    response = get(facade, "requestType=STUDY&studyUID=1.2.3&accessionNumber=A1")
    assert response.status_code == 400
    assert "exactly one of studyUID and accessionNumber (both were given)" in response.text
    assert "Location" not in response.headers


def test_only_get_is_served(facade: AppServer) -> None:
    response = requests.post(
        f"{facade.url}/iid/IHEInvokeImageDisplay?requestType=STUDY&studyUID=1.2.3",
        allow_redirects=False,
        timeout=30,
    )
    assert response.status_code == 405
    assert "Location" not in response.headers
