"""UDP to 127.0.0.1:9 every 2 ms, while a socket bound to that port counts what reaches it, until SIGTERM;
then the counts go to OUT as JSON ({"sent": N, "received": M}). The flood across a priority swap of libxdp's
dispatcher (side_effect.yml): XDP drops every datagram to port 9, so M must stay 0 throughout.
Run inside hm1, in the background: ip netns exec hm1 python3 hm_flood.py OUT."""
import json
import os
import signal
import socket
import sys
import time

out = sys.argv[1]
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rx.bind(("127.0.0.1", 9))
rx.setblocking(False)
tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
counts = {"sent": 0, "received": 0}
running = [True]


def stop(_signum, _frame):
    running[0] = False


signal.signal(signal.SIGTERM, stop)


def drain():
    while True:
        try:
            rx.recv(64)
        except BlockingIOError:
            return
        counts["received"] += 1


while running[0]:
    tx.sendto(bytes(8), ("127.0.0.1", 9))
    counts["sent"] += 1
    drain()
    time.sleep(0.002)
time.sleep(0.2)  # the last datagrams through the stack
drain()
with open(out + ".tmp", "w") as f:
    json.dump(counts, f)
os.rename(out + ".tmp", out)
