"""Scale-out on Ray (``--ray ADDRESS``, ``ray = "ADDRESS"`` in trtq.toml): calibration and evaluation shards as
Ray tasks, the sensitivity ranking (also quantize's) on Ray actors.

Nothing here imports Ray at module level: ``import trtq`` and ``trtq --help`` never load it, and only a
run given ``--ray`` does (:func:`trtq.distributed.backend.ray_session`). Install it with
``pip install 'trtq[ray]'``.
"""
