"""Click option groups shared by the commands, one module per library package they feed (the way
Polygraphy's ``tools/args`` mirrors its backends): :mod:`.data` (``trtq.data``), :mod:`.accuracy`
(``trtq.accuracy``) and :mod:`.common` (flags every command means the same way)."""
