"""Viewer adapters produce each viewer's exact deep link; the registry picks them."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import unquote_plus

import pytest

from imagingkit.errors import ConfigError, InvalidInputError, InvalidUIDError
from imagingkit.iid import IIDRequest, PatientID
from imagingkit.iid.links import launch_link
from imagingkit.iid.viewers import (
    BuiltinAdapter,
    IIDAdapter,
    Launch,
    OHIFAdapter,
    OrthancOHIFAdapter,
    SlimAdapter,
    StoneAdapter,
    TemplateAdapter,
    ViewerRegistry,
    WeasisAdapter,
    load_viewers,
    viewer_url,
)

S1, S2 = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"
SE = "1.2.826.0.1.3680043.8.498.1.1"
DW = "http://127.0.0.1:8042/dicom-web"


def launch(*studies: str, series: tuple[str, ...] = (), **kw: object) -> Launch:
    return Launch(study_uids=studies, series_uids=series, dicomweb_base=DW, **kw)  # type: ignore[arg-type]


# -- each adapter's URL ----------------------------------------------------------------


def test_ohif_v3_study_list_and_series() -> None:
    ohif = OHIFAdapter("https://viewer.example/ohif/")
    assert ohif.url(launch(S1, S2)) == (
        f"https://viewer.example/ohif/viewer?StudyInstanceUIDs={S1},{S2}"
    )
    assert ohif.url(launch(S1, series=(SE,))) == (
        f"https://viewer.example/ohif/viewer?StudyInstanceUIDs={S1}&SeriesInstanceUIDs={SE}"
    )


def test_ohif_at_this_servers_root_uses_a_path_only_link() -> None:
    assert OHIFAdapter("").url(launch(S1)) == f"/viewer?StudyInstanceUIDs={S1}"


def test_ohif_initial_series_and_other_modes() -> None:
    ohif = OHIFAdapter("http://v", mode="tmtv", series_parameter="initialSeriesInstanceUID")
    assert ohif.url(launch(S1, series=(SE, "1.2"))) == (
        f"http://v/tmtv?StudyInstanceUIDs={S1}&initialSeriesInstanceUID={SE}"
    )


def test_orthanc_ohif_plugin() -> None:
    assert OrthancOHIFAdapter("http://127.0.0.1:8042").url(launch(S1)) == (
        f"http://127.0.0.1:8042/ohif/viewer?StudyInstanceUIDs={S1}"
    )


def test_stone_web_viewer_passes_a_series_only_with_one_study() -> None:
    stone = StoneAdapter("http://127.0.0.1:8042/")
    assert stone.url(launch(S1, series=(SE,))) == (
        f"http://127.0.0.1:8042/stone-webviewer/index.html?study={S1}&series={SE}"
    )
    assert stone.url(launch(S1, S2, series=(SE,))) == (
        f"http://127.0.0.1:8042/stone-webviewer/index.html?study={S1},{S2}"
    )


def test_weasis_rs_command_is_url_encoded_after_the_scheme() -> None:
    url = WeasisAdapter().url(launch(S1, S2))
    assert url == (
        "weasis://%24dicom%3Ars+--url+%22http%3A%2F%2F127.0.0.1%3A8042%2Fdicom-web%22"
        f"+-r+%22studyUID%3D{S1}%22+-r+%22studyUID%3D{S2}%22"
    )
    assert unquote_plus(url.removeprefix("weasis://")) == (
        f'$dicom:rs --url "{DW}" -r "studyUID={S1}" -r "studyUID={S2}"'
    )


def test_weasis_series_and_query_extension() -> None:
    weasis = WeasisAdapter(
        "https://pacs.example/dcm4chee-arc/aets/DCM4CHEE/rs", "&includedefaults=false"
    )
    command = unquote_plus(weasis.url(launch(S1, series=(SE,))).removeprefix("weasis://"))
    assert command == (
        '$dicom:rs --url "https://pacs.example/dcm4chee-arc/aets/DCM4CHEE/rs" '
        f'-r "seriesUID={SE}" --show-whole-study --query-ext "&includedefaults=false"'
    )


def test_weasis_needs_an_absolute_dicomweb_url() -> None:
    with pytest.raises(ConfigError, match="absolute"):
        WeasisAdapter().url(Launch(study_uids=(S1,), dicomweb_base="/dicom-web"))


def test_slim_opens_the_first_study_and_a_series() -> None:
    slim = SlimAdapter("https://slim.example/")
    assert slim.url(launch(S1, S2, series=(SE,))) == (
        f"https://slim.example/studies/{S1}/series/{SE}"
    )
    assert slim.url(launch(S2)) == f"https://slim.example/studies/{S2}"


def test_dcm4chee_style_template_encodes_every_value() -> None:
    template = TemplateAdapter(
        "https://pacs.example/viewer?study={{studyUID}}&pid={{patientID}}"
        "&name={{patientName}}&wado={{qidoBaseURL}}{{qidoBasePath}}&acc={{accessionNumber}}"
    )
    url = template.url(
        launch(
            S1,
            S2,
            patient_id=PatientID.parse("12^^^&1.2.3&ISO"),
            patient_name="Doe^John Q",
            accession_numbers=("A&1",),
        )
    )
    assert url == (
        f"https://pacs.example/viewer?study={S1},{S2}&pid=12%5E%5E%5E%261.2.3%26ISO"
        "&name=Doe%5EJohn%20Q&wado=http:%2F%2F127.0.0.1:8042%2Fdicom-web&acc=A%261"
    )


def test_template_placeholders_tolerate_spaces_and_series() -> None:
    template = TemplateAdapter("https://v.example/s/{{ studyUID }}/se/{{seriesUID}}")
    assert template.url(launch(S1, series=(SE,))) == f"https://v.example/s/{S1}/se/{SE}"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("https://v/{{unknown}}", "unknown placeholder"),
        ("{{dicomwebBase}}/x", "must start with"),
        ("https://{{patientID}}.example/", "scheme and host must be literal"),
        ("https://v.example?x={{studyUID}}", "scheme and host must be literal"),
        ("ftp://v.example/{{studyUID}}", "must start with"),
        ("//evil.example/{{studyUID}}", "must start with"),
        ("javascript:alert({{studyUID}})", "must start with"),
        ('https://v/"{{studyUID}}', "quotes"),
    ],
)
def test_bad_templates_are_configuration_errors(template: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TemplateAdapter(template)


def test_iid_pass_through_rebuilds_the_validated_request() -> None:
    adapter = IIDAdapter("https://display.example/iid")
    request = IIDRequest.patient("12^^^&1.2.3&ISO", most_recent_results=2)
    url = adapter.url(Launch(request=request))
    assert url == (
        "https://display.example/iid/IHEInvokeImageDisplay?requestType=PATIENT"
        "&patientID=12%5E%5E%5E%261.2.3%26ISO&mostRecentResults=2"
    )
    assert adapter.url(launch(S1)) == (
        f"https://display.example/iid/IHEInvokeImageDisplay?requestType=STUDY&studyUID={S1}"
    )


def test_builtin_viewer_link() -> None:
    assert BuiltinAdapter().url(launch(S1, S2, series=(SE,))) == (
        f"/viewer/?study={S1},{S2}&series={SE}"
    )
    assert BuiltinAdapter("http://h:1/lab/imagingkit/viewer").url(launch(S1)) == (
        f"http://h:1/lab/imagingkit/viewer/?study={S1}"
    )


def test_every_built_url_starts_with_the_adapters_prefix() -> None:
    adapters = [
        OHIFAdapter("http://o"),
        OrthancOHIFAdapter("http://orthanc"),
        StoneAdapter("http://orthanc"),
        WeasisAdapter(),
        SlimAdapter("http://slim"),
        TemplateAdapter("http://t/x?s={{studyUID}}"),
        IIDAdapter("http://iid"),
        BuiltinAdapter(),
    ]
    for adapter in adapters:
        assert adapter.url(launch(S1, series=(SE,))).startswith(adapter.prefix), adapter


@pytest.mark.parametrize(
    "base",
    ["ftp://v", "http://user:pw@v", "http://v?x=1", "http://v#x", "//v", "v/path", "http://v\\x"],
)
def test_viewer_locations_are_checked(base: str) -> None:
    with pytest.raises(ConfigError):
        OHIFAdapter(base)


# -- registry and configuration --------------------------------------------------------


def test_registry_picks_by_viewer_type_and_defaults_for_ihe_bir() -> None:
    registry = ViewerRegistry(
        {"builtin": BuiltinAdapter(), "ohif": OHIFAdapter("http://o")}, "ohif"
    )
    assert registry.get(None) is registry.viewers["ohif"]
    assert registry.get("IHE_BIR") is registry.viewers["ohif"]
    assert registry.get("BuiltIn") is registry.viewers["builtin"]
    with pytest.raises(InvalidInputError, match="viewer 'weasis' is not configured here"):
        registry.get("weasis")


def test_viewers_load_from_a_json_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = {
        "default": "pacs",
        "viewers": {
            "pacs": {"type": "template", "url": "https://pacs.example/v?s={{studyUID}}"},
            "ohif": {"type": "ohif", "base": "https://ohif.example"},
            "weasis": {"type": "weasis"},
        },
    }
    path = tmp_path / "viewers.json"
    path.write_text(json.dumps(config))
    monkeypatch.setenv("IMAGINGKIT_VIEWERS", str(path))
    registry = load_viewers()
    assert registry.names() == ["pacs", "ohif", "weasis"]
    assert registry.get().url(launch(S1)) == f"https://pacs.example/v?s={S1}"


def test_viewers_load_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "viewers.toml"
    path.write_text(
        'default = "slim"\n[viewers.slim]\ntype = "slim"\nbase = "https://slim.example"\n'
    )
    pytest.importorskip("tomllib", reason="TOML needs Python 3.11")
    assert load_viewers(path).get().url(launch(S1)) == f"https://slim.example/studies/{S1}"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"viewers": {}}, "'viewers' must map"),
        ({"viewers": {"x": {"type": "nope"}}}, "needs a 'type'"),
        ({"viewers": {"x": {"type": "ohif", "bogus": 1}}}, "viewer 'x'"),
        ({"viewers": {"x": {"type": "slim", "base": "javascript:alert(1)"}}}, "http"),
        ({"default": "y", "viewers": {"x": {"type": "weasis"}}}, "default viewer 'y'"),
        ({"viewers": {"a b": {"type": "weasis"}}}, "simple token"),
    ],
)
def test_configuration_errors_name_the_entry(config: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ViewerRegistry.from_config(config)


def test_a_missing_or_malformed_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_viewers(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="malformed"):
        load_viewers(bad)


def test_without_configuration_the_builtin_viewer_is_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("IMAGINGKIT_VIEWERS", raising=False)
    assert isinstance(load_viewers().get(), BuiltinAdapter)
    with_ohif = load_viewers(ohif=True)
    assert isinstance(with_ohif.get(), OHIFAdapter)
    assert with_ohif.get().url(launch(S1)) == f"/ohif/viewer?StudyInstanceUIDs={S1}"


# -- viewer_url and launch_link (the notebook side) ------------------------------------


def test_viewer_url_places_viewers_next_to_the_dicomweb_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("IMAGINGKIT_VIEWERS", raising=False)
    assert viewer_url("builtin", study_uid=S1, series_uid=SE, dicomweb_base=DW) == (
        f"http://127.0.0.1:8042/viewer/?study={S1}&series={SE}"
    )
    orthanc = "http://127.0.0.1:8043/dicom-web"
    assert viewer_url("stone", study_uid=[S1], dicomweb_base=orthanc) == (
        f"http://127.0.0.1:8043/stone-webviewer/index.html?study={S1}"
    )
    assert viewer_url("orthanc-ohif", study_uid=S1, dicomweb_base=orthanc) == (
        f"http://127.0.0.1:8043/ohif/viewer?StudyInstanceUIDs={S1}"
    )
    assert viewer_url("weasis", study_uid=S1, dicomweb_base=DW).startswith("weasis://%24dicom")


def test_viewer_url_uses_adapters_and_configured_names() -> None:
    registry = ViewerRegistry({"mine": SlimAdapter("https://slim.example")}, "mine")
    assert viewer_url("mine", study_uid=S1, dicomweb_base=DW, registry=registry) == (
        f"https://slim.example/studies/{S1}"
    )
    template = TemplateAdapter("https://p.example/?pid={{patientID}}&s={{studyUID}}")
    assert viewer_url(template, study_uid=S1, dicomweb_base=DW, patient_id="7^^^H") == (
        f"https://p.example/?pid=7%5E%5E%5EH&s={S1}"
    )


def test_viewer_url_validates_uids_and_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IMAGINGKIT_VIEWERS", raising=False)
    with pytest.raises(InvalidUIDError, match="StudyInstanceUID"):
        viewer_url("builtin", study_uid="1.2.03", dicomweb_base=DW)
    assert "1.2.03" in viewer_url("builtin", study_uid="1.2.03", dicomweb_base=DW, lenient=True)
    with pytest.raises(InvalidUIDError, match="SeriesInstanceUID"):
        viewer_url("builtin", study_uid=S1, series_uid="x", dicomweb_base=DW)
    with pytest.raises(ConfigError, match="needs to be configured"):
        viewer_url("ohif", study_uid=S1, dicomweb_base=DW)
    with pytest.raises(ConfigError, match="neither configured"):
        viewer_url("nope", study_uid=S1, dicomweb_base=DW, registry=ViewerRegistry.standard())


def test_launch_link_is_escaped_html_opening_a_new_tab() -> None:
    link = launch_link(f"/viewer/?study={S1}&series={SE}", label="CT <chest> & more")
    assert link._repr_html_() == (
        f'<a href="/viewer/?study={S1}&amp;series={SE}" target="_blank" '
        'rel="noopener noreferrer">CT &lt;chest&gt; &amp; more</a>'
    )
    assert str(link) == link.to_html()


@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(1)",
        "JaVaScRiPt:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        "//evil.example/x",
        "relative/path",
        "http://ok.example/\r\nx",
        "/\\evil.example",
        "",
    ],
)
def test_launch_link_refuses_unsafe_targets(url: str) -> None:
    with pytest.raises(InvalidInputError):
        launch_link(url)
