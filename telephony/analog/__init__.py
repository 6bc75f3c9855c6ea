"""Analog voice-board ports (FXO lines: the board is the telephone, the PBX is the exchange).

The board interface every backend offers is :mod:`telephony.analog.board`; backends are the
board simulator's client (:mod:`telephony.analog.simboard`) and DAHDI FXO channels.  The pure
parts (the simulator's wire codec, the line state machine) live in :mod:`telephony.analog.core`.
See docs/analog.md.
"""
