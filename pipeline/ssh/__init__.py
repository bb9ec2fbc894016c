"""SSH to a release host, on paramiko (as fabric uses it): the target and its host keys, one
connection with its command protocol (connection.py), and local port forwarding (forward.py).
runtime/remote.py runs releases over it; nothing here knows about releases."""
