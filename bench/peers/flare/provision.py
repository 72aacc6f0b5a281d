"""Production-style NVFlare startup kits (server, N clients, 1 admin; mutual-TLS gRPC) in
WORKSPACE/bench/prod_00.  Usage: python provision.py N WORKSPACE [PORT] [SCHEME]"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml


def main() -> None:
    n = int(sys.argv[1])
    ws = Path(sys.argv[2]).resolve()
    port = int(sys.argv[3]) if len(sys.argv) > 3 else 18002
    scheme = sys.argv[4] if len(sys.argv) > 4 else "grpc"
    ws.mkdir(parents=True, exist_ok=True)
    server = {
        "name": "server",
        "type": "server",
        "org": "bench",
        "default_host": "localhost",
        "fed_learn_port": port,
        "admin_port": port,
    }
    admin = {"name": "admin@bench.local", "type": "admin", "org": "bench", "role": "project_admin"}
    sites = [{"name": f"site-{i}", "type": "client", "org": "bench"} for i in range(1, n + 1)]
    project = {
        "api_version": 3,
        "name": "bench",
        "description": "FL benchmark project",
        "participants": [server, admin, *sites],
        "builders": [
            {
                "path": "nvflare.lighter.impl.workspace.WorkspaceBuilder",
                "args": {"template_file": ["master_template.yml"]},
            },
            {
                "path": "nvflare.lighter.impl.static_file.StaticFileBuilder",
                "args": {"config_folder": "config", "scheme": scheme},
            },
            {"path": "nvflare.lighter.impl.cert.CertBuilder"},
            {"path": "nvflare.lighter.impl.signature.SignatureBuilder"},
        ],
    }
    pf = ws / "project.yml"
    pf.write_text(yaml.safe_dump(project, sort_keys=False))
    subprocess.run(["nvflare", "provision", "-p", str(pf), "-w", str(ws), "--force"], check=True)
    print(ws / "bench" / "prod_00")


if __name__ == "__main__":
    main()
