"""`python -m pipelines.train pretrain|finetune|evaluate ...`: an entry shim over the `capfilt`
commands of the same names, for `ray job submit -- python -m pipelines.train ...` where the
`capfilt` script is not on the PATH. The import of capfilt/ happens here only, at the entry."""

from __future__ import annotations

import sys


def main() -> int:
    from capfilt.cli import main as capfilt_main

    return capfilt_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
