"""SIP ports (Cisco CallManager SIP integration) on pjsua2: header parsing, MWI bodies, worker
processes and the driver."""
