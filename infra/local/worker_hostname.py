"""The host name a cluster worker's task instances report: `<node>@<fqdn>`, as Celery names it.

Two workers on one machine would otherwise both report the machine's name; Airflow calls this
through `[core] hostname_callable`, which each worker of the local cluster sets.
"""

from __future__ import annotations

import os
import socket

NODE_VAR = "TFOPT_WORKER_NODE"


def celery_node_hostname() -> str:
    """`cpu@host` on the default queue's worker, `gpu@host` on the gpu one, else the FQDN."""
    node = os.environ.get(NODE_VAR)
    fqdn = socket.getfqdn()
    return f"{node}@{fqdn}" if node else fqdn
