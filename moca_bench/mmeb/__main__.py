"""``python -m moca_bench.mmeb`` (see :mod:`moca_bench.mmeb`)."""

from moca_bench.mmeb.cli import main

raise SystemExit(main())
