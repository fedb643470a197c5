"""`python -m pipelines.bootstrap ...`: the job as `ray job submit --working-dir . -- ...` runs it.

It takes the same flags and YAML as `capfilt bootstrap`. The flag parsing lives in capfilt/ (the
face), so this shim delegates to it: the one place where pipelines/ imports upward, and only as an
entry point, so that a cluster job and a local run parse settings in exactly one way.
"""

import sys

from capfilt.cli import main

if __name__ == "__main__":
    sys.exit(main(["bootstrap", *sys.argv[1:]]))
