"""``python -m bonsai_tools`` (from the pack folder) or ``python <pack folder>/bonsai_tools`` (from any folder).

Run as a folder, Python puts ``bonsai_tools/`` itself on ``sys.path``; the pack folder (which holds
``bonsai_core``, ``kernels`` and ``bonsai_tools``) goes there instead, as ``-m`` from the pack folder would."""

import os
import sys

if not __package__:
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    sys.path.insert(0, os.path.dirname(here))
    from bonsai_tools.cli import main
else:
    from .cli import main

sys.exit(main())
