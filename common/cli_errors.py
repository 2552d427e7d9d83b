"""One line, the fix, and an exit status for what a person fixes, in every command.

Exit statuses, the same for `python -m train`, `train.prepare`, `deploy` and `flow.connect`:
2 for a usage or setup error (a key, a row, a login, a model or a port), 1 for a refusal by a gate
(the promotion gate, the blue/green gate), anything else (a bug) the traceback Python prints.
`HYDRA_FULL_ERROR=1` shows the traceback of a user error too.

`explain` turns the third-party exceptions a missing setup raises (no Azure login, a quota, a
hub model that is not cached while offline, a port in use) into that one line; the commands'
own error classes already carry theirs.
"""

from __future__ import annotations

import errno
import os
import sys

USAGE_ERROR = 2  # as argparse and Hydra use for a bad command line
GATE_REFUSED = 1


def explain(error: BaseException) -> str | None:
    """The one-line message for a known setup error raised by a library, else None."""
    name = type(error).__name__
    text = str(error).strip().splitlines()[0] if str(error).strip() else name
    if name in ("ClientAuthenticationError", "CredentialUnavailableError"):
        return (
            "no Azure login that works here: run `az login` (or set AZURE_CLIENT_ID, "
            "AZURE_TENANT_ID and AZURE_CLIENT_SECRET for a service principal); "
            f"target.workspace.credential=azure_cli uses `az login` only ({text[:160]})"
        )
    if name == "HttpResponseError" and "quota" in str(error).lower():
        return (
            f"Azure refused for quota: {text[:200]}; request more cores for this VM family "
            "(portal: Quotas) or choose another size (target.compute.size=... / "
            "target.deployment.instance_type=...)"
        )
    if name in ("LocalEntryNotFoundError", "OfflineModeIsEnabled"):
        return f"{text[:200]}: download it once with network, or give model.name_or_path=<local folder>"
    if isinstance(error, OSError) and error.errno == errno.EADDRINUSE:
        return f"{text}: the port is in use; choose another (port=8001) or stop what listens there"
    return None


def exit_with(message: str, status: int, prefix: str = "error") -> None:
    """Print `<prefix>: <message>` on stderr and exit with `status` (no traceback)."""
    print(f"{prefix}: {message}", file=sys.stderr, flush=True)
    raise SystemExit(status) from None


def full_error() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"
