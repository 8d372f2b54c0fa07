"""Child process for tests/moca_model/test_pool_safety.py: a device pool under Ctrl-C or a dying parent.

``python _pool_child.py CHECKPOINT interrupt``: prints its worker's pid and ``encoding``, then encodes 300
images of 200 x 200 pixels one per batch (several MB of queued tasks), again and again until interrupted.
``python _pool_child.py CHECKPOINT die``: prints its worker's pid, then kills itself with SIGKILL.
One worker (:func:`pooled_encoder`): what is tested is the same with more, and it starts faster.
"""

from __future__ import annotations

import os
import signal
import sys


def pooled_encoder(checkpoint):
    """A MoCaEncoder whose batches run on a pool of one CPU worker process (``devices`` needs two for a pool)."""
    import functools
    from pathlib import Path

    from moca_model import MoCaEncoder
    from moca_model.encode import _worker_encoder
    from moca_model.loading import load_processor
    from moca_model.parallel import DevicePool

    processor, _ = load_processor(Path(checkpoint))
    pool = DevicePool(functools.partial(_worker_encoder, str(checkpoint), {}), ["cpu"], threads=1)
    return MoCaEncoder(None, processor, cache=False, pool=pool)


if __name__ == "__main__":
    import numpy as np
    from PIL import Image

    checkpoint, mode = sys.argv[1], sys.argv[2]
    enc = pooled_encoder(checkpoint)
    print("pids", *[p.pid for p in enc.pool._procs], flush=True)
    if mode == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    rng = np.random.default_rng(0)
    items = [Image.fromarray(rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)) for _ in range(300)]
    print("encoding", flush=True)
    while True:  # no cache: every call encodes again, whatever the machine's speed
        enc.encode(items, batch_size=1, show_progress=False)
