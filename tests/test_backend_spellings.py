"""Backend addresses (issue 10, property 6), attacked: spellings that other
URL readers turn into a denied address. Each was allowed before.

* IDNA maps some characters to nothing (soft hyphen, zero-width space, word
  joiner, variation selectors...): Python's ``idna`` codec, which
  ``socket.getaddrinfo`` uses for a non-ASCII name, reads
  ``127.0.0.1\\u00ad`` as ``127.0.0.1``.
* Browsers (WHATWG) skip slashes and backslashes after ``http:``:
  ``http:///169.254.169.254/`` is the metadata service to them.
* Percent-decoding readers see ``127.0.0.1%00.example.com`` as a name with a
  NUL after the address; a bare ``host:port:port`` is ``host`` to urllib.

Pure: no test opens a connection to any address.
"""

from __future__ import annotations

import pytest

from cdnreq.validate.verdict import validate

HOSTILE = [
    "http://127.0.0.1\u00ad/",
    "http://127.0.0.\u00ad1/",
    "http://localhost\u00ad/",
    "http://lo\u00adcalhost/",
    "http://127.0.0.1\u200b/",
    "http://127.0.0.1\u200c/",
    "http://127.0.0.1\u2060/",
    "http://127.0.0.1\ufeff/",
    "http://127.0.0.1\ufe0f/",
    "http://127.0.0.1\u034f/",
    "http://0x7f.1\u180b/",
    "http://169.254.169.254\u00ad/latest/meta-data/",
    "http://127.0.0.1%c2%ad/",
    "http:///localhost/",
    "http:////127.0.0.1/",
    "http://\\localhost/",
    "http://\\\\localhost/",
    "http://\\/localhost/",
    "http:///169.254.169.254/latest/meta-data",
    "https:///[::1]/",
    "http://:80/",
    "http://127.0.0.1%00.example.com/",
    "http://127.0.0.1%09/",
    "http://localhost%2f/",
    "http://x%40localhost/",
    "http://localhost:80:80/",
    "http://127.0.0.1%2500.example.com/",
]


@pytest.mark.parametrize("field", ["url", "health-check-failover-url"])
@pytest.mark.parametrize("url", HOSTILE)
def test_a_spelling_another_reader_takes_for_a_denied_host_is_refused(field, url) -> None:
    errors = validate({"custom_domain": "www.example.com", field: url}).errors
    assert len(errors) == 1 and errors[0].startswith(f"{field}: "), errors
    assert "backend address" in errors[0] or "host " in errors[0]


@pytest.mark.parametrize("url", [u.replace("http://", "https://", 1) for u in HOSTILE[:13]])
def test_https_url_is_read_the_same_way(url) -> None:
    (error,) = validate({"https-url": url}).errors
    assert error.startswith("https-url: backend address 127.0.0.1 (") or "169.254.169.254" in error


@pytest.mark.parametrize(
    "url",
    ["https://b\u00fccher.example/", "https://[2001:db8::1]:8443/", "https://user:pw@backend.example/x",
     "https://backend.example/%2f%00", "https://backend.example:443/a//b\\c", "https://xn--bcher-kva.example/",
     "https://backend.example/?next=http://127.0.0.1/"],
)
def test_honest_urls_still_pass(url) -> None:
    assert validate({"url": url}).ok, validate({"url": url}).errors
