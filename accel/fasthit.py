"""The hit fast path: fresh hits remembered ready to send, answered from the wire.

When the general path (:mod:`accel.proxy`) serves a fresh ``HIT`` of a whole
stored body, :meth:`HotHits.remember` keeps it in the
:class:`~accel.cache.memory.HotTier`, pre-serialised, with the time it stops
being fresh: a small body in memory, a large one as the path of its stored
file, and for a 2xx response the ``304`` that answers a client whose copy
is current (``If-None-Match``, ``If-Modified-Since``). The wire layer
offers each simple request to :meth:`HotHits.fast_hit` first (before it
builds a request object), which answers a remembered
hit with a dictionary lookup, a clock comparison, a check of the store's change
stamp for the key and one write (a large body then goes by ``sendfile``),
and declines everything else (see its docstring for exactly what it takes).
No :class:`~accel.http.model.Request`, responder or store read is involved.
"""

from __future__ import annotations

import os
from typing import BinaryIO, Protocol

from twisted.internet.interfaces import IReactorTime

from accel.answers import CONDITIONAL_FIELDS, not_modified
from accel.cache import policy
from accel.cache.memory import HotEntry, HotTier, NotModified
from accel.cache.store import Entry, Store
from accel.http.headers import Headers
from accel.http.model import FileBackedBody
from accel.routes import Lookup

__all__ = ["HotHits"]

_HEAD = b"HEAD"

#: Request fields that send a request down the general path even when its
#: answer is in the hot tier: conditionals and ranges (evaluated against the
#: stored response there), request cache directives (RFC 9111 section
#: 5.2.1, and ``Pragma``, section 5.4), and ``Authorization`` (section 3.5).
_NOT_FAST = frozenset(
    {*CONDITIONAL_FIELDS, b"cache-control", b"pragma", b"authorization", b"connection"}
)
#: ``Connection`` values the fast path takes: any other names fields that
#: the general path removes before it selects a variant (see
#: :func:`accel.forwarding.remove_connection_named`).
_PLAIN_CONNECTION = frozenset({b"close", b"keep-alive"})
#: The fields of :data:`_NOT_FAST` that the fast path evaluates after all:
#: the validators a browser sends back (RFC 9110 sections 13.1.2, 13.1.3).
_VALIDATING = frozenset({b"if-none-match", b"if-modified-since"})
#: Fields the wire layer manages, dropped from a stored head as
#: :meth:`accel.http.server._Exchange.start` drops them.
_WIRE_FIELDS = frozenset(
    {b"content-length", b"transfer-encoding", b"connection", b"keep-alive", b"age"}
)
_HIT_NOTES = {"cache": "HIT"}
#: From this size on, a body in memory is handed to the server apart from
#: its head (sent together by one ``sendmsg``) rather than copied after it.
_SEPARATE_BODY = 16 * 1024
#: From this size on, a body in memory is remembered with its stored file
#: open too, for the server to send with ``sendfile`` (measured on a 64 KiB
#: hit: about an eighth less CPU than copying it into the socket).
_SENDFILE_BODY = 32 * 1024


class _WireFactory(Protocol):
    """Structural: what :meth:`HotHits.fast_hit` reads of the server's factory."""

    scheme: bytes
    server_line: bytes


class HotHits:
    """Remembers fresh hits in ``hot`` and answers them from the wire.

    ``hot`` is ``None`` when there is no store, or no hot tier: nothing is
    remembered and every request is declined. The hot tier needs a store
    with change stamps (see :class:`accel.cache.store.Generations`); ``name``
    is this cache's name in ``Cache-Status``.
    """

    def __init__(
        self,
        hot: HotTier | None,
        store: Store | None,
        clock: IReactorTime,
        name: bytes,
    ) -> None:
        self._hot = hot
        self._store = store
        self._clock = clock
        if hot is not None:
            hot.on_drop = self._dropped
        self._hit_status = (
            policy.cache_status(name=name, hit=True).replace(b"%", b"%%") + b"; ttl=%d"
        )

    def fast_hit(
        self,
        factory: _WireFactory,
        method: bytes,
        authority: bytes,
        path: bytes,
        query: bytes | None,
        pairs: list[tuple[bytes, bytes]],
        connection: bytes,
    ) -> tuple[bytes, int, int, dict[str, str], bytes | BinaryIO | None] | None:
        """Answer a remembered fresh hit at once, or ``None`` for the general path.

        An :data:`accel.http.server.FastPath`. Taken only by a GET or HEAD
        without content (the server checks), whose exact
        ``(scheme, authority, path, query)`` the general path recently
        answered as a fresh ``HIT`` of the whole stored body, with none of
        the :data:`_NOT_FAST` fields but ``If-None-Match`` and
        ``If-Modified-Since``, whose ``Vary`` fields select the same
        variant, while the stored response is still fresh (RFC 9111 section
        4.2: the expiry was computed when it was remembered) and the store
        has changed nothing under its key since. The answer is what the
        general path would send, with the ``Age`` and ``Cache-Status`` ttl
        of now: the ``304`` head, pre-serialised too, when the validators
        say the client's copy of a 2xx response is current (:meth:`_fails`,
        evaluated as there), else the response. A small body is part of the
        answer; a larger one in memory comes apart from the head (no copy),
        with its stored file's open descriptor from 32 KiB on
        (:class:`FileBackedBody`, for ``sendfile``); a large one is its
        stored body file, opened here, for the server to send after the
        head (plain connections only: over TLS the fast path declines).
        Declined: everything else, including requests the general path
        would answer from the cache in another way, and a body file that
        is gone.
        """
        hot = self._hot
        if hot is None:
            return None
        key = (factory.scheme, authority, path, query)
        variants = hot.get(key)
        if variants is None:
            return None
        # The validators' lines are gathered in the one pass over the fields
        # that looks for what declines (most requests have none of them).
        none_match: list[bytes] | None = None
        modified_since: list[bytes] | None = None
        for name, value in pairs:
            if name in _NOT_FAST:
                if name == b"if-none-match":
                    if none_match is None:
                        none_match = [value]
                    else:
                        none_match.append(value)
                elif name == b"if-modified-since":
                    if modified_since is None:
                        modified_since = [value]
                    else:
                        modified_since.append(value)
                elif name != b"connection" or value.lower() not in _PLAIN_CONNECTION:
                    return None
        store = self._store
        assert store is not None
        generations = store.generations
        if generations is None or not store.healthy:
            return None
        stamps = generations.stamps
        now = self._clock.seconds()
        headers = None
        for entry in variants:
            if entry.vary:
                if headers is None:
                    headers = Headers(pairs)
                if policy.secondary_key(entry.vary, headers) != entry.secondary:
                    continue
            if now >= entry.fresh_until or stamps[entry.slot] != entry.generation:
                hot.discard(key, entry)
                return None
            if now >= entry.touch_due and entry.stored is not None:
                # Keep the store's LRU stamp current, as a hit through the
                # store would (at most once per interval).
                entry.touch_due = now + store.touch_interval
                store.touch(entry.stored)
            if none_match is not None or modified_since is not None:
                current = entry.not_modified
                if current is not None and self._is_current(current, none_match, modified_since):
                    head = current.head % (now + entry.age_at, entry.fresh_until - now)
                    # As the general path's: a 304 has no Server of the origin.
                    response = b"".join((head, connection, factory.server_line, b"\r\n"))
                    return response, 304, 0, _HIT_NOTES, None
            head = entry.head % (now + entry.age_at, entry.fresh_until - now)
            server = factory.server_line if entry.needs_server else b""
            if method == _HEAD:
                response = b"".join((head, connection, server, b"\r\n"))
                return response, entry.status, 0, _HIT_NOTES, None
            if entry.path:
                if factory.scheme != b"http":
                    return None  # TLS: the body must go through the TLS layer
                body_file = self._open_body(entry)
                if body_file is None:
                    hot.discard(key, entry)
                    return None
                head = b"".join((head, connection, server, b"\r\n"))
                return head, entry.status, entry.length, _HIT_NOTES, body_file
            body = entry.body
            if len(body) >= _SEPARATE_BODY:
                head = b"".join((head, connection, server, b"\r\n"))
                mapped = entry.mapped
                return head, entry.status, len(body), _HIT_NOTES, body if mapped is None else mapped
            response = b"".join((head, connection, server, b"\r\n", body))
            return response, entry.status, len(body), _HIT_NOTES, None
        return None

    @staticmethod
    def _is_current(
        validators: NotModified,
        none_match: list[bytes] | None,
        modified_since: list[bytes] | None,
    ) -> bool:
        """Whether a request's ``If-None-Match`` or else ``If-Modified-Since``
        lines (``None``: the field is absent; one at least is present) say
        the client's copy is current.

        RFC 9110 section 13.2.2, steps 3 and 4, for a GET or HEAD without
        ``If-Match`` or ``If-Unmodified-Since`` (the fast path declines
        those), as :func:`accel.cache.policy.evaluate_conditionals`
        evaluates them: ``If-None-Match`` if present, else
        ``If-Modified-Since``. A single line already known to match (see
        :class:`NotModified`) is not parsed again.
        """
        if none_match is not None:
            if len(none_match) == 1 and none_match[0] in validators.tags:
                return True
            return policy.none_match_fails(none_match, validators.etag)
        assert modified_since is not None
        if len(modified_since) == 1 and modified_since[0] in validators.dates:
            return True
        return policy.modified_since_fails(modified_since, validators.modified)

    @staticmethod
    def _not_modified(
        lk: Lookup, entry: Entry, headers: Headers, cache_status: bytes
    ) -> NotModified | None:
        """How to answer conditional requests for ``entry`` with stored ``headers``.

        ``None`` unless 2xx (RFC 9110 section 13.2.1: other responses ignore
        preconditions). The ``304`` head is what the general path's
        :func:`accel.answers.not_modified` makes of the fields its answer
        would have, values' ``%`` doubled, with placeholders for the ``Age``
        and the ``Cache-Status`` ttl. The known-current values are checked
        with the same functions as any other, so that they answer alike.
        """
        if not 200 <= entry.status < 300:
            return None
        out = Headers([(name, value.replace(b"%", b"%%")) for name, value in headers.pairs])
        out.remove(b"age", b"content-length", *lk.rules.strip)
        out.add(b"age", b"%d")
        out.add(b"via", (b"1.1 " + lk.route.forwarding.via).replace(b"%", b"%%"))
        out.add(b"cache-status", cache_status)
        head = b"".join(
            [b"HTTP/1.1 304 Not Modified\r\n"]
            + [b"%s: %s\r\n" % pair for pair in not_modified(out).pairs]
        )
        etag = policy.entity_tag(headers)
        modified = policy.modification_date(headers, entry.response_time)
        tags = headers.get_all(b"etag")[:1]
        if etag is not None:
            quoted = b'"' + etag.opaque + b'"'
            tags += [quoted, b"W/" + quoted]
        dates = headers.get_all(b"last-modified")[:1] + headers.get_all(b"date")[:1]
        return NotModified(
            head,
            etag,
            modified,
            frozenset(tag for tag in tags if policy.none_match_fails([tag], etag)),
            frozenset(date for date in dates if policy.modified_since_fails([date], modified)),
        )

    @staticmethod
    def _dropped(entry: HotEntry) -> None:
        """The hot tier let ``entry`` go: close the descriptor it held, if any."""
        if entry.mapped is not None:
            os.close(entry.mapped.fd)

    @staticmethod
    def _map(path: str, body: bytes) -> FileBackedBody | None:
        """``body`` with its stored file at ``path`` open, or ``None`` if that
        file cannot be opened or is not ``body``'s length."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            size = os.fstat(fd).st_size
        except OSError:
            size = -1
        if size != len(body):
            os.close(fd)
            return None
        return FileBackedBody(body, fd)

    @staticmethod
    def _open_body(entry: HotEntry) -> BinaryIO | None:
        """``entry``'s body file, open for reading; ``None`` if gone or not its length.

        The store never reuses a body file's name, so a file there of the
        right length is the body remembered; anything else (removed by
        another process, damaged) is left to the general path to deal with.
        """
        try:
            f = open(entry.path, "rb", buffering=0)  # noqa: SIM115 - the server closes it
        except OSError:
            return None
        try:
            size = os.fstat(f.fileno()).st_size
        except OSError:
            size = -1
        if size != entry.length:
            f.close()
            return None
        return f

    def qualifies(self, lk: Lookup, entry: Entry, headers: Headers) -> bool:
        """Whether :meth:`remember` would keep ``entry``, stored with
        ``headers``, served to ``lk`` as a fresh hit (its body's size aside)."""
        return not (
            self._hot is None
            or lk.generation is None
            or lk.route.access is not None  # the fast path checks no client rules
            or lk.rules.recipe.headers
            or not 200 <= entry.status < 600
            or entry.status in (204, 304)
            or b"date" not in headers
            or any(
                name in _NOT_FAST
                and name not in _VALIDATING
                and (name != b"connection" or value.lower() not in _PLAIN_CONNECTION)
                for name, value in lk.request.headers.pairs
            )
        )

    def remember(
        self,
        lk: Lookup,
        entry: Entry,
        headers: Headers,
        age: float,
        ttl: float,
        body: bytes = b"",
        path: str = "",
    ) -> None:
        """Keep a fresh hit ready to send for :meth:`fast_hit`, if it qualifies.

        Either the whole ``body`` (small) or the ``path`` of its stored body
        file (large) is kept.
        """
        hot = self._hot
        request = lk.request
        if hot is None or len(body) > hot.max_item or not self.qualifies(lk, entry, headers):
            return
        store = self._store
        assert store is not None and store.generations is not None
        targeted = lk.rules.policy.targeted_field
        lines = [b"HTTP/1.1 %d %s\r\n" % (entry.status, entry.reason)]
        lines.extend(
            b"%s: %s\r\n" % pair
            for pair in headers.pairs
            if pair[0] not in _WIRE_FIELDS and pair[0] != targeted
        )
        lines.append(b"via: 1.1 " + lk.route.forwarding.via + b"\r\n")
        stored, via = b"".join(lines[:-1]), lines[-1]
        length = entry.length if path else len(body)
        # Literal "%" doubled: the template is formatted with (age, ttl).
        template = b"".join(
            (
                stored.replace(b"%", b"%%"),
                b"age: %d\r\n",
                via.replace(b"%", b"%%"),
                b"cache-status: " + self._hit_status + b"\r\n",
                b"content-length: " + str(length).encode("ascii") + b"\r\n",
            )
        )
        now = lk.looked_up_at
        mapped = None
        if len(body) >= _SENDFILE_BODY:
            mapped = self._map(store.body_path(entry), body)
        hot.put(
            (request.scheme, request.authority, request.path, request.query),
            HotEntry(
                status=entry.status,
                head=template,
                body=body,
                fresh_until=now + ttl,
                age_at=age - now,
                slot=store.generations.slot(lk.key),
                generation=lk.generation,
                vary=entry.vary,
                secondary=entry.secondary,
                needs_server=b"server" not in headers,
                path=path,
                length=length,
                stored=entry,
                touch_due=now + store.touch_interval,
                mapped=mapped,
                not_modified=self._not_modified(lk, entry, headers, self._hit_status),
            ),
        )
