import pytest

from cdnreq.decide.titles import MAX_TITLE, is_safe, technical_title


def test_plain_guid_keeps_prefix_and_guid():
    assert technical_title("cdnreq-", "SOFTINST-1234") == "cdnreq-SOFTINST-1234"


@pytest.mark.parametrize(
    "guid",
    [
        "customer-1______1",  # slapproxy's own guids hold "___"
        "a___b",
        "ends_with_",
        "with space",
        "ünïcode",
        "x" * 300,
        "",
        "___",
        "../../etc",
        "a\x00b",
    ],
)
def test_unsafe_guids_get_a_safe_stable_title(guid):
    title = technical_title("cdnreq-", guid)
    assert title == technical_title("cdnreq-", guid)  # stable
    assert len(title) <= MAX_TITLE
    assert "___" not in title and not title.endswith("_")
    assert is_safe(title)
    assert title.startswith("cdnreq-")


def test_guids_that_slug_alike_get_different_titles():
    a = technical_title("p-", "a b")
    b = technical_title("p-", "a/b")
    assert a != b
    assert a.rsplit("-", 1)[0] == b.rsplit("-", 1)[0]  # same readable part


def test_readable_slug_keeps_the_guid_visible():
    title = technical_title("cdnreq-", "customer-1______1")
    assert title.startswith("cdnreq-customer-1-")


def test_prefix_ending_in_underscore_is_made_safe():
    title = technical_title("cdn_", "__x")
    assert "___" not in title and not title.endswith("_")


def test_long_prefix_still_fits():
    title = technical_title("p" * 250, "SOFTINST-1")
    assert len(title) <= MAX_TITLE
