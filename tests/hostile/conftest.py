"""The real-daemon fixtures of the integration tests, for the wire cases of the corpus."""

from tests.integration.conftest import cluster, make_cluster

__all__ = ["cluster", "make_cluster"]
