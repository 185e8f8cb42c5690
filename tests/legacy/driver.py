"""Run the old cron requester (slapos.cookbook 1.0.514) once, as its cron job did.

Run by ``.venv-legacy/bin/python`` (scripts/legacy-venv.sh), never by the
test venv: it imports only the old package's public classes, so the legacy
databases it leaves are the ones the old code really writes. The job is a
JSON object, on stdin or in the file named by the first argument:

    {"db": {"source": P, "validated": P, "domains": P, "requested": P},
     "server_url": U, "computer_id": C, "partition_id": P,
     "dns_nameserver": "127.0.0.1:PORT", "secret": S, "retention_delay_s": N,
     "software_url": SR, "software_type": T, "prefix": "_cdnreq_",
     "invalid": {R: "schema error text"}, "strip_keys": ["slave_title", ...],
     "stages": ["source", "A", "B"]}

Stages: ``source`` writes what slapconfiguration writes (SharedInstanceResultDB)
from the shared instances the master lists for the requester partition: the
old slap API's slave_instance_list, slave_reference popped, the rest kept as
the parameters; references named in ``invalid`` go to the invalid list with
that error, as a schema failure would. ``strip_keys`` are dropped from the
parameters: the master adds slave_title and slap_software_type to each item
and slapconfiguration keeps them, but forwarded by stage B to slapproxy they
overwrite the technical entry's own slave_title. ``A`` runs cdninstancenode
(domain proofs, conflicts, retention), ``B`` runs instancenode (requests the
technical entries, publishes their connection parameters to the customers).
It prints one JSON line: the stages run and how long each took.
"""

import json
import logging
import sys
import time

from slapos import slap
from slapos.recipe import cdninstancenode, instancenode
from slapos.recipe.librecipe import unwrap
from slapos.recipe.localinstancedb import SharedInstanceResultDB


def write_source(job):
    """What slapconfiguration leaves for the cron job: the master's shared list, valid or not."""
    partition = _computer_partition(job)
    shared_list = partition.getInstanceParameterDict().get("slave_instance_list") or []
    invalid_errors = job.get("invalid", {})
    valid, invalid = [], []
    for shared in shared_list:
        shared = dict(shared)
        reference = shared.pop("slave_reference")
        for key in job.get("strip_keys", []):
            shared.pop(key, None)
        item = {"reference": reference, "parameters": unwrap(shared)}
        if reference in invalid_errors:
            item["errors"] = invalid_errors[reference]
            invalid.append(item)
        else:
            valid.append(item)
    SharedInstanceResultDB(job["db"]["source"]).updateFromValidationResults(valid, invalid)


def _computer_partition(job):
    connection = slap.slap()
    connection.initializeConnection(job["server_url"])
    return connection.registerComputerPartition(job["computer_id"], job["partition_id"])


def _partition_options(job):
    return {
        "server-url": job["server_url"],
        "computer-id": job["computer_id"],
        "partition-id": job["partition_id"],
    }


def stage_a(job):
    """cdninstancenode: source DB -> validated DB, with the domain proofs in the domains DB."""
    options = dict(_partition_options(job), **{
        "instance-db-path": job["db"]["source"],
        "requestinstance-db-path": job["db"]["validated"],
        "domain-validation-db-path": job["db"]["domains"],
        "dns-nameserver": job["dns_nameserver"],
        "verification-secret": job["secret"],
        "instance-retention-delay": str(job["retention_delay_s"]),
    })
    cdninstancenode.Recipe(buildout=None, name="cdn-instance-node", options=options).install()


def stage_b(job):
    """instancenode: validated DB -> requested DB, one technical shared entry per customer."""
    options = dict(_partition_options(job), **{
        "instance-db-path": job["db"]["validated"],
        "requestinstance-db-path": job["db"]["requested"],
        "software-url": job["software_url"],
        "software-type": job["software_type"],
        "shared": "true",
        "request-name-prefix": job["prefix"],
    })
    instancenode.Recipe(buildout=None, name="request-instance-list", options=options).install()


STAGES = {"source": write_source, "A": stage_a, "B": stage_b}


def main(argv):
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="legacy %(name)s %(levelname)s %(message)s")
    if len(argv) > 1:
        with open(argv[1]) as f:
            job = json.load(f)
    else:
        job = json.load(sys.stdin)
    timings = []
    for name in job.get("stages", ["source", "A", "B"]):
        began = time.monotonic()
        STAGES[name](job)
        timings.append([name, round(time.monotonic() - began, 3)])
    print(json.dumps({"stages": timings}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
