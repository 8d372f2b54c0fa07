"""``python -m moca_train.cl``."""

from moca_train.cl.train import main

raise SystemExit(main())
