"""The configuration store (``infra.etcd``): JSON values under one etcd key prefix, read, written and followed.

The project's configuration lives in etcd under one prefix (``/vrouter/`` by
default) that every compute node's agent follows.  ``ConfigStore`` talks to
etcd's JSON gateway (``/v3/``) through etcd3gw; ``Follower`` keeps a consumer
in step with everything under the prefix.  The rules:

* Keys are relative to the prefix (``ports/PORT-UUID``, never a leading ``/``;
  the prefix ends with ``/``); values are JSON, written with sorted keys.  A
  value that is not JSON is skipped (``get`` answers None) with a warning that
  names the key.
* Each call goes to the endpoint that answered last, then to the others in
  turn.  An endpoint that cannot be reached (connection refused, no answer
  within ``timeout`` seconds, 503 from etcd) is skipped; nothing else is
  retried.  When none answers the call raises ``StoreError`` naming every
  endpoint and why; a request etcd refuses raises ``StoreError`` at once.  So
  no call blocks for longer than ``timeout`` seconds per endpoint.
* Thread-safety and namespaces: a store may be shared by any number of
  threads.  Each thread has its own HTTP sessions, and so its own
  connections, opened by that thread: a socket is made in the network
  namespace of the thread that makes it, so each thread reaches etcd from its
  own namespace.  Use a store from threads in a namespace where an endpoint's
  address is reachable (a thread that has ``setns`` into it, e.g. through
  ``topology.netns.Namespace.run``, or any thread started by one: a new
  thread starts in its creator's namespace).  Sessions do not follow the
  proxy variables of the environment: etcd is reached directly.
* A watch has a connection of its own, read by a daemon thread.  Its iterator
  raises ``StoreError`` when the watch is lost: the stream ends or breaks
  (etcd stopped), etcd cancels it (its start revision was compacted), or,
  after ``WATCH_PROBE`` seconds without a message, the watched endpoint does
  not answer a read within ``timeout`` (a hung etcd, or a connection no
  longer there, on which a read would block for ever).  It ends without an
  error once cancelled.
* TLS: an ``https://`` endpoint is reached with ``tls`` (``infra.etcd_tls``):
  etcd's certificate verified against its CA, this client's certificate
  presented when there is one.  An https endpoint without ``tls`` is a
  ValueError at once; a failed handshake is a failure of that endpoint, named
  for what it means (no client certificate, a certificate etcd does not trust,
  etcd's not signed by the CA), and retried by the Follower like any other.
* ``Follower`` runs one daemon thread, started in the namespace of the thread
  that calls ``start``, and calls the consumer's callbacks in it.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from etcd3gw import exceptions as etcd_errors
from etcd3gw.client import DEFAULT_API_PATH, Etcd3Client

from infra import etcd_tls
from infra.etcd_tls import EtcdTls
from infra.etcd_wire import (
    DEFAULT_PREFIX,
    MAX_RETRY,
    WATCH_PROBE,
    Cancel,
    Event,
    OnEvents,
    OnState,
    OnSync,
    StoreError,
    StoreRefused,
    b64,
    check_key,
    decode_value,
    encode_value,
    lines,
    normalize_prefix,
    range_end,
    relative_key,
    unb64,
    watch_events,
)

log = logging.getLogger("vrouter.cluster")


@dataclass(frozen=True)
class Endpoint:
    """An etcd client URL, split for etcd3gw."""

    url: str
    protocol: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        parts = urlsplit(text)
        try:
            port = parts.port or 2379
        except ValueError:
            port = -1
        if parts.scheme not in ("http", "https") or not parts.hostname or port < 0 or parts.path not in ("", "/"):
            raise ValueError("etcd endpoint %r: expected a client URL such as http://10.10.0.1:2379" % text)
        return cls(text.rstrip("/"), parts.scheme, parts.hostname, port)


def _why(e: Exception, timeout: float | None = None, client_cert: bool = True) -> str:
    """What went wrong with a request, in a few words (``client_cert``: whether one was presented)."""
    if isinstance(e, etcd_errors.ConnectionTimeoutError | requests.Timeout):
        return "no answer within %g s" % timeout if timeout else "no answer in time"
    text = getattr(e, "detail_text", None) or str(e)
    tls = etcd_tls.why(text, client_cert)
    if tls is not None:
        return tls
    if "RemoteDisconnected" in text:  # what an https:// etcd does to a plain HTTP request
        return "closed the connection without an answer (is that etcd https://?)"
    try:  # etcd's own error, as JSON: {"error": ..., "message": ..., "code": ...}
        answer = json.loads(text)
        if isinstance(answer, dict) and answer.get("message"):
            return str(answer["message"])
    except ValueError:
        pass
    found = re.search(r"(?:\[Errno -?\d+\] |Error\(-?\d+, ')([^'\")\]]+)", text)  # [Errno 111] ..., ConnectionResetError(104, '...')
    if found:
        return found.group(1).strip().lower()
    return text.splitlines()[0][:200] if text else type(e).__name__


def _socket_of(resp: requests.Response) -> socket.socket | None:
    conn = getattr(resp.raw, "connection", None)
    sock = getattr(conn, "sock", None)
    return sock if isinstance(sock, socket.socket) else None


# -- the store ------------------------------------------------------------------------------------


class ConfigStore:
    """JSON values under ``prefix`` in the etcd at ``endpoints`` (client URLs, such as
    ``http://10.10.0.1:2379``; several: tried in turn, the one that answered is remembered).
    Each call is bounded by ``timeout`` seconds per endpoint.  ``tls``: the files https endpoints
    are reached with.  Thread-safe; each thread connects from its own network namespace (see the
    module's rules)."""

    def __init__(self, endpoints: list[str], prefix: str = DEFAULT_PREFIX, timeout: float = 3.0, tls: EtcdTls | None = None) -> None:
        if not endpoints:
            raise ValueError("no etcd endpoint given: expected client URLs such as http://10.10.0.1:2379")
        self._endpoints = [Endpoint.parse(e) for e in endpoints]
        secure = [e.url for e in self._endpoints if e.protocol == "https"]
        if secure and (tls is None or not tls.ca):
            raise ValueError("etcd endpoint %s: https needs the CA that signed etcd's certificate ([ETCD] ca_cert, or --etcd-ca)" % secure[0])
        self.tls = tls
        self._client_cert = bool(tls and tls.cert)
        self.endpoints = [e.url for e in self._endpoints]
        self.prefix = normalize_prefix(prefix)
        self.timeout = timeout
        self._prefix = self.prefix.encode()
        self._lock = threading.Lock()
        self._current = 0  # the endpoint that answered last
        self._api_paths: dict[int, str] = {}  # what etcd3gw found (/v3/ for etcd 3.4), per endpoint
        self._local = threading.local()

    @property
    def endpoint(self) -> str:
        """The endpoint that answered last (the first one before any did)."""
        with self._lock:
            return self.endpoints[self._current]

    # -- transport --

    def _session(self) -> requests.Session:
        session = requests.Session()
        session.trust_env = False  # no proxies from the environment: etcd is reached directly
        if self.tls is not None:
            session.verify = self.tls.ca  # etcd's certificate against its cloud's CA alone
            if self.tls.cert:
                session.cert = (self.tls.cert, self.tls.key)
        return session

    def _client(self, i: int, session: requests.Session | None = None) -> Etcd3Client:
        """etcd3gw's client for endpoint ``i``: this thread's, or one on ``session``."""
        ep = self._endpoints[i]
        with self._lock:
            api_path = self._api_paths.get(i) or DEFAULT_API_PATH  # etcd3gw finds it when None (ETCD3GW_API_PATH may set it)
        if session is not None:
            return Etcd3Client(host=ep.host, port=ep.port, protocol=ep.protocol, timeout=self.timeout, api_path=api_path, session=session)
        clients: dict[int, Etcd3Client] | None = getattr(self._local, "clients", None)
        if clients is None:
            clients = self._local.clients = {}
        if i not in clients:
            clients[i] = Etcd3Client(host=ep.host, port=ep.port, protocol=ep.protocol, timeout=self.timeout, api_path=api_path,
                                     session=self._session())  # fmt: skip
        return clients[i]

    def _answered(self, i: int, client: Etcd3Client) -> None:
        with self._lock:
            self._current = i
            self._api_paths[i] = client.api_path  # found by then

    def _order(self) -> list[int]:
        with self._lock:
            first = self._current
        n = len(self._endpoints)
        return [(first + k) % n for k in range(n)]

    def _unreachable(self, failures: list[str]) -> StoreError:
        if failures and all(": TLS: " in f for f in failures):
            return StoreError("etcd refused TLS (%s)" % "; ".join(failures))
        return StoreError("etcd unreachable (%s): is etcd running there, and does this thread's network namespace reach it?"
                          % "; ".join(failures))  # fmt: skip

    def _post(self, path: str, payload: dict[str, Any], only: int | None = None) -> dict[str, Any]:
        """etcd's answer to one JSON gateway request, from the first endpoint that answers."""
        failures = []
        for i in self._order() if only is None else [only]:
            client = self._client(i)
            try:
                answer = client.post(client.get_url(path), json=payload)
            except (etcd_errors.ConnectionFailedError, etcd_errors.ConnectionTimeoutError, requests.RequestException) as e:
                failures.append("%s: %s" % (self.endpoints[i], _why(e, self.timeout, self._client_cert)))
                continue
            except etcd_errors.Etcd3Exception as e:
                raise StoreRefused("etcd at %s refused %s: %s" % (self.endpoints[i], path, _why(e))) from None
            self._answered(i, client)
            return answer if isinstance(answer, dict) else {}
        raise self._unreachable(failures)

    def _full(self, key: str, what: str = "key", empty: bool = False) -> bytes:
        return (self.prefix + check_key(key, what, empty)).encode()

    def close(self) -> None:
        """Close this thread's connections (other threads' close when those threads end)."""
        clients: dict[int, Etcd3Client] = getattr(self._local, "clients", None) or {}
        for client in clients.values():
            client.session.close()
        clients.clear()

    # -- keys and values --

    def get_all(self, under: str = "") -> tuple[int, dict[str, Any]]:
        """(the store's revision, {relative key: value}) for every key under prefix + ``under``."""
        start = self._full(under, "prefix", empty=True)
        answer = self._post("/kv/range", {"key": b64(start), "range_end": b64(range_end(start))})
        values = {}
        for kv in answer.get("kvs", []):
            key = relative_key(unb64(kv["key"]), self._prefix)
            if key is None:
                continue
            ok, value = decode_value(unb64(kv.get("value", "")))
            if not ok:
                log.warning("etcd key %s%s is not JSON: skipped", self.prefix, key)
                continue
            values[key] = value
        return int(answer["header"]["revision"]), values

    def get(self, key: str) -> Any | None:
        """The value of ``key``; None if there is none (or it is not JSON)."""
        answer = self._post("/kv/range", {"key": b64(self._full(key))})
        kvs = answer.get("kvs", [])
        if not kvs:
            return None
        ok, value = decode_value(unb64(kvs[0].get("value", "")))
        if not ok:
            log.warning("etcd key %s%s is not JSON: read as none", self.prefix, key)
        return value

    def put(self, key: str, value: Any) -> int:
        """Write ``value`` (JSON with sorted keys) at ``key``; the revision of the write."""
        data = encode_value(value)
        answer = self._post("/kv/put", {"key": b64(self._full(key)), "value": b64(data)})
        return int(answer["header"]["revision"])

    def delete(self, key: str) -> bool:
        """Remove ``key``; whether it was there."""
        answer = self._post("/kv/deleterange", {"key": b64(self._full(key))})
        return int(answer.get("deleted", 0)) > 0

    def delete_if(self, key: str, value: Any) -> bool:
        """Remove ``key`` only while it holds ``value`` (as ``put`` wrote it), in one transaction:
        a key another writer has changed meanwhile stays.  Whether it went."""
        full = b64(self._full(key))
        txn = {
            "compare": [{"key": full, "result": "EQUAL", "target": "VALUE", "value": b64(encode_value(value))}],
            "success": [{"request_delete_range": {"key": full}}],
        }
        return bool(self._post("/kv/txn", txn).get("succeeded"))

    def delete_prefix(self, under: str) -> int:
        """Remove every key under prefix + ``under`` ("" for all of them); how many went."""
        start = self._full(under, "prefix", empty=True)
        answer = self._post("/kv/deleterange", {"key": b64(start), "range_end": b64(range_end(start))})
        return int(answer.get("deleted", 0))

    def healthy(self) -> bool:
        """Whether an endpoint answers a read of the prefix within the timeout (a linearizable
        read: etcd has a leader); never raises."""
        return self._answers(None)

    def _answers(self, only: int | None) -> bool:
        try:
            self._post("/kv/range", {"key": b64(self._prefix), "range_end": b64(range_end(self._prefix)), "limit": 1, "keys_only": True}, only)
            return True
        except Exception:  # noqa: BLE001 - an answer to "is it there?", whatever went wrong
            return False

    # -- watching --

    def watch(self, start_revision: int) -> tuple[Iterator[Event], Cancel]:
        """The events under the prefix from ``start_revision`` on, and a function that cancels the
        watch.  The iterator raises StoreError when the watch is lost and ends once cancelled."""
        batches, cancel = self.watch_batches(start_revision)

        def events() -> Iterator[Event]:
            try:
                for batch in batches:
                    yield from batch
            finally:
                cancel()

        return events(), cancel

    def watch_batches(self, start_revision: int) -> tuple[Iterator[list[Event]], Cancel]:
        """As ``watch``, one list per message of etcd's watch stream (the changes of one write or
        transaction come together).  StoreError at once if no endpoint accepts the watch."""
        request: dict[str, Any] = {
            "create_request": {"key": b64(self._prefix), "range_end": b64(range_end(self._prefix)), "start_revision": start_revision}
        }
        failures = []
        for i in self._order():
            session = self._session()
            client = self._client(i, session)
            try:
                resp = session.post(client.get_url("/watch"), json=request, stream=True, timeout=self.timeout)
                if resp.status_code != 200:
                    raise StoreError("etcd at %s refused the watch: %s" % (self.endpoints[i], _why(etcd_errors.Etcd3Exception(resp.text))))
                stream = lines(resp.iter_content(chunk_size=None))
                first = json.loads(next(stream, b"{}"))  # {"result": {"created": true}}, within the timeout
                watch_events(first, self._prefix)
                if not first.get("result", {}).get("created"):
                    raise StoreError("etcd at %s did not start the watch: %s" % (self.endpoints[i], first))
            except (etcd_errors.ConnectionFailedError, etcd_errors.ConnectionTimeoutError, requests.RequestException) as e:
                session.close()
                failures.append("%s: %s" % (self.endpoints[i], _why(e, self.timeout, self._client_cert)))
                continue
            except StoreError:
                session.close()
                raise
            except (etcd_errors.Etcd3Exception, ValueError) as e:
                session.close()
                raise StoreError("etcd at %s refused the watch: %s" % (self.endpoints[i], _why(e))) from None
            sock = _socket_of(resp)
            if sock is not None:
                sock.settimeout(None)  # messages come when something changes; silence is probed instead
            self._answered(i, client)
            return self._follow(i, session, resp, stream)
        raise self._unreachable(failures)

    def _follow(self, i: int, session: requests.Session, resp: requests.Response, stream: Iterator[bytes]) -> tuple[Iterator[list[Event]], Cancel]:
        """A watch's stream, read by a thread; its batches and its cancel function."""
        items: queue.Queue[tuple[str, Any]] = queue.Queue()
        cancelled = threading.Event()
        endpoint = self.endpoints[i]

        def read() -> None:
            try:
                for line in stream:
                    items.put(("events", watch_events(json.loads(line), self._prefix)))
                items.put(("error", StoreError("etcd at %s ended the watch (did it stop?)" % endpoint)))
            except StoreError as e:
                items.put(("error", StoreError("etcd at %s: %s" % (endpoint, e))))
            except Exception as e:  # noqa: BLE001 - the connection broke, however it did
                items.put(("error", StoreError("etcd at %s: the watch's connection broke (%s)" % (endpoint, _why(e)))))
            finally:
                resp.close()  # closed by the thread that reads it, never under its feet
                session.close()

        def cancel() -> None:
            if cancelled.is_set():
                return
            cancelled.set()
            sock = _socket_of(resp)
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # wakes the reading thread
                except OSError:
                    pass
            items.put(("end", None))

        def batches() -> Iterator[list[Event]]:
            try:
                while True:
                    try:
                        kind, item = items.get(timeout=WATCH_PROBE)
                    except queue.Empty:
                        if not cancelled.is_set() and not self._answers(i):
                            raise StoreError("etcd at %s gave no answer within %g s: the watch is lost" % (endpoint, self.timeout))
                        continue
                    if cancelled.is_set() or kind == "end":
                        return
                    if kind == "error":
                        raise item
                    if item:
                        yield item
            finally:
                cancel()

        threading.Thread(target=read, name="etcd-watch", daemon=True).start()
        return batches(), cancel


# -- the follower ---------------------------------------------------------------------------------


class Follower:
    """Keeps a consumer in step with everything under the store's prefix.

    In a daemon thread: load everything (``get_all``), call ``on_sync(snapshot, revision)``, then
    watch from ``revision + 1`` and call ``on_events(events)`` per batch.  On any error (etcd
    stopped or unreachable, the watch ended, its revision compacted) ``on_state(False)`` once, a
    new attempt after ``retry`` seconds (doubling up to 2 s), and once etcd answers again
    ``on_state(True)`` and a fresh full load with ``on_sync`` (a resync: the consumer replaces
    its view).  ``on_state`` is called whenever the state differs from the one last reported:
    ``on_state(True)`` before the first ``on_sync`` too, ``on_state(False)`` if the first attempt
    fails.  ``last_error`` says why etcd does not answer while it does not (logged once, and again
    when the reason changes).  The callbacks run in the follower's thread; one that raises is
    logged and followed by a resync.  Start it from a thread in the namespace etcd is reached from
    (its thread is made by that one); ``stop`` cancels the watch and returns within its timeout,
    after which no callback starts."""

    def __init__(self, store: ConfigStore, on_sync: OnSync, on_events: OnEvents, on_state: OnState, retry: float = 0.5) -> None:
        self.store = store
        self.on_sync = on_sync
        self.on_events = on_events
        self.on_state = on_state
        self.retry = retry
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._cancel: Callable[[], None] | None = None
        self._state: bool | None = None  # what the consumer was told last
        self._thread: threading.Thread | None = None
        self.last_error = ""  # why etcd does not answer, while it does not ("" once it does)

    @property
    def connected(self) -> bool:
        """Whether the follower is in step with etcd (loaded, and watching)."""
        return self._state is True

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("this follower has been started already")
        self._thread = threading.Thread(target=self._run, name="etcd-follower", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop following: the watch is cancelled, the thread waited for up to ``timeout`` seconds
        (a request under way ends within the store's timeout, and no callback follows it)."""
        self._stopping.set()
        with self._lock:
            cancel = self._cancel
        if cancel is not None:
            cancel()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("etcd follower: still waiting for etcd after %.1f s; it ends when that request does", timeout)

    def _report(self, state: bool) -> None:
        if self._state is not state:
            self._state = state
            self.on_state(state)

    def _lost(self, error: StoreError) -> None:
        changed, self.last_error = self.last_error != str(error), str(error)
        if self._state is False:
            if changed:  # a new reason (a certificate changed, etcd stopped): worth a line
                log.warning("etcd follower: still not connected: %s", error)
            else:
                log.debug("etcd follower: still unreachable: %s", error)
            return
        log.warning("etcd follower: keeping the last configuration, retrying every %.1f-%.1f s: %s", self.retry, max(MAX_RETRY, self.retry), error)
        try:
            self._report(False)
        except Exception:  # noqa: BLE001 - the consumer's failure must not stop the follower
            log.exception("etcd follower: on_state(False) failed")

    def _run(self) -> None:
        delay = self.retry
        while not self._stopping.is_set():
            try:
                revision, snapshot = self.store.get_all()
                batches, cancel = self.store.watch_batches(revision + 1)
            except StoreError as e:
                if not self._stopping.is_set():
                    self._lost(e)
            else:
                with self._lock:
                    self._cancel = cancel
                try:
                    if self._stopping.is_set():
                        break
                    if self._state is False:
                        log.info("etcd follower: %s answers again: revision %d, %d keys loaded", self.store.endpoint, revision, len(snapshot))
                    self.last_error = ""
                    self._report(True)
                    self.on_sync(snapshot, revision)
                    delay = self.retry
                    for batch in batches:
                        if self._stopping.is_set():
                            break
                        self.on_events(batch)
                except StoreError as e:
                    if not self._stopping.is_set():
                        self._lost(e)
                except Exception:  # noqa: BLE001 - the consumer's failure: logged, then a resync
                    log.exception("etcd follower: a callback failed; loading everything again in %.1f s", delay)
                finally:
                    cancel()
                    with self._lock:
                        self._cancel = None
            if self._stopping.wait(delay):
                break
            delay = min(delay * 2, max(MAX_RETRY, self.retry))
