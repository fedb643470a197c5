"""`python -m pipelines.rounds ...`: the loop as `ray job submit --working-dir . -- ...` runs it.

It takes the same flags and YAML as `capfilt rounds`; flag parsing (and the report, which lives in
capfilt/) stays in the face, so this shim delegates to it, as pipelines/bootstrap/__main__.py does.
"""

import sys

from capfilt.cli import main

if __name__ == "__main__":
    sys.exit(main(["rounds", *sys.argv[1:]]))
