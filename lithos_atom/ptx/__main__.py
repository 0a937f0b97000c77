"""``python -m lithos_atom.ptx``: see `lithos_atom.ptx.cli`."""

import sys

from lithos_atom.ptx.cli import main

sys.exit(main())
