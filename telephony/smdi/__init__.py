"""SMDI (Simplified Message Desk Interface) over RS-232: codec, core and driver."""
