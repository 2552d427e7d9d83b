"""promptflow's background service, found and stopped by its pid.

`pf flow test` and `PFClient().test` start "the prompt flow service" (waitress, on 127.0.0.1 at
the port written in `<promptflow home>/pfs/*_pfs.port`) to collect traces, unless
`trace.destination=none` is configured, and it outlives the command that started it. `make e2e`
and the tests configure `none` in a promptflow home of their own and, on the way out, stop any
service still listening on that home's port: `stop_service(home)` (nothing else is touched).

    python -m flow.service      # stop the one `pf flow test` left running (PF_HOME_DIRECTORY, else ~/.promptflow)
"""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import yaml


def service_ports(home: Path) -> set[int]:
    """The ports promptflow recorded for its service in `home` (one file per Python environment)."""
    ports = set()
    for port_file in (Path(home) / "pfs").glob("*_pfs.port"):
        config = yaml.safe_load(port_file.read_text(encoding="utf-8")) or {}
        if port := (config.get("service") or {}).get("port"):
            ports.add(int(port))
    return ports


def service_pids(home: Path) -> list[int]:
    """Pids of the processes listening on `home`'s service ports (promptflow binds 127.0.0.1).
    promptflow's own `pf service stop` reads the home fixed when promptflow is imported; the tests
    use a home each, hence this."""
    ports = service_ports(home)
    if not ports:
        return []
    return sorted(
        {
            c.pid
            for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port in ports and c.pid
        }
    )


def stop_service(home: Path, timeout_s: float = 10) -> list[int]:
    """Terminate (then kill, after `timeout_s`) the service of `home` by pid; the pids stopped."""
    stopped = []
    for pid in service_pids(home):
        try:
            process = psutil.Process(pid)
            process.terminate()
            try:
                process.wait(timeout_s)
            except psutil.TimeoutExpired:
                process.kill()
                process.wait(timeout_s)
        except psutil.NoSuchProcess:
            continue
        stopped.append(pid)
    return stopped


if __name__ == "__main__":
    home = Path(os.environ.get("PF_HOME_DIRECTORY") or Path.home() / ".promptflow").expanduser()
    pids = stop_service(home)
    print(f"stopped promptflow's service (pid {', '.join(map(str, pids))})" if pids else "no service running")
