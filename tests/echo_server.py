"""A fabric-side test service: UDP and TCP echo on each given address (IPv4 or IPv6), answering
b"<local ip>:<local port> <peer ip>:<peer port> <data>". Prints "ready" once listening."""

import socket
import sys
import threading


def family(addr: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def udp(addr: str, port: int) -> None:
    s = socket.socket(family(addr), socket.SOCK_DGRAM)
    s.bind((addr, port))
    while True:
        data, peer = s.recvfrom(65536)
        s.sendto(b"%s:%d %s:%d %s" % (addr.encode(), port, peer[0].encode(), peer[1], data), peer)


def tcp_conn(c: socket.socket, addr: str, port: int) -> None:
    with c:
        peer = c.getpeername()
        while True:
            data = c.recv(65536)
            if not data:
                return
            c.sendall(b"%s:%d %s:%d %s" % (addr.encode(), port, peer[0].encode(), peer[1], data))


def tcp(s: socket.socket, addr: str, port: int) -> None:
    while True:
        c, _ = s.accept()
        threading.Thread(target=tcp_conn, args=(c, addr, port), daemon=True).start()


def main() -> None:
    port = int(sys.argv[1])
    for addr in sys.argv[2:]:
        threading.Thread(target=udp, args=(addr, port), daemon=True).start()
        s = socket.socket(family(addr))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, port))
        s.listen(64)
        threading.Thread(target=tcp, args=(s, addr, port), daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()  # until the test closes our stdin


if __name__ == "__main__":
    main()
