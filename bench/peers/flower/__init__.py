"""Flower 1.42.0's side: run.py runs in the flwr venv (setup.sh); benchapp/ is the Flower
App (ServerApp + ClientApp) it bundles with workload.py."""
