"""``python -m provision`` runs flprovision."""

import sys

from provision.cli import main

sys.exit(main())
