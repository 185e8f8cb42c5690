"""A fast SlapOS master double, for benchmarks ONLY.

cdnreq's own tests run against a real slapproxy (devtools/devmaster.py). That
is the right master for correctness, but it is far too slow to measure cdnreq
with 100,000 customers: it answers a few dozen requests a second and its
per-request cost grows with what it holds. This module is a stand-in that is
cheap enough to measure cdnreq rather than the master.

It implements exactly the five calls cdnreq makes (cdnreq/master.py), with the
request and answer shapes of the real master's OpenAPI description
(slapos.core's ``slapos/proxy/json_rpc.json``):

* ``slapos.allDocs.v0.instance_node_instance_list``: for the requester's
  guid, the hosted customer shared instances; for the technical host's guid,
  the technical entries requested so far;
* ``slapos.post.v0.software_instance`` (``shared: true`` only): records,
  updates or destroys a technical entry keyed by its title, and answers the
  full instance document;
* ``slapos.get.v0.software_instance``: the technical entry (or a customer's
  instance), 403 when unknown;
* ``slapos.put.v0.software_instance_connection_parameter`` and
  ``slapos.put.v0.software_instance_error``: record what was published per
  customer guid.

Errors are ``{status, type, title}`` with a 4xx status, as the real master
sends them: 400 for an unknown call or a body that does not match the spec,
403 for an unknown instance. Request bodies are fully validated against the
spec (jsonschema Draft 7) only with ``validate=True``; by default only the
required keys and their types are checked, for speed. With ``validate=True``
the answers are validated too (a mismatch is a 500, as in slapproxy).

When the "technical CDN" publishes is ``publish_after``:

* ``"immediately"``: the request's answer already carries the connection
  parameters;
* ``"next_read"``: the request's answer has none (for a new entry, or the old
  ones for an update); they are filled when the entry is read back with get;
* ``"never"``: nothing is ever published.

Speed: the list of hosted instances is served from a cached body. Each
customer's entry is serialised once and kept; a change re-serialises only the
entries it touched, and the body (a join of the fragments) is rebuilt at the
next list. ``orjson`` is used when it is installed (it is not a dependency).

Run it in its own process for benchmarks, so that its CPU is not counted as
cdnreq's::

    python -m bench.double --port 0 --customers 100000 --domains

prints ``READY <port>`` once it listens. A small control API on the same
server, under ``/_bench/``, lets the benchmark runner change the customers
between ticks and read counters (see :func:`bench.double.control.control_routes`).
:class:`DoubleProcess` starts and drives such a process; :func:`serve` runs a
double in the current event loop (tests); ``bench.baselines.ceiling`` measures
the double's own request rate with a bare aiohttp client.

State is in memory only. The benchmark changes customers through
:meth:`Double.add`, :meth:`Double.change` and :meth:`Double.remove` (or the
control API), which keep the cached list up to date; after mutating
``Double.customers`` directly, call :meth:`Double.invalidate`.
"""

from bench.double.customers import customer_guid, customer_parameters, padded
from bench.double.master import Double
from bench.double.process import DoubleProcess
from bench.double.server import DoubleServer, make_app, serve, start
from bench.double.wire import (
    CALLS, ERROR, GET, LIST_HOSTED, PUBLISH, PUBLISH_MODES, REQUEST, REQUESTER_GUID, TECHNICAL_GUID,
    Refused, error_body, load_spec, spec_path,
)

__all__ = [
    "CALLS", "ERROR", "GET", "LIST_HOSTED", "PUBLISH", "PUBLISH_MODES", "REQUEST", "REQUESTER_GUID",
    "TECHNICAL_GUID", "Double", "DoubleProcess", "DoubleServer", "Refused", "customer_guid",
    "customer_parameters", "error_body", "load_spec", "make_app", "padded", "serve", "spec_path", "start",
]
