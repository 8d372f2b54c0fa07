"""``python -m moca_train.cpt``."""

from moca_train.cpt.train import main

raise SystemExit(main())
