"""Scale-out on Ray (``--ray ADDRESS``): calibration shards and sensitivity evaluations as Ray tasks.

Nothing here imports Ray at module level: ``import trtq`` and ``trtq --help`` never load it, and only a
run given ``--ray`` does (:func:`trtq.distributed.backend.ray_session`). Install it with
``pip install 'trtq[ray]'``.
"""
