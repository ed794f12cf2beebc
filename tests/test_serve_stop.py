"""``jimunet serve`` stops on Ctrl-C whenever it comes, also while a connection is being handed to its thread."""
import socketserver

import pytest

from jimunet.app import server


def test_ctrl_c_while_a_finished_connection_is_dispatched_stops_the_server(monkeypatch):
    # Under load the handler thread can finish (and give its slot back) before the main thread
    # returns from starting it; a Ctrl-C arriving then must stop the server, not be replaced by
    # "Semaphore released too many times" (which left the server running).
    def run_then_interrupt(self, request, client_address):
        self.process_request_thread(request, client_address)
        raise KeyboardInterrupt

    monkeypatch.setattr(socketserver.ThreadingMixIn, "process_request", run_then_interrupt)
    monkeypatch.setattr(socketserver.BaseServer, "finish_request", lambda self, request, address: None)
    monkeypatch.setattr(server.Server, "shutdown_request", lambda self, request: None)
    srv = server.Server(None, "127.0.0.1", 0, max_connections=2)  # no model needed: no request is read
    try:
        with pytest.raises(KeyboardInterrupt):
            srv.process_request(object(), ("127.0.0.1", 1))
        assert srv._slots.acquire(blocking=False) and srv._slots.acquire(blocking=False)  # both slots free
        assert not srv._slots.acquire(blocking=False)
    finally:
        srv.server_close()
