"""The jobs: each of trtq's jobs written once, where the layers below it meet (data, the accuracy loop, TensorRT).
The command line, ``trtq run`` and Ray are thin callers of them; the TensorRT layer (``trtq/trt/``) never calls up
into the accuracy loop, it is handed what it needs from here."""
