"""`python -m targets.agent ...` in the source tree; on a device, the zipapp's own __main__ (bundle.py) runs it."""
import sys

from targets.agent.cli import main

sys.exit(main())
