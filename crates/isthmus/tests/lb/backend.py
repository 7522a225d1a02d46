# A load-balancer member for the kernel tests: on TCP, each connection is greeted with the
# server's name and then gets every line it sends echoed back (so a test can hold a connection
# open); on UDP, each datagram is answered with the server's name and the datagram.
import socket
import socketserver
import sys
import threading

name, port = sys.argv[1], int(sys.argv[2])


class Tcp(socketserver.StreamRequestHandler):
    def handle(self):
        self.wfile.write(name.encode() + b"\n")
        for line in self.rfile:
            self.wfile.write(line)


class Udp(socketserver.BaseRequestHandler):
    def handle(self):
        data, sock = self.request
        sock.sendto(name.encode() + b" " + data, self.client_address)


class TcpServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 128


tcp = TcpServer(("0.0.0.0", port), Tcp)
udp = socketserver.UDPServer(("0.0.0.0", port), Udp)
threading.Thread(target=udp.serve_forever, daemon=True).start()
print("ready", flush=True)
tcp.serve_forever()
