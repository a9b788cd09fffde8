"""The commands a node answers on its control socket, named once.

`node.commands` implements exactly these (it checks so when it builds its table) and
`twinnode ctl` offers them in its help; this module imports nothing, so `ctl` stays light.
"""
from __future__ import annotations

READ_COMMANDS = ("status", "peers", "twins", "budget")
JOB_COMMANDS = ("train", "publish", "screen", "analyze")
COMMANDS = (*READ_COMMANDS, *JOB_COMMANDS, "shutdown")
