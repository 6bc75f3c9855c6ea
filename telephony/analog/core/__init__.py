"""The pure (sans-IO) parts of the analog ports: the board simulator's wire codec and the line
state machine.  No trio, sockets, clocks or files here; time comes in as ``now``."""
