"""The one error type of provisioning that is not a mistake in project.yml.

The CLI maps :class:`flcore.schema.ConfigError` (project.yml is wrong) to exit
code 2 and :class:`ProvisionError` (everything else a person can fix: a
changed server section, a wrong kit password, a file in the way) to exit
code 1, printing the message alone, without a traceback.
"""

from __future__ import annotations


class ProvisionError(Exception):
    """Provisioning cannot go on; the message says why and what to do."""
