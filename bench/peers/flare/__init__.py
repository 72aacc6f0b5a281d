"""NVIDIA FLARE 2.9.0's side: run.py runs in the nvflare venv (setup.sh); the other modules
run inside NVFlare's own processes or its venv (their imports are NVFlare's)."""
