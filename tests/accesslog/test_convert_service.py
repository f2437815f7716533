"""L7 flows of an lb-l7 listener name their Service (the listener's ``nodemesh.service`` tag)."""

from __future__ import annotations

from meshctl.flowfilter import build_filters, matches
from nodemesh import lbl7
from nodemesh.messages.flow import Service
from services.datapath.accesslog.convert import convert, no_enrich
from testkit.accesslog_entries import entry


def test_service_tag_names_the_request_s_destination_and_the_reply_s_source() -> None:
    e = entry()
    e.common_properties.custom_tags[lbl7.SERVICE_TAG] = "shop/web"
    r = convert(e, "n", no_enrich)
    assert r.request.destination_service == Service(name="web", namespace="shop")
    assert r.response.source_service == Service(name="web", namespace="shop")
    assert r.request.source_service is None and r.response.destination_service is None
    f = build_filters(to_service=["shop/web"])
    assert matches(r.request, f) and not matches(r.response, f)


def test_without_the_tag_or_with_a_malformed_one_no_service() -> None:
    assert convert(entry(), "n", no_enrich).request.destination_service is None
    e = entry()
    e.common_properties.custom_tags[lbl7.SERVICE_TAG] = "no-slash"
    assert convert(e, "n", no_enrich).request.destination_service is None
