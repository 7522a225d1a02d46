# A load-balancer client for the kernel tests.
#   client.py count VIP PORT N   -> JSON {member name: connections} over N TCP connections
#   client.py udp VIP PORT       -> the answer to one datagram
#   client.py hold VIP PORT      -> prints the member's name, then echoes stdin lines through
#                                   the one connection until stdin closes
import collections
import json
import socket
import sys

mode, vip, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode == "count":
    counts = collections.Counter()
    for _ in range(int(sys.argv[4])):
        try:
            with socket.create_connection((vip, port), timeout=3) as s:
                counts[s.makefile().readline().strip()] += 1
        except OSError:
            counts["<failed>"] += 1
    print(json.dumps(counts))
elif mode == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.sendto(b"hello", (vip, port))
    print(s.recv(4096).decode())
elif mode == "hold":
    s = socket.create_connection((vip, port), timeout=10)
    f = s.makefile("rw")
    print(f.readline().strip(), flush=True)
    for line in sys.stdin:
        f.write(line)
        f.flush()
        print(f.readline().strip(), flush=True)
